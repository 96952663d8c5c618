//! `neorun batch`: batch transform with SageMaker's semantics, run as the
//! real binary on real files — objects under a directory, gzip, SplitType,
//! BatchStrategy, DataProcessing filters and join, malformed records, a job
//! killed and run again, a full disk; the same over `s3://` on an
//! S3-compatible store (moto's server), and as transform jobs on the
//! control plane from boto3.
//!
//! (Over 600 lines: one end-to-end test per acceptance point and bad input
//! of the batch half of the issue, each with its own processes; the shared
//! helpers — row generators, the output checker, the boto3 driver — are at
//! the top and beside the tests that use them.)

use std::io::Write;
use std::path::Path;
use std::process::Command;

use neoc_e2e::*;

/// The 8 sample rows of fraud-xgb and their reference probabilities.
fn xgb(d: &Path) -> (std::path::PathBuf, Vec<String>, Vec<f64>) {
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    let sample = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    (b, sample.lines().map(String::from).collect(), expected("fraud-xgb"))
}

/// `n` rows cycling through the sample rows in an order that shows any
/// reordering; the sample index of each.
fn rows(sample: &[String], n: usize, salt: usize) -> (String, Vec<usize>) {
    let mut text = String::new();
    let mut order = Vec::new();
    for i in 0..n {
        let k = (i * 5 + i / 8 + salt) % 8;
        order.push(k);
        text.push_str(&sample[k]);
        text.push('\n');
    }
    (text, order)
}

fn batch(d: &Path, bundle: &Path, args: &[&str]) -> std::process::Output {
    let mut a = vec!["batch", bundle.to_str().unwrap(), "--trusted-key", "k.pub"];
    a.extend_from_slice(args);
    run("neorun", d, &a, &[], None)
}

/// Each CSV output line (label, p0, p1) against the reference of its row.
#[track_caller]
fn check_csv(out: &str, order: &[usize], want: &[f64]) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), order.len(), "one output line per input line");
    for (line, k) in lines.iter().zip(order) {
        let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        assert_close(&v[1..], &want[2 * k..2 * k + 2], 1e-6);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// No file under `dir` whose name says it is a final output is incomplete:
/// every `*.out` there was recorded complete.
fn no_partial_under_final_names(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp-"), "{name}");
    }
}

