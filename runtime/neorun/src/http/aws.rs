//! `POST /` with `X-Amz-Target: SageMaker.<Operation>`: AWS's JSON 1.1
//! protocol, as boto3's `sagemaker` client and `aws sagemaker` send it;
//! `GraniteServiceVersion20100801.<Operation>`: CloudWatch's alarm
//! operations in its JSON 1.0 protocol; `NeoRun.<Operation>`: neorun's own
//! (rollback, journal). `POST /alertmanager`: Prometheus Alertmanager's
//! webhook. The caller was authenticated by the guard (SigV4 or the bearer
//! token).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{read_body, Caller, St};
use crate::control::AwsError;

pub async fn control(State(st): St, caller: Option<Extension<Caller>>, headers: HeaderMap, body: Body) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let cloudwatch = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("GraniteServiceVersion20100801."));
    let ct = if cloudwatch { "application/x-amz-json-1.0" } else { "application/x-amz-json-1.1" };
    let mut r = match call(&st, caller, &headers, body).await {
        Ok(v) => {
            let mut r = (StatusCode::OK, v.to_string()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        r.headers_mut().insert("x-amzn-RequestId", v);
    }
    r
}

async fn call(
    st: &super::AppState,
    caller: Option<Extension<Caller>>,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, AwsError> {
    let (who, cp) = authorized(st, caller)?;
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "no X-Amz-Target header (expected SageMaker.<Operation>)",
        )
    })?;
    let (service, op) = target.split_once('.').unwrap_or((target, ""));
    if !["SageMaker", "GraniteServiceVersion20100801", "NeoRun"].contains(&service) {
        return Err(AwsError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("X-Amz-Target {target:?} is not an operation here (expected SageMaker.<Operation>, GraniteServiceVersion20100801.<Operation> for CloudWatch alarms, or NeoRun.<Operation>)"),
        ));
    }
    let body = read_body(st, body).await.map_err(|e| AwsError::new(e.status, "ValidationException", e.message))?;
    match service {
        "SageMaker" => cp.call(op, &body, &who).await,
        "NeoRun" => cp.call_neorun(op, &body, &who).await,
        _ => cp.call_cloudwatch(op, &body, &who).await,
    }
}

fn authorized<'s>(
    st: &'s super::AppState,
    caller: Option<Extension<Caller>>,
) -> Result<(String, &'s std::sync::Arc<crate::control::ControlPlane>), AwsError> {
    let Some(Extension(Caller(who))) = caller else {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "the control plane needs authentication: start neorun serve with --access-keys FILE (SigV4, what AWS SDKs send) or --auth-token (a bearer token, what Alertmanager's http_config.authorization sends)",
        ));
    };
    let Some(cp) = &st.control else {
        return Err(AwsError::validation("this server has no control plane"));
    };
    Ok((who, cp))
}

/// `POST /alertmanager`: Alertmanager's webhook receiver.
pub async fn alertmanager(State(st): St, caller: Option<Extension<Caller>>, body: Body) -> Response {
    let r = async {
        let (who, cp) = authorized(&st, caller)?;
        let body = read_body(&st, body).await.map_err(|e| AwsError::new(e.status, "ValidationException", e.message))?;
        cp.alertmanager(&body, &who)
    }
    .await;
    match r {
        Ok(v) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Err(e) => e.into_response(),
    }
}
