//! Completion notifications of asynchronous inference, as SageMaker sends
//! them: when a request completes or fails, the message SageMaker posts
//! (`eventName` `InferenceResult`, `invocationStatus`, `requestParameters`,
//! `responseParameters`, `inferenceId`, …) goes to the endpoint
//! configuration's `SuccessTopic` or `ErrorTopic`: an SNS topic (`Publish`,
//! signed with SigV4, to the SNS endpoint the AWS environment names), or
//! an `http(s)://` webhook that is POSTed the same JSON.
//!
//! Delivery is at least once. A notification is written to an outbox on
//! disk (`STATE/async/notify/ID.json`, fsync and rename) before its
//! request leaves the queue, so a crash or `kill -9` loses none; the
//! sender removes it only after the topic or webhook accepted it (2xx). A
//! failed delivery is tried again with a backoff (1 s doubling to 5 min)
//! until `NEORUN_NOTIFY_GIVE_UP_SECONDS` (a day) after it was written; then
//! it is moved to `notify/abandoned/` and journaled
//! (`AsyncNotificationAbandoned`) — kept, never silently dropped. A crash
//! between a delivery and its removal sends it again, as SNS itself may.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::async_inference::AsyncJob;
use super::ControlPlane;
use crate::awsenv;

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `arn:aws:sns:REGION:ACCOUNT:NAME`
    Sns { arn: String, region: String },
    /// An `http://` or `https://` URL.
    Webhook(String),
}

impl Target {
    pub fn parse(t: &str) -> Result<Target, String> {
        if let Some(rest) = t.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.split(':').collect();
            let name_ok =
                |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            return match parts[..] {
                [partition, "sns", region, account, name]
                    if partition.starts_with("aws")
                        && !region.is_empty()
                        && account.len() == 12
                        && account.bytes().all(|b| b.is_ascii_digit())
                        && name_ok(name) =>
                {
                    Ok(Target::Sns { arn: t.to_string(), region: region.to_string() })
                }
                _ => Err(format!("{t:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")),
            };
        }
        if t.starts_with("http://") || t.starts_with("https://") {
            let u = reqwest::Url::parse(t).map_err(|e| format!("{t:?} is not a URL: {e}"))?;
            if u.host_str().is_none_or(str::is_empty) {
                return Err(format!("{t:?}: a webhook URL needs a host"));
            }
            return Ok(Target::Webhook(t.to_string()));
        }
        Err(format!(
            "{t:?}: give an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME) or a webhook URL (https://HOST/PATH)"
        ))
    }
}

/// The largest answer a notification carries (`IncludeInferenceResponseIn`),
/// as SageMaker bounds it.
pub const MAX_INCLUDED: u64 = 128 * 1024;

/// How a request ended, for its message.
pub enum Outcome<'a> {
    Completed { content_type: &'a str, output: String, body: Option<Vec<u8>> },
    Failed { reason: &'a str, failure: String, body: Option<Vec<u8>> },
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn response_body(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!({"content": s, "encoding": "UTF-8"}),
        Err(_) => {
            use base64::Engine;
            json!({"content": base64::engine::general_purpose::STANDARD.encode(b), "encoding": "BASE64"})
        }
    }
}

/// SageMaker's notification message for a request that ended.
pub fn message(job: &AsyncJob, request_type: &str, outcome: &Outcome<'_>, region: &str, now: SystemTime) -> String {
    let received = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(job.created.max(0.0));
    let mut m = json!({
        "awsRegion": region,
        "eventTime": iso(now),
        "receivedTime": iso(received),
        "requestParameters": {
            "contentType": request_type,
            "endpointName": job.endpoint,
            "inputLocation": job.input,
        },
        "inferenceId": job.inference_id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    });
    if let Some(a) = &job.custom_attributes {
        m["requestParameters"]["customAttributes"] = json!(a);
    }
    match outcome {
        Outcome::Completed { content_type, output, body } => {
            m["invocationStatus"] = json!("Completed");
            m["responseParameters"] = json!({"contentType": content_type, "outputLocation": output});
            if let Some(b) = body {
                m["responseParameters"]["responseBody"] = response_body(b);
            }
        }
        Outcome::Failed { reason, failure, body } => {
            m["invocationStatus"] = json!("Failed");
            m["failureReason"] = json!(reason);
            m["responseParameters"] = json!({"contentType": "application/json", "failureLocation": failure});
            if let Some(b) = body {
                m["responseParameters"]["responseBody"] = response_body(b);
            }
        }
    }
    m.to_string()
}

/// A notification not yet accepted by its target.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct Pending {
    /// The queue id of its request (one notification per request).
    pub id: String,
    pub inference_id: String,
    pub endpoint: String,
    pub target: String,
    pub message: String,
    /// When it was written (seconds since the epoch).
    pub created: f64,
}

/// Why a delivery did not go through.
struct Refused(String);

/// The outbox on disk and its sender.
pub struct Outbox {
    dir: PathBuf,
    wake: tokio::sync::Notify,
    /// id → (not before, last wait, attempts)
    backoff: Mutex<HashMap<String, (Instant, Duration, u32)>>,
    in_flight: Mutex<HashSet<String>>,
    give_up: Duration,
}