#[test]
fn every_object_under_a_directory_in_input_order() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    std::fs::create_dir_all(d.join("in/day=2/part")).unwrap();
    let (a, order_a) = rows(&sample, 2400, 0);
    std::fs::write(d.join("in/a.csv"), &a).unwrap();
    let (c, order_c) = rows(&sample, 777, 3);
    std::fs::write(d.join("in/day=2/part/c.csv"), &c).unwrap();
    let out = ok(batch(d, &b, &["-i", "in", "-o", "out", "--max-records", "100", "--max-concurrent-transforms", "3"]));
    assert!(out.is_empty(), "the summary goes to stderr: {out}");
    check_csv(&std::fs::read_to_string(d.join("out/a.csv.out")).unwrap(), &order_a, &want);
    check_csv(&std::fs::read_to_string(d.join("out/day=2/part/c.csv.out")).unwrap(), &order_c, &want);
    // the same text as `neorun predict` on the same rows
    let p = ok(run(
        "neorun",
        d,
        &["predict", b.to_str().unwrap(), "--trusted-key", "k.pub", "--input", "in/a.csv", "--accept", "csv"],
        &[],
        None,
    ));
    assert!(p == std::fs::read_to_string(d.join("out/a.csv.out")).unwrap(), "batch and predict differ");

    // gzip objects, one record per run (SingleRecord): the same answers
    std::fs::create_dir_all(d.join("gz")).unwrap();
    let first: String = a.lines().take(600).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("gz/a.csv.gz"), gzip(first.as_bytes())).unwrap();
    // a multi-member gzip stream (as `cat x.gz y.gz` makes) is one object
    let half = c[..c.len() / 2].rfind('\n').unwrap() + 1;
    let mut two = gzip(&c.as_bytes()[..half]);
    two.extend(gzip(&c.as_bytes()[half..]));
    std::fs::write(d.join("gz/c.csv.gz"), two).unwrap();
    let o =
        batch(d, &b, &["-i", "gz", "-o", "gz-out", "--compression-type", "Gzip", "--batch-strategy", "SingleRecord"]);
    let err = stderr(&o);
    ok(o);
    assert!(err.contains("2 object(s)"), "{err}");
    check_csv(&std::fs::read_to_string(d.join("gz-out/a.csv.gz.out")).unwrap(), &order_a[..600], &want);
    check_csv(&std::fs::read_to_string(d.join("gz-out/c.csv.gz.out")).unwrap(), &order_c, &want);

    // JSON Lines in and out
    let jl: String = order_a.iter().take(50).map(|k| format!("[{}]\n", sample[*k])).collect();
    std::fs::write(d.join("in.jsonl"), jl).unwrap();
    ok(batch(d, &b, &["-i", "in.jsonl", "-o", "jl"]));
    let out = std::fs::read_to_string(d.join("jl/in.jsonl.out")).unwrap();
    assert_eq!(out.lines().count(), 50);
    for (line, k) in out.lines().zip(&order_a) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let p: Vec<f64> = v["probabilities"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_close(&p, &want[2 * k..2 * k + 2], 1e-6);
    }

    // SplitType None: each object is one request (a JSON document here)
    std::fs::create_dir_all(d.join("docs")).unwrap();
    let inst: Vec<Vec<f64>> = sample.iter().map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    std::fs::write(d.join("docs/all.json"), serde_json::to_vec(&serde_json::json!({ "instances": inst })).unwrap())
        .unwrap();
    ok(batch(d, &b, &["-i", "docs", "-o", "docs-out", "--split-type", "None", "--content-type", "application/json"]));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("docs-out/all.json.out")).unwrap()).unwrap();
    let p = doc["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap();
    let p: Vec<f64> = p["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_close(&p, &want, 1e-6);
}

#[test]
fn input_filter_join_and_output_filter_keep_an_id_column() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    let (plain, order) = rows(&sample, 300, 1);
    let with_id: String = plain.lines().enumerate().map(|(i, l)| format!("id-{i},{l}\n")).collect();
    std::fs::write(d.join("ids.csv"), &with_id).unwrap();
    // the model would refuse 31 columns: the filter drops the ID first
    ok(batch(
        d,
        &b,
        &[
            "-i",
            "ids.csv",
            "-o",
            "o",
            "--input-filter",
            "$[1:]",
            "--join-source",
            "Input",
            "--output-filter",
            "$[0,-1]",
        ],
    ));
    let out = std::fs::read_to_string(d.join("o/ids.csv.out")).unwrap();
    assert_eq!(out.lines().count(), 300);
    for (i, (line, k)) in out.lines().zip(&order).enumerate() {
        let (id, p1) = line.split_once(',').unwrap();
        assert_eq!(id, format!("id-{i}"));
        assert_close(&[p1.parse().unwrap()], &want[2 * k + 1..2 * k + 2], 1e-6);
    }
    // JSON Lines: the features of each object, joined back under SageMakerOutput
    let jl: String =
        order.iter().enumerate().map(|(i, k)| format!("{{\"id\":{i},\"features\":[{}]}}\n", sample[*k])).collect();
    std::fs::write(d.join("ids.jsonl"), jl).unwrap();
    ok(batch(
        d,
        &b,
        &[
            "-i",
            "ids.jsonl",
            "-o",
            "j",
            "--input-filter",
            "$.features",
            "--join-source",
            "input",
            "--output-filter",
            "$['id','SageMakerOutput']",
        ],
    ));
    let out = std::fs::read_to_string(d.join("j/ids.jsonl.out")).unwrap();
    for (i, (line, k)) in out.lines().zip(&order).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], i);
        assert!(v.get("features").is_none(), "{v}");
        let p: Vec<f64> =
            v["SageMakerOutput"]["probabilities"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_close(&p, &want[2 * k..2 * k + 2], 1e-6);
    }
    // a filter that selects nothing usable is named
    let err = fails(batch(d, &b, &["-i", "ids.csv", "-o", "bad", "--input-filter", "$[40:]"]), 4);
    assert!(err.contains("ids.csv: line 1:"), "{err}");
}

