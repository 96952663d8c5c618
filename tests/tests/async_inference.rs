//! Asynchronous inference on `neorun serve`, driven by stock boto3
//! (`invoke_endpoint_async`) with inputs and outputs on an S3-compatible
//! store (moto's server, an emulator): 200 requests with the server
//! `kill -9`'d in the middle (each announced on SNS, read back through
//! SQS), requests refused at once by name, one that fails while running,
//! notifications whose SNS signatures moto checks and webhooks that fail,
//! and a 1 GB payload under a memory bound.

use std::path::Path;
use std::process::Command;

use neoc_e2e::*;
use serde_json::Value;

const CREDS: &str = "[default]\naws_access_key_id = AKIDNEORUNTEST\naws_secret_access_key = neorun/test+secret\n";

/// `xgb.neo`, `sample.csv` and `creds` in a scratch directory, and the
/// reference probabilities of the sample rows.
fn work() -> (tempfile::TempDir, Vec<String>, Vec<f64>) {
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    std::fs::rename(b, d.join("xgb.neo")).unwrap();
    std::fs::write(d.join("creds"), CREDS).unwrap();
    let sample = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    std::fs::write(d.join("sample.csv"), &sample).unwrap();
    (dir, sample.lines().map(String::from).collect(), expected("fraud-xgb"))
}

fn py(mode: &str, base: &str, d: &Path, s3: &S3Server, extra: &[&str]) -> Value {
    py_env(mode, base, d, s3, extra, &[])
}

fn py_env(mode: &str, base: &str, d: &Path, s3: &S3Server, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let out = Command::new(venv_python())
        .args([root().join("tests/serve/async_inference.py").to_str().unwrap(), mode, base, d.to_str().unwrap()])
        .arg(&s3.endpoint)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "async_inference.py {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn server(d: &Path, s3: &S3Server) -> Served {
    let args = ["--state-dir", "state", "--access-keys", "creds", "--async-input-dir", "inbox"];
    serve_with_env(&bin("neorun"), d, &args, &s3.env())
}

fn store() -> S3Server {
    let s3 = S3Server::start();
    s3.py("s3.create_bucket(Bucket='inputs'); s3.create_bucket(Bucket='outputs')", &[]);
    s3
}

