//! The device's model store: `neorun install / status / rollback / commit /
//! gc` and `neorun serve --store`, run as real processes — installs killed
//! with SIGKILL at random points, a full disk (a real tmpfs), a slot
//! corrupted on disk, a server killed mid-bake, activation under load with
//! a version that fails its bake, and the real Mender client driving the
//! update module in `contrib/mender`.
//!
//! The versions of model `m` (int32 `[N, 2]` inputs `a`, `b`, output `r`):
//! v1 = a + b, v2 = a * b, v3 = a mod b (fails inside its engine when b
//! has a zero: a 5xx), and `bad` (v4) whose own test vector is wrong (its
//! self-test fails on every device).
//!
//! (Over 600 lines: one end-to-end test per fault and acceptance point of
//! the model-store issue, each with its own store and server; the fixtures,
//! the store snapshot and the request helpers are at the top.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use neoc_e2e::*;
use serde_json::Value;

/// The tests here start servers and clients on a 2-core machine: one at a time.
static MACHINE: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// v1..v3, bad, and an aarch64 build of v2, compiled once; signed by k.key.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch();
        let d = dir.path();
        for (file, op, version, wrong, target) in [
            ("v1", "Add", "1", false, "host"),
            ("v2", "Mul", "2", false, "host"),
            ("v3", "Mod", "3", false, "host"),
            ("bad", "Mod", "4", true, "host"),
            ("v2-arm", "Mul", "2", false, "ml_m6g"),
        ] {
            let tarball = int_op_tarball(d, file, op, wrong.then_some([9, 9]));
            let out = format!("{file}.neo");
            let mut args = vec![
                "compile",
                &tarball,
                "--target",
                target,
                "--key",
                "k.key",
                "--name",
                "m",
                "--model-version",
                version,
                "-o",
                &out,
            ];
            if wrong {
                args.push("--allow-mismatch");
            }
            ok(run("neoc", d, &args, &[], None));
        }
        dir
    })
    .path()
}