#[test]
fn a_malformed_record_is_named_by_object_and_line_or_skipped_with_a_report() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    std::fs::create_dir_all(d.join("in")).unwrap();
    let (good, order) = rows(&sample, 2400, 0);
    std::fs::write(d.join("in/a.csv"), &good).unwrap();
    let mut bad = good.clone();
    bad.push_str("1,2,3\n");
    bad.push_str(&good[..good.find('\n').unwrap() + 1]);
    std::fs::write(d.join("in/b.csv"), &bad).unwrap();
    let err = fails(batch(d, &b, &["-i", "in", "-o", "out", "--max-records", "1000"]), 4);
    assert!(err.contains("b.csv: line 2401:") && err.contains("has 3 values"), "{err}");
    assert!(err.contains("--skip-malformed"), "{err}");
    assert!(!d.join("out/b.csv.out").exists());
    no_partial_under_final_names(&d.join("out"));

    // skipped: an empty answer line keeps the lines aligned, and a report says which
    let o = batch(d, &b, &["-i", "in", "-o", "out", "--max-records", "1000", "--skip-malformed"]);
    let err = stderr(&o);
    ok(o);
    assert!(err.contains("1 malformed record(s) skipped") && err.contains("b.csv.out.errors.jsonl"), "{err}");
    let out = std::fs::read_to_string(d.join("out/b.csv.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2402);
    assert_eq!(lines[2400], "");
    let mut order_b = order.clone();
    order_b.push(order[0]);
    let kept: String = lines.iter().enumerate().filter(|(i, _)| *i != 2400).map(|(_, l)| format!("{l}\n")).collect();
    check_csv(&kept, &order_b, &want);
    check_csv(&std::fs::read_to_string(d.join("out/a.csv.out")).unwrap(), &order, &want);
    let report = std::fs::read_to_string(d.join("out/b.csv.out.errors.jsonl")).unwrap();
    let r: serde_json::Value = serde_json::from_str(report.lines().next().unwrap()).unwrap();
    assert_eq!((r["object"].as_str(), r["line"].as_u64()), (Some("b.csv"), Some(2401)));
    assert!(r["error"].as_str().unwrap().contains("has 3 values"), "{r}");
    assert_eq!(report.lines().count(), 1);

    // a record that is not UTF-8, in JSON Lines, is named too
    std::fs::write(d.join("x.jsonl"), b"[1,2]\n\xff\xfe\n").unwrap();
    let err = fails(batch(d, &b, &["-i", "x.jsonl", "-o", "x"]), 4);
    assert!(err.contains("x.jsonl: line 1:"), "{err}");
}

#[test]
fn a_killed_job_run_again_keeps_complete_outputs_and_redoes_the_rest() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    std::fs::create_dir_all(d.join("in")).unwrap();
    let n = 40_000;
    let mut orders = Vec::new();
    for i in 0..8 {
        let (t, o) = rows(&sample, n, i);
        std::fs::write(d.join(format!("in/p{i}.csv")), t).unwrap();
        orders.push(o);
    }
    let mut child = Command::new(bin("neorun"))
        .current_dir(d)
        .args(["batch", b.to_str().unwrap(), "--trusted-key", "k.pub", "-i", "in", "-o", "out"])
        .args(["--max-concurrent-transforms", "1", "--max-records", "64"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !d.join("out/p0.csv.out").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no output after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    let status = child.wait().unwrap();
    let killed_mid_job = !status.success();
    // whatever is under a final name is complete
    for (i, o) in orders.iter().enumerate() {
        let p = d.join(format!("out/p{i}.csv.out"));
        if p.exists() {
            check_csv(&std::fs::read_to_string(&p).unwrap(), o, &want);
        }
    }
    // an input changed since its output was written (if it was) is redone
    let (t, o) = rows(&sample, 100, 7);
    std::fs::write(d.join("in/p7.csv"), t).unwrap();
    orders[7] = o;
    let o = batch(d, &b, &["-i", "in", "-o", "out"]);
    let err = stderr(&o);
    ok(o);
    // p0 was complete when the job was killed: it is kept
    assert!(err.contains("already complete from an earlier run"), "nothing was kept: {err}");
    if killed_mid_job {
        assert!(!err.contains("\n8 object(s)") && !err.starts_with("8 object(s)"), "nothing was kept: {err}");
    }
    for (i, o) in orders.iter().enumerate() {
        check_csv(&std::fs::read_to_string(d.join(format!("out/p{i}.csv.out"))).unwrap(), o, &want);
    }
    let names: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    // run once more: everything is complete, nothing is redone
    let o = batch(d, &b, &["-i", "in", "-o", "out"]);
    let err = stderr(&o);
    ok(o);
    assert!(err.contains("0 object(s), 0 records") && err.contains("8 object(s) already complete"), "{err}");

    // an output file the job did not write is never overwritten
    std::fs::create_dir_all(d.join("other")).unwrap();
    std::fs::write(d.join("other/p3.csv.out"), "mine\n").unwrap();
    let err = fails(batch(d, &b, &["-i", "in", "-o", "other"]), 1);
    assert!(err.contains("p3.csv.out exists and this job did not write it"), "{err}");
    assert_eq!(std::fs::read_to_string(d.join("other/p3.csv.out")).unwrap(), "mine\n");
}

#[test]
fn a_full_disk_leaves_nothing_under_the_final_name() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, _) = xgb(d);
    let (t, _) = rows(&sample, 20_000, 0);
    std::fs::write(d.join("in.csv"), t).unwrap();
    // files over 64 KiB cannot be written (RLIMIT_FSIZE; SIGXFSZ ignored, so
    // the write fails with EFBIG as on a full disk)
    let o = Command::new("bash")
        .current_dir(d)
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 64; exec \"$0\" batch \"$1\" --trusted-key k.pub -i in.csv -o out",
            bin("neorun").to_str().unwrap(),
            b.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = fails(o, 1);
    assert!(err.contains("writing") && err.contains("in.csv.out") && err.contains("File too large"), "{err}");
    let left: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(left.iter().all(|n| n.starts_with(".neorun-batch")), "{left:?}");
}

