//! `neoc`: compile models into signed bundles for a target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use neoc_bundle::container::{self, Signer, Trust};
use neoc_bundle::manifest::shape_string;
use neoc_bundle::sign::{self, SigningKey, TrustedKey};
use neoc_compiler::import::{self, Framework, ImportError};
use neoc_compiler::pipeline::{self, Mismatch, Options};
use neoc_compiler::printer::Printer;
use neoc_compiler::source;
use serde_json::json;

const EXIT_HELP: &str = "Exit status: 0 success; 1 error; 2 usage error; 3 verification failed \
(outputs beyond tolerance, or a bundle that does not verify); 4 model not supported (unsupported operators or framework).";

#[derive(Parser)]
#[command(name = "neoc", version, about = "Compile models into signed, verified bundles for edge devices", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile MODEL (a tarball, a model file, or NAME[:VERSION] in the local registry) for a target
    Compile(CompileArgs),
    /// Create a password-less minisign key pair: PREFIX.key and PREFIX.pub
    Keygen {
        /// Path prefix of the key files
        #[arg(short, long)]
        output: PathBuf,
        /// Overwrite existing key files
        #[arg(long)]
        force: bool,
    },
    /// Show a bundle's manifest (verifies digests; the signature too with --key)
    Inspect {
        bundle: PathBuf,
        /// Public key to check the signature with
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle's signature, digests and container against a public key
    Verify {
        bundle: PathBuf,
        /// Public key (minisign .pub)
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the targets neoc compiles for
    Targets {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct CompileArgs {
    /// Model: path to model.tar.gz or a model file, or NAME[:VERSION] in the local registry
    model: String,
    /// Target name (see `neoc targets`), or `host` for this machine's generic target
    #[arg(long, short)]
    target: String,
    /// Input configuration NAME=DIMS[:DTYPE] (e.g. image=1,3,224,224:f32, features=N,30), or Neo JSON {"data":[1,3,224,224]}; repeatable
    #[arg(long = "input", value_name = "NAME=DIMS[:DTYPE]")]
    inputs: Vec<String>,
    /// Bundle path (default: NAME-VERSION.TARGET.neo)
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Secret key to sign with (minisign, password-less)
    #[arg(long, env = "NEOC_SIGNING_KEY", value_name = "SECRET_KEY")]
    key: Option<PathBuf>,
    /// Write an unsigned bundle
    #[arg(long, conflicts_with = "key")]
    unsigned: bool,
    /// Model framework (detected from the file when omitted)
    #[arg(long, value_enum)]
    framework: Option<Framework>,
    /// Local registry directory (default: $NEOC_REGISTRY, or models/registry in this directory or a parent)
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Model name recorded in the bundle (default: from the registry or file name)
    #[arg(long)]
    name: Option<String>,
    /// Model version recorded in the bundle (default: the registry tag, or 0)
    #[arg(long = "model-version")]
    model_version: Option<String>,
    /// Absolute tolerance of the verify stage
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Relative tolerance of the verify stage
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    /// Package even when verification finds outputs beyond tolerance (recorded in the manifest)
    #[arg(long)]
    allow_mismatch: bool,
    /// Print one JSON document on stdout instead of a summary
    #[arg(long)]
    json: bool,
    /// Print nothing but errors
    #[arg(long, short)]
    quiet: bool,
    /// Never draw progress
    #[arg(long)]
    no_progress: bool,
}

fn created_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.trim().parse::<u64>().with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

fn compile(args: CompileArgs) -> Result<()> {
    // everything that can be checked before work is checked first
    let target = neoc_targets::lookup(&args.target)?;
    let key = match (&args.key, args.unsigned) {
        (Some(p), _) => Some(SigningKey::from_file(p)?),
        (None, true) => None,
        (None, false) => bail!(
            "no signing key\nhint: pass --key SECRET_KEY (or set NEOC_SIGNING_KEY); create one with `neoc keygen -o PREFIX`; or pass --unsigned"
        ),
    };
    let mut inputs = BTreeMap::new();
    for s in &args.inputs {
        for (name, cfg) in import::parse_input_flag(s)? {
            inputs.insert(name, cfg);
        }
    }
    if args.tolerance < 0.0 || args.rtol < 0.0 || !args.tolerance.is_finite() || !args.rtol.is_finite() {
        bail!("--tolerance and --rtol must be finite and non-negative");
    }
    let created = created_time()?;
    let printer = Printer::new(args.json, args.quiet, args.no_progress);
    printer.stage("fetch", &format!("resolving {}", args.model));
    let t0 = Instant::now();
    let src = source::resolve(&args.model, args.registry.as_deref())?;
    let fetch_ms = t0.elapsed().as_millis();
    let opts = Options {
        target,
        framework: args.framework,
        inputs,
        name: args.name.clone(),
        version: args.model_version.clone(),
        atol: args.tolerance,
        rtol: args.rtol,
        allow_mismatch: args.allow_mismatch,
        seeded_cases: 3,
        created,
    };
    let compiled = pipeline::compile(&src, &opts, &printer, fetch_ms)?;
    let m = &compiled.manifest;
    let trusted_comment = format!(
        "neoc bundle {}:{} target={} compiler={} created={}",
        m.model.name, m.model.version, m.target.name, m.compiler.version, m.created
    );
    let bytes = container::encode(m, &compiled.files, key.as_ref(), &trusted_comment)?;
    let out = args.output.clone().unwrap_or_else(|| pipeline::default_output(m));
    container::write_atomic(&out, &bytes)?;
    printer.done();
    let digest = neoc_bundle::digest::sha256(&bytes);
    let v = &m.verification;
    if args.json {
        let doc = json!({
            "schema_version": 1,
            "bundle": out.display().to_string(),
            "digest": digest,
            "size": bytes.len(),
            "signed_by": key.as_ref().map(|k| k.key_id()),
            "model": m.model,
            "target": m.target,
            "inputs": m.inputs,
            "outputs": m.outputs,
            "verification": v,
            "stages_ms": compiled.stage_ms.iter().map(|(s, ms)| json!({"stage": s, "ms": ms})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if !args.quiet {
        let io = |specs: &[neoc_bundle::manifest::TensorSpec]| {
            specs
                .iter()
                .map(|s| format!("{} {}{}", s.name, s.dtype, shape_string(&s.shape)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("compiled {}:{} for {} -> {}", m.model.name, m.model.version, m.target.name, out.display());
        println!("  inputs:  {}", io(&m.inputs));
        println!("  outputs: {}", io(&m.outputs));
        let ind = v
            .independent
            .as_ref()
            .map(|i| format!("; vs shipped expected outputs {:.2e}", i.max_abs_error))
            .unwrap_or_default();
        println!(
            "  verify:  {} on {} {} case(s), max abs error {:.2e} vs reference{ind}",
            v.status, v.cases, v.inputs, v.max_abs_error
        );
        if v.host != m.target.arch {
            println!("  note:    verified on this {} host; the target's own CPU was not exercised", v.host);
        }
        println!(
            "  bundle:  {} bytes, {}, {}",
            bytes.len(),
            digest,
            key.as_ref().map(|k| format!("signed by {}", k.key_id())).unwrap_or_else(|| "UNSIGNED".into())
        );
    }
    Ok(())
}

fn keygen(output: &Path, force: bool) -> Result<()> {
    let sk_path = PathBuf::from(format!("{}.key", output.display()));
    let pk_path = PathBuf::from(format!("{}.pub", output.display()));
    for p in [&sk_path, &pk_path] {
        if p.exists() && !force {
            bail!("{} already exists; refusing to overwrite a key\nhint: pass --force to replace it", p.display());
        }
    }
    let (sk, _) = sign::generate_keypair()?;
    let key = SigningKey::from_text(sk.as_bytes()).map_err(|e| anyhow::anyhow!(e))?;
    let pk = key.public_key_file();
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(0o600);
        let mut f = o.open(&sk_path).with_context(|| sk_path.display().to_string())?;
        f.write_all(sk.as_bytes()).with_context(|| sk_path.display().to_string())?;
    }
    std::fs::write(&pk_path, pk).with_context(|| pk_path.display().to_string())?;
    println!(
        "key id {}: secret key {} (keep it private), public key {}",
        key.key_id(),
        sk_path.display(),
        pk_path.display()
    );
    Ok(())
}

fn load_bundle(bundle: &Path, key: Option<&Path>) -> Result<container::VerifiedBundle> {
    let trust = match key {
        Some(k) => Trust::Keys(vec![TrustedKey::from_file(k)?]),
        // without a key the digests and container are checked, the signature is not
        None => Trust::Unchecked,
    };
    Ok(container::read(bundle, &trust)?)
}

fn inspect(bundle: &Path, key: Option<&Path>, json_out: bool) -> Result<()> {
    let b = load_bundle(bundle, key)?;
    let m = &b.manifest;
    let signer = match &b.signer {
        Signer::Key { key_id, trusted_comment } => {
            json!({"key_id": key_id, "trusted_comment": trusted_comment, "checked": key.is_some()})
        }
        Signer::Unsigned => serde_json::Value::Null,
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"schema_version": 1, "digest": b.digest, "signature": signer, "manifest": m})
            )?
        );
        return Ok(());
    }
    println!("bundle:    {} ({})", bundle.display(), b.digest);
    println!(
        "model:     {}:{} ({}, {} from {})",
        m.model.name, m.model.version, m.model.framework, m.model.source_file, m.model.source
    );
    println!("source:    {}", m.model.source_digest);
    println!(
        "target:    {} ({}, features [{}], accelerator {})",
        m.target.name,
        m.target.triple,
        m.target.features.join(", "),
        m.target.accelerator
    );
    println!("engine:    {} {} ({})", m.engine.name, m.engine.version, m.engine.model_format);
    println!("compiler:  {} {}; needs neorun >= {}", m.compiler.name, m.compiler.version, m.min_runtime_version);
    for s in &m.inputs {
        println!("input:     {} {} {}", s.name, s.dtype, shape_string(&s.shape));
    }
    for s in &m.outputs {
        println!("output:    {} {} {}", s.name, s.dtype, shape_string(&s.shape));
    }
    let v = &m.verification;
    println!(
        "verified:  {} ({} {} cases on {}, max abs {:.2e}, max rel {:.2e}, atol {:.0e}, rtol {:.0e})",
        v.status, v.cases, v.inputs, v.host, v.max_abs_error, v.max_rel_error, v.atol, v.rtol
    );
    if let Some(i) = &v.independent {
        println!("           vs {}: max abs {:.2e} over {} cases", i.source, i.max_abs_error, i.cases);
    }
    match &b.signer {
        Signer::Key { key_id, trusted_comment } => {
            println!("signature: key {key_id}{}; {trusted_comment}", if key.is_some() { " (verified)" } else { "" })
        }
        Signer::Unsigned => println!("signature: none (UNSIGNED)"),
    }
    for f in &m.files {
        println!("file:      {} {} bytes {}", f.path, f.size, f.sha256);
    }
    Ok(())
}

fn verify(bundle: &Path, key: &Path, json_out: bool) -> Result<()> {
    let trusted = TrustedKey::from_file(key)?;
    let b = container::read(bundle, &Trust::Keys(vec![trusted]))?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"schema_version": 1, "ok": true, "digest": b.digest, "files": b.manifest.files.len()})
            )?
        );
    } else {
        println!("ok: {} verifies (signature, {} file digests, container)", bundle.display(), b.manifest.files.len());
    }
    Ok(())
}

