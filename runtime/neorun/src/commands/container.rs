//! `neorun container serve`: the entry point of a neorun image. SageMaker
//! starts an inference container as `docker run IMAGE serve` with the
//! model extracted under `/opt/ml/model` and expects `/ping` and
//! `/invocations` on port 8080; KServe's storage initializer puts the model
//! under `/mnt/models` and a `ServingRuntime` passes the flags. This finds
//! the bundles there and runs `neorun serve` on them on all addresses, so
//! the image needs no shell.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::cli::{Cli, Command, ContainerArgs};
use crate::exit::Failure;

/// The bundles (`*.neo`) in the model directory, or one level below it
/// (an archive extracted with its directory), in name order.
fn bundles(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let list = |d: &Path| -> std::io::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)?.flatten().map(|e| e.path()).collect();
        v.sort();
        Ok(v)
    };
    let top = list(dir).map_err(|e| {
        Failure::Usage(format!(
            "the model directory {}: {e}; SageMaker extracts the model there (ModelDataUrl's model.tar.gz holding NAME.neo); elsewhere set NEORUN_MODEL_DIR or --model-dir",
            dir.display()
        ))
    })?;
    let is_bundle = |p: &PathBuf| p.is_file() && p.extension().is_some_and(|e| e == "neo");
    let mut found: Vec<PathBuf> = top.iter().filter(|p| is_bundle(p)).cloned().collect();
    if found.is_empty() {
        for sub in top.iter().filter(|p| p.is_dir()) {
            found.extend(list(sub).unwrap_or_default().into_iter().filter(|p| is_bundle(p)));
        }
    }
    if found.is_empty() {
        let seen: Vec<String> =
            top.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).take(10).collect();
        return Err(Failure::Usage(format!(
            "no bundle (*.neo) in {} (it holds: {}); put the neoc bundle in the model archive (tar czf model.tar.gz NAME.neo)",
            dir.display(),
            if seen.is_empty() { "nothing".to_string() } else { seen.join(", ") }
        )));
    }
    Ok(found)
}

pub fn run(a: ContainerArgs) -> Result<(), Failure> {
    if a.action != "serve" {
        return Err(Failure::Usage(format!(
            "this image serves models: run it with `serve` (as SageMaker does), not {:?}; training is not something neorun does",
            a.action
        )));
    }
    let found = bundles(&a.model_dir)?;
    let mut argv: Vec<String> = vec!["neorun".into(), "serve".into()];
    argv.extend(found.iter().map(|p| p.display().to_string()));
    argv.extend(["--host".into(), a.host.clone(), "--port".into(), a.port.to_string()]);
    let mut keys = a.load.trusted_keys.clone();
    if keys.is_empty() && a.image_key.is_file() {
        keys.push(a.image_key.clone());
    }
    if keys.is_empty() && !a.load.allow_unsigned {
        return Err(Failure::Usage(format!(
            "no key is trusted: the image has none at {} (contrib/container/build.sh --key KEY.pub puts it there) and NEORUN_TRUSTED_KEY names none (a public key mounted from a secret or config map)",
            a.image_key.display()
        )));
    }
    for k in keys {
        argv.extend(["--trusted-key".into(), k.display().to_string()]);
    }
    for (on, flag) in [
        (a.load.allow_unsigned, "--allow-unsigned"),
        (a.load.cpu_fallback, "--cpu-fallback"),
        (a.load.engine_fallback, "--engine-fallback"),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    argv.extend(["--kernels".into(), a.load.kernels.clone()]);
    argv.extend(a.serve.iter().cloned());
    let cli = Cli::try_parse_from(&argv).map_err(|e| Failure::Usage(format!("the serve flags after --: {e}")))?;
    let Command::Serve(s) = cli.command else {
        return Err(Failure::Usage("internal: the container's serve command did not parse as serve".into()));
    };
    let names: Vec<String> =
        found.iter().map(|p| p.strip_prefix(&a.model_dir).unwrap_or(p).display().to_string()).collect();
    eprintln!("neorun container: serving {} from {}", names.join(", "), a.model_dir.display());
    crate::settings::Serve::resolve(*s).and_then(crate::commands::serve::run)
}
