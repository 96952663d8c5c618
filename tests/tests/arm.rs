//! The aarch64 and armv7 `neorun`, cross-built with Debian's toolchains, run
//! under qemu-aarch64 / qemu-arm on bundles compiled on this x86 host for
//! `rasp4b`, `ml_m6g` (fp16) and `armv7`. Emulation checks correctness only;
//! it says nothing about ARM speed.
//!
//! `.ci/run` builds the binaries (cargo build --release --target
//! aarch64-unknown-linux-gnu / armv7-unknown-linux-gnueabihf -p neorun);
//! NEOC_AARCH64_NEORUN and NEOC_ARMV7_NEORUN override their paths.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use neoc_e2e::*;

/// A cross-built neorun: `$ENV`, else target/TRIPLE/release/neorun.
fn cross_neorun(env: &str, triple: &str, packages: &str) -> PathBuf {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(format!("target/{triple}/release/neorun")));
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build --release --target {triple} -p neorun` \
         (needs {packages}, qemu-user and the rustup target; .ci/run installs them)",
        p.display()
    );
    assert_fresh(&p);
    p
}

fn arm_neorun() -> PathBuf {
    cross_neorun("NEOC_AARCH64_NEORUN", "aarch64-unknown-linux-gnu", "gcc-aarch64-linux-gnu, libc6-dev-arm64-cross")
}

fn armv7_neorun() -> PathBuf {
    cross_neorun("NEOC_ARMV7_NEORUN", "armv7-unknown-linux-gnueabihf", "gcc-arm-linux-gnueabihf, libc6-dev-armhf-cross")
}

fn predict_data(out: &std::process::Output, idx: usize, what: &str) -> Vec<f64> {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["outputs"][idx]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

/// The sample models with their sample input, tolerance and compared output.
const SAMPLES: [(&str, &str, f64, usize); 3] = [
    ("fraud-xgb:1", "models/fraud-xgb/sample.csv", 1e-6, 1),
    ("fraud-mlp:1", "models/fraud-mlp/sample.csv", 1e-5, 0),
    ("image-cnn:1", "models/image-cnn/sample.json", 1e-4, 0),
];

/// Runs a cross-built binary under qemu-user (`qemu-aarch64`, `qemu-arm`)
/// with the Debian cross sysroot.
fn emulate(qemu: &str, sysroot: &str, bin: PathBuf, args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(qemu)
        .current_dir(cwd)
        .args(["-L", sysroot, bin.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{qemu} must be installed (apt-get install qemu-user): {e}"))
}

fn qemu(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    emulate("qemu-aarch64", "/usr/aarch64-linux-gnu", arm_neorun(), args, cwd)
}

#[test]
fn aarch64_neorun_predicts_rasp4b_bundles_under_qemu() {
    if cfg!(target_arch = "aarch64") {
        return; // on an ARM host the native tests already cover this
    }
    let dir = scratch();
    let d = dir.path();
    for (model, sample, tol, idx) in SAMPLES {
        let b = compile(d, model, "rasp4b", &[]);
        let input = root().join(sample);
        let args = ["predict", b.to_str().unwrap(), "--trusted-key", "k.pub", "--input", input.to_str().unwrap()];
        let got = predict_data(&qemu(&args, d), idx, model);
        assert_close(&got, &expected(model.split(':').next().unwrap()), tol);
    }
    // and it refuses an x86 bundle, saying both sides
    let b = compile(d, "fraud-xgb:1", "ml_c5", &[]);
    let out = qemu(&["check", b.to_str().unwrap(), "--trusted-key", "k.pub"], d);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compiled for ml_c5 (x86_64), this host is aarch64"), "{err}");
}

#[test]
fn aarch64_neorun_serves_under_qemu_to_a_host_client() {
    if cfg!(target_arch = "aarch64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let b = compile(d, "fraud-xgb:1", "rasp4b", &[]);
    let mut child = Command::new("qemu-aarch64")
        .current_dir(d)
        .args([
            "-L",
            "/usr/aarch64-linux-gnu",
            arm_neorun().to_str().unwrap(),
            "serve",
            b.to_str().unwrap(),
            "--trusted-key",
            "k.pub",
            "--port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let csv = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    let r = ureq::post(&format!("{base}/invocations")).set("Content-Type", "text/csv").send_string(&csv);
    let _ = child.kill();
    let _ = child.wait();
    let body = r.unwrap().into_string().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: Vec<f64> = doc["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&got, &expected("fraud-xgb"), 1e-6);
}

#[test]
fn fp16_bundles_run_on_aarch64_fp16_kernels_under_qemu() {
    if cfg!(target_arch = "aarch64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    // ml_m6g (Graviton2) computes in fp16 by default; qemu's CPU has FEAT_FP16,
    // so neorun takes tract's aarch64 fp16 kernels
    for (model, sample) in
        [("fraud-mlp:1", "models/fraud-mlp/sample.csv"), ("image-cnn:1", "models/image-cnn/sample.json")]
    {
        let b = compile(d, model, "ml_m6g", &[]);
        let input = root().join(sample);
        let args = ["predict", b.to_str().unwrap(), "--trusted-key", "k.pub", "--input", input.to_str().unwrap()];
        let got = predict_data(&qemu(&args, d), 0, model);
        let want = expected(model.split(':').next().unwrap());
        assert_close(&got, &want, 1e-2);
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        assert!(worst > 1e-7, "{model}: outputs equal fp32 ones to {worst:e}: the fp16 path was not taken");
    }
}

#[test]
fn jetson_orin_bundles_name_their_gpu_and_fall_back_to_the_cpu_only_when_told() {
    if cfg!(target_arch = "aarch64") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    // jetson_orin: the model for its Ampere GPU (CUDA sm_87), fp16, with the
    // CPU model as fallback; the default aarch64 neorun has no CUDA
    let b = compile(d, "fraud-mlp:1", "jetson_orin", &[]);
    let out = qemu(&["check", b.to_str().unwrap(), "--trusted-key", "k.pub"], d);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("an NVIDIA GPU (CUDA) sm_87") && err.contains("built without CUDA support"), "{err}");
    assert!(err.contains("--cpu-fallback"), "{err}");
    let input = root().join("models/fraud-mlp/sample.csv");
    let args = [
        "predict",
        b.to_str().unwrap(),
        "--trusted-key",
        "k.pub",
        "--cpu-fallback",
        "--input",
        input.to_str().unwrap(),
    ];
    let got = predict_data(&qemu(&args, d), 0, "fraud-mlp (jetson_orin, CPU fallback)");
    assert_close(&got, &expected("fraud-mlp"), 1e-2);
}

#[test]
fn armv7_neorun_predicts_armv7_bundles_under_qemu() {
    if cfg!(target_arch = "arm") {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    for (model, sample, tol, idx) in SAMPLES {
        let b = compile(d, model, "armv7", &[]);
        let input = root().join(sample);
        let args = ["predict", b.to_str().unwrap(), "--trusted-key", "k.pub", "--input", input.to_str().unwrap()];
        let out = emulate("qemu-arm", "/usr/arm-linux-gnueabihf", armv7_neorun(), &args, d);
        let got = predict_data(&out, idx, model);
        assert_close(&got, &expected(model.split(':').next().unwrap()), tol);
    }
}

/// neoc's LSTM operator (`neoc_lstm`) on ARM: its NEON product kernel
/// (aarch64) and the baseline one (armv7), on the LSTMs of
/// `lstm_fixtures`, equal to onnxruntime's values on x86.
#[test]
fn lstm_bundles_run_on_aarch64_and_armv7_under_qemu() {
    if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    lstm_fixtures(d);
    for name in ["reverse", "bidir_lens", "peep_clip"] {
        let want: Vec<Vec<f64>> =
            serde_json::from_slice(&std::fs::read(d.join(format!("{name}.want.json"))).unwrap()).unwrap();
        for (target, qemu_bin, sysroot, bin) in [
            ("rasp4b", "qemu-aarch64", "/usr/aarch64-linux-gnu", arm_neorun()),
            ("armv7", "qemu-arm", "/usr/arm-linux-gnueabihf", armv7_neorun()),
        ] {
            let b = format!("{name}.{target}.neo");
            let tarball = format!("{name}.tar.gz");
            ok(run("neoc", d, &["compile", &tarball, "--target", target, "--key", "k.key", "-o", &b], &[], None));
            let request = format!("{name}.json");
            let args = ["predict", b.as_str(), "--trusted-key", "k.pub", "--input", request.as_str()];
            let out = emulate(qemu_bin, sysroot, bin, &args, d);
            for (k, w) in want.iter().enumerate() {
                assert_close(&predict_data(&out, k, &b), w, 1e-4);
            }
        }
    }
}

/// An ARM CPU's /proc/cpuinfo (a Cortex-A72, rasp4b's core).
const CORTEX_A72_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\nprocessor\t: 1\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n";

/// onnxruntime's aarch64 library, unpacked from its PyPI wheel by
/// tests/onnxruntime/fetch-aarch64.sh (.ci/run runs it); NEOC_ORT_AARCH64 overrides.
fn aarch64_onnxruntime() -> PathBuf {
    let p = std::env::var_os("NEOC_ORT_AARCH64")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/onnxruntime-aarch64"));
    let found = std::fs::read_dir(&p)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libonnxruntime.so")))
        .unwrap_or(false);
    assert!(found, "{}: no aarch64 libonnxruntime.so; run `bash tests/onnxruntime/fetch-aarch64.sh`", p.display());
    p
}

#[test]
fn aarch64_neorun_runs_onnxruntime_bundles_under_qemu_equal_to_x86() {
    if cfg!(target_arch = "aarch64") {
        return; // on an ARM host the onnxruntime suite covers this natively
    }
    let dir = scratch();
    let d = dir.path();
    // qemu-user 7.2 (Debian 12) hands the program the host's x86
    // /proc/cpuinfo; onnxruntime's CPU detection on aarch64 cannot parse it
    // and crashes at load (qemu 8.1 and later emulate the file). qemu looks
    // files up under its -L prefix first, so the prefix here is the Debian
    // cross sysroot plus an ARM cpuinfo.
    let sysroot = d.join("sysroot");
    std::fs::create_dir_all(sysroot.join("proc")).unwrap();
    for e in std::fs::read_dir("/usr/aarch64-linux-gnu").unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), sysroot.join(e.file_name())).unwrap();
    }
    std::fs::write(sysroot.join("proc/cpuinfo"), CORTEX_A72_CPUINFO).unwrap();
    let x86_ort = venv_site_packages().join("onnxruntime/capi");
    let arm_ort = aarch64_onnxruntime();
    let cnn = root().join("models/image-cnn/model.tar.gz");
    let sample = root().join("models/image-cnn/sample.json");
    // the x86 run of the same model through onnxruntime
    let x86_env = [("ORT_DYLIB_PATH", x86_ort.to_str().unwrap())];
    let compile = |target: &str, out: &str| {
        let args = [
            "compile",
            cnn.to_str().unwrap(),
            "--target",
            target,
            "--engine",
            "onnxruntime",
            "--key",
            "k.key",
            "-o",
            out,
        ];
        ok(run("neoc", d, &args, &x86_env, None))
    };
    compile("x86_64", "x86.neo");
    let x86 = ok(run(
        "neorun",
        d,
        &["predict", "x86.neo", "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()],
        &x86_env,
        None,
    ));
    let emulated = |args: &[&str]| {
        Command::new("qemu-aarch64")
            .current_dir(d)
            .env("ORT_DYLIB_PATH", &arm_ort)
            .args(["-L", sysroot.to_str().unwrap(), arm_neorun().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    for target in ["rasp4b", "ml_m6g"] {
        let bundle = format!("{target}.neo");
        compile(target, &bundle);
        let args = ["predict", bundle.as_str(), "--trusted-key", "k.pub", "--input", sample.to_str().unwrap()];
        let got = predict_data(&emulated(&args), 0, &format!("image-cnn on onnxruntime ({target}) under qemu"));
        let check = emulated(&["check", bundle.as_str(), "--trusted-key", "k.pub"]);
        let said = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success() && said.contains("onnxruntime"), "{said}");
        assert_close(&got, &response_data(&x86), 1e-5);
        assert_close(&got, &expected("image-cnn"), 1e-5);
    }
}