fn targets(json_out: bool) -> Result<()> {
    let host = neoc_targets::Host::detect();
    let runnable: Vec<&str> = host.runnable_targets().iter().map(|t| t.name).collect();
    if json_out {
        let list: Vec<_> = neoc_targets::CATALOG
            .iter()
            .map(|t| {
                let mut v = serde_json::to_value(t).expect("target serializes");
                v["runs_on_this_host"] = json!(runnable.contains(&t.name));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"schema_version": 1, "host": host, "targets": list}))?);
        return Ok(());
    }
    println!("{:<15} {:<32} {:<10} {}", "TARGET", "TRIPLE", "HERE", "DESCRIPTION");
    for t in neoc_targets::CATALOG {
        println!(
            "{:<15} {:<32} {:<10} {}",
            t.name,
            t.triple,
            if runnable.contains(&t.name) { "yes" } else { "no" },
            t.description
        );
    }
    Ok(())
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Mismatch>().is_some() {
        3
    } else if e.downcast_ref::<ImportError>().is_some() {
        4
    } else if let Some(b) = e.downcast_ref::<neoc_bundle::BundleError>() {
        use neoc_bundle::BundleError::*;
        match b {
            NotABundle(_)
            | NotCanonical(_)
            | DigestMismatch { .. }
            | BadSignature(_)
            | UntrustedKey { .. }
            | Unsigned => 3,
            _ => 1,
        }
    } else {
        1
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compile(args) => compile(args),
        Command::Keygen { output, force } => keygen(&output, force),
        Command::Inspect { bundle, key, json } => inspect(&bundle, key.as_deref(), json),
        Command::Verify { bundle, key, json } => verify(&bundle, &key, json),
        Command::Targets { json } => targets(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