/// At most this many deliveries at once.
const PARALLEL: usize = 8;
const MAX_WAIT: Duration = Duration::from_secs(300);

impl Outbox {
    pub fn open(state: &Path) -> anyhow::Result<Arc<Outbox>> {
        let dir = state.join("async/notify");
        std::fs::create_dir_all(dir.join("abandoned")).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let secs = std::env::var("NEORUN_NOTIFY_GIVE_UP_SECONDS").ok().and_then(|s| s.parse::<u64>().ok());
        Ok(Arc::new(Outbox {
            dir,
            wake: tokio::sync::Notify::new(),
            backoff: Mutex::default(),
            in_flight: Mutex::default(),
            give_up: Duration::from_secs(secs.unwrap_or(86_400)),
        }))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a notification durably (before its request leaves the queue).
    pub fn put(&self, p: &Pending) -> Result<(), String> {
        let fin = self.path(&p.id);
        let bytes = serde_json::to_vec(p).map_err(|e| e.to_string())?;
        super::store::write_atomically(&fin, &bytes).map_err(|e| format!("the notification: {e:#}"))?;
        self.wake.notify_one();
        Ok(())
    }

    fn pending(&self) -> Vec<Pending> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let p = e.path();
            match std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Pending>(&b).ok()) {
                Some(n) => out.push(n),
                None => {
                    tracing::error!(file = %p.display(), "a notification record that does not parse: set aside as .bad");
                    let _ = std::fs::rename(&p, p.with_extension("bad"));
                }
            }
        }
        out.sort_by(|a, b| a.created.total_cmp(&b.created));
        out
    }

    /// Sends what is pending, for as long as the server runs.
    pub async fn run(self: Arc<Self>, cp: Arc<ControlPlane>) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("neorun/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("no HTTP client for notifications: {e}; they stay in the outbox");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        loop {
            let me = self.clone();
            let pending = tokio::task::spawn_blocking(move || me.pending()).await.unwrap_or_default();
            for p in pending {
                let due = self
                    .backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&p.id)
                    .is_none_or(|b| b.0 <= Instant::now());
                if !due || !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(p.id.clone()) {
                    continue;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (me, client, cp) = (self.clone(), client.clone(), cp.clone());
                tokio::spawn(async move {
                    let r = deliver(&client, &p).await;
                    me.settle(&cp, &p, r);
                    drop(slot);
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn settle(&self, cp: &ControlPlane, p: &Pending, r: Result<(), Refused>) {
        match r {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(self.path(&p.id)) {
                    tracing::error!(id = %p.id, "removing a delivered notification: {e}");
                }
                self.backoff.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.id);
            }
            Err(Refused(why)) => {
                let age = super::now() - p.created;
                if age > self.give_up.as_secs_f64() {
                    let to = self.dir.join("abandoned").join(format!("{}.json", p.id));
                    if let Err(e) = std::fs::rename(self.path(&p.id), &to) {
                        tracing::error!(id = %p.id, "setting an undeliverable notification aside: {e}");
                    }
                    cp.journal(
                        "neorun",
                        "AsyncNotificationAbandoned",
                        &p.endpoint,
                        json!({"InferenceId": p.inference_id, "id": p.id, "target": p.target, "reason": why, "kept": to.display().to_string()}),
                    );
                    self.backoff.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.id);
                } else {
                    let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                    let (wait, n) =
                        b.get(&p.id).map_or((Duration::from_secs(1), 1), |(_, w, n)| ((*w * 2).min(MAX_WAIT), n + 1));
                    b.insert(p.id.clone(), (Instant::now() + wait, wait, n));
                    tracing::warn!(id = %p.id, target = %p.target, attempt = n, "notification not delivered: {why}; trying again in {wait:?}");
                }
            }
        }
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.id);
    }
}

/// The text of an error answer, shortened, for the log.
fn said(status: reqwest::StatusCode, body: &str) -> String {
    // SNS answers XML: <Code>…</Code><Message>…</Message>
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{status}: {c}: {m}"),
        _ => format!("{status}: {}", body.chars().take(300).collect::<String>()),
    }
}

