//! The routes, driven in process (`tower::ServiceExt::oneshot`) on a small
//! trees model: one tree over two features, `x0 < 0.5` → margin -1, else +1,
//! binary logistic. No process, no socket.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, AppState, HttpSettings};
use crate::infer::{InferSettings, Inference};
use crate::metrics::Metrics;
use crate::models::ModelTable;

fn app(max_batch: usize) -> axum::Router {
    app_with(max_batch, false)
}

fn app_with(max_batch: usize, draining: bool) -> axum::Router {
    let metrics = Arc::new(Metrics::new("AllTraffic"));
    let inference = Inference::new(
        InferSettings { threads: 1, max_queue: 4, max_batch, max_queue_delay: Duration::ZERO },
        metrics.clone(),
    );
    let models = Arc::new(ModelTable::default());
    models.publish(inference.live_model("tiny".into(), crate::testing::tiny_model("3")));
    let metrics_capture = metrics.capture();
    router(Arc::new(AppState {
        models,
        inference,
        metrics,
        settings: HttpSettings {
            max_body: 64 * 1024,
            timeout: Duration::from_secs(10),
            auth_token: None,
            variant: "AllTraffic".into(),
            access_keys: None,
            sign_data_plane: false,
        },
        draining: Arc::new(AtomicBool::new(draining)),
        control: None,
        store_routes: false,
        capture: crate::capture::Capture::start(Default::default(), metrics_capture),
        spare: crate::infer::spare::SparePool::new(1, Vec::new()),
    }))
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (parts.status, parts.headers, to_bytes(body, 1 << 20).await.unwrap().to_vec())
}

