//! Helpers for neoc's end-to-end tests: locate the real binaries, run them,
//! read the sample models' reference outputs.
//!
//! The binaries are the ones `cargo test --release --workspace` builds next to
//! this test (the compiler and runtime crates have integration tests of their
//! own, so cargo always rebuilds `neoc` and `neorun` before running tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod lstm;
pub use lstm::lstm_fixtures;

/// The generic target of the machine the tests run on.
pub fn host_target() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "x86_64"
    } else {
        "aarch64"
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Path of a workspace binary (`neoc`, `neorun`), from `NEOC_BIN_DIR` or the
/// target directory this test runs from.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("NEOC_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_path_buf() // target/<profile>/deps/..
        }
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} not found; build the binaries first (cargo build --release --workspace)", p.display());
    if std::env::var_os("NEOC_BIN_DIR").is_none() {
        assert_fresh(&p);
    }
    p
}

/// Refuses to test a binary older than the sources it is built from (as
/// happens with `cargo test -p neoc-e2e`, which does not rebuild them).
pub fn assert_fresh(bin: &Path) {
    // a crate's main.rs only feeds its own binary
    fn newest(dir: &Path, skip_main: bool) -> std::time::SystemTime {
        let mut t = std::time::SystemTime::UNIX_EPOCH;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if skip_main && p.file_name().is_some_and(|n| n == "main.rs") {
                continue;
            }
            let m =
                if p.is_dir() { newest(&p, skip_main) } else { e.metadata().and_then(|m| m.modified()).unwrap_or(t) };
            t = t.max(m);
        }
        t
    }
    let own = if bin.ends_with("neorun") { "runtime/neorun" } else { "compiler" };
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).unwrap();
    let crates: &[&str] = if bin.ends_with("neorun") {
        &["bundle", "targets", "runtime", "runtime/neorun"]
    } else {
        &["bundle", "targets", "compiler", "runtime"]
    };
    for krate in crates {
        let src = newest(&root().join(krate).join("src"), *krate != own);
        assert!(
            built >= src,
            "{} is older than {krate}/src: rebuild it (cargo build --release --workspace) or run the whole workspace's tests",
            bin.display()
        );
    }
}

/// Runs a binary in `cwd` with arguments and optional stdin.
pub fn run(name: &str, cwd: &Path, args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(bin(name));
    c.current_dir(cwd)
        .args(args)
        .env_remove("NEOC_SIGNING_KEY")
        .env_remove("NEORUN_TRUSTED_KEY")
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        // a child may answer (e.g. refuse its bundle) and exit without
        // reading its input: a broken pipe then is not a test failure
        if let Err(e) = child.stdin.take().unwrap().write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing {name}'s stdin: {e}");
        }
    }
    child.wait_with_output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed with {:?}\nstdout: {}\nstderr: {}", o.status.code(), stdout(&o), stderr(&o));
    stdout(&o)
}

/// Asserts failure with this exit code and returns stderr.
#[track_caller]
pub fn fails(o: Output, code: i32) -> String {
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "expected exit {code}\nstdout: {}\nstderr: {err}", stdout(&o));
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

/// `neorun predict BUNDLE --trusted-key k.pub --input INPUT` in `dir`.
pub fn predict(dir: &Path, bundle: &str, input: &str) -> Output {
    run("neorun", dir, &["predict", bundle, "--trusted-key", "k.pub", "--input", input], &[], None)
}

/// A scratch directory with a fresh key pair `k.key`/`k.pub`.
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(run("neoc", dir.path(), &["keygen", "-o", "k"], &[], None));
    dir
}

