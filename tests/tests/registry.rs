//! Registries for real: Debian's `docker-registry` (CNCF distribution 2.8)
//! on 127.0.0.1, `skopeo` and the `oras` Python SDK as independent clients,
//! `openssl` as an independent Ed25519 verifier of provenance.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use neoc_e2e::*;

fn neoc(dir: &Path, args: &[&str]) -> Output {
    run("neoc", dir, args, &[], None)
}

fn model_tarball(model: &str) -> String {
    root().join("models").join(model).join("model.tar.gz").display().to_string()
}

fn oci_tool(args: &[&str]) -> Output {
    Command::new(venv_python())
        .arg(root().join("tests/registry/oci_tool.py"))
        .args(args)
        .output()
        .expect("running oci_tool.py")
}

fn oci_tool_in(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(venv_python())
        .current_dir(dir)
        .arg(root().join("tests/registry/oci_tool.py"))
        .args(args)
        .output()
        .expect("running oci_tool.py");
    assert!(o.status.success(), "oci_tool {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    stdout(&o)
}

fn skopeo_raw(image: &str) -> serde_json::Value {
    let exe = which("skopeo").expect("skopeo is not installed: apt-get install skopeo (.ci/run does)");
    let o = Command::new(exe).args(["inspect", "--raw", "--tls-verify=false", image]).output().unwrap();
    assert!(o.status.success(), "skopeo inspect {image}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn compile_from_a_registry_for_two_targets_push_pull_back_and_serve() {
    let reg = Registry::start();
    let dir = scratch();
    let d = dir.path();
    for m in ["fraud-xgb", "fraud-mlp", "fraud-lgbm", "image-cnn"] {
        let out = ok(neoc(d, &["push", &model_tarball(m), &reg.oci(&format!("models/{m}:1"))]));
        assert!(out.contains("pushed"), "{out}");
    }
    // skopeo reads what neoc pushed
    let raw = skopeo_raw(&format!("docker://{}/models/fraud-xgb:1", reg.host));
    assert_eq!(raw["artifactType"], "application/vnd.neoc.model.v1");
    assert_eq!(raw["layers"][0]["mediaType"], "application/vnd.neoc.model.layer.v1.tar+gzip");
    assert_eq!(raw["annotations"]["dev.neoc.model.framework"], "xgboost");
    assert_eq!(raw["annotations"]["dev.neoc.model.input-config"], r#"{"features":["N",30]}"#);
    assert_eq!(ok(neoc(d, &["ls", &reg.oci("models/fraud-xgb")])).trim(), "1");

    let summary = ok(neoc(
        d,
        &[
            "compile",
            &reg.oci("models/fraud-xgb:1"),
            "--target",
            host_target(),
            "--target",
            "rasp4b",
            "--key",
            "k.key",
            "-o",
            "out",
            "--push",
            &reg.oci("bundles/fraud-xgb"),
            "--provenance",
            "--json",
        ],
    ));
    let doc = json(&summary);
    assert_eq!(doc["schema_version"], 2);
    let bundles = doc["bundles"].as_array().unwrap();
    assert_eq!(bundles.len(), 2);
    assert_eq!(doc["index"]["reference"], reg.oci("bundles/fraud-xgb:1"));
    for b in bundles {
        let target = b["target"]["name"].as_str().unwrap();
        assert_eq!(b["pushed"]["reference"], reg.oci(&format!("bundles/fraud-xgb:1-{target}")));
        assert_eq!(b["verification"]["status"], "passed");
        assert!(b["verification"]["max_abs_error"].as_f64().unwrap() <= 1e-6);
        // pull it back by digest: the same bytes
        let pinned = b["pushed"]["pinned"].as_str().unwrap();
        assert!(pinned.contains("@sha256:"), "{pinned}");
        let pulled = json(&ok(neoc(d, &["pull", pinned, "-o", &format!("pulled-{target}"), "--json"])));
        let path = pulled["files"][0]["path"].as_str().unwrap();
        let local = b["path"].as_str().unwrap();
        assert_eq!(std::fs::read(d.join(path)).unwrap(), std::fs::read(d.join(local)).unwrap(), "{target}");
        assert_eq!(file_digest(&d.join(path)), b["digest"].as_str().unwrap());
        // the provenance verifies against the pulled bundle
        let prov = b["provenance"]["path"].as_str().unwrap();
        ok(neoc(d, &["verify", path, "--key", "k.pub", "--provenance", prov]));
        // and is attached in the registry under the referrers tag schema
        let subject = b["pushed"]["digest"].as_str().unwrap().replace(':', "-");
        let referrers = skopeo_raw(&format!("docker://{}/bundles/fraud-xgb:{subject}", reg.host));
        assert_eq!(referrers["manifests"][0]["artifactType"], "application/vnd.in-toto+json");
    }
    // a device picks its bundle from the index by target, without the others
    let pick =
        json(&ok(neoc(d, &["pull", &reg.oci("bundles/fraud-xgb:1"), "--target", "rasp4b", "-o", "dev", "--json"])));
    assert_eq!(pick["files"].as_array().unwrap().len(), 1);
    assert!(pick["files"][0]["path"].as_str().unwrap().ends_with("fraud-xgb-1.rasp4b.neo"));
    let index = skopeo_raw(&format!("docker://{}/bundles/fraud-xgb:1", reg.host));
    let targets: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["dev.neoc.bundle.target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, vec![host_target(), "rasp4b"]);

    // serve the pulled host bundle with neorun and ask it
    let bundle = format!("pulled-{}/fraud-xgb-1.{}.neo", host_target(), host_target());
    let mut child = Command::new(bin("neorun"))
        .current_dir(d)
        .args(["serve", &bundle, "--trusted-key", "k.pub", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let csv = std::fs::read(root().join("models/fraud-xgb/sample.csv")).unwrap();
    let resp = ureq::post(&format!("{base}/invocations"))
        .set("Content-Type", "text/csv")
        .set("Accept", "application/json")
        .send_bytes(&csv)
        .unwrap()
        .into_string()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let doc = json(&resp);
    let probabilities: Vec<f64> =
        doc["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&probabilities, &expected("fraud-xgb"), 1e-6);
}

#[test]
fn oras_and_modelpack_artifacts_compile_and_oras_reads_ours() {
    let reg = Registry::start();
    let dir = scratch();
    let d = dir.path();
    let onnx = root().join("models/fraud-mlp/model.onnx").display().to_string();
    // a bare ONNX file pushed with oras' defaults
    oci_tool_in(d, &["oras-push", &reg.host, "plain/fraud-mlp:1", &onnx]);
    // a CNCF ModelPack-style artifact: model config, weights, and a doc layer
    std::fs::write(d.join("config.json"), br#"{"descriptor":{"name":"fraud-mlp"},"config":{"format":"onnx"}}"#)
        .unwrap();
    std::fs::write(d.join("README.md"), b"fraud model\n").unwrap();
    oci_tool_in(
        d,
        &[
            "oras-push",
            &reg.host,
            "modelpack/fraud-mlp:1",
            "--config",
            "config.json:application/vnd.cncf.model.config.v1+json",
            &format!("{onnx}:application/vnd.cncf.model.weight.v1.raw"),
            "README.md:application/vnd.cncf.model.doc.v1.raw",
        ],
    );
    // a model tarball as a generic tar+gzip layer
    oci_tool_in(
        d,
        &[
            "oras-push",
            &reg.host,
            "tarball/fraud-mlp:1",
            &format!("{}:application/vnd.oci.image.layer.v1.tar+gzip", model_tarball("fraud-mlp")),
        ],
    );
    for repo in ["plain", "modelpack", "tarball"] {
        let out = format!("{repo}.neo");
        let s = json(&ok(neoc(
            d,
            &[
                "compile",
                &reg.oci(&format!("{repo}/fraud-mlp:1")),
                "--target",
                host_target(),
                "--key",
                "k.key",
                "-o",
                &out,
                "--json",
            ],
        )));
        assert_eq!(s["bundles"][0]["verification"]["status"], "passed", "{repo}");
        assert_eq!(s["model"]["name"], "fraud-mlp");
        let p = ok(predict(d, &out, root().join("models/fraud-mlp/sample.csv").to_str().unwrap()));
        assert_close(&response_data(&p), &expected("fraud-mlp"), 1e-5);
    }
    // oras pulls a model neoc pushed, byte for byte
    ok(neoc(d, &["push", &model_tarball("fraud-xgb"), &reg.oci("models/fraud-xgb:1")]));
    oci_tool_in(d, &["oras-pull", &reg.host, "models/fraud-xgb:1", "oras-out"]);
    assert_eq!(
        std::fs::read(d.join("oras-out/model.tar.gz")).unwrap(),
        std::fs::read(root().join("models/fraud-xgb/model.tar.gz")).unwrap()
    );
}

#[test]
fn bad_registry_input_gets_clear_errors() {
    let reg = Registry::start();
    let dir = scratch();
    let d = dir.path();
    ok(neoc(d, &["push", &model_tarball("fraud-xgb"), &reg.oci("models/fraud-xgb:1")]));
    let compile = |model: &str| neoc(d, &["compile", model, "--target", host_target(), "--unsigned", "-o", "x.neo"]);

    // unknown tag: the error lists the tags there are
    let e = fails(compile(&reg.oci("models/fraud-xgb:7")), 1);
    assert!(e.contains("not found") && e.contains("tags of") && e.contains(": 1"), "{e}");
    // unknown repository
    let e = fails(compile(&reg.oci("models/nope:1")), 1);
    assert!(e.contains("not found") && e.contains("models/nope"), "{e}");
    // a reference with a typo: the parse error shows the expected form
    for typo in ["oci:/127.0.0.1:5000/models/x:1", "oci://127.0.0.1:5000/Models/x:1", "oci://127.0.0.1:5000/models/x:"]
    {
        let e = fails(compile(typo), 1);
        assert!(e.contains("expected oci://HOST[:PORT]/REPOSITORY"), "{typo}: {e}");
    }
    // --push with a digest, and push without a tag
    let e = fails(neoc(d, &["push", &model_tarball("fraud-xgb"), &reg.oci("models/fraud-xgb")]), 1);
    assert!(e.contains(":VERSION"), "{e}");
    // a bundle where a model is expected
    ok(neoc(d, &["compile", &reg.oci("models/fraud-xgb:1"), "--target", host_target(), "--unsigned", "-o", "b.neo"]));
    ok(neoc(d, &["push", "b.neo", &reg.oci("bundles/fraud-xgb:1")]));
    let e = fails(compile(&reg.oci("bundles/fraud-xgb:1")), 1);
    assert!(e.contains("is a compiled neoc bundle, not a model"), "{e}");
    // an artifact with no layers, and one with two model layers
    std::fs::write(d.join("a.onnx"), b"x").unwrap();
    std::fs::write(d.join("b.onnx"), b"y").unwrap();
    oci_tool_in(d, &["oras-push", &reg.host, "empty/model:1"]);
    let e = fails(compile(&reg.oci("empty/model:1")), 1);
    assert!(e.contains("has no layers"), "{e}");
    oci_tool_in(d, &["oras-push", &reg.host, "two/model:1", "a.onnx", "b.onnx"]);
    let e = fails(compile(&reg.oci("two/model:1")), 1);
    assert!(e.contains("2 model layers") && e.contains("a.onnx") && e.contains("b.onnx"), "{e}");
    // a manifest that is not OCI (a Docker image)
    let o = oci_tool(&["docker-image", &reg.host, "docker/image:1", &model_tarball("fraud-xgb")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = fails(compile(&reg.oci("docker/image:1")), 1);
    assert!(e.contains("Docker image manifest") && e.contains("not an OCI artifact"), "{e}");

    // a blob whose digest does not match: flip a byte of the stored model layer
    let raw = skopeo_raw(&format!("docker://{}/models/fraud-xgb:1", reg.host));
    let layer = raw["layers"][0]["digest"].as_str().unwrap().to_string();
    let stored = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let e = fails(compile(&reg.oci("models/fraud-xgb:1")), 1);
    assert!(e.contains(&format!("blob {layer} does not match its digest")), "{e}");
    let e = fails(neoc(d, &["pull", &reg.oci("models/fraud-xgb:1"), "-o", "pulled"]), 1);
    assert!(e.contains("does not match its digest"), "{e}");
    let left: Vec<_> = std::fs::read_dir(d.join("pulled")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a failed pull left {left:?}");

    // a registry that is down: one clear error, quickly (no retry storm)
    let gone = {
        let r = Registry::start();
        r.host.clone()
    };
    let t = Instant::now();
    let e = fails(compile(&format!("oci://{gone}/models/fraud-xgb:1")), 1);
    assert!(e.contains(&format!("cannot reach the registry {gone}")) && e.contains("Connection refused"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
}

#[test]
fn registries_that_require_credentials() {
    let reg = Registry::start_with_auth();
    let dir = scratch();
    let d = dir.path();
    let target = reg.oci("models/fraud-xgb:1");
    let push = |envs: &[(&str, &str)]| run("neoc", d, &["push", &model_tarball("fraud-xgb"), &target], envs, None);
    let nohome = [("HOME", d.to_str().unwrap())];
    // no credentials: the error says how to give them
    let e = fails(push(&nohome), 1);
    assert!(e.contains("requires authentication and no credentials were given"), "{e}");
    assert!(e.contains("NEOC_REGISTRY_USER") && e.contains("docker login"), "{e}");
    // wrong password: refused, and the password is never printed
    let e = fails(
        push(&[
            ("HOME", d.to_str().unwrap()),
            ("NEOC_REGISTRY_USER", REGISTRY_USER),
            ("NEOC_REGISTRY_PASSWORD", "wrong-secret"),
        ]),
        1,
    );
    assert!(e.contains("refused the credentials from NEOC_REGISTRY_USER"), "{e}");
    assert!(!e.contains("wrong-secret"), "{e}");
    // from the environment
    let o = push(&[
        ("HOME", d.to_str().unwrap()),
        ("NEOC_REGISTRY_USER", REGISTRY_USER),
        ("NEOC_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ]);
    let out = ok(o);
    assert!(!out.contains(REGISTRY_PASSWORD));
    // from a Docker config file
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    std::fs::create_dir_all(d.join("docker")).unwrap();
    std::fs::write(d.join("docker/config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host))
        .unwrap();
    let o = run(
        "neoc",
        d,
        &["compile", &target, "--target", host_target(), "--unsigned", "-o", "x.neo"],
        &[("DOCKER_CONFIG", d.join("docker").to_str().unwrap())],
        None,
    );
    ok(o);
    let o = run(
        "neoc",
        d,
        &["ls", &reg.oci("models/fraud-xgb")],
        &[("DOCKER_CONFIG", d.join("docker").to_str().unwrap())],
        None,
    );
    assert_eq!(ok(o).trim(), "1");
}

/// Forwards connections to `to`, sending the answers at `rate` bytes/s.
fn throttling_proxy(to: String, rate: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let server = TcpStream::connect(&to).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; rate / 20];
                loop {
                    match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_killed_pull_leaves_no_file_and_resumes() {
    let reg = Registry::start();
    let dir = scratch();
    let d = dir.path();
    // 24 MiB of incompressible bytes, pushed with oras
    let mut data = vec![0u8; 24 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(d.join("big.bin"), &data).unwrap();
    oci_tool_in(d, &["oras-push", &reg.host, "big/blob:1", "big.bin"]);
    let want = file_digest(&d.join("big.bin"));

    // through a link of 4 MiB/s, killed after 1.5 s
    let slow = throttling_proxy(reg.host.clone(), 4 << 20);
    let mut child = Command::new(bin("neoc"))
        .current_dir(d)
        .args(["pull", &format!("oci://{slow}/big/blob:1"), "-o", "out"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the throttled pull finished too early to be interrupted");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!d.join("out/big.bin").exists(), "an interrupted pull left a file under the final name");
    let partial: Vec<_> = std::fs::read_dir(d.join("out")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let have = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(have > 0 && have < data.len() as u64, "partial holds {have} bytes");

    // run again: it resumes and the file is right
    let o = neoc(d, &["pull", &reg.oci("big/blob:1"), "-o", "out"]);
    let err = stderr(&o);
    ok(o);
    assert!(err.contains("resuming"), "{err}");
    assert_eq!(file_digest(&d.join("out/big.bin")), want);
    let left: Vec<_> = std::fs::read_dir(d.join("out")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn local_registry_is_the_same_abstraction() {
    let dir = scratch();
    let d = dir.path();
    let reg = d.join("reg");
    let r = reg.to_str().unwrap();
    ok(neoc(d, &["push", &model_tarball("fraud-mlp"), "team/fraud:3", "--registry", r]));
    ok(neoc(d, &["push", &model_tarball("fraud-mlp"), "team/fraud:4", "--registry", r]));
    assert_eq!(ok(neoc(d, &["ls", "team/fraud", "--registry", r])), "3\n4\n");
    // skopeo reads the layout
    let raw = skopeo_raw(&format!("oci:{}:3", reg.join("team/fraud").display()));
    assert_eq!(raw["artifactType"], "application/vnd.neoc.model.v1");
    // compile from it, push the bundle into it, pull it back
    let s = json(&ok(neoc(
        d,
        &[
            "compile",
            "team/fraud:3",
            "--registry",
            r,
            "--target",
            host_target(),
            "--key",
            "k.key",
            "-o",
            "f.neo",
            "--push",
            "bundles/fraud",
            "--json",
        ],
    )));
    assert_eq!(s["model"]["version"], "3");
    let pinned = s["bundles"][0]["pushed"]["pinned"].as_str().unwrap();
    ok(neoc(d, &["pull", pinned, "--registry", r, "-o", "back"]));
    assert_eq!(std::fs::read(d.join("back/f.neo")).unwrap(), std::fs::read(d.join("f.neo")).unwrap());
    // the checked-in sample registry is read the same way
    let e = fails(neoc(d, &["compile", "nope:1", "--registry", r, "--target", host_target(), "--unsigned"]), 1);
    assert!(e.contains("not in the local registry") && e.contains("team/fraud"), "{e}");
}

#[test]
fn compiles_are_reproducible_across_clean_output_directories() {
    let reg = Registry::start();
    let a = scratch();
    let b = tempfile::tempdir().unwrap();
    std::fs::copy(a.path().join("k.key"), b.path().join("k.key")).unwrap();
    ok(neoc(a.path(), &["push", &model_tarball("image-cnn"), &reg.oci("models/image-cnn:1")]));
    let mut docs = Vec::new();
    for (i, d) in [a.path(), b.path()].iter().enumerate() {
        let o = run(
            "neoc",
            d,
            &[
                "compile",
                &reg.oci("models/image-cnn:1"),
                "--target",
                host_target(),
                "--target",
                "rasp4b",
                "--key",
                "k.key",
                "-o",
                "out",
                "--push",
                &reg.oci(&format!("bundles{i}/image-cnn")),
                "--provenance",
                "--json",
            ],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
            None,
        );
        docs.push(json(&ok(o)));
    }
    let pairs = docs[0]["bundles"].as_array().unwrap().iter().zip(docs[1]["bundles"].as_array().unwrap());
    for (x, y) in pairs {
        assert_eq!(x["digest"], y["digest"]);
        assert_eq!(x["pushed"]["digest"], y["pushed"]["digest"]);
        let name = x["path"].as_str().unwrap();
        let p = format!("{name}.intoto.jsonl");
        assert_eq!(std::fs::read(a.path().join(&p)).unwrap(), std::fs::read(b.path().join(&p)).unwrap());
    }
    assert_eq!(docs[0]["index"]["digest"], docs[1]["index"]["digest"]);
}

#[test]
fn provenance_is_a_dsse_envelope_openssl_verifies() {
    let dir = scratch();
    let d = dir.path();
    let bundle = compile(d, "fraud-mlp:1", host_target(), &["--provenance"]);
    let prov = format!("{}.intoto.jsonl", bundle.display());
    let env = json(&std::fs::read_to_string(&prov).unwrap());
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(env["payload"].as_str().unwrap()).unwrap();
    let ptype = env["payloadType"].as_str().unwrap();
    assert_eq!(ptype, "application/vnd.in-toto+json");
    let st: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(format!("sha256:{}", st["subject"][0]["digest"]["sha256"].as_str().unwrap()), file_digest(&bundle));
    let deps = &st["predicate"]["buildDefinition"]["resolvedDependencies"];
    assert_eq!(deps[0]["uri"], "fraud-mlp:1");
    assert_eq!(st["predicate"]["buildDefinition"]["externalParameters"]["target"], host_target());
    // DSSE PAE, checked by openssl against the minisign public key
    let mut pae = format!("DSSEv1 {} {} {} ", ptype.len(), ptype, payload.len()).into_bytes();
    pae.extend_from_slice(&payload);
    std::fs::write(d.join("pae.bin"), &pae).unwrap();
    std::fs::write(d.join("sig.bin"), b64.decode(env["signatures"][0]["sig"].as_str().unwrap()).unwrap()).unwrap();
    let pubfile = std::fs::read_to_string(d.join("k.pub")).unwrap();
    let raw = b64.decode(pubfile.lines().nth(1).unwrap()).unwrap();
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(&raw[10..42]);
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", b64.encode(&der));
    std::fs::write(d.join("pub.pem"), pem).unwrap();
    let openssl = which("openssl").expect("openssl is not installed (.ci/run installs it)");
    let o = Command::new(&openssl)
        .current_dir(d)
        .args(["pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "pae.bin", "-sigfile", "sig.bin"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Signature Verified Successfully"), "{o:?}");
    ok(run("neoc", d, &["verify", bundle.to_str().unwrap(), "--key", "k.pub", "--provenance", &prov], &[], None));
    // a changed statement no longer verifies, with neoc or openssl
    let mut forged = env.clone();
    let mut st2 = st.clone();
    st2["predicate"]["buildDefinition"]["externalParameters"]["target"] = "rasp4b".into();
    forged["payload"] = b64.encode(serde_json::to_vec(&st2).unwrap()).into();
    std::fs::write(d.join("forged.jsonl"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let e = fails(
        run(
            "neoc",
            d,
            &["verify", bundle.to_str().unwrap(), "--key", "k.pub", "--provenance", "forged.jsonl"],
            &[],
            None,
        ),
        1,
    );
    assert!(e.contains("no signature in the envelope verifies"), "{e}");
    // provenance needs a key
    let e = fails(
        run("neoc", d, &["compile", "fraud-mlp:1", "--target", host_target(), "--unsigned", "--provenance"], &[], None),
        1,
    );
    assert!(e.contains("--provenance needs a signing key"), "{e}");
}