fn post(uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

fn close(got: &Value, want: &[f64]) {
    let got: Vec<f64> = got.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

const LOW: f64 = 0.268_941_4; // σ(-1)
const HIGH: f64 = 0.731_058_6; // σ(1)

#[tokio::test]
async fn sagemaker_routes_answer_in_each_format() {
    for max_batch in [1, 64] {
        let app = app(max_batch);
        let (s, _, b) = send(&app, get("/ping")).await;
        assert_eq!((s, json_of(&b)), (StatusCode::OK, json!({"status": "healthy"})));
        let csv = [("content-type", "text/csv")];
        let (s, h, b) = send(&app, post("/invocations", &csv, "0.2,0\n0.9,0\n")).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        assert_eq!(h["x-amzn-invoked-production-variant"], "AllTraffic");
        let doc = json_of(&b);
        assert_eq!(doc["outputs"][0]["data"], json!([0, 1]));
        close(&doc["outputs"][1]["data"], &[HIGH, LOW, LOW, HIGH]);
        // CSV out, on the AWS SDK's path, naming the model
        let (s, _, b) = send(
            &app,
            post(
                "/endpoints/e/invocations",
                &[("content-type", "text/csv"), ("accept", "text/csv"), ("x-amzn-sagemaker-target-model", "tiny")],
                "0.9,0",
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let line = String::from_utf8(b).unwrap();
        let v: Vec<f64> = line.trim().split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0], 1.0);
        assert!((v[2] - HIGH).abs() < 1e-6, "{line}");
        // JSON Lines in and out
        let jl = [("content-type", "application/jsonlines"), ("accept", "application/jsonlines")];
        let (s, _, b) = send(&app, post("/invocations", &jl, "[0.2, 1]\n[0.7, 1]")).await;
        assert_eq!(s, StatusCode::OK);
        let lines: Vec<Value> = String::from_utf8(b).unwrap().lines().map(|l| json_of(l.as_bytes())).collect();
        assert_eq!(lines.len(), 2);
        close(&lines[1]["probabilities"], &[LOW, HIGH]);
    }
}

#[tokio::test]
async fn sagemaker_routes_refuse_bad_requests_with_json_errors() {
    let app = app(64);
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (post("/invocations", &[("content-type", "image/png")], "x"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "image/png"),
        (post("/invocations", &[("content-type", "text/csv")], "  \n"), StatusCode::BAD_REQUEST, "empty body"),
        (post("/invocations", &[("content-type", "text/csv")], "1,2,3"), StatusCode::BAD_REQUEST, "features"),
        (post("/invocations", &[("accept", "image/png")], "[[1, 2]]"), StatusCode::NOT_ACCEPTABLE, "accept"),
        (
            post("/invocations", &[("x-amzn-sagemaker-target-model", "other")], "[[1, 2]]"),
            StatusCode::NOT_FOUND,
            "unknown model `other`; served: tiny",
        ),
        (
            post("/invocations", &[("content-type", "text/csv")], vec![b'1'; 70_000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "65536",
        ),
        (post("/nowhere", &[], ""), StatusCode::NOT_FOUND, "no such route"),
    ];
    for (req, status, needle) in cases {
        let what = format!("{} {:?}", req.uri(), req.headers());
        let (s, h, b) = send(&app, req).await;
        assert_eq!(s, status, "{what}: {}", String::from_utf8_lossy(&b));
        assert_eq!(h["content-type"], "application/json", "{what}");
        let msg = json_of(&b)["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // the framework's own refusals are JSON too
    for (req, status) in [
        (get("/invocations"), StatusCode::METHOD_NOT_ALLOWED),
        (get("/v2/models/%FF%FE/ready"), StatusCode::BAD_REQUEST),
    ] {
        let what = req.uri().to_string();
        let (s, h, b) = send(&app, req).await;
        assert_eq!(s, status, "{what}");
        assert_eq!(h["content-type"], "application/json", "{what}");
        assert!(!json_of(&b)["error"].as_str().unwrap().is_empty(), "{what}");
    }
    // a model name that is not ASCII is an error, never the default model
    let mut req = post("/invocations", &[("content-type", "text/csv")], "0.2,0");
    req.headers_mut().insert("x-amzn-sagemaker-target-model", axum::http::HeaderValue::from_bytes(b"tin\xe9").unwrap());
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&b));
    // bad requests are counted, good ones still answered
    let (_, _, b) = send(&app, get("/metrics")).await;
    let text = String::from_utf8(b).unwrap();
    assert!(text.contains("neorun_errors_total{model=\"tiny\",variant=\"AllTraffic\",class=\"4xx\"} 5"), "{text}");
}

#[tokio::test]
async fn oip_routes_answer_metadata_json_and_binary_tensors() {
    let app = app(64);
    for (uri, want) in [
        ("/v2/health/live", json!({"live": true})),
        ("/v2/health/ready", json!({"ready": true})),
        ("/v2/models/tiny/ready", json!({"name": "tiny", "ready": true})),
        ("/v2/models/tiny/versions/3/ready", json!({"name": "tiny", "ready": true})),
    ] {
        let (s, _, b) = send(&app, get(uri)).await;
        assert_eq!((s, json_of(&b)), (StatusCode::OK, want), "{uri}");
    }
    let (s, _, b) = send(&app, get("/v2/models/tiny/versions/2")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&b));
    let (_, _, b) = send(&app, get("/v2/models/tiny")).await;
    let meta = json_of(&b);
    assert_eq!(meta["inputs"], json!([{"name": "features", "datatype": "FP32", "shape": [-1, 2]}]));
    assert_eq!(meta["outputs"][0], json!({"name": "label", "datatype": "INT64", "shape": [-1]}));
    assert_eq!(meta["versions"], json!(["3"]));

    // JSON tensors, nested data, one output asked for
    let req = json!({"id": "a", "inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 2], "data": [[0.2, 0], [0.9, 0]]}],
                     "outputs": [{"name": "probabilities"}]});
    let (s, _, b) = send(&app, post("/v2/models/tiny/infer", &[], req.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let doc = json_of(&b);
    assert_eq!(doc["id"], "a");
    assert_eq!(doc["model_version"], "3");
    assert_eq!(doc["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(doc["outputs"][0]["shape"], json!([2, 2]));
    close(&doc["outputs"][0]["data"], &[HIGH, LOW, LOW, HIGH]);

    // the binary extension, both ways
    let raw: Vec<u8> = [0.9f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}],
                        "outputs": [{"name": "label", "parameters": {"binary_data": true}}, {"name": "probabilities"}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&raw);
    let n = header.len().to_string();
    let (s, h, b) =
        send(&app, post("/v2/models/tiny/versions/3/infer", &[("inference-header-content-length", &n)], body)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let json_len: usize = h["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let doc = json_of(&b[..json_len]);
    assert_eq!(doc["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_eq!(i64::from_le_bytes(b[json_len..json_len + 8].try_into().unwrap()), 1);
    close(&doc["outputs"][1]["data"], &[LOW, HIGH]);
}

#[tokio::test]
async fn oip_refuses_bad_tensors_without_allocating_them() {
    let app = app(64);
    let input = |shape: Value, data: Value| {
        json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": shape, "data": data}]}).to_string()
    };
    let deep = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": vec![1; 10000], "data": [0.5]}]});
    let cases = vec![
        ("not json".to_string(), "not valid JSON"),
        (json!({"inputs": 3}).to_string(), "\"inputs\""),
        (input(json!([1, 2]), json!([1, 2, 3])), "3 values for shape [1, 2]"),
        // the shape's product overflows: refused, not allocated
        (input(json!([4294967296u64, 4294967296u64]), json!([])), "too large"),
        (input(json!([9223372036854775808u64, 2]), json!([])), "too large"),
        (deep.to_string(), "2 dimensions"),
        (input(json!([1, 3]), json!([1, 2, 3])), "expects shape [N,2]; got shape [1, 3]"),
        (input(json!([1, -2]), json!([1, 2])), "non-negative"),
        (json!({"inputs": [{"name": "features", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]}).to_string(), "FP32"),
        (json!({"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).to_string(), "`features` is missing"),
        (
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}], "outputs": [{"name": "nope"}]})
                .to_string(),
            "unknown output `nope`",
        ),
    ];
    for (body, needle) in cases {
        let (s, _, b) = send(&app, post("/v2/models/tiny/infer", &[], body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{}: {}", &body[..body.len().min(200)], String::from_utf8_lossy(&b));
        let msg = json_of(&b)["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{}: {msg}", &body[..body.len().min(200)]);
    }
    // binary sections that do not add up
    let header = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]})
        .to_string();
    for (extra, len, needle) in [
        (4usize, header.len(), "truncated"),
        (12, header.len(), "belong to no input"),
        (8, header.len() + 100, "beyond"),
    ] {
        let mut body = header.clone().into_bytes();
        body.extend(vec![0u8; extra]);
        let (s, _, b) =
            send(&app, post("/v2/models/tiny/infer", &[("inference-header-content-length", &len.to_string())], body))
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{needle}");
        assert!(String::from_utf8_lossy(&b).contains(needle), "{}", String::from_utf8_lossy(&b));
    }
    let (s, _, _) = send(&app, post("/v2/models/nope/infer", &[], "{}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn while_draining_readiness_fails_and_liveness_holds() {
    let app = app_with(64, true);
    for (uri, status) in [
        ("/ping", StatusCode::SERVICE_UNAVAILABLE),
        ("/v2/health/ready", StatusCode::SERVICE_UNAVAILABLE),
        ("/v2/health/live", StatusCode::OK),
    ] {
        let (s, h, _) = send(&app, get(uri)).await;
        assert_eq!(s, status, "{uri}");
        if s == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(h["retry-after"], "1", "{uri}");
        }
    }
    let (s, _, b) = send(&app, post("/invocations", &[("content-type", "text/csv")], "0.2,0")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&b).contains("shutting down"));
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    assert_eq!(super::bearer("Bearer s3cret"), Some("s3cret"));
    assert_eq!(super::bearer("bearer s3cret"), Some("s3cret"));
    assert_eq!(super::bearer("BEARER  s3cret"), Some("s3cret"));
    assert_eq!(super::bearer("Basic s3cret"), None);
    assert_eq!(super::bearer("Bearers3cret"), None);
}
