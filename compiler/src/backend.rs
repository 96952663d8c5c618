//! External compiler backends: vendor compilers neoc drives as commands for
//! accelerators it cannot compile for itself. The one defined so far is AWS
//! Neuron (`neuronx-cc`, for Inferentia2 `ml_inf2`).
//!
//! The interface, which a wrapper script can also implement:
//!
//! - `CMD --version` prints the backend's version on its first line;
//! - `CMD compile INPUT --framework FRAMEWORK --target inf2 --output OUT.neff`
//!   compiles INPUT (the model file as it was imported: `.onnx`, NNEF, …;
//!   FRAMEWORK is `ONNX`, `NNEF`, …) and writes OUT.neff; exit status 0 on
//!   success, anything else with a reason on stderr.
//!
//! The command is `$NEOC_NEURON_CC`, else `neuronx-cc` on `PATH`. It runs in
//! a scratch directory, with a time limit (`NEOC_BACKEND_TIMEOUT` seconds,
//! default 1800); its version, the arguments (with file names relative to the
//! bundle) and the digest of its output go into the manifest.
//!
//! Stock `neuronx-cc` compiles XLA HLO (what torch-neuronx hands it), not
//! ONNX: with the SDK installed, point `NEOC_NEURON_CC` at a wrapper that
//! converts. None of this has been run on Inferentia hardware.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const NEURON_ENV: &str = "NEOC_NEURON_CC";
pub const NEURON_DEFAULT: &str = "neuronx-cc";
/// Largest output accepted from a backend.
const MAX_OUTPUT: u64 = 4 << 30;

/// A backend command that answered `--version`.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    pub command: PathBuf,
    pub version: String,
}

/// What a backend run produced.
pub struct Output {
    pub bytes: Vec<u8>,
    /// The command line as recorded: file names relative to the bundle.
    pub args: Vec<String>,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn timeout() -> Result<Duration> {
    match std::env::var("NEOC_BACKEND_TIMEOUT") {
        Ok(s) => Ok(Duration::from_secs(
            s.trim().parse().with_context(|| format!("NEOC_BACKEND_TIMEOUT={s:?} is not a number of seconds"))?,
        )),
        Err(_) => Ok(Duration::from_secs(1800)),
    }
}

/// Finds the Neuron compiler: `Ok(None)` when it is not installed.
pub fn find_neuron() -> Result<Option<Backend>> {
    let command = match std::env::var_os(NEURON_ENV) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("{NEURON_ENV}={} does not name a file", p.display());
            }
            p
        }
        None => match which(NEURON_DEFAULT) {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let dir = crate::cleanup::tempdir("neoc-backend-")?;
    let (code, stdout, stderr) = run(&command, &["--version".into()], dir.path(), Duration::from_secs(60))?;
    if code != Some(0) {
        bail!("`{} --version` failed ({}): {}", command.display(), exit_text(code), last_lines(&stderr));
    }
    let version = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .with_context(|| format!("`{} --version` printed nothing", command.display()))?
        .to_string();
    Ok(Some(Backend { name: NEURON_DEFAULT.into(), command, version }))
}

/// Compiles `input` for Inferentia2; returns the NEFF.
pub fn compile_neuron(b: &Backend, input: &Path, framework: &str) -> Result<Output> {
    let dir = crate::cleanup::tempdir("neoc-backend-")?;
    let file_name = input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let local = dir.path().join(&file_name);
    std::fs::copy(input, &local).with_context(|| format!("copying {} for {}", input.display(), b.name))?;
    let fw = framework.to_ascii_uppercase();
    let args: Vec<String> = ["compile", &file_name, "--framework", &fw, "--target", "inf2", "--output", "model.neff"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let limit = timeout()?;
    let (code, _, stderr) = run(&b.command, &args, dir.path(), limit)?;
    if code != Some(0) {
        bail!(
            "{} ({}) could not compile the model ({}):\n{}\nhint: pass --neuron-fallback cpu to build a CPU-only bundle for this target",
            b.name,
            b.version,
            exit_text(code),
            last_lines(&stderr)
        );
    }
    let out = dir.path().join("model.neff");
    let meta = std::fs::metadata(&out).with_context(|| format!("{} exited 0 but wrote no model.neff", b.name))?;
    if meta.len() == 0 {
        bail!("{} wrote an empty model.neff", b.name);
    }
    if meta.len() > MAX_OUTPUT {
        bail!("{} wrote a {} byte model.neff, more than neoc accepts", b.name, meta.len());
    }
    let mut recorded = vec![b.name.clone()];
    recorded.extend(args);
    Ok(Output { bytes: std::fs::read(&out)?, args: recorded })
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit status {c}"),
        None => "killed".into(),
    }
}

fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(12)..];
    if tail.is_empty() {
        "(nothing on stderr)".into()
    } else {
        tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    }
}

/// Runs a command in `dir` with a time limit; returns (exit code, stdout, stderr).
fn run(cmd: &Path, args: &[String], dir: &Path, limit: Duration) -> Result<(Option<i32>, String, String)> {
    let out_path = dir.join(".backend-stdout");
    let err_path = dir.join(".backend-stderr");
    let mut child = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("starting {}", cmd.display()))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            bail!(
                "{} did not finish in {} s and was stopped\nhint: raise NEOC_BACKEND_TIMEOUT (seconds)",
                cmd.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).to_string();
    Ok((status.code(), read(&out_path), read(&err_path)))
}