#[test]
fn two_hundred_requests_survive_kill_9_and_complete_once() {
    let (dir, sample, want) = work();
    let d = dir.path();
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    let s3 = store();
    let mut s = server(d, &s3);
    py("setup", &s.base, d, &s3, &["notify"]);
    let submitted = py("submit", &s.base, d, &s3, &["200"]);
    // kill -9 with requests queued and running; the queue is on disk
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let queued = std::fs::read_dir(d.join("state/async/queue")).unwrap().count();
    std::fs::write(d.join("submitted.json"), submitted.to_string()).unwrap();
    let t0 = std::time::Instant::now();
    let s = server(d, &s3);
    let got = py("collect", &s.base, d, &s3, &[d.join("submitted.json").to_str().unwrap()]);
    eprintln!(
        "{queued} requests left in the queue at kill -9, all answered {:.1} s after the restart",
        t0.elapsed().as_secs_f64()
    );
    let jobs = submitted["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 200);
    for j in jobs {
        let i = j["i"].as_u64().unwrap() as usize;
        let id = j["InferenceId"].as_str().unwrap();
        assert_eq!(id, format!("req-{i}"));
        let loc = j["OutputLocation"].as_str().unwrap();
        assert!(loc.starts_with("s3://outputs/async/") && loc.ends_with(".out"), "{loc}");
        assert!(j["FailureLocation"].as_str().unwrap().starts_with("s3://outputs/async-failures/"));
        let text = got["outputs"][id].as_str().unwrap_or_else(|| panic!("no output for {id}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{id}: {text}");
        for (k, line) in lines.iter().enumerate() {
            let row = (i + k) % sample.len();
            let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
            assert_close(&v[1..], &want[2 * row..2 * row + 2], 1e-6);
        }
    }
    // one output object per request, nothing else under the prefix
    assert_eq!(got["keys"].as_array().unwrap().len(), 200, "{}", got["keys"]);
    // each request's model run completed once over both runs: journaled
    // with its records; a request found answered after the restart (killed
    // between its output and its queue record) is journaled as "already"
    let journal = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
    for i in 0..200 {
        let entries: Vec<&str> = journal
            .lines()
            .filter(|l| l.contains("\"op\":\"AsyncInferenceCompleted\"") && l.contains(&format!("\"req-{i}\"")))
            .collect();
        let runs = entries.iter().filter(|l| l.contains("\"records\"")).count();
        assert!(runs <= 1 && !entries.is_empty(), "req-{i}: {entries:?}");
    }
    assert!(!journal.contains("AsyncInferenceFailed"), "{journal}");
    assert_eq!(std::fs::read_dir(d.join("state/async/queue")).unwrap().count(), 0);
    // and each was announced on the success topic (SNS → SQS), with
    // SageMaker's message; a crash between a delivery and its outbox
    // record's removal may send one twice (at least once, as SNS)
    let notes = py("notes", &s.base, d, &s3, &["200"]);
    let notes = notes["notes"].as_array().unwrap();
    for j in jobs {
        let (i, id) = (j["i"].as_u64().unwrap(), j["InferenceId"].as_str().unwrap());
        let mine: Vec<&Value> = notes.iter().filter(|n| n["inferenceId"] == id).collect();
        assert!(!mine.is_empty(), "no notification for {id}");
        for n in mine {
            assert_eq!(n["eventName"], "InferenceResult");
            assert_eq!(n["invocationStatus"], "Completed", "{n}");
            assert_eq!(n["responseParameters"]["outputLocation"], j["OutputLocation"], "{n}");
            assert_eq!(n["responseParameters"]["contentType"], "text/csv", "{n}");
            assert_eq!(n["requestParameters"]["endpointName"], "scorer");
            assert_eq!(n["requestParameters"]["inputLocation"], format!("s3://inputs/async/{i}.csv"));
        }
    }
    let twice = notes.len() - 200;
    eprintln!("{} notifications for 200 requests ({twice} sent again after the kill)", notes.len());
    // the bound: deliveries in flight at the kill (8 at once) and requests
    // between their output and their queue record's removal (2 at once)
    assert!(twice <= 10, "{twice} notifications sent twice");
    wait_until(|| pending_notifications(d) == 0, "the outbox to empty");
}

/// Notifications written and not yet delivered.
fn pending_notifications(d: &Path) -> usize {
    std::fs::read_dir(d.join("state/async/notify"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count()
}

fn wait_until(mut ok: impl FnMut() -> bool, what: &str) {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed().as_secs() < 30, "waited 30 s for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn notifications_reach_sns_signed_and_webhooks_are_retried_or_set_aside() {
    let (dir, sample, want) = work();
    let d = dir.path();
    let s3 = S3Server::start();
    // an IAM user; from then on moto checks every signature (neorun's SNS
    // Publish included) with botocore's SigV4 against that user's secret
    let keys = py("auth-setup", "http://unused", d, &s3, &[]);
    assert_eq!(keys["wrong_secret"][0], "SignatureDoesNotMatch", "moto does not check signatures: {keys}");
    let (key_id, secret) = (keys["key_id"].as_str().unwrap(), keys["secret"].as_str().unwrap());
    let mut env = s3.env();
    env.retain(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"));
    env.push(("AWS_ACCESS_KEY_ID", key_id.to_string()));
    env.push(("AWS_SECRET_ACCESS_KEY", secret.to_string()));
    env.push(("NEORUN_NOTIFY_GIVE_UP_SECONDS", "2".to_string()));
    let args = ["--state-dir", "state", "--access-keys", "creds"];
    let s = serve_with_env(&bin("neorun"), d, &args, &env);
    let store = [("STORE_KEY_ID", key_id), ("STORE_SECRET", secret)];
    let r = py_env("notify", &s.base, d, &s3, &[], &store);
    // bad configurations are refused by name
    assert_eq!(r["bad_topic"][0], "ValidationException", "{r}");
    assert!(r["bad_topic"][1].as_str().unwrap().contains("NotificationConfig.SuccessTopic"), "{r}");
    assert!(r["bad_include"][1].as_str().unwrap().contains("EVERYWHERE"), "{r}");
    // success: on SNS (signed, accepted by moto), with the answer included
    let sns = r["sns"].as_array().unwrap();
    assert_eq!(sns.len(), 1, "{r}");
    let n = &sns[0];
    assert_eq!(n["inferenceId"], "good-1");
    assert_eq!(n["invocationStatus"], "Completed");
    assert_eq!(n["eventSource"], "aws:sagemaker");
    assert_eq!(n["awsRegion"], "us-east-1");
    assert_eq!(n["requestParameters"]["customAttributes"], "trace=7");
    assert_eq!(n["requestParameters"]["contentType"], "text/csv");
    assert_eq!(n["responseParameters"]["outputLocation"], r["good"]["OutputLocation"]);
    let included = n["responseParameters"]["responseBody"]["content"].as_str().unwrap();
    assert_eq!(included, r["output"].as_str().unwrap());
    for (k, line) in included.lines().enumerate() {
        let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        assert_close(&v[1..], &want[2 * k..2 * k + 2], 1e-6);
    }
    assert_eq!(included.lines().count(), 3.min(sample.len()));
    // an input without a content type is read as its name says (JSON Lines)
    let jl: Vec<Value> = r["jsonl"].as_str().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(jl.len(), 2, "{r}");
    for (k, v) in jl.iter().enumerate() {
        let p: Vec<f64> = v["probabilities"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_close(&p, &want[2 * k..2 * k + 2], 1e-6);
    }
    // failure: to the webhook, which refused the first try; the second came
    let hook = r["hook"].as_array().unwrap();
    assert_eq!(hook.len(), 1, "{r}");
    assert_eq!(hook[0]["path"], "/flaky");
    assert_eq!(hook[0]["attempt"], 2, "{r}");
    assert_eq!(hook[0]["type"], "application/json");
    let m = &hook[0]["message"];
    assert_eq!(m["inferenceId"], "bad-1");
    assert_eq!(m["invocationStatus"], "Failed");
    assert!(m["failureReason"].as_str().unwrap().contains("line 2"), "{m}");
    assert_eq!(m["responseParameters"]["failureLocation"], r["bad"]["FailureLocation"]);
    // a webhook that always refuses: tried, then set aside and journaled
    assert!(r["tries_after"]["/gone"].as_u64().unwrap() >= 2, "{r}");
    wait_until(
        || std::fs::read_dir(d.join("state/async/notify/abandoned")).unwrap().count() == 1,
        "the set-aside notification",
    );
    let journal = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
    let abandoned: Vec<&str> = journal.lines().filter(|l| l.contains("AsyncNotificationAbandoned")).collect();
    assert_eq!(abandoned.len(), 1, "{journal}");
    assert!(abandoned[0].contains("bad-2") && abandoned[0].contains("404"), "{}", abandoned[0]);
    wait_until(|| pending_notifications(d) == 0, "the outbox to empty");
}

#[test]
fn bad_async_requests_are_refused_by_name_and_failures_say_why() {
    let (dir, _, _) = work();
    let d = dir.path();
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    let s3 = store();
    let s = server(d, &s3);
    py("setup", &s.base, d, &s3, &[]);
    py("submit", &s.base, d, &s3, &["1"]);
    let r = py("bad", &s.base, d, &s3, &[]);
    let msg = |k: &str| r[k][1].as_str().unwrap_or_default().to_string();
    assert_eq!(r["missing"][0], "ValidationError", "{}", r["missing"]);
    assert!(msg("missing").contains("s3://inputs/async/nope.csv: no such object"), "{}", r["missing"]);
    assert!(msg("no_bucket").contains("NoSuchBucket"), "{}", r["no_bucket"]);
    assert!(msg("outside").contains("not a file inside the allowed directory"), "{}", r["outside"]);
    assert!(msg("no_endpoint").contains("nope"), "{}", r["no_endpoint"]);
    assert_eq!(r["ttl"][0], 400, "{}", r["ttl"]);
    assert!(r["ttl"][1].as_str().unwrap().contains("RequestTTLSeconds"), "{}", r["ttl"]);
    let failure: Value = serde_json::from_str(r["failure"].as_str().expect("a failure object")).unwrap();
    let why = failure["errorMessage"].as_str().unwrap();
    assert!(why.contains("line 2") && why.contains("has 3 values"), "{why}");
    assert!(r["failure_location"].as_str().unwrap().ends_with("-error.out"));
    // the request whose failure could not be written is still queued, not lost
    let queued: Vec<Value> = std::fs::read_dir(d.join("state/async/queue"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["inference_id"], "unrecordable");
    let journal = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
    assert!(!journal.contains("\"unrecordable\""), "it was journaled as if done: {journal}");
}

#[test]
fn a_1gb_payload_is_streamed_under_a_memory_bound() {
    let (dir, sample, _) = work();
    let d = dir.path();
    std::fs::create_dir_all(d.join("inbox")).unwrap();
    // ~1 GB of CSV: the 8 sample rows over and over
    let block: String = (0..4096).map(|i| format!("{}\n", sample[i % sample.len()])).collect();
    let reps = (1usize << 30).div_ceil(block.len());
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("inbox/big.csv")).unwrap());
        for _ in 0..reps {
            f.write_all(block.as_bytes()).unwrap();
        }
    }
    let size = std::fs::metadata(d.join("inbox/big.csv")).unwrap().len();
    assert!(size >= 1 << 30);
    let s3 = store();
    let s = server(d, &s3);
    py("setup", &s.base, d, &s3, &[]);
    // with one second to run, it times out, and the failure object says so
    let input = d.join("inbox/big.csv");
    let t = py("timeout", &s.base, d, &s3, &[input.to_str().unwrap()]);
    let failure: Value = serde_json::from_str(t["failure"].as_str().expect("a failure object")).unwrap();
    assert!(failure["errorMessage"].as_str().unwrap().contains("InvocationTimeoutSeconds (1 s)"), "{failure}");
    assert_eq!(t["output_exists"], 0, "a timed-out request leaves no output");
    let before = rss_kb(s.child.id());
    let pid = s.child.id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kb(pid));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            peak
        })
    };
    let r = py("big", &s.base, d, &s3, &[input.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    assert_eq!(r["lines"].as_u64().unwrap(), (reps * 4096) as u64, "{r}");
    // the bound: the server before the job plus 256 MiB (the payload is 1 GiB)
    assert!(peak < before + 256 * 1024, "RSS peaked at {peak} kB (before the job: {before} kB)");
    eprintln!(
        "1 GiB payload ({} rows) in {:.1} s; server RSS {} MB before, {} MB peak",
        reps * 4096,
        r["seconds"].as_f64().unwrap(),
        before / 1024,
        peak / 1024
    );
}