#[test]
fn bad_flags_and_inputs_are_named() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, _) = xgb(d);
    let (t, _) = rows(&sample, 10, 0);
    std::fs::create_dir_all(d.join("in")).unwrap();
    std::fs::write(d.join("in/a.csv"), &t).unwrap();
    std::fs::write(d.join("a.csv.gz"), gzip(t.as_bytes())).unwrap();
    std::fs::write(d.join("plain.csv"), &t).unwrap();
    let cases: &[(&[&str], i32, &[&str])] = &[
        (&["-i", "missing", "-o", "o1"], 1, &["input missing", "No such file"]),
        (&["-i", "in", "-o", "in/out"], 1, &["inside the input"]),
        (&["-i", "in", "-o", "o2", "--content-type", "image/png"], 2, &["--content-type", "text/csv"]),
        (&["-i", "in", "-o", "o3", "--accept", "text/html"], 2, &["--accept"]),
        (&["-i", "in", "-o", "o4", "--input-filter", "$[1"], 2, &["--input-filter"]),
        (
            &["-i", "in", "-o", "o5", "--join-source", "input", "--accept", "application/jsonlines"],
            2,
            &["Accept must be"],
        ),
        (&["-i", "in", "-o", "o6", "--split-type", "none", "--join-source", "input"], 2, &["SplitType Line"]),
        (&["-i", "in", "-o", "o7", "--max-payload-in-mb", "101"], 2, &["at most 100"]),
        (&["-i", "a.csv.gz", "-o", "o8"], 1, &["gzip-compressed", "--compression-type gzip"]),
        (&["-i", "plain.csv", "-o", "o9", "--compression-type", "gzip"], 1, &["not a complete gzip stream"]),
        (&["-i", "in", "-o", "o10", "--compression-type", "zstd"], 2, &["zstd"]),
    ];
    for (args, code, needles) in cases {
        let o = batch(d, &b, args);
        let code_got = o.status.code();
        let err = stderr(&o);
        assert_eq!(code_got, Some(*code), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
        }
        let o = args[args.iter().position(|a| *a == "-o").unwrap() + 1];
        if let Ok(rd) = std::fs::read_dir(d.join(o)) {
            let outs: Vec<_> =
                rd.map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".out")).collect();
            assert!(outs.is_empty(), "{args:?}: {outs:?}");
        }
    }
    // a record over MaxPayloadInMB, and an object over it with SplitType None
    let long = format!("{}\n", vec!["1.0"; 400_000].join(","));
    std::fs::write(d.join("long.csv"), long).unwrap();
    let err = fails(batch(d, &b, &["-i", "long.csv", "-o", "o11", "--max-payload-in-mb", "1"]), 1);
    assert!(err.contains("long.csv: line 1:") && err.contains("MaxPayloadInMB"), "{err}");
    let err =
        fails(batch(d, &b, &["-i", "long.csv", "-o", "o12", "--max-payload-in-mb", "1", "--split-type", "none"]), 1);
    assert!(err.contains("over MaxPayloadInMB") && err.contains("SplitType is None"), "{err}");
}