async fn deliver(client: &reqwest::Client, p: &Pending) -> Result<(), Refused> {
    let target = Target::parse(&p.target).map_err(Refused)?;
    let req = match &target {
        Target::Webhook(url) => client
            .post(url)
            .header("content-type", "application/json")
            .header("x-neorun-event", "InferenceResult")
            .body(p.message.clone()),
        Target::Sns { arn, region } => {
            let files = awsenv::shared_files();
            let creds = awsenv::credentials(&files)
                .ok_or_else(|| Refused("no AWS credentials to sign the SNS Publish with (AWS_ACCESS_KEY_ID, or a profile in ~/.aws/credentials)".into()))?;
            let endpoint =
                awsenv::endpoint("SNS", &files).unwrap_or_else(|| format!("https://sns.{region}.amazonaws.com"));
            let url = reqwest::Url::parse(&endpoint).map_err(|e| Refused(format!("SNS endpoint {endpoint:?}: {e}")))?;
            let host = match (url.host_str(), url.port()) {
                (Some(h), Some(port)) => format!("{h}:{port}"),
                (Some(h), None) => h.to_string(),
                (None, _) => return Err(Refused(format!("SNS endpoint {endpoint:?} has no host"))),
            };
            let enc = |s: &str| crate::sigv4::uri_encode(s, false);
            let body = format!("Action=Publish&Message={}&TopicArn={}&Version=2010-03-31", enc(&p.message), enc(arn));
            let mut h = HeaderMap::new();
            let bad = |e: axum::http::header::InvalidHeaderValue| Refused(e.to_string());
            h.insert("host", HeaderValue::from_str(&host).map_err(bad)?);
            h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
            crate::sigv4::sign(&creds, (region, "sns"), "POST", url.path(), &mut h, body.as_bytes(), SystemTime::now())
                .map_err(|e| Refused(format!("signing the SNS Publish: {e}")))?;
            let mut r = client.post(url).body(body);
            for (k, v) in &h {
                r = r.header(k.as_str(), v.as_bytes());
            }
            r
        }
    };
    let resp = req.send().await.map_err(|e| Refused(format!("{}: {e}", p.target)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    Err(Refused(format!("{} answered {}", p.target, said(status, &text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_sns_arns_or_webhooks_and_nothing_else() {
        assert_eq!(
            Target::parse("arn:aws:sns:eu-west-1:123456789012:done").unwrap(),
            Target::Sns { arn: "arn:aws:sns:eu-west-1:123456789012:done".into(), region: "eu-west-1".into() }
        );
        assert!(matches!(Target::parse("https://hooks.example.com/x?t=1"), Ok(Target::Webhook(_))));
        for (bad, says) in [
            ("arn:aws:sqs:eu-west-1:123456789012:q", "not an SNS topic ARN"),
            ("arn:aws:sns:eu-west-1:1234:done", "not an SNS topic ARN"),
            ("arn:aws:sns:eu-west-1:123456789012:a/b", "not an SNS topic ARN"),
            ("done-topic", "give an SNS topic ARN"),
            ("ftp://x/y", "give an SNS topic ARN"),
            ("http://", "URL"),
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    fn job() -> AsyncJob {
        serde_json::from_value(json!({
            "id": "q1", "inference_id": "inf-1", "endpoint": "scorer", "input": "s3://in/x.csv",
            "content_type": "text/csv", "accept": null, "custom_attributes": "a=b", "created": 1_700_000_000.5,
            "deadline": 1_700_021_600.5, "ttl": 21600, "timeout": 900, "output_dir": "s3://out/a",
            "output_name": "q1.out", "failure_dir": "s3://out/f", "failure_name": "q1-error.out"
        }))
        .unwrap()
    }

    #[test]
    fn messages_have_sagemakers_fields() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_003);
        let done = Outcome::Completed {
            content_type: "text/csv",
            output: "s3://out/a/q1.out".into(),
            body: Some(b"0.1,0.9\n".to_vec()),
        };
        let m: Value = serde_json::from_str(&message(&job(), "text/csv", &done, "eu-west-1", now)).unwrap();
        assert_eq!(m["eventName"], "InferenceResult");
        assert_eq!(m["eventSource"], "aws:sagemaker");
        assert_eq!(m["invocationStatus"], "Completed");
        assert_eq!(m["inferenceId"], "inf-1");
        assert_eq!(m["awsRegion"], "eu-west-1");
        assert_eq!(m["receivedTime"], "2023-11-14T22:13:20.500Z");
        assert_eq!(m["eventTime"], "2023-11-14T22:13:23.000Z");
        assert_eq!(m["requestParameters"]["endpointName"], "scorer");
        assert_eq!(m["requestParameters"]["inputLocation"], "s3://in/x.csv");
        assert_eq!(m["responseParameters"]["outputLocation"], "s3://out/a/q1.out");
        assert_eq!(m["responseParameters"]["responseBody"]["content"], "0.1,0.9\n");
        let failed =
            Outcome::Failed { reason: "line 2: has 3 values", failure: "s3://out/f/q1-error.out".into(), body: None };
        let m: Value = serde_json::from_str(&message(&job(), "text/csv", &failed, "us-east-1", now)).unwrap();
        assert_eq!(m["invocationStatus"], "Failed");
        assert_eq!(m["failureReason"], "line 2: has 3 values");
        assert_eq!(m["responseParameters"]["failureLocation"], "s3://out/f/q1-error.out");
        assert!(m["responseParameters"].get("responseBody").is_none());
    }

    #[test]
    fn error_answers_are_shortened_to_their_code_and_message() {
        let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>NotFound</Code><Message>Topic does not exist</Message></Error></ErrorResponse>";
        assert_eq!(said(reqwest::StatusCode::NOT_FOUND, xml), "404 Not Found: NotFound: Topic does not exist");
        assert!(said(reqwest::StatusCode::BAD_GATEWAY, &"x".repeat(1000)).len() < 330);
    }
}