/// A scratch directory with the fixtures' bundles and k.pub.
fn work() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["v1.neo", "v2.neo", "v3.neo", "bad.neo", "v2-arm.neo", "k.pub"] {
        std::fs::copy(fixtures().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn neorun(d: &Path, args: &[&str]) -> std::process::Output {
    run("neorun", d, args, &[], None)
}

fn install(d: &Path, store: &str, bundle: &str, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["install", bundle, "--store", store, "--trusted-key", "k.pub"];
    a.extend_from_slice(extra);
    neorun(d, &a)
}

fn status(d: &Path, store: &str) -> Value {
    serde_json::from_str(&ok(neorun(d, &["status", "--store", store, "--json"]))).unwrap()
}

fn model(d: &Path, store: &str) -> Value {
    status(d, store)["models"][0].clone()
}

fn version(v: &Value, pointer: &str) -> Option<String> {
    v[pointer]["version"].as_str().map(str::to_string)
}

/// Every file under `dir` with its bytes (what "the store did not change" compares).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(p: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for e in entries {
            let name = e.file_name().unwrap().to_string_lossy().into_owned();
            // the journal grows (refusals are journaled); the locks hold pids
            if name == "journal.jsonl" || name.starts_with(".lock") || name == ".serving" {
                continue;
            }
            if e.is_dir() {
                walk(&e, out);
            } else {
                out.push((e.clone(), std::fs::read(&e).unwrap()));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v
}

fn journal_ops(d: &Path, store: &str) -> Vec<String> {
    std::fs::read_to_string(d.join(store).join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["op"].as_str().unwrap().to_string())
        .collect()
}

/// A server of the store, its stderr kept in `serve.log`.
fn serve_store(d: &Path, store: &str, extra: &[&str]) -> Served {
    use std::io::BufRead;
    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let mut child = Command::new(bin("neorun"))
        .current_dir(d)
        .args(["serve", "--store", store, "--trusted-key", "k.pub", "--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            panic!("unexpected first line {line:?}: {}", std::fs::read_to_string(d.join("serve.log")).unwrap())
        })
        .to_string();
    Served { child, base }
}

/// One request; the answer's `r` (or the status and body when it failed) and the variant that answered.
fn invoke(base: &str, b0: i32) -> (Result<Vec<i64>, (u16, String)>, String) {
    let body = format!("{{\"a\": [[7, -7]], \"b\": [[{b0}, 3]]}}");
    match ureq::post(&format!("{base}/invocations")).set("Content-Type", "application/json").send_string(&body) {
        Ok(r) => {
            let variant = r.header("X-Amzn-Invoked-Production-Variant").unwrap_or("").to_string();
            let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            let data = v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            (Ok(data), variant)
        }
        Err(ureq::Error::Status(c, r)) => {
            let variant = r.header("X-Amzn-Invoked-Production-Variant").unwrap_or("").to_string();
            (Err((c, r.into_string().unwrap_or_default())), variant)
        }
        Err(e) => (Err((0, e.to_string())), String::new()),
    }
}

/// Which version answered `a = [7, -7], b = [3, 3]`.
fn which_version(r: &[i64]) -> &'static str {
    match r {
        [10, -4] => "v1",
        [21, -21] => "v2",
        [1, 2] => "v3",
        _ => "neither",
    }
}

const QUICK: &str = r#"{"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "CANARY",
  "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}, "WaitIntervalInSeconds": 2},
  "TerminationWaitInSeconds": 0, "MaximumExecutionTimeoutInSeconds": 600}}"#;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn install_refuses_bad_bundles_without_changing_the_store_and_rollback_commit_gc_work() {
    assert_fresh(&bin("neorun"));
    let dir = work();
    let d = dir.path();
    let out = ok(install(d, "S", "v1.neo", &[]));
    assert!(out.contains("committed (the model's first version)"), "{out}");
    let out = ok(install(d, "S", "v2.neo", &[]));
    assert!(out.contains("self-tested") && out.contains("no server serves this store"), "{out}");
    let m = model(d, "S");
    assert_eq!(
        (m["state"].as_str(), version(&m, "active"), version(&m, "trial")),
        (Some("pending"), Some("1".into()), Some("2".into()))
    );
    assert_eq!(m["trial"]["phase"], "pending");
    let before = snapshot(&d.join("S"));
    // each bad input: a clear error, and not one byte of the store changed
    let e = fails(install(d, "S", "bad.neo", &[]), 1);
    assert!(e.contains("its own test vectors fail on this device") && e.contains("nothing was changed"), "{e}");
    let e = fails(install(d, "S", "v2-arm.neo", &[]), 3);
    assert!(e.contains("aarch64") || e.contains("target"), "{e}");
    let mut tampered = std::fs::read(d.join("v3.neo")).unwrap();
    let n = tampered.len();
    tampered[n / 2] ^= 0x20;
    std::fs::write(d.join("tampered.neo"), tampered).unwrap();
    let e = fails(install(d, "S", "tampered.neo", &[]), 3);
    assert!(e.contains("bundle refused"), "{e}");
    ok(run("neoc", d, &["keygen", "-o", "other"], &[], None));
    let e = fails(neorun(d, &["install", "v3.neo", "--store", "S", "--trusted-key", "other.pub"]), 3);
    assert!(e.contains("signature") || e.contains("key"), "{e}");
    let e = fails(install(d, "S", "missing.neo", &[]), 1);
    assert!(e.contains("missing.neo: no such bundle file"), "{e}");
    std::fs::write(d.join("empty.neo"), b"").unwrap();
    fails(install(d, "S", "empty.neo", &[]), 3);
    // two at once: the store is being changed (flock held by another process)
    let mut holder = Command::new("flock").arg(d.join("S/.lock")).args(["sleep", "2"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let e = fails(install(d, "S", "v3.neo", &[]), 1);
    assert!(e.contains("is being changed by") && e.contains("--lock-wait"), "{e}");
    assert_eq!(snapshot(&d.join("S")), before, "a refused install changed the store");
    // with --lock-wait it waits for the other change, then installs
    let t = Instant::now();
    let out = ok(install(d, "S", "v3.neo", &["--lock-wait", "10"]));
    assert!(t.elapsed() > Duration::from_millis(800), "did not wait for the lock");
    holder.wait().unwrap();
    assert!(out.contains("m 3 installed"), "{out}");
    // v3 supersedes the pending v2
    assert_eq!(version(&model(d, "S"), "trial"), Some("3".into()));
    // commit with no server: active at once
    let out = ok(neorun(d, &["commit", "--store", "S"]));
    assert!(out.contains("3 committed"), "{out}");
    let m = model(d, "S");
    assert_eq!((version(&m, "active"), version(&m, "previous")), (Some("3".into()), Some("1".into())));
    // anti-rollback: v2 is older than the active v3
    let before = snapshot(&d.join("S"));
    let e = fails(install(d, "S", "v2.neo", &[]), 1);
    assert!(e.contains("not newer than the active 3") && e.contains("--allow-downgrade"), "{e}");
    assert_eq!(snapshot(&d.join("S")), before);
    let out = ok(install(d, "S", "v2.neo", &["--allow-downgrade"]));
    assert!(out.contains("m 2 installed"), "{out}");
    assert_eq!(model(d, "S")["trial"]["downgrade"], true);
    // rollback drops the trial; with none, it returns to the previous version
    assert!(ok(neorun(d, &["rollback", "--store", "S"])).contains("trial 2 dropped"));
    assert!(ok(neorun(d, &["rollback", "m", "--store", "S"])).contains("1 is active again (was 3)"));
    // --from: only undoes that version
    assert!(ok(neorun(d, &["rollback", "--store", "S", "--from", "7"])).contains("nothing to do"));
    assert_eq!(version(&model(d, "S"), "active"), Some("1".into()));
    // gc keeps active and previous
    let out = ok(neorun(d, &["gc", "--store", "S"]));
    assert!(out.contains("removed 0002-2, 0004-2"), "{out}");
    assert_eq!(model(d, "S")["slots"], serde_json::json!(["0001-1", "0003-3"]));
    let e = fails(neorun(d, &["status", "--store", "nowhere"]), 1);
    assert!(e.contains("is not a model store"), "{e}");
    let e = fails(neorun(d, &["rollback", "other", "--store", "S"]), 1);
    assert!(e.contains("has no model \"other\"; it has: m"), "{e}");
    let ops = journal_ops(d, "S");
    for op in ["Installed", "Committed", "SelfTested", "SelfTestFailed", "Superseded", "RolledBack", "GarbageCollected"]
    {
        assert!(ops.iter().any(|o| o == op), "no {op} in the journal: {ops:?}");
    }
    // the journal reads with `neorun journal`
    let j = ok(neorun(d, &["journal", "--state-dir", "S", "--op", "SelfTestFailed"]));
    assert!(j.contains("\"version\":\"4\""), "{j}");
}

#[test]
fn a_full_disk_during_install_changes_nothing() {
    let dir = work();
    let d = dir.path();
    let mnt = d.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(st.success(), "this test needs to mount a small tmpfs (root, as CI runs it)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    ok(install(d, "small/S", "v1.neo", &[]));
    // fill the disk to within a few KiB: less than a bundle
    let bundle = std::fs::metadata(d.join("v2.neo")).unwrap().len();
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0u8; 1024];
    use std::io::Write;
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    let free = {
        let o = Command::new("df").args(["-B1", "--output=avail"]).arg(&mnt).output().unwrap();
        String::from_utf8_lossy(&o.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    assert!(free < bundle, "the disk is not full enough: {free} free, the bundle is {bundle}");
    let before = snapshot(&mnt.join("S"));
    let e = fails(install(d, "small/S", "v2.neo", &[]), 1);
    assert!(e.contains("no space left") && e.contains("nothing was changed"), "{e}");
    assert_eq!(snapshot(&mnt.join("S")), before);
    std::fs::remove_file(mnt.join("filler")).unwrap();
    ok(install(d, "small/S", "v2.neo", &[]));
    assert_eq!(version(&model(d, "small/S"), "trial"), Some("2".into()));
}

#[test]
fn install_killed_at_random_points_50_times_leaves_a_store_that_serves_old_or_new() {
    let _m = alone();
    let dir = work();
    let d = dir.path();
    ok(install(d, "base", "v1.neo", &[]));
    // how long an install takes here, to spread the kills over all of it
    let t = Instant::now();
    ok(install(d, "probe", "v1.neo", &[]));
    ok(install(d, "probe", "v2.neo", &[]));
    let span = (t.elapsed() / 2).as_micros().max(2_000) as u64;
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..50 {
        let store = format!("s{i}");
        let st = Command::new("cp").args(["-a", "base", &store]).current_dir(d).status().unwrap();
        assert!(st.success());
        let mut child = Command::new(bin("neorun"))
            .current_dir(d)
            .args(["install", "v2.neo", "--store", &store, "--trusted-key", "k.pub"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(fastish_random(i) % (span * 3 / 2)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let s = serve_store(d, &store, &["--activation", QUICK]);
        let (r, _) = invoke(&s.base, 3);
        let r = r.unwrap_or_else(|e| panic!("kill {i}: the store did not serve: {e:?}"));
        let v = which_version(&r);
        assert!(v == "v1" || v == "v2", "kill {i}: answered {r:?}, neither version");
        *seen.entry((status.success(), v)).or_insert(0) += 1;
        drop(s);
        // the store is consistent: status reads, a further install works
        let m = model(d, &store);
        assert!(m["active"]["version"].is_string(), "kill {i}: {m}");
    }
    eprintln!("(install finished?, first answer) over 50 kills: {seen:?}");
    assert!(seen.keys().any(|(done, _)| !done), "no install was killed before it finished: {seen:?}");
}

/// A spread of delays without a random-number crate: a multiplicative hash of `i`.
fn fastish_random(i: u64) -> u64 {
    (i.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
}

/// Clients that invoke the server until stopped, recording (time, result, variant).
type Log = Arc<Mutex<Vec<(Instant, Result<Vec<i64>, (u16, String)>, String)>>>;

fn load(base: &str, clients: usize, b0: i32) -> (Arc<AtomicBool>, Log, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let threads = (0..clients)
        .map(|_| {
            let (stop, log, base) = (stop.clone(), log.clone(), base.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (r, v) = invoke(&base, b0);
                    log.lock().unwrap().push((Instant::now(), r, v));
                }
            })
        })
        .collect();
    (stop, log, threads)
}

#[test]
fn under_load_a_good_version_commits_and_a_bad_one_rolls_back_with_no_failed_request_to_the_good_ones() {
    let _m = alone();
    let dir = work();
    let d = dir.path();
    ok(install(d, "S", "v1.neo", &[]));
    let s = serve_store(d, "S", &["--activation", QUICK]);
    // b = [0, 3]: v1 and v2 answer, v3 divides by zero (a 5xx from its engine)
    let (stop, log, threads) = load(&s.base, 8, 0);
    std::thread::sleep(Duration::from_secs(1));
    let t_install = Instant::now();
    let out = ok(install(d, "S", "v2.neo", &["--wait"]));
    assert!(out.contains("slot 0002-2 committed"), "{out}");
    let t_v3 = Instant::now();
    let o = install(d, "S", "v3.neo", &["--wait"]);
    let e = fails(o, 1);
    assert!(e.contains("rolled back") && e.contains("m-store-errors"), "{e}");
    let rolled_back_in = t_v3.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let log = log.lock().unwrap();
    let mut by = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for (_, r, variant) in log.iter() {
        let e = by.entry(variant.clone()).or_default();
        if r.is_ok() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    eprintln!("answers by variant (ok, failed): {by:?}; v3 rolled back {rolled_back_in:?} after its install began");
    for (variant, (_, failed)) in &by {
        if variant != "slot-0003-3" {
            assert_eq!(*failed, 0, "{failed} failed requests to {variant:?}: {by:?}");
        }
    }
    assert!(by.get("slot-0003-3").is_some_and(|(_, f)| *f > 0), "v3 never failed: {by:?}");
    // the first answer by v2 after its install began
    let first_v2 = log
        .iter()
        .filter(|(t, r, _)| *t > t_install && r.as_ref().is_ok_and(|r| r == &[0, -21]))
        .map(|(t, _, _)| *t - t_install)
        .min()
        .unwrap();
    eprintln!("neorun install → v2's first answer: {first_v2:?}");
    assert!(rolled_back_in < Duration::from_secs(10), "{rolled_back_in:?}");
    // after all that, v2 serves
    assert_eq!(which_version(&invoke(&s.base, 3).0.unwrap()), "v2");
    let m = model(d, "S");
    assert_eq!((version(&m, "active"), version(&m, "previous")), (Some("2".into()), Some("1".into())));
    assert_eq!(m["last_event"]["op"], "RolledBack");
    let ops = journal_ops(d, "S");
    let story: Vec<&str> = ops.iter().map(String::as_str).collect();
    assert_eq!(
        story,
        [
            "Installed",
            "Committed",
            "Installed",
            "SelfTested",
            "Baking",
            "Committed",
            "Installed",
            "SelfTested",
            "Baking",
            "RolledBack"
        ],
        "{story:?}"
    );
}

#[test]
fn a_server_killed_mid_bake_rolls_back_at_start_and_a_corrupt_slot_falls_back_loudly() {
    let _m = alone();
    let dir = work();
    let d = dir.path();
    ok(install(d, "S", "v1.neo", &[]));
    let slow = QUICK.replace("\"WaitIntervalInSeconds\": 2", "\"WaitIntervalInSeconds\": 60");
    let mut s = serve_store(d, "S", &["--activation", &slow]);
    ok(install(d, "S", "v2.neo", &[]));
    wait_until("v2 baking", Duration::from_secs(10), || model(d, "S")["state"] == "baking");
    // a power cut: SIGKILL in the middle of the bake
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = serve_store(d, "S", &["--activation", &slow]);
    for _ in 0..20 {
        assert_eq!(which_version(&invoke(&s.base, 3).0.unwrap()), "v1");
    }
    let m = model(d, "S");
    assert_eq!((m["state"].as_str(), version(&m, "active")), (Some("committed"), Some("1".into())));
    let why = m["last_event"]["detail"]["why"].as_str().unwrap().to_string();
    assert!(why.contains("the server stopped while 2 baked") && why.contains("counts as failed"), "{why}");
    drop(s);
    // v2 committed (no server), then its slot corrupted on disk
    ok(install(d, "S", "v2.neo", &[]));
    ok(neorun(d, &["commit", "--store", "S"]));
    let slot = d.join("S/models/m/slots").join(model(d, "S")["active"]["slot"].as_str().unwrap()).join("bundle.neo");
    let mut bytes = std::fs::read(&slot).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 0x01;
    std::fs::write(&slot, bytes).unwrap();
    let s = serve_store(d, "S", &[]);
    assert_eq!(which_version(&invoke(&s.base, 3).0.unwrap()), "v1");
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(
        log.contains("ERROR: model store: m: the active slot") && log.contains("serving the previous slot"),
        "{log}"
    );
    let m = model(d, "S");
    assert_eq!(m["last_event"]["op"], "SlotCorrupt");
    assert_eq!(version(&m, "active"), Some("1".into()));
    // a rollback with the CLI while serving switches back without a failed request
    drop(s);
}

#[test]
fn hot_swap_by_rollback_under_load_fails_no_request() {
    let _m = alone();
    let dir = work();
    let d = dir.path();
    ok(install(d, "S", "v1.neo", &[]));
    ok(install(d, "S", "v2.neo", &[]));
    ok(neorun(d, &["commit", "--store", "S"]));
    let s = serve_store(d, "S", &[]);
    let (stop, log, threads) = load(&s.base, 8, 3);
    std::thread::sleep(Duration::from_millis(500));
    ok(neorun(d, &["rollback", "--store", "S"]));
    std::thread::sleep(Duration::from_millis(1500));
    ok(neorun(d, &["rollback", "--store", "S"]));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let log = log.lock().unwrap();
    let failed: Vec<_> = log.iter().filter(|(_, r, _)| r.is_err()).collect();
    assert!(failed.is_empty(), "{} of {} failed: {:?}", failed.len(), log.len(), failed.first());
    let order: Vec<&str> = log.iter().map(|(_, r, _)| which_version(r.as_ref().unwrap())).collect();
    let mut phases = order.clone();
    phases.dedup();
    assert!(phases.starts_with(&["v2", "v1", "v2"]), "{phases:?}");
    eprintln!("{} requests, 0 failed, versions in order: {phases:?}", log.len());
}

#[test]
fn oci_install_pulls_from_a_real_registry() {
    let dir = work();
    let d = dir.path();
    let reg = Registry::start();
    let r = reg.oci("models/m:2");
    ok(run("neoc", d, &["push", "v2.neo", &r], &[], None));
    ok(install(d, "S", "v1.neo", &[]));
    let out = ok(install(d, "S", &r, &[]));
    assert!(out.contains("m 2 installed"), "{out}");
    let e = fails(install(d, "S", &reg.oci("models/m:nope"), &[]), 1);
    assert!(e.contains("nope"), "{e}");
}

/// Mender's standalone mode with the real client: the artifact is installed
/// by the update module, committed, and the next one rolled back.
#[test]
fn mender_installs_commits_and_rolls_back_a_bundle_through_the_update_module() {
    let _m = alone();
    let dir = work();
    let d = dir.path();
    let mender = which("mender").expect("mender-client is not installed: apt-get install mender-client (.ci/run does)");
    which("mender-artifact").expect("mender-artifact is not installed (.ci/run installs it)");
    // Mender 3.4 reads update modules from this fixed directory only (its
    // ModulesPath is not a configuration setting), and needs artifact_info
    let modules = Path::new("/usr/share/mender/modules/v3");
    std::fs::create_dir_all(modules).unwrap();
    std::fs::copy(root().join("contrib/mender/neoc-bundle"), modules.join("neoc-bundle"))
        .expect("installing the update module needs root (as CI runs)");
    if !Path::new("/etc/mender/artifact_info").exists() {
        std::fs::create_dir_all("/etc/mender").unwrap();
        std::fs::write("/etc/mender/artifact_info", "artifact_name=neoc-test-base\n").unwrap();
    }
    let data = d.join("mender");
    std::fs::create_dir_all(data.join("scripts")).unwrap();
    std::fs::write(data.join("device_type"), "device_type=neoc-test\n").unwrap();
    std::fs::write(
        d.join("mender.conf"),
        format!("{{\"DeviceTypeFile\": \"{}\"}}", data.join("device_type").display()),
    )
    .unwrap();
    std::fs::write(
        d.join("neorun-mender.conf"),
        format!(
            "NEORUN={}\nSTORE={}\nTRUSTED_KEY={}\n",
            bin("neorun").display(),
            d.join("S").display(),
            d.join("k.pub").display()
        ),
    )
    .unwrap();
    let m = |args: &[&str]| -> std::process::Output {
        Command::new(&mender)
            .args(["--config"])
            .arg(d.join("mender.conf"))
            .arg("--fallback-config")
            .arg(d.join("none.conf"))
            .arg("--data")
            .arg(&data)
            .arg("--no-syslog")
            .args(args)
            .env("NEORUN_MENDER_CONF", d.join("neorun-mender.conf"))
            .current_dir(d)
            .output()
            .unwrap()
    };
    for (name, file) in [("m-2", "v2.neo"), ("m-3", "v3.neo")] {
        let o = Command::new("mender-artifact")
            .current_dir(d)
            .args(["write", "module-image", "-T", "neoc-bundle", "-n", name, "-t", "neoc-test", "-f", file, "-o"])
            .arg(format!("{name}.mender"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    ok(install(d, "S", "v1.neo", &[]));
    // with a server serving the store: the module's install waits for the bake
    let s = serve_store(d, "S", &["--activation", QUICK]);
    let o = m(&["install", "m-2.mender"]);
    assert!(o.status.success(), "mender install: {}", stderr(&o));
    assert_eq!(version(&model(d, "S"), "active"), Some("2".into()), "the bake committed v2");
    let o = m(&["commit"]);
    assert!(o.status.success(), "mender commit: {}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&m(&["show-artifact"]).stdout).trim(), "m-2");
    assert_eq!(which_version(&invoke(&s.base, 3).0.unwrap()), "v2");
    // m-3 installs and bakes (no traffic fails it), then Mender rolls it back
    let o = m(&["install", "m-3.mender"]);
    assert!(o.status.success(), "mender install: {}", stderr(&o));
    assert_eq!(version(&model(d, "S"), "active"), Some("3".into()));
    let o = m(&["rollback"]);
    assert!(o.status.success(), "mender rollback: {}", stderr(&o));
    assert_eq!(version(&model(d, "S"), "active"), Some("2".into()));
    wait_until("the server back on v2", Duration::from_secs(10), || {
        which_version(&invoke(&s.base, 3).0.unwrap()) == "v2"
    });
    assert_eq!(String::from_utf8_lossy(&m(&["show-artifact"]).stdout).trim(), "m-2");
    // the fleet agent's view
    let st = status(d, "S");
    assert!(st["served_by"].as_str().unwrap().contains("neorun serve"), "{st}");
    assert_eq!(st["models"][0]["last_event"]["op"], "RolledBack");
    let o = Command::new(root().join("contrib/mender/mender-inventory-neorun"))
        .env("NEORUN_MENDER_CONF", d.join("neorun-mender.conf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "neorun_m_active=2\nneorun_m_previous=3\nneorun_m_state=committed\nneorun_m_last_event=RolledBack\n"
    );
}