/// `neorun batch` with a model from the registry, run with `env`.
fn batch_env(d: &Path, bundle: &Path, args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let mut a = vec!["batch", bundle.to_str().unwrap(), "--trusted-key", "k.pub"];
    a.extend_from_slice(args);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run("neorun", d, &a, &env, None)
}

#[test]
fn s3_prefixes_in_and_out_on_an_s3_compatible_store() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    let s3 = S3Server::start();
    let (a, order_a) = rows(&sample, 2400, 0);
    let (c, order_c) = rows(&sample, 777, 3);
    std::fs::write(d.join("a.csv"), &a).unwrap();
    std::fs::write(d.join("c.csv.gz"), gzip(c.as_bytes())).unwrap();
    s3.py(
        "s3.create_bucket(Bucket='inputs'); s3.create_bucket(Bucket='outputs')\n\
         s3.upload_file(sys.argv[1] + '/a.csv', 'inputs', 'data/part-a.csv')\n\
         s3.upload_file(sys.argv[1] + '/a.csv', 'inputs', 'data/other.csv')\n\
         s3.put_object(Bucket='outputs', Key='results-elsewhere/keep.txt', Body=b'not ours')",
        &[d.to_str().unwrap()],
    );
    let env = s3.env();
    // SageMaker's S3Prefix: every key starting with data/part- (not data/other.csv)
    let o =
        batch_env(d, &b, &["-i", "s3://inputs/data/part-", "-o", "s3://outputs/results", "--max-records", "100"], &env);
    let err = stderr(&o);
    ok(o);
    assert!(err.contains("1 object(s), 2400 records") && err.contains("s3://outputs/results"), "{err}");
    let keys = s3.py("print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='outputs')['Contents']))", &[]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys, ["results-elsewhere/keep.txt", "results/.neorun-batch.json", "results/part-a.csv.out"]);
    let got = s3.py(
        "sys.stdout.write(s3.get_object(Bucket='outputs', Key='results/part-a.csv.out')['Body'].read().decode())",
        &[],
    );
    check_csv(&got, &order_a, &want);

    // gzip, from S3 to a local directory, and back to S3 from a local file
    s3.py("s3.upload_file(sys.argv[1] + '/c.csv.gz', 'inputs', 'gz/c.csv.gz')", &[d.to_str().unwrap()]);
    ok(batch_env(d, &b, &["-i", "s3://inputs/gz/", "-o", "local-out", "--compression-type", "gzip"], &env));
    check_csv(&std::fs::read_to_string(d.join("local-out/c.csv.gz.out")).unwrap(), &order_c, &want);
    ok(batch_env(d, &b, &["-i", "file://a.csv", "-o", "s3://outputs/from-local/"], &env));
    let got = s3.py(
        "sys.stdout.write(s3.get_object(Bucket='outputs', Key='from-local/a.csv.out')['Body'].read().decode())",
        &[],
    );
    check_csv(&got, &order_a, &want);

    // run again: complete outputs are kept
    let o = batch_env(d, &b, &["-i", "s3://inputs/data/part-", "-o", "s3://outputs/results"], &env);
    let err = stderr(&o);
    ok(o);
    assert!(err.contains("1 object(s) already complete"), "{err}");

    // a malformed record: named by its S3 object and line; nothing under the final name
    let mut bad = a.clone();
    bad.insert_str(bad.find('\n').unwrap() + 1, "1,2\n");
    std::fs::write(d.join("bad.csv"), &bad).unwrap();
    s3.py("s3.upload_file(sys.argv[1] + '/bad.csv', 'inputs', 'bad/x.csv')", &[d.to_str().unwrap()]);
    let err = fails(batch_env(d, &b, &["-i", "s3://inputs/bad/", "-o", "s3://outputs/bad-out"], &env), 4);
    assert!(err.contains("x.csv: line 2:") && err.contains("has 2 values"), "{err}");
    let n = s3.py("print(s3.list_objects_v2(Bucket='outputs', Prefix='bad-out/x.csv.out').get('KeyCount', 0))", &[]);
    assert_eq!(n.trim(), "0");

    // an output this job did not write is never overwritten
    s3.py("s3.put_object(Bucket='outputs', Key='theirs/part-a.csv.out', Body=b'mine')", &[]);
    let err = fails(batch_env(d, &b, &["-i", "s3://inputs/data/part-", "-o", "s3://outputs/theirs"], &env), 1);
    assert!(err.contains("s3://outputs/theirs/part-a.csv.out exists and this job did not write it"), "{err}");

    // a bucket that is not there, a prefix with nothing under it
    let err = fails(batch_env(d, &b, &["-i", "s3://no-such-bucket/x", "-o", "o"], &env), 1);
    assert!(err.contains("s3://no-such-bucket") && err.contains("NoSuchBucket"), "{err}");
    let err = fails(batch_env(d, &b, &["-i", "s3://inputs/nothing-here/", "-o", "o"], &env), 1);
    assert!(err.contains("s3://inputs/nothing-here/: no object to transform"), "{err}");
    let err = fails(batch_env(d, &b, &["-i", "gs://in/x", "-o", "o"], &env), 2);
    assert!(err.contains("unknown scheme"), "{err}");
}