/// The reference outputs of a sample model (computed by onnxruntime or XGBoost).
pub fn expected(model: &str) -> Vec<f64> {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models").join(model).join("expected.json")).unwrap())
            .unwrap();
    doc["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// The data of the first output of a `neorun predict` JSON response.
pub fn response_data(json: &str) -> Vec<f64> {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    doc["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "element {i}: {g} vs {w} (tolerance {tol})");
    }
}

/// Compiles a registry model for the host into `dir/NAME.neo`, signed with `dir/k.key`.
pub fn compile(dir: &Path, model: &str, target: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{}.{target}.neo", model.replace(':', "-")));
    let registry = root().join("models/registry");
    let mut args = vec![
        "compile",
        model,
        "--target",
        target,
        "--key",
        "k.key",
        "-o",
        out.to_str().unwrap(),
        "--registry",
        registry.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(run("neoc", dir, &args, &[], None));
    out
}

/// A real OCI registry (Debian's `docker-registry`, CNCF distribution 2.8)
/// on 127.0.0.1 with a random port and a temporary storage directory,
/// stopped when dropped.
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub dir: tempfile::TempDir,
}

/// User and password of [`Registry::start_with_auth`].
pub const REGISTRY_USER: &str = "neoc";
pub const REGISTRY_PASSWORD: &str = "neoc-test-password";
/// bcrypt of REGISTRY_PASSWORD (distribution's htpasswd accepts only bcrypt).
const REGISTRY_HTPASSWD: &str = "neoc:$2b$05$3NThPO5DYwIFi051x4DWSeKMn1nYNcEMAmMF6Y1.yl0quww1PWqsW\n";

impl Registry {
    pub fn start() -> Registry {
        Registry::launch(false)
    }

    /// A registry that requires HTTP basic authentication.
    pub fn start_with_auth() -> Registry {
        Registry::launch(true)
    }

    fn launch(auth: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: neoc-test\n",
            storage.display()
        );
        if auth {
            std::fs::write(dir.path().join("htpasswd"), REGISTRY_HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: neoc-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let exe = which("docker-registry")
            .expect("docker-registry is not installed: apt-get install docker-registry (.ci/run does)");
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(exe)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut reg = Registry { child, host: String::new(), dir };
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(20) {
            let text = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
            if let Some(i) = text.find("listening on ") {
                let rest = &text[i + "listening on ".len()..];
                let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                if std::net::TcpStream::connect(&addr).is_ok() {
                    reg.host = addr;
                    return reg;
                }
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited with {status}:\n{text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("docker-registry did not start in 20 s");
    }

    /// `oci://HOST/PATH`
    pub fn oci(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host)
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The project's Python venv (`.venv`, made by .ci/run or models/generate.sh).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("NEOC_VENV").map(PathBuf::from).unwrap_or_else(|| root().join(".venv"));
    let p = venv.join("bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/run` once (it creates the venv from models/requirements.txt)",
        p.display()
    );
    p
}

/// The test venv's `site-packages` (where pip put onnxruntime, openvino, …).
pub fn venv_site_packages() -> PathBuf {
    let lib = venv_python().parent().unwrap().parent().unwrap().join("lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e} (run .ci/run to make the venv)", lib.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("python3"))
        .expect("a python3.x folder in the venv")
        .join("site-packages")
}

/// The manifest of `dir/bundle`, as `neoc inspect --json` prints it.
pub fn manifest_of(dir: &Path, bundle: &str) -> serde_json::Value {
    let out = ok(run("neoc", dir, &["inspect", bundle, "--json"], &[], None));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc.get("manifest").cloned().unwrap_or(doc)
}

/// The stock `minisign` accepts the signature of `dir/bundle`'s manifest
/// with `dir/k.pub` (the manifest holds every other file's digest).
pub fn assert_minisign_accepts(dir: &Path, bundle: &str) {
    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar").args(["-xf"]).arg(dir.join(bundle)).arg("-C").arg(x.path()).status().unwrap();
    assert!(st.success(), "tar -xf {bundle}");
    let st = Command::new("minisign")
        .args(["-V", "-q", "-p"])
        .arg(dir.join("k.pub"))
        .arg("-m")
        .arg(x.path().join("manifest.json"))
        .status()
        .unwrap();
    assert!(st.success(), "minisign refused {bundle}");
}

/// sha256 of a file as `sha256:HEX`.
pub fn file_digest(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Writes `dir/NAME.tar.gz`: an ONNX model of one integer binary op `op`
/// (`Add`, `Mul`, `Mod`: `r = a op b` on int32 `[N, 2]` inputs `a`, `b`)
/// with one test case, a = [[7, -7]], b = [[3, 3]]; `reference` overrides
/// its expected output (a model whose own health check fails, compiled with
/// --allow-mismatch). Returns the tarball's file name.
pub fn int_op_tarball(d: &Path, name: &str, op: &str, reference: Option<[i32; 2]>) -> String {
    let script = r#"
import sys, os, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
d, name, op, ref = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
a = helper.make_tensor_value_info("a", TensorProto.INT32, ["N", 2])
b = helper.make_tensor_value_info("b", TensorProto.INT32, ["N", 2])
o = helper.make_tensor_value_info("r", TensorProto.INT32, ["N", 2])
m = helper.make_model(helper.make_graph([helper.make_node(op, ["a", "b"], ["r"])], name, [a, b], [o]),
                      opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
os.makedirs(f"{d}/{name}/test_data_set_0")
onnx.save(m, f"{d}/{name}/{name}.onnx")
x = np.array([[7, -7]], np.int32); y = np.array([[3, 3]], np.int32)
r = {"Add": x + y, "Mul": x * y, "Mod": np.mod(x, y)}[op] if ref == "-" else np.array([[int(v) for v in ref.split(",")]], np.int32)
t = f"{d}/{name}/test_data_set_0"
open(t + "/input_0.pb", "wb").write(numpy_helper.from_array(x, "a").SerializeToString())
open(t + "/input_1.pb", "wb").write(numpy_helper.from_array(y, "b").SerializeToString())
open(t + "/output_0.pb", "wb").write(numpy_helper.from_array(r.astype(np.int32), "r").SerializeToString())
"#;
    let r = reference.map_or("-".to_string(), |[x, y]| format!("{x},{y}"));
    let o = Command::new(venv_python()).args(["-c", script, d.to_str().unwrap(), name, op, &r]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tarball = format!("{name}.tar.gz");
    let st = Command::new("tar")
        .current_dir(d.join(name))
        .args(["czf", &format!("../{tarball}"), &format!("{name}.onnx"), "test_data_set_0"])
        .status()
        .unwrap();
    assert!(st.success());
    tarball
}

/// Compiles `dir/m.neo`: an ONNX integer `Mod` (`r = a mod b`, inputs
/// `[N,2]` i32) with one test case. A zero divisor makes tract panic inside
/// the engine, which neorun must turn into an error for that request.
pub fn int_mod_bundle(d: &Path) -> PathBuf {
    let tarball = int_op_tarball(d, "m", "Mod", None);
    ok(run("neoc", d, &["compile", &tarball, "--target", "host", "--key", "k.key", "-o", "m.neo"], &[], None));
    d.join("m.neo")
}

/// A server process (`neorun serve`) on 127.0.0.1 with a free port, killed when dropped.
pub struct Served {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `exe serve ARGS --trusted-key k.pub --port 0` in `dir` and reads the
/// address it prints.
pub fn serve_with(exe: &Path, dir: &Path, args: &[&str]) -> Served {
    serve_with_env(exe, dir, args, &[])
}

/// [`serve_with`], with more environment variables.
pub fn serve_with_env(exe: &Path, dir: &Path, args: &[&str], env: &[(&str, String)]) -> Served {
    let mut child = Command::new(exe)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("serve")
        .args(args)
        .args(["--trusted-key", "k.pub", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
    let base = listening_on(&mut child);
    Served { child, base }
}

/// The address a server started with its stdout piped says it listens on
/// (its first line, `listening on URL`).
pub fn listening_on(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string()
}

/// An S3-compatible store on 127.0.0.1: moto's server mode from the venv
/// (an emulator of S3's API, not S3), killed when dropped. Any credentials
/// are accepted; [`S3Server::env`] gives the AWS environment a client needs.
pub struct S3Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_env(&[])
    }

    /// A store that checks credentials after its first `free` requests
    /// (moto's `INITIAL_NO_AUTH_ACTION_COUNT`): the test's own keys are
    /// then unknown to it, as a key without access to a bucket is.
    pub fn start_with_auth(free: u32) -> S3Server {
        S3Server::start_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", &free.to_string())])
    }

    fn start_env(env: &[(&str, &str)]) -> S3Server {
        let exe = venv_python().parent().unwrap().join("moto_server");
        assert!(
            exe.exists(),
            "{} is missing: moto[server] is in models/requirements.txt (.ci/run installs it)",
            exe.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        for _ in 0..5 {
            // a free port: moto_server takes a number, not 0
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&exe)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdout(log.try_clone().unwrap())
                .stderr(log.try_clone().unwrap())
                .spawn()
                .expect("starting moto_server");
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(30) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), _dir: dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto_server did not start: {}",
            std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
        );
    }

    /// The environment an AWS client reads to reach this store.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    /// Runs a Python snippet with `s3` (a boto3 client of this store) and
    /// `sys.argv[1:] = args` defined; its stdout.
    pub fn py(&self, code: &str, args: &[&str]) -> String {
        let script = format!("import sys, boto3\ns3 = boto3.client('s3')\n{code}\n");
        let mut c = Command::new(venv_python());
        c.args(["-c", &script]).args(args);
        for (k, v) in self.env() {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "python: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Stops the store (a test of a store going away).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of a process, from /proc (kB; 0 when it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
