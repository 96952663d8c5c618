//! `neorun endpoint …` and `neorun journal`: the control plane from the
//! command line, for machines without the AWS tools. They send what boto3
//! sends (`POST /`, `X-Amz-Target`, JSON) with the server's bearer token.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::cli::{EndpointArgs, EndpointCommand, JournalArgs, ServerArgs};
use crate::control::store::journal_matches;
use crate::exit::Failure;

/// One operation; the server's error (`__type`, `message`) becomes ours.
fn call(server: &ServerArgs, target: &str, body: &Value) -> anyhow::Result<Value> {
    let url = format!("{}/", server.url.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let mut req = agent.post(&url).set("X-Amz-Target", target).set("Content-Type", "application/x-amz-json-1.1");
    if let Some(t) = &server.auth_token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.send_string(&body.to_string()) {
        Ok(r) => r.into_json().with_context(|| format!("{url}: the answer is not JSON")),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(json!({ "message": text }));
            let kind = v["__type"].as_str().or(v["error"].as_str()).unwrap_or("");
            let msg = v["message"].as_str().unwrap_or(&text);
            bail!("{target}: {code} {kind}: {msg}")
        }
        Err(e) => Err(anyhow!("{url}: {e} (is neorun serve running there? --url / NEORUN_URL)")),
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn describe(server: &ServerArgs, name: &str) -> anyhow::Result<Value> {
    call(server, "SageMaker.DescribeEndpoint", &json!({ "EndpointName": name }))
}

/// A line for each change of what DescribeEndpoint says, until the
/// endpoint is neither Creating nor Updating.
fn wait(server: &ServerArgs, name: &str, timeout: Duration) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let d = describe(server, name)?;
        let status = d["EndpointStatus"].as_str().unwrap_or("?").to_string();
        let progress = &d["DeploymentProgress"];
        let line = if progress.is_object() {
            format!(
                "{status}: {} step {} of {}, {:.0}% on {}",
                progress["Phase"].as_str().unwrap_or(""),
                progress["Step"].as_u64().unwrap_or(0) + 1,
                progress["Steps"],
                progress["Share"].as_f64().unwrap_or(0.0) * 100.0,
                d["PendingDeploymentSummary"]["EndpointConfigName"].as_str().unwrap_or("the new configuration"),
            )
        } else {
            format!("{status} on {}", d["EndpointConfigName"].as_str().unwrap_or("?"))
        };
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if !matches!(status.as_str(), "Creating" | "Updating" | "RollingBack") {
            return Ok(d);
        }
        if start.elapsed() > timeout {
            bail!("endpoint {name} is still {status} after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The end state of a wait, as an exit: a failure or rollback is an error.
fn settled(d: Value) -> Result<(), Failure> {
    let status = d["EndpointStatus"].as_str().unwrap_or("?").to_string();
    print(&d);
    match (status.as_str(), d["FailureReason"].as_str()) {
        ("InService", None) => Ok(()),
        (_, Some(why)) => Err(anyhow!("endpoint is {status}: {why}").into()),
        _ => Err(anyhow!("endpoint is {status}").into()),
    }
}

pub fn endpoint(a: EndpointArgs) -> Result<(), Failure> {
    let s = &a.server;
    match a.command {
        EndpointCommand::Update {
            name,
            config,
            deployment_config,
            retain_all_variant_properties,
            retain_deployment_config,
            wait: and_wait,
        } => {
            let mut body = json!({ "EndpointName": name, "EndpointConfigName": config });
            if let Some(d) = deployment_config {
                let text = match d.strip_prefix('@') {
                    Some(path) => {
                        std::fs::read_to_string(path).with_context(|| format!("--deployment-config {path}"))?
                    }
                    None => d,
                };
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| Failure::BadRequest(format!("--deployment-config is not JSON: {e}")))?;
                body["DeploymentConfig"] = v;
            }
            if retain_all_variant_properties {
                body["RetainAllVariantProperties"] = json!(true);
            }
            if retain_deployment_config {
                body["RetainDeploymentConfig"] = json!(true);
            }
            let r = call(s, "SageMaker.UpdateEndpoint", &body)?;
            if !and_wait {
                print(&r);
                return Ok(());
            }
            settled(wait(s, &name, Duration::from_secs(28_800 + 600))?)
        }
        EndpointCommand::Rollback { name } => {
            print(&call(s, "NeoRun.RollbackEndpointUpdate", &json!({ "EndpointName": name }))?);
            Ok(())
        }
        EndpointCommand::Describe { name } => {
            print(&describe(s, &name)?);
            Ok(())
        }
        EndpointCommand::Experiment { name } => {
            print(&call(s, "SageMaker.DescribeInferenceExperiment", &json!({ "Name": name }))?);
            Ok(())
        }
        EndpointCommand::Wait { name, timeout } => settled(wait(s, &name, Duration::from_secs(timeout))?),
    }
}

pub fn journal(a: JournalArgs) -> Result<(), Failure> {
    let keep = |e: &Value| journal_matches(e, a.name.as_deref(), a.op.as_deref(), a.since.as_deref());
    let entries: Vec<Value> = match &a.state_dir {
        Some(dir) => {
            let path = dir.join("journal.jsonl");
            let f = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
            let mut out = Vec::new();
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                let e: Value = serde_json::from_str(&line)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
                if keep(&e) {
                    out.push(e);
                }
            }
            out
        }
        None => {
            let mut body = json!({ "MaxResults": 100_000 });
            if let Some(n) = &a.name {
                body["Name"] = json!(n);
            }
            if let Some(o) = &a.op {
                body["Operation"] = json!(o);
            }
            if let Some(t) = &a.since {
                body["Since"] = json!(t);
            }
            let r = call(&a.server, "NeoRun.ReadJournal", &body)?;
            r["Entries"].as_array().cloned().unwrap_or_default()
        }
    };
    for e in entries {
        println!("{e}");
    }
    Ok(())
}
