//! The image's entry point, run as the platforms run it, in a temporary
//! root laid out as the image and the platform lay it out: SageMaker's
//! bring-your-own-container contract (`IMAGE serve`, the model extracted
//! from model.tar.gz under `/opt/ml/model`, `/ping` and `/invocations` on
//! the port) and KServe's `ServingRuntime` (the model under `/mnt/models`,
//! the flags from the runtime's `args`, the Open Inference Protocol v2).
//! And the image itself: built by `contrib/container/build.sh` with
//! buildah (FROM scratch, vfs storage, chroot isolation), its config
//! checked, and run with `buildah run` serving a mounted model.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use neoc_e2e::*;

/// `neorun container ARGS` with `env`; its address once it listens.
fn start(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> (Child, String) {
    let mut child = Command::new(bin("neorun"))
        .current_dir(cwd)
        .arg("container")
        .args(args)
        .env_remove("NEORUN_TRUSTED_KEY")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = listening_on(&mut child);
    (child, base)
}

fn sample_rows() -> (Vec<String>, Vec<f64>) {
    let sample = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    (sample.lines().map(String::from).collect(), expected("fraud-xgb"))
}

/// SageMaker's contract at `base`: `/ping` answers 200, and `/invocations`
/// answers the sample rows (CSV in, CSV out) with fraud-xgb's reference.
fn answers_like_sagemaker(base: &str) {
    assert_eq!(ureq::get(&format!("{base}/ping")).call().unwrap().status(), 200);
    let (rows, want) = sample_rows();
    let r = ureq::post(&format!("{base}/invocations"))
        .set("Content-Type", "text/csv")
        .set("Accept", "text/csv")
        .send_string(&(rows.join("\n") + "\n"))
        .unwrap();
    let text = r.into_string().unwrap();
    let got: Vec<Vec<f64>> = text.lines().map(|l| l.split(',').map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(got.len(), rows.len(), "{text}");
    for (k, v) in got.iter().enumerate() {
        assert_close(&v[1..], &want[2 * k..2 * k + 2], 1e-6);
    }
}

#[test]
fn sagemaker_runs_the_image_with_serve_and_the_model_under_opt_ml_model() {
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    // SageMaker downloads ModelDataUrl (model.tar.gz) and extracts it into
    // /opt/ml/model before it starts the container
    let model = d.join("root/opt/ml/model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(&b, d.join("fraud-xgb.neo")).unwrap();
    ok(run_tar(d, &["czf", "model.tar.gz", "fraud-xgb.neo"]));
    ok(run_tar(d, &["xzf", "model.tar.gz", "-C", model.to_str().unwrap()]));
    let env = [
        ("NEORUN_MODEL_DIR", model.display().to_string()),
        ("NEORUN_TRUSTED_KEY", d.join("k.pub").display().to_string()),
        ("SAGEMAKER_BIND_TO_PORT", "0".to_string()),
        ("NEORUN_HOST", "127.0.0.1".to_string()),
    ];
    let (mut child, base) = start(d, &["serve"], &env);
    answers_like_sagemaker(&base);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn kserve_passes_the_model_dir_and_the_image_carries_the_key() {
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-mlp:1", host_target(), &[]);
    // the storage initializer's copy, one directory down; the key where
    // build.sh puts it in the image
    let models = d.join("root/mnt/models");
    std::fs::create_dir_all(models.join("fraud")).unwrap();
    std::fs::copy(&b, models.join("fraud/fraud-mlp.neo")).unwrap();
    std::fs::create_dir_all(d.join("root/etc/neorun")).unwrap();
    std::fs::copy(d.join("k.pub"), d.join("root/etc/neorun/trusted.pub")).unwrap();
    let key = d.join("root/etc/neorun/trusted.pub");
    let args = [
        "serve",
        "--model-dir",
        models.to_str().unwrap(),
        "--image-key",
        key.to_str().unwrap(),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--",
        "--threads",
        "1",
    ];
    let (mut child, base) = start(d, &args, &[]);
    assert_eq!(ureq::get(&format!("{base}/v2/health/ready")).call().unwrap().status(), 200);
    let meta: serde_json::Value =
        serde_json::from_str(&ureq::get(&format!("{base}/v2/models/fraud-mlp")).call().unwrap().into_string().unwrap())
            .unwrap();
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 30]), "{meta}");
    let (rows, want) = sample_rows();
    let want_mlp = expected("fraud-mlp");
    let data: Vec<f64> = rows.iter().flat_map(|r| r.split(',').map(|x| x.parse::<f64>().unwrap())).collect();
    let req = serde_json::json!({"inputs": [{"name": "features", "shape": [rows.len(), 30], "datatype": "FP32", "data": data}]});
    let r = ureq::post(&format!("{base}/v2/models/fraud-mlp/infer")).send_string(&req.to_string()).unwrap();
    let out: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
    let probs = out["outputs"].as_array().unwrap().iter().find(|o| o["shape"] == serde_json::json!([rows.len(), 2]));
    let probs: Vec<f64> = probs.unwrap_or_else(|| panic!("{out}"))["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_close(&probs, &want_mlp[..2 * rows.len()], 1e-5);
    assert_eq!(want.len(), want_mlp.len());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_model_dir_key_or_action_is_refused_by_name() {
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    let model = d.join("opt/ml/model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("README"), "no bundle here").unwrap();
    let container = |args: &[&str], env: &[(&str, &str)]| {
        let mut a = vec!["container"];
        a.extend_from_slice(args);
        let mut env = env.to_vec();
        env.push(("NEORUN_MODEL_DIR", model.to_str().unwrap()));
        run("neorun", d, &a, &env, None)
    };
    // not `serve`
    let e = fails(container(&["train"], &[]), 2);
    assert!(e.contains("run it with `serve`") && e.contains("\"train\""), "{e}");
    // no bundle in the model directory: says what is there
    let e = fails(container(&["serve", "--port", "0"], &[("NEORUN_TRUSTED_KEY", "k.pub")]), 2);
    assert!(e.contains("no bundle (*.neo)") && e.contains("README"), "{e}");
    // no model directory at all
    let e = fails(container(&["serve", "--model-dir", "nope", "--port", "0"], &[("NEORUN_TRUSTED_KEY", "k.pub")]), 2);
    assert!(e.contains("the model directory nope"), "{e}");
    // a bundle signed with another key than the image trusts: refused (3)
    std::fs::copy(&b, model.join("fraud-xgb.neo")).unwrap();
    ok(run("neoc", d, &["keygen", "-o", "other"], &[], None));
    let e = fails(container(&["serve", "--port", "0"], &[("NEORUN_TRUSTED_KEY", "other.pub")]), 3);
    assert!(e.contains("fraud-xgb.neo"), "{e}");
    // no key at all (none given, none in the image): refused, not served unsigned
    let e = fails(container(&["serve", "--port", "0", "--image-key", "/nonexistent/trusted.pub"], &[]), 2);
    assert!(e.contains("no key is trusted") && e.contains("/nonexistent/trusted.pub"), "{e}");
    // a tampered bundle
    let mut bytes = std::fs::read(&b).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(model.join("fraud-xgb.neo"), bytes).unwrap();
    fails(container(&["serve", "--port", "0"], &[("NEORUN_TRUSTED_KEY", "k.pub")]), 3);
    // bad serve flags after --
    std::fs::copy(&b, model.join("fraud-xgb.neo")).unwrap();
    let e = fails(container(&["serve", "--port", "0", "--", "--no-such-flag"], &[("NEORUN_TRUSTED_KEY", "k.pub")]), 2);
    assert!(e.contains("--no-such-flag"), "{e}");
}

fn run_tar(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new("tar").current_dir(cwd).args(args).output().unwrap()
}

/// buildah's global options: vfs storage in `dir` (nothing left in the
/// machine's own).
fn buildah_opts(dir: &Path) -> Vec<String> {
    let store = |s: &str| dir.join(s).display().to_string();
    ["--storage-driver", "vfs", "--root", &store("storage"), "--runroot", &store("run")].map(String::from).to_vec()
}

fn buildah(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("buildah")
        .args(buildah_opts(dir))
        .args(args)
        .output()
        .expect("buildah is needed (.ci/run installs it: apt-get install buildah)")
}

#[test]
fn the_image_builds_with_buildah_and_serves_a_mounted_model() {
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    std::fs::create_dir_all(d.join("model")).unwrap();
    std::fs::copy(&b, d.join("model/fraud-xgb.neo")).unwrap();
    let opts = buildah_opts(d).join(" ");
    let o = Command::new("bash")
        .current_dir(root())
        .args(["contrib/container/build.sh", "--key"])
        .arg(d.join("k.pub"))
        .args(["--tag", "neorun:test", "--binary"])
        .arg(bin("neorun"))
        .env("BUILDAH_OPTS", &opts)
        .output()
        .unwrap();
    let said = ok(o);
    eprintln!("{}", said.trim());
    // the image's configuration: the contract SageMaker and KServe rely on
    let cfg: serde_json::Value =
        serde_json::from_slice(&buildah(d, &["inspect", "--type", "image", "neorun:test"]).stdout)
            .expect("buildah inspect");
    let c = &cfg["OCIv1"]["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/bin/neorun", "container"]), "{c}");
    assert_eq!(c["Cmd"], serde_json::json!(["serve"]), "{c}");
    assert_eq!(c["User"], "65532:65532");
    assert!(c["ExposedPorts"].get("8080/tcp").is_some(), "{c}");
    // run it as SageMaker would: `serve`, the model mounted at /opt/ml/model
    let ctr = String::from_utf8(buildah(d, &["from", "neorun:test"]).stdout).unwrap().trim().to_string();
    assert!(!ctr.is_empty());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mount = format!("{}:/opt/ml/model:ro", d.join("model").display());
    let mut child = Command::new("buildah")
        .args(buildah_opts(d))
        .args(["run", "--isolation", "chroot", "-v", &mount, "-e", &format!("SAGEMAKER_BIND_TO_PORT={port}"), &ctr])
        .args(["--", "/usr/bin/neorun", "container", "serve"])
        // its own process group, so that the server inside goes with it
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(listening_on(&mut child), format!("http://0.0.0.0:{port}"));
    answers_like_sagemaker(&format!("http://127.0.0.1:{port}"));
    // SIGTERM to the group: the server drains and exits, then buildah
    let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", child.id())]).status();
    let status = child.wait().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the server outlived its container ({status})");
    let _ = buildah(d, &["rm", "--all"]);
    let _ = buildah(d, &["rmi", "--all", "--force"]);
}

#[test]
fn the_kubernetes_manifests_validate_and_match_the_container() {
    let o = Command::new(venv_python()).arg(root().join("tests/kubernetes/check.py")).arg(root()).output().unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}\n{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    // every built-in kind passed the schemas (the KServe kinds have none there)
    let passed =
        r["validate"].as_array().unwrap().iter().filter(|l| l.as_str().unwrap().contains(" passed for ")).count();
    assert_eq!(passed, 5, "{report}");
}