#[test]
fn an_s3_bucket_the_credentials_cannot_read_is_named() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, _) = xgb(d);
    // two requests without credentials (the set-up), then keys are checked
    let s3 = S3Server::start_with_auth(2);
    let (t, _) = rows(&sample, 10, 0);
    std::fs::write(d.join("a.csv"), &t).unwrap();
    s3.py(
        "s3.create_bucket(Bucket='locked'); s3.upload_file(sys.argv[1] + '/a.csv', 'locked', 'x/a.csv')",
        &[d.to_str().unwrap()],
    );
    let mut env = s3.env();
    env.push(("NEORUN_S3_RETRY_SECONDS", "2".into()));
    let err = fails(batch_env(d, &b, &["-i", "s3://locked/x/", "-o", "out"], &env), 1);
    assert!(err.contains("s3://locked/x") && err.contains("InvalidAccessKeyId"), "{err}");
    assert!(err.contains("hint: the credentials may not read or write this bucket"), "{err}");
    assert!(
        !d.join("out").exists()
            || std::fs::read_dir(d.join("out"))
                .unwrap()
                .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".out") })
    );
    // and as an output
    let err = fails(batch_env(d, &b, &["-i", "a.csv", "-o", "s3://locked/y/"], &env), 1);
    assert!(err.contains("s3://locked/y") && err.contains("InvalidAccessKeyId"), "{err}");
}

#[test]
fn an_s3_store_going_away_mid_job_fails_the_job_and_says_so() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, _) = xgb(d);
    let mut s3 = S3Server::start();
    let (t, _) = rows(&sample, 40_000, 0);
    std::fs::write(d.join("p.csv"), &t).unwrap();
    s3.py(
        "s3.create_bucket(Bucket='inputs')\nfor i in range(8): s3.upload_file(sys.argv[1] + '/p.csv', 'inputs', f'p/{i}.csv')",
        &[d.to_str().unwrap()],
    );
    let mut env = s3.env();
    env.push(("NEORUN_S3_RETRY_SECONDS", "2".into()));
    let mut cmd = Command::new(bin("neorun"));
    cmd.current_dir(d)
        .args(["batch", b.to_str().unwrap(), "--trusted-key", "k.pub", "-i", "s3://inputs/p/", "-o", "out"])
        .args(["--max-concurrent-transforms", "1", "--max-records", "64"])
        .stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !d.join("out/0.csv.out").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no output after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    s3.kill();
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed().as_secs() < 90, "the job did not give up on a store that is gone");
    let err = fails(o, 1);
    assert!(err.contains("s3://inputs/p/") && err.contains("the store did not answer"), "{err}");
    // what is under a final name is complete; the rest is not there
    let left: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".partial")), "{left:?}");
    assert!(!left.contains(&"7.csv.out".to_string()), "{left:?}");
}

