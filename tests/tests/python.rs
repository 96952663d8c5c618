//! The Python package (`python/`, PyO3): its pytest suite against bundles
//! compiled here (one for the onnxruntime engine, whose library the package
//! finds in its interpreter's site-packages), with the refusal messages the `neorun` binary prints for
//! the same bad bundles, so that Python's exceptions can be compared with
//! them word for word. The wheel is built and installed into the venv by
//! `.ci/run` (`maturin build`); this fails, saying how to rebuild, when the
//! installed module is older than its sources. And the Spark recipe
//! (`contrib/spark/score.py`: `predict_batch_udf`, the bundle opened once
//! per worker) in local mode, against `neorun batch` on the same rows.

use std::path::Path;
use std::process::Command;

use neoc_e2e::*;

/// The tests here run one at a time: the pytest suite measures that the
/// GIL is released, which a JVM or a Ray cluster starting beside it would
/// blur.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The installed extension module, checked to be newer than python/src.
fn installed_module() -> std::path::PathBuf {
    let o = Command::new(venv_python()).args(["-c", "import neorun; print(neorun.__file__)"]).output().unwrap();
    assert!(
        o.status.success(),
        "the neorun Python package is not installed in the venv: .venv/bin/maturin build --release -m python/Cargo.toml -i .venv/bin/python && .venv/bin/pip install --force-reinstall --no-deps target/wheels/neorun-*.whl\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let so = std::path::PathBuf::from(String::from_utf8(o.stdout).unwrap().trim());
    let built = std::fs::metadata(&so).unwrap().modified().unwrap();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for dir in ["python/src", "runtime/src", "bundle/src"] {
        for e in walk(&root().join(dir)) {
            newest = newest.max(std::fs::metadata(&e).unwrap().modified().unwrap());
        }
    }
    assert!(built >= newest, "{} is older than its sources: rebuild the wheel (see .ci/run)", so.display());
    so
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What `neorun check` says after "bundle refused: ".
fn refusal(d: &Path, bundle: &str, key: &str) -> String {
    let o = run("neorun", d, &["check", bundle, "--trusted-key", key], &[], None);
    let e = fails(o, 3);
    let at = e.find("error: bundle refused: ").unwrap_or_else(|| panic!("{e}"));
    e[at + "error: bundle refused: ".len()..].trim_end().to_string()
}

#[test]
fn the_python_package_passes_its_tests() {
    let _serial = one_at_a_time();
    let so = installed_module();
    let dir = scratch();
    let d = dir.path();
    for m in ["fraud-xgb:1", "fraud-mlp:1"] {
        let b = compile(d, m, host_target(), &[]);
        std::fs::rename(&b, d.join(format!("{}.neo", m.split(':').next().unwrap()))).unwrap();
    }
    // the onnxruntime engine's bundle (neoc finds the venv's library here)
    let registry = root().join("models/registry");
    let capi = venv_site_packages().join("onnxruntime/capi");
    let ort = [("ORT_DYLIB_PATH", capi.to_str().unwrap())];
    let args = ["compile", "fraud-mlp:1", "--target", host_target(), "--engine", "onnxruntime", "--key", "k.key"];
    let more = ["-o", "fraud-mlp-ort.neo", "--registry", registry.to_str().unwrap()];
    ok(run("neoc", d, &[&args[..], &more].concat(), &ort, None));
    // a model over string features (tests/onnxruntime/make_models.py), on onnxruntime
    let st = Command::new(venv_python())
        .arg(root().join("tests/onnxruntime/make_models.py"))
        .arg(d.join("m"))
        .status()
        .unwrap();
    assert!(st.success(), "make_models.py failed");
    let strings = d.join("m/string-features.tar.gz");
    let args = ["compile", strings.to_str().unwrap(), "--target", host_target(), "--key", "k.key", "-o", "strings.neo"];
    ok(run("neoc", d, &args, &ort, None));
    let args = ["compile", "fraud-xgb:1", "--target", host_target(), "--unsigned", "-o", "unsigned.neo", "--registry"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(registry.to_str().unwrap());
    ok(run("neoc", d, &args, &[], None));
    ok(run("neoc", d, &["keygen", "-o", "other"], &[], None));
    let mut raw = std::fs::read(d.join("fraud-xgb.neo")).unwrap();
    let n = raw.len();
    raw[n / 2] ^= 1;
    std::fs::write(d.join("tampered.neo"), raw).unwrap();
    let said = serde_json::json!({
        "tampered": refusal(d, "tampered.neo", "k.pub"),
        "other_key": refusal(d, "fraud-xgb.neo", "other.pub"),
        "unsigned": refusal(d, "unsigned.neo", "k.pub"),
    });
    std::fs::write(d.join("refusals.json"), said.to_string()).unwrap();
    let o = Command::new(venv_python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml"])
        .arg(d.join("pytest.xml"))
        .arg(root().join("python/tests"))
        .env("NEORUN_TEST_DIR", d)
        .env("NEORUN_ROOT", root())
        // the onnxruntime library is to be found through the interpreter
        .env_remove("VIRTUAL_ENV")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "pytest failed ({}):\n{out}\n{}", so.display(), String::from_utf8_lossy(&o.stderr));
    // every test ran: none skipped or deselected
    let xml = std::fs::read_to_string(d.join("pytest.xml")).unwrap();
    assert!(xml.contains("skipped=\"0\"") && xml.contains("failures=\"0\"") && xml.contains("errors=\"0\""), "{xml}");
    assert!(!xml.contains("tests=\"0\""), "{xml}");
}

/// `contrib/spark/score.py` in local mode; (success, stderr).
fn spark_score(d: &Path, input: &str, bundle: &str, out: &str) -> (bool, String) {
    let o = Command::new(venv_python())
        .current_dir(d)
        .arg(root().join("contrib/spark/score.py"))
        .args(["--master", "local[2]", "--bundle", bundle, "--key", "k.pub", "--input", input, "--output", out])
        .args(["--load-log", "loads.txt"])
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn spark_scores_a_dataframe_as_neorun_batch_does() {
    let _serial = one_at_a_time();
    installed_module();
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    std::fs::rename(&b, d.join("fraud-xgb.neo")).unwrap();
    let csv = rows_csv(d);
    let (ok_, err) = spark_score(d, "rows.csv", "fraud-xgb.neo", "scored");
    assert!(ok_, "{err}");
    // each worker process opened the bundle once
    assert!(opened_once_per_process(d) > 0);
    // the parts in order are the input in order; the same as neorun batch
    let mut parts: Vec<_> = std::fs::read_dir(d.join("scored"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    parts.sort();
    let spark: Vec<String> = parts
        .iter()
        .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .collect();
    same_as_batch(d, &spark);
    // a column that is not numeric: refused naming it, before any task
    let mut bad = csv.lines().take(100).map(String::from).collect::<Vec<_>>();
    let mut row: Vec<&str> = bad[50].split(',').collect();
    row[1] = "oops";
    bad[50] = row.join(",");
    std::fs::write(d.join("bad.csv"), bad.join("\n") + "\n").unwrap();
    let (ok_, err) = spark_score(d, "bad.csv", "fraud-xgb.neo", "scored-bad");
    assert!(!ok_ && err.contains("column '_c1' is string, not numeric"), "{err}");
    // a bundle the executors cannot find: the job fails naming it
    let (ok_, err) = spark_score(d, "rows.csv", "missing.neo", "scored-missing");
    assert!(!ok_ && err.contains("missing.neo"), "{}", &err[err.len().saturating_sub(3000)..]);
    assert!(!d.join("scored-missing/_SUCCESS").exists());
}

/// How many processes opened the bundle (loads.txt: one pid a line per
/// open), checking that none opened it twice.
fn opened_once_per_process(d: &Path) -> usize {
    let loads = std::fs::read_to_string(d.join("loads.txt")).unwrap();
    let pids: Vec<&str> = loads.lines().collect();
    let unique: std::collections::BTreeSet<&str> = pids.iter().copied().collect();
    assert_eq!(pids.len(), unique.len(), "the bundle was opened more than once in a process: {pids:?}");
    pids.len()
}

/// `rows.csv`: 20,000 rows (the bench runs 1,000,000), the samples each
/// scaled a little; its text.
fn rows_csv(d: &Path) -> String {
    let sample = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    let rows: Vec<Vec<f64>> = sample.lines().map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    let mut csv = String::new();
    for i in 0..20_000usize {
        let s = 1.0 + (i % 97) as f64 / 1000.0;
        let r: Vec<String> = rows[i % rows.len()].iter().map(|v| format!("{}", (v * s) as f32)).collect();
        csv.push_str(&r.join(","));
        csv.push('\n');
    }
    std::fs::write(d.join("rows.csv"), &csv).unwrap();
    csv
}

/// Scored lines (30 features, then the probabilities joined by `;`) equal
/// `neorun batch` on rows.csv, line for line.
fn same_as_batch(d: &Path, scored: &[String]) {
    assert_eq!(scored.len(), 20_000);
    if !d.join("batch/rows.csv.out").exists() {
        let args = ["batch", "fraud-xgb.neo", "--trusted-key", "k.pub", "-i", "rows.csv", "-o", "batch"];
        ok(run("neorun", d, &args, &[], None));
    }
    let batch = std::fs::read_to_string(d.join("batch/rows.csv.out")).unwrap();
    for (k, (s, b)) in scored.iter().zip(batch.lines()).enumerate() {
        let p: Vec<f64> = s.rsplit(',').next().unwrap().split(';').map(|v| v.parse().unwrap()).collect();
        let want: Vec<f64> = b.split(',').skip(1).map(|v| v.parse().unwrap()).collect();
        assert_close(&p, &want, 1e-6);
        assert_eq!(s.split(',').count(), 31, "row {k}: {s}");
    }
}

#[test]
fn ray_data_scores_a_dataset_as_neorun_batch_does() {
    let _serial = one_at_a_time();
    installed_module();
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    std::fs::rename(&b, d.join("fraud-xgb.neo")).unwrap();
    rows_csv(d);
    let o = Command::new(venv_python())
        .current_dir(d)
        .arg(root().join("contrib/ray/score.py"))
        .args(["--bundle", "fraud-xgb.neo", "--key", "k.pub", "--input", "rows.csv", "--output", "scored"])
        .args(["--actors", "2", "--load-log", "loads.txt"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // two actors, each opened the bundle once
    assert_eq!(opened_once_per_process(d), 2);
    let scored: Vec<String> =
        std::fs::read_to_string(d.join("scored/scored.csv")).unwrap().lines().map(String::from).collect();
    same_as_batch(d, &scored);
}
