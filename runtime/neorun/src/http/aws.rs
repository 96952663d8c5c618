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

fn authorized(
    st: &super::AppState,
    caller: Option<Extension<Caller>>,
) -> Result<(String, &std::sync::Arc<crate::control::ControlPlane>), AwsError> {
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

/// `POST /service/GraniteServiceVersion20100801/operation/<Operation>`:
/// CloudWatch's smithy-rpc-v2-cbor protocol, the one boto3's `cloudwatch`
/// client (and the AWS CLI) send by default: the body is CBOR, answered in
/// CBOR, timestamps as CBOR tag 1 (epoch seconds).
pub async fn cbor(
    State(st): St,
    caller: Option<Extension<Caller>>,
    axum::extract::Path((service, op)): axum::extract::Path<(String, String)>,
    body: Body,
) -> Response {
    let r = async {
        let (who, cp) = authorized(&st, caller)?;
        if service != "GraniteServiceVersion20100801" {
            return Err(AwsError::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("service {service:?} is not served here (CloudWatch is GraniteServiceVersion20100801)"),
            ));
        }
        let body = read_body(&st, body).await.map_err(|e| AwsError::new(e.status, "ValidationException", e.message))?;
        let json = if body.is_empty() {
            serde_json::json!({})
        } else {
            let v: ciborium::Value = ciborium::from_reader(&body[..]).map_err(|e| {
                AwsError::new(StatusCode::BAD_REQUEST, "SerializationException", format!("the body is not CBOR: {e}"))
            })?;
            cbor_to_json(v).map_err(|e| AwsError::new(StatusCode::BAD_REQUEST, "SerializationException", e))?
        };
        cp.call_cloudwatch(&op, json.to_string().as_bytes(), &who).await
    }
    .await;
    let (status, v) = match r {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (e.status, serde_json::json!({ "__type": e.code, "message": e.message })),
    };
    let mut bytes = Vec::new();
    if let Err(e) = ciborium::into_writer(&json_to_cbor(None, &v), &mut bytes) {
        return AwsError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", format!("encoding CBOR: {e}"))
            .into_response();
    }
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cbor"));
    h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    if let Some(code) = v.get("__type").and_then(|c| c.as_str()).and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("x-amzn-ErrorType", code);
    }
    resp
}

/// CBOR as JSON: maps with text keys, tag 1 (a time) as its number.
fn cbor_to_json(v: ciborium::Value) -> Result<serde_json::Value, String> {
    use ciborium::Value as C;
    use serde_json::Value as J;
    Ok(match v {
        C::Null => J::Null,
        C::Bool(b) => J::Bool(b),
        C::Integer(i) => {
            let n: i128 = i.into();
            J::Number(i64::try_from(n).map_err(|_| format!("integer {n} out of range"))?.into())
        }
        C::Float(f) => serde_json::Number::from_f64(f).map(J::Number).ok_or("a float that is not finite")?,
        C::Text(s) => J::String(s),
        C::Tag(1, inner) => cbor_to_json(*inner)?,
        C::Tag(t, _) => return Err(format!("CBOR tag {t} is not understood here")),
        C::Array(a) => J::Array(a.into_iter().map(cbor_to_json).collect::<Result<_, _>>()?),
        C::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let C::Text(k) = k else { return Err("a map key that is not text".into()) };
                out.insert(k, cbor_to_json(v)?);
            }
            J::Object(out)
        }
        C::Bytes(_) => return Err("byte strings are not expected here".into()),
        _ => return Err("a CBOR value not understood here".into()),
    })
}

/// JSON as CBOR; the members CloudWatch's model types as timestamps are
/// tagged (tag 1, epoch seconds), as botocore expects them.
fn json_to_cbor(key: Option<&str>, v: &serde_json::Value) -> ciborium::Value {
    use ciborium::Value as C;
    use serde_json::Value as J;
    let timestamp = key.is_some_and(|k| k.ends_with("Timestamp") || k == "StartDate" || k == "EndDate");
    match v {
        J::Null => C::Null,
        J::Bool(b) => C::Bool(*b),
        J::Number(n) if timestamp => C::Tag(1, Box::new(C::Float(n.as_f64().unwrap_or(0.0)))),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => C::Integer(i.into()),
            (None, Some(f)) => C::Float(f),
            _ => C::Null,
        },
        J::String(s) => C::Text(s.clone()),
        J::Array(a) => C::Array(a.iter().map(|x| json_to_cbor(None, x)).collect()),
        J::Object(m) => C::Map(m.iter().map(|(k, x)| (C::Text(k.clone()), json_to_cbor(Some(k), x))).collect()),
    }
}