/// Runs `tests/serve/transform.py MODE` (stock boto3) and returns its JSON.
fn transform_py(mode: &str, base: &str, d: &Path, s3: &S3Server) -> serde_json::Value {
    let out = Command::new(venv_python())
        .args([
            root().join("tests/serve/transform.py").to_str().unwrap(),
            mode,
            base,
            d.to_str().unwrap(),
            &s3.endpoint,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "transform.py {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const CREDS: &str = "[default]\naws_access_key_id = AKIDNEORUNTEST\naws_secret_access_key = neorun/test+secret\n";

#[test]
fn transform_jobs_from_boto3_unchanged() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    std::fs::rename(&b, d.join("xgb.neo")).unwrap();
    std::fs::write(d.join("creds"), CREDS).unwrap();
    let s3 = S3Server::start();
    let (plain, order) = rows(&sample, 3000, 2);
    let with_id: String = plain.lines().enumerate().map(|(i, l)| format!("id-{i},{l}\n")).collect();
    std::fs::write(d.join("ids.csv"), &with_id).unwrap();
    let mut bad = plain.clone();
    bad.insert_str(bad.find('\n').unwrap() + 1, "1,2,x\n");
    std::fs::write(d.join("bad.csv"), &bad).unwrap();
    let (big, _) = rows(&sample, 100_000, 0);
    std::fs::write(d.join("big.csv"), &big).unwrap();
    s3.py(
        "s3.create_bucket(Bucket='inputs'); s3.create_bucket(Bucket='outputs')\n\
         s3.upload_file(sys.argv[1] + '/ids.csv', 'inputs', 'ids/ids.csv')\n\
         s3.upload_file(sys.argv[1] + '/bad.csv', 'inputs', 'bad/x.csv')\n\
         for i in range(4): s3.upload_file(sys.argv[1] + '/big.csv', 'inputs', f'big/{i}.csv')",
        &[d.to_str().unwrap()],
    );
    let server = serve_with_env(&bin("neorun"), d, &["--state-dir", "state", "--access-keys", "creds"], &s3.env());
    let r = transform_py("run", &server.base, d, &s3);

    // the job: the ID dropped before the model, joined back, filtered to ID + p1
    let desc = &r["describe"];
    assert_eq!(desc["TransformJobStatus"], "Completed", "{desc}");
    assert_eq!(desc["TransformJobArn"], r["arn"]);
    assert_eq!(desc["ModelName"], "xgb");
    assert_eq!(desc["DataProcessing"]["JoinSource"], "Input");
    assert_eq!(desc["TransformOutput"]["S3OutputPath"], "s3://outputs/scored/");
    assert!(desc["TransformStartTime"].is_string() && desc["TransformEndTime"].is_string(), "{desc}");
    let out = r["output"].as_str().unwrap();
    assert_eq!(out.lines().count(), 3000);
    for (i, (line, k)) in out.lines().zip(&order).enumerate() {
        let (id, p1) = line.split_once(',').unwrap();
        assert_eq!(id, format!("id-{i}"));
        assert_close(&[p1.parse().unwrap()], &want[2 * k + 1..2 * k + 2], 1e-6);
    }
    let listed: Vec<&str> =
        r["list"].as_array().unwrap().iter().map(|j| j["TransformJobName"].as_str().unwrap()).collect();
    assert_eq!(listed, ["score"], "{}", r["list"]);
    assert_eq!(r["list"][0]["TransformJobStatus"], "Completed");
    // every job, a page at a time, newest first (the refused ones were never made)
    assert_eq!(r["paginated"], serde_json::json!(["stopme", "malformed", "nobucket", "score"]));

    // refused at once, naming the field
    let code = |k: &str| (r[k][0].as_str().unwrap_or("").to_string(), r[k][1].as_str().unwrap_or("").to_string());
    assert_eq!(code("same_name").0, "ResourceInUse", "{}", r["same_name"]);
    assert!(code("no_model").1.contains("Could not find model \"nope\""), "{}", r["no_model"]);
    assert!(code("bad_split").1.contains("RecordIO is not supported"), "{}", r["bad_split"]);
    assert!(code("bad_filter").1.contains("DataProcessing.InputFilter"), "{}", r["bad_filter"]);
    assert!(code("relative").1.contains("S3Uri") && code("relative").1.contains("absolute"), "{}", r["relative"]);
    assert!(code("describe_missing").1.contains("Could not find transform job"), "{}", r["describe_missing"]);
    assert!(code("stop_completed").1.contains("Completed and cannot be stopped"), "{}", r["stop_completed"]);
    // failed while running, with SageMaker's FailureReason saying why
    assert_eq!(r["nobucket"]["TransformJobStatus"], "Failed");
    assert!(r["nobucket"]["FailureReason"].as_str().unwrap().contains("NoSuchBucket"), "{}", r["nobucket"]);
    assert_eq!(r["malformed"]["TransformJobStatus"], "Failed");
    let why = r["malformed"]["FailureReason"].as_str().unwrap();
    assert!(why.contains("s3://inputs/bad/x.csv: line 2:"), "{why}");
    assert_eq!(r["malformed_outputs"], 0);
    assert_eq!(r["stopped"]["TransformJobStatus"], "Stopped", "{}", r["stopped"]);
    // the journal says who did what
    let journal = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
    assert!(journal.contains("\"op\":\"CreateTransformJob\"") && journal.contains("\"op\":\"StopTransformJob\""));
}

#[test]
fn a_transform_job_survives_kill_9_of_the_server() {
    let dir = scratch();
    let d = dir.path();
    let (b, sample, want) = xgb(d);
    std::fs::rename(&b, d.join("xgb.neo")).unwrap();
    std::fs::write(d.join("creds"), CREDS).unwrap();
    let s3 = S3Server::start();
    let mut orders = Vec::new();
    for i in 0..8 {
        let (t, o) = rows(&sample, 100_000, i);
        std::fs::write(d.join(format!("{i}.csv")), t).unwrap();
        orders.push(o);
    }
    s3.py(
        "s3.create_bucket(Bucket='inputs'); s3.create_bucket(Bucket='outputs')\n\
         for i in range(8): s3.upload_file(f'{sys.argv[1]}/{i}.csv', 'inputs', f'big/{i}.csv')",
        &[d.to_str().unwrap()],
    );
    let args = ["--state-dir", "state", "--access-keys", "creds"];
    let mut server = serve_with_env(&bin("neorun"), d, &args, &s3.env());
    transform_py("start", &server.base, d, &s3);
    std::thread::sleep(std::time::Duration::from_millis(800));
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("state/transform-jobs/big.json")).unwrap()).unwrap();
    let mid_job = rec["TransformJobStatus"] == "InProgress";

    let server = serve_with_env(&bin("neorun"), d, &args, &s3.env());
    let r = transform_py("wait", &server.base, d, &s3);
    assert_eq!(r["describe"]["TransformJobStatus"], "Completed", "{}", r["describe"]);
    let mut keys: Vec<&str> = r["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    keys.sort_unstable();
    let mut expect: Vec<String> = (0..8).map(|i| format!("big/{i}.csv.out")).collect();
    expect.push("big/.neorun-batch.json".into());
    expect.sort_unstable();
    assert_eq!(keys, expect.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, o) in orders.iter().enumerate() {
        check_csv(r["outputs"][format!("big/{i}.csv.out")].as_str().unwrap(), o, &want);
    }
    let journal = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
    if mid_job {
        assert!(journal.contains("\"op\":\"TransformJobResumed\""), "{journal}");
    }
    eprintln!("killed mid-job: {mid_job}");
}
