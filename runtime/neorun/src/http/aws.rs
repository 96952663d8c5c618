//! `POST /` with `X-Amz-Target: SageMaker.<Operation>`: AWS's JSON 1.1
//! protocol, as boto3's `sagemaker` client and `aws sagemaker` send it.
//! The caller was authenticated by the guard (SigV4 or the bearer token).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{read_body, Caller, St};
use crate::control::AwsError;

pub async fn control(State(st): St, caller: Option<Extension<Caller>>, headers: HeaderMap, body: Body) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut r = match call(&st, caller, &headers, body).await {
        Ok(v) => {
            let mut r = (StatusCode::OK, v.to_string()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
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
    let Some(Extension(Caller(who))) = caller else {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "the control plane needs authentication: start neorun serve with --access-keys FILE (SigV4, what AWS SDKs send) or --auth-token",
        ));
    };
    let Some(cp) = &st.control else {
        return Err(AwsError::validation("this server has no control plane"));
    };
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "no X-Amz-Target header (expected SageMaker.<Operation>)",
        )
    })?;
    let op = target.strip_prefix("SageMaker.").ok_or_else(|| {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("X-Amz-Target {target:?} is not a SageMaker operation (expected SageMaker.<Operation>)"),
        )
    })?;
    let body = read_body(st, body).await.map_err(|e| AwsError::new(e.status, "ValidationException", e.message))?;
    cp.call(op, &body, &who).await
}
