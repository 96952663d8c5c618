//! `neoc`: compile models into signed bundles for a target.
//!
//! (Over 600 lines: one `run_*` per subcommand with its human and `--json`
//! output, sharing the printer and the exit-code mapping; each subcommand's
//! work is in the library. Moving them to `commands/` as neorun has is the next
//! step when one more subcommand lands.)

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
use neoc_compiler::registry::{Access, Reference, Store};
use neoc_compiler::{provenance, publish, source};
use neoc_targets::Precision;
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
    /// Compile MODEL (a tarball, a model file, NAME[:VERSION] in the local registry, or oci://HOST/REPO:TAG) for one or more targets
    Compile(CompileArgs),
    /// Download an artifact (model or bundle) from a registry
    Pull(PullArgs),
    /// Publish a model (file or tarball) or a compiled bundle to a registry
    Push(PushArgs),
    /// List the tags of a repository
    Ls(LsArgs),
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
        /// Also check this provenance envelope (BUNDLE.intoto.jsonl): its signature and that its subject is the bundle
        #[arg(long, value_name = "FILE")]
        provenance: Option<PathBuf>,
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
    /// Model: path to model.tar.gz or a model file, NAME[:VERSION] in the local registry, or oci://HOST[:PORT]/REPO:TAG
    model: String,
    /// Target name (see `neoc targets`), or `host` for this machine's generic target; repeat for several targets (one import, one bundle each)
    #[arg(long, short, required = true)]
    target: Vec<String>,
    /// Input configuration NAME=DIMS[:DTYPE] (e.g. image=1,3,224,224:f32, features=N,30; a scalar: sr=:i64), a value pinned for an input declared scalar, NAME=VALUE:DTYPE (sr=16000:i64: a constant of the bundle, so If nodes on it fold), or Neo JSON {"data":[1,3,224,224]} / {"sr":{"value":16000,"dtype":"i64"}}; repeatable
    #[arg(long = "input", value_name = "NAME=DIMS[:DTYPE]")]
    inputs: Vec<String>,
    /// Bundle path (default: NAME-VERSION.TARGET.neo); with several targets, a directory for them
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Push each bundle to REF (oci://HOST/REPO[:TAG], or NAME[:TAG] in the local registry): tag TAG-TARGET (TAG defaults to the model version; one target with an explicit TAG uses TAG as is); several targets also get an index tagged TAG
    #[arg(long, value_name = "REF")]
    push: Option<String>,
    /// Write signed SLSA v1 provenance (an in-toto statement in a DSSE envelope) to BUNDLE.intoto.jsonl, and attach it to pushed bundles
    #[arg(long)]
    provenance: bool,
    #[command(flatten)]
    reg: RegistryArgs,
    /// Secret key to sign with (minisign, password-less)
    #[arg(long, env = "NEOC_SIGNING_KEY", value_name = "SECRET_KEY")]
    key: Option<PathBuf>,
    /// Write an unsigned bundle
    #[arg(long, conflicts_with = "key")]
    unsigned: bool,
    /// Model framework (detected from the file when omitted)
    #[arg(long, value_enum)]
    framework: Option<Framework>,
    /// Model name recorded in the bundle (default: from the registry or file name)
    #[arg(long)]
    name: Option<String>,
    /// Model version recorded in the bundle (default: the registry tag, or 0)
    #[arg(long = "model-version")]
    model_version: Option<String>,
    /// Absolute tolerance of the verify stage (default: 1e-4; 1e-2 for fp16, 5e-2 for bf16 bundles)
    #[arg(long)]
    tolerance: Option<f64>,
    /// Relative tolerance of the verify stage (default: 1e-4; 1e-2 for fp16, 5e-2 for bf16 bundles)
    #[arg(long)]
    rtol: Option<f64>,
    /// Float precision: fp32; fp16 for targets whose CPU has fp16 arithmetic (tract); bf16 for targets with AMX/AVX-512-BF16 (OpenVINO). Default: the target's (fp16 for ml_m6g and jetson_orin; with --engine auto, bf16 and fp32 are both tried on bf16 targets)
    #[arg(long, value_parser = parse_precision)]
    precision: Option<Precision>,
    /// Engine the bundle runs on: auto (the target's engines, each verified, timed here when this host can run the target, fastest kept; the table is in the manifest), tract, openvino (x86-64; needs OpenVINO's library here and on the device), or onnxruntime (x86-64 and aarch64; needs libonnxruntime here and on the device)
    #[arg(long, default_value = "auto", value_parser = parse_engine)]
    engine: pipeline::EngineChoice,
    /// Without the Neuron compiler, build a CPU bundle for Neuron targets (ml_inf2) instead of failing; the manifest says so
    #[arg(long, value_enum, value_name = "cpu")]
    neuron_fallback: Option<NeuronFallback>,
    /// Leave tract's model out of OpenVINO bundles (about half the size; such a bundle runs only where OpenVINO loads)
    #[arg(long)]
    no_fallback: bool,
    /// Print what each target changed in its bundle (precision, CPU features, threads, accelerator, engine)
    #[arg(long)]
    explain: bool,
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

/// Where registries are and how to reach them.
#[derive(clap::Args)]
struct RegistryArgs {
    /// Local registry directory for NAME[:TAG] references (default: $NEOC_REGISTRY, or models/registry in this directory or a parent)
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Allow plain HTTP to this registry host (loopback hosts always may); repeatable
    #[arg(long = "insecure-registry", value_name = "HOST", env = "NEOC_INSECURE_REGISTRY", value_delimiter = ',')]
    insecure: Vec<String>,
}

impl RegistryArgs {
    fn reference(&self, given: &str) -> Result<Reference> {
        Reference::parse(given, || source::local_registry(self.registry.as_deref(), given))
    }

    fn store(&self, r: &Reference) -> Result<Store> {
        Store::open(r, &Access { insecure: self.insecure.clone() })
    }
}

#[derive(clap::Args)]
struct PullArgs {
    /// oci://HOST[:PORT]/REPO[:TAG|@DIGEST], or NAME[:TAG] in the local registry
    reference: String,
    /// Directory to write into (created if needed)
    #[arg(long, short, default_value = ".")]
    output: PathBuf,
    /// From a multi-target bundle index, only this target's bundle
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    reg: RegistryArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PushArgs {
    /// A model file or model tarball, or a bundle (.neo)
    file: PathBuf,
    /// oci://HOST[:PORT]/REPO:TAG, or NAME:TAG in the local registry (a bundle's tag defaults to VERSION-TARGET)
    reference: String,
    #[command(flatten)]
    reg: RegistryArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct LsArgs {
    /// oci://HOST[:PORT]/REPO, or NAME in the local registry
    repository: String,
    #[command(flatten)]
    reg: RegistryArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NeuronFallback {
    Cpu,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("`{s}` is not a precision (fp32, fp16 or bf16)"))
}

fn parse_engine(s: &str) -> Result<pipeline::EngineChoice, String> {
    match s {
        "auto" => Ok(pipeline::EngineChoice::Auto),
        _ => neoc_targets::EngineKind::parse(s)
            .map(pipeline::EngineChoice::Only)
            .ok_or_else(|| format!("`{s}` is not an engine (auto, tract, openvino or onnxruntime)")),
    }
}

/// `--explain`'s lines on a CUDA bundle's GPU placement: the summary, how it
/// was found, and the operators left on the CPU (the first 12).
fn placement_lines(p: &neoc_bundle::manifest::GpuPlacement) -> String {
    const SHOWN: usize = 12;
    let mut s = format!(
        "\n  {:<13} {}\n  {:<13}   ({})",
        "gpu placement",
        neoc_runtime::engine::placement::summary(p),
        "",
        p.method
    );
    for o in p.cpu_ops.iter().take(SHOWN) {
        s.push_str(&format!("\n  {:<13}   on the CPU: {} ({})", "", o.node, o.op));
    }
    if p.cpu_ops.len() > SHOWN {
        s.push_str(&format!(
            "\n  {:<13}   … {} more (the manifest's gpu_placement.cpu_ops lists them all)",
            "",
            p.cpu_ops.len() - SHOWN
        ));
    }
    s
}

/// What a target changed in its bundle: (JSON, text).
fn explain(c: &pipeline::Compiled) -> (serde_json::Value, String) {
    let m = &c.manifest;
    let t = neoc_targets::lookup(&m.target.name).expect("compiled for a catalog target");
    let host = neoc_targets::Host::detect();
    let features = if m.target.features.is_empty() {
        "none beyond the architecture's baseline; kernels pick wider SIMD at run time".to_string()
    } else {
        format!("{} (neorun refuses the bundle on a CPU without them)", m.target.features.join(", "))
    };
    let threads = match m.target.threads {
        Some(n) => format!("{n} (the device's cores; neorun --threads overrides)"),
        None => "as many as the host has (neorun --threads overrides)".into(),
    };
    let arch = m.target.accelerator_arch.as_deref().unwrap_or("");
    let accelerator = match (m.target.accelerator.as_str(), &m.accelerator_model) {
        ("none", Some(a)) => format!("none: {}", a.status),
        ("none", None) => "none: runs on the CPU".to_string(),
        ("cuda", _) => format!(
            "NVIDIA GPU {arch}, through tract's CUDA runtime in a neorun built with --features cuda (never run on GPU hardware yet: bench/gpu/run.sh does); the bundle carries the CPU model as fallback (neorun --cpu-fallback){}",
            m.gpu_placement.as_ref().map(placement_lines).unwrap_or_default()
        ),
        ("neuron", Some(a)) => format!(
            "AWS Neuron {arch}: {} ({} by {} {}), run by neorun through the Neuron runtime (libnrt) on an Inferentia host, with the CPU model as fallback (neorun --cpu-fallback); never run on Inferentia hardware yet",
            a.status,
            a.file.as_deref().unwrap_or("-"),
            a.backend.name,
            a.backend.version
        ),
        (other, _) => format!("{other} {arch}: the bundle carries the CPU model as fallback"),
    };
    let mut engine = format!("{} {} ({})", m.engine.name, m.engine.version, m.engine.model_format);
    if let Some(fb) = &m.fallback_engine {
        engine.push_str(&format!(
            "; fallback {} {} ({}, neorun --engine-fallback)",
            fb.name, fb.version, fb.model_format
        ));
    }
    if let Some(sel) = &m.engine_selection {
        let how = match sel.method.as_str() {
            "measured" => format!("timed here ({}, {} threads)", sel.host, sel.threads),
            "preference" => "not timed: this host cannot run the target; the target's order".into(),
            "only one verified" => "not timed: one candidate verified".into(),
            _ => "as requested with --engine".into(),
        };
        engine.push_str(&format!("\n  {:<13} {how}", "selection"));
        for c in &sel.candidates {
            let us = c.median_us.map(|u| format!("{u:>10.0} µs")).unwrap_or_else(|| format!("{:>13}", "-"));
            let err = c.max_abs_error.map(|e| format!("max abs error {e:.2e}")).unwrap_or_default();
            engine.push_str(&format!(
                "\n  {:<13}   {:<8} {:<4} {us}  {:<24} {}",
                "", c.engine, c.precision, err, c.status
            ));
        }
    }
    let verified = if m.target.arch == m.verification.host {
        format!("on this {} host", m.verification.host)
    } else {
        format!("on this {} host: the target's own kernels were not exercised", m.verification.host)
    };
    let rows = [
        ("target", format!("{} — {}", t.name, t.device.unwrap_or(t.description))),
        ("triple", m.target.triple.clone()),
        ("cpu features", features),
        (
            "precision",
            if m.target.precision == "fp16" {
                format!("fp16 ({}); the inputs' side up to the first matrix products/convolutions stays fp32 (raw inputs can exceed fp16's range)", c.precision_reason)
            } else {
                format!("{} ({})", m.target.precision, c.precision_reason)
            },
        ),
        ("threads", threads),
        ("accelerator", accelerator),
        ("engine", engine),
        ("verified", verified),
        (
            "runs here",
            match (host.runnable_targets().iter().any(|x| x.name == t.name), m.target.accelerator.as_str()) {
                (false, _) => "no".into(),
                (true, "none") => "yes".into(),
                (true, _) => {
                    "only with neorun --cpu-fallback (this host lacks the accelerator or this build its engine)".into()
                }
            },
        ),
    ];
    let text = rows.iter().map(|(k, v)| format!("  {k:<13} {v}\n")).collect::<String>();
    let json = serde_json::Value::Object(rows.iter().map(|(k, v)| (k.replace(' ', "_"), json!(v))).collect());
    (json, text)
}

fn created_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.trim().parse::<u64>().with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// A tag made from free text (a model version): invalid characters become '-'.
fn tag_from(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
    let t = t.trim_start_matches(['.', '-']).to_string();
    if t.is_empty() {
        "0".into()
    } else {
        t.chars().take(128).collect()
    }
}

fn compile(args: CompileArgs) -> Result<()> {
    // everything that can be checked before work is checked first
    let mut targets: Vec<&'static neoc_targets::Target> = Vec::new();
    for t in &args.target {
        let t = neoc_targets::lookup(t)?;
        if targets.iter().any(|x| x.name == t.name) {
            bail!("target {} is given twice", t.name);
        }
        targets.push(t);
    }
    let key = match (&args.key, args.unsigned) {
        (Some(p), _) => Some(SigningKey::from_file(p)?),
        (None, true) => None,
        (None, false) => bail!(
            "no signing key\nhint: pass --key SECRET_KEY (or set NEOC_SIGNING_KEY); create one with `neoc keygen -o PREFIX`; or pass --unsigned"
        ),
    };
    if args.provenance && key.is_none() {
        bail!("--provenance needs a signing key (provenance is signed with the bundle's key)\nhint: pass --key SECRET_KEY instead of --unsigned");
    }
    let mut inputs = BTreeMap::new();
    for s in &args.inputs {
        for (name, cfg) in import::parse_input_flag(s)? {
            inputs.insert(name, cfg);
        }
    }
    if [args.tolerance, args.rtol].iter().flatten().any(|t| *t < 0.0 || !t.is_finite()) {
        bail!("--tolerance and --rtol must be finite and non-negative");
    }
    let access = Access { insecure: args.reg.insecure.clone() };
    let push = match &args.push {
        Some(p) => {
            let r = args.reg.reference(p)?;
            if r.digest.is_some() {
                bail!("--push {p}: a push names a repository and optionally a tag, not a digest");
            }
            Some((args.reg.store(&r)?, r))
        }
        None => None,
    };
    let created = created_time()?;
    let printer = Printer::new(args.json, args.quiet, args.no_progress);
    printer.stage("fetch", &format!("resolving {}", args.model));
    let t0 = Instant::now();
    let src = source::resolve(&args.model, args.reg.registry.as_deref(), &access)?;
    let fetch_ms = t0.elapsed().as_millis();
    let opts = Options {
        targets: targets.clone(),
        precision: args.precision,
        engine: args.engine,
        no_fallback: args.no_fallback,
        framework: args.framework,
        inputs,
        name: args.name.clone(),
        version: args.model_version.clone(),
        atol: args.tolerance,
        rtol: args.rtol,
        allow_mismatch: args.allow_mismatch,
        seeded_cases: 3,
        neuron_fallback_cpu: args.neuron_fallback.is_some(),
        created,
    };
    let compiled = pipeline::compile(&src, &opts, &printer, fetch_ms)?;
    let several = compiled.len() > 1;
    if several {
        if let Some(dir) = &args.output {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
        }
    }
    let mut results = Vec::new();
    let mut index_entries = Vec::new();
    for c in &compiled {
        let m = &c.manifest;
        let trusted_comment = format!(
            "neoc bundle {}:{} target={} compiler={} created={}",
            m.model.name, m.model.version, m.target.name, m.compiler.version, m.created
        );
        let bytes = container::encode(m, &c.files, key.as_ref(), &trusted_comment)?;
        let out = match (&args.output, several) {
            (Some(p), false) => p.clone(),
            (Some(dir), true) => dir.join(pipeline::default_output(m)),
            (None, _) => pipeline::default_output(m),
        };
        neoc_compiler::cleanup::track_file(container::temporary_for(&out)?);
        container::write_atomic(&out, &bytes)?;
        let digest = neoc_bundle::digest::sha256(&bytes);
        let mut prov_path = None;
        let mut envelope = None;
        if let (true, Some(k)) = (args.provenance, key.as_ref()) {
            let options = json!({
                "inputs": args.inputs, "framework": args.framework.map(|f| f.as_str()), "tolerance": args.tolerance,
                "rtol": args.rtol, "allow_mismatch": args.allow_mismatch, "name": args.name, "model_version": args.model_version,
            });
            let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let st = provenance::statement(&name, &digest, m, options);
            let env = provenance::envelope(&st, k);
            let p = PathBuf::from(format!("{}.intoto.jsonl", out.display()));
            neoc_compiler::cleanup::track_file(container::temporary_for(&p)?);
            container::write_atomic(&p, &env)?;
            prov_path = Some(p);
            envelope = Some(env);
        }
        let mut pushed = None;
        let mut prov_pushed = None;
        if let Some((store, r)) = &push {
            printer.stage("push", &format!("pushing the {} bundle", m.target.name));
            let base = r.tag.clone().unwrap_or_else(|| tag_from(&m.model.version));
            let tag = if r.tag.is_some() && !several { base } else { format!("{base}-{}", m.target.name) };
            let (p, d) = publish::push_bundle(store, r, Some(&tag), &out)?;
            if let Some(env) = &envelope {
                prov_pushed = Some(publish::attach_provenance(store, r, &d, env, m.created)?);
            }
            index_entries.push(d);
            pushed = Some(p);
        }
        results.push((c, out, bytes.len(), digest, pushed, prov_path, prov_pushed));
    }
    let index = match (&push, several) {
        (Some((store, r)), true) => {
            let tag = r.tag.clone().unwrap_or_else(|| tag_from(&compiled[0].manifest.model.version));
            Some(publish::push_bundle_index(store, r, &tag, &index_entries)?)
        }
        _ => None,
    };
    printer.done();
    let first = &compiled[0].manifest;
    if args.json {
        let bundles: Vec<_> = results
            .iter()
            .map(|(c, out, size, digest, pushed, prov, prov_pushed)| {
                let m = &c.manifest;
                json!({
                    "target": m.target,
                    "path": out.display().to_string(),
                    "digest": digest,
                    "size": size,
                    "signed_by": key.as_ref().map(|k| k.key_id()),
                    "verification": m.verification,
                    "engine": m.engine,
                    "fallback_engine": m.fallback_engine,
                    "engine_selection": m.engine_selection,
                    "gpu_placement": m.gpu_placement,
                    "pushed": pushed,
                    "provenance": prov.as_ref().map(|p| json!({"path": p.display().to_string(), "pushed": prov_pushed})),
                    "explain": args.explain.then(|| explain(c).0),
                })
            })
            .collect();
        let doc = json!({
            "schema_version": 2,
            "model": first.model,
            "inputs": first.inputs,
            "outputs": first.outputs,
            "engine": first.engine,
            "bundles": bundles,
            "index": index,
            "stages_ms": compiled[0].stage_ms.iter().map(|(s, ms)| json!({"stage": s, "ms": ms})).collect::<Vec<_>>(),
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
        let targets = compiled.iter().map(|c| c.manifest.target.name.as_str()).collect::<Vec<_>>().join(", ");
        println!("compiled {}:{} for {targets}", first.model.name, first.model.version);
        println!("  inputs:  {}", io(&first.inputs));
        println!("  outputs: {}", io(&first.outputs));
        if !first.model.pinned_inputs.is_empty() {
            println!(
                "  pinned:  {} (constants of the bundle, not inputs)",
                first.model.pinned_inputs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
            );
        }
        let mut last_verification = None;
        for (c, out, size, digest, pushed, prov, _) in &results {
            let m = &c.manifest;
            let v = &m.verification;
            if last_verification != Some(v) {
                let ind = v
                    .independent
                    .as_ref()
                    .map(|i| format!("; vs shipped expected outputs {:.2e}", i.max_abs_error))
                    .unwrap_or_default()
                    + &v.independent_engine
                        .as_ref()
                        .map(|i| format!("; vs {} {:.2e}", i.source, i.max_abs_error))
                        .unwrap_or_default();
                println!(
                    "  verify:  {} {} on {} {} case(s), max abs error {:.2e} vs reference{ind}",
                    v.precision, v.status, v.cases, v.inputs, v.max_abs_error
                );
                if let Some(n) = &v.note {
                    println!("  note:    {n}");
                }
                last_verification = Some(v);
            }
            if !args.explain {
                println!("  engine:  {} {}: {}", m.engine.name, m.target.precision, c.precision_reason);
            }
            if args.explain {
                print!("{}", explain(c).1);
            } else if let Some(sel) = &m.engine_selection {
                for cand in sel
                    .candidates
                    .iter()
                    .filter(|c| c.status.starts_with("unavailable") || c.status.starts_with("rejected"))
                {
                    println!("  note:    {} {} {}", cand.engine, cand.precision, cand.status);
                }
            }
            println!(
                "  bundle:  {} ({}, {}): {size} bytes, {digest}, {}",
                out.display(),
                m.target.name,
                m.target.precision,
                key.as_ref().map(|k| format!("signed by {}", k.key_id())).unwrap_or_else(|| "UNSIGNED".into())
            );
            if m.target.arch != v.host {
                println!("           verified on this {} host; the target's own CPU was not exercised", v.host);
            }
            if let Some(p) = prov {
                println!("           provenance {}", p.display());
            }
            if let Some(p) = pushed {
                println!("           pushed {} ({})", p.reference, p.digest);
            }
        }
        if let Some(i) = &index {
            println!("  index:   {} ({}) lists every target", i.reference, i.digest);
        }
    }
    Ok(())
}

fn pull(args: PullArgs) -> Result<()> {
    let r = args.reg.reference(&args.reference)?;
    let store = args.reg.store(&r)?;
    let files = publish::pull(&store, &r, &args.output, args.target.as_deref())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"schema_version": 1, "reference": r.to_string(), "files": files}))?
        );
    } else {
        for f in &files {
            println!("pulled {} -> {} ({} bytes, {})", f.from, f.path.display(), f.size, f.digest);
        }
    }
    Ok(())
}

fn push(args: PushArgs) -> Result<()> {
    let r = args.reg.reference(&args.reference)?;
    if r.digest.is_some() {
        bail!("{}: a push names a repository and a tag, not a digest", args.reference);
    }
    if !args.file.is_file() {
        bail!("{}: no such file", args.file.display());
    }
    let store = args.reg.store(&r)?;
    let is_bundle = {
        let mut head = [0u8; 512];
        let n = std::io::Read::read(&mut std::fs::File::open(&args.file)?, &mut head)?;
        n == 512 && head.starts_with(b"manifest.json\0")
    };
    let p = if is_bundle {
        let tag = match &r.tag {
            Some(t) => t.clone(),
            None => {
                let b = container::read(&args.file, &Trust::Unchecked)?;
                format!("{}-{}", tag_from(&b.manifest.model.version), b.manifest.target.name)
            }
        };
        publish::push_bundle(&store, &r, Some(&tag), &args.file)?.0
    } else {
        let tag = r.tag.clone().with_context(|| {
            format!("{}: say which version this model is: {}:VERSION", args.reference, args.reference)
        })?;
        publish::push_model(&store, &r, &tag, &args.file, created_time()?)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"schema_version": 1, "pushed": p}))?);
    } else {
        println!("pushed {} -> {} ({}, {} bytes manifest)", args.file.display(), p.reference, p.digest, p.size);
    }
    Ok(())
}

fn ls(args: LsArgs) -> Result<()> {
    let r = args.reg.reference(&args.repository)?;
    if r.tag.is_some() || r.digest.is_some() {
        bail!("{}: `neoc ls` takes a repository, without a tag or digest", args.repository);
    }
    let store = args.reg.store(&r)?;
    let tags = store.tags()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"schema_version": 1, "repository": r.to_string(), "tags": tags}))?
        );
    } else {
        for t in tags {
            println!("{t}");
        }
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
    if let Some(p) = &m.gpu_placement {
        println!("gpu:       {} ({})", neoc_runtime::engine::placement::summary(p), p.method);
    }
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
    for i in v.independent.iter().chain(&v.independent_engine) {
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

fn verify(bundle: &Path, key: &Path, prov: Option<&Path>, json_out: bool) -> Result<()> {
    let trusted = TrustedKey::from_file(key)?;
    let b = container::read(bundle, &Trust::Keys(vec![trusted.clone()]))?;
    if let Some(p) = prov {
        let env = std::fs::read(p).with_context(|| p.display().to_string())?;
        provenance::verify(&env, &trusted, &b.digest).with_context(|| p.display().to_string())?;
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"schema_version": 1, "ok": true, "digest": b.digest, "files": b.manifest.files.len()})
            )?
        );
    } else {
        println!(
            "ok: {} verifies (signature, {} file digests, container{})",
            bundle.display(),
            b.manifest.files.len(),
            if prov.is_some() { ", provenance" } else { "" }
        );
    }
    Ok(())
}

fn targets(json_out: bool) -> Result<()> {
    let host = neoc_targets::Host::detect();
    let runnable: Vec<&str> = host.runnable_targets().iter().map(|t| t.name).collect();
    let neuron = neoc_compiler::backend::find_neuron().ok().flatten();
    // (neoc can build its accelerator model, note; neorun runs it on this host, note)
    let status = |t: &neoc_targets::Target| -> (bool, String, bool, String) {
        let cpu_here = runnable.contains(&t.name);
        match t.accelerator {
            neoc_targets::Accelerator::None => (
                true,
                "yes".into(),
                cpu_here,
                if cpu_here { "yes".into() } else { format!("no: needs {} {}", t.arch, t.features.join(" ")) },
            ),
            neoc_targets::Accelerator::Cuda { .. } => (
                true,
                "yes: the model for tract's CUDA runtime (GPU placement found by a dry run of its translation), the CPU model as fallback"
                    .into(),
                false,
                if cpu_here {
                    "only with --cpu-fallback: this neorun has no CUDA engine".into()
                } else {
                    format!("no: needs {}", t.arch)
                },
            ),
            neoc_targets::Accelerator::Neuron { .. } => (
                neuron.is_some(),
                match &neuron {
                    Some(b) => format!("yes: NEFF by {} ({})", b.command.display(), b.version),
                    None => "CPU bundle only (--neuron-fallback cpu): neuronx-cc is not installed".into(),
                },
                cpu_here && neoc_runtime::engine::neuron::probe().is_ok(),
                if cpu_here {
                    match neoc_runtime::engine::neuron::probe() {
                        Ok((path, version)) => format!(
                            "yes: Neuron runtime {version} ({}) found; needs an Inferentia device to start",
                            path.display()
                        ),
                        Err(_) => "only with --cpu-fallback: no Neuron runtime (libnrt) on this host".into(),
                    }
                } else {
                    format!("no: needs {}", t.arch)
                },
            ),
        }
    };
    if json_out {
        let list: Vec<_> = neoc_targets::CATALOG
            .iter()
            .map(|t| {
                let (compiles, compile_note, runs, run_note) = status(t);
                let mut v = serde_json::to_value(t).expect("target serializes");
                v["runs_on_this_host"] = json!(runs);
                v["neoc_compiles"] = json!(compiles);
                v["neoc_compile_note"] = json!(compile_note);
                v["neorun_runs_here"] = json!(runs);
                v["neorun_note"] = json!(run_note);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"schema_version": 1, "host": host, "targets": list}))?);
        return Ok(());
    }
    println!(
        "{:<19} {:<30} {:<10} {:<15} {:<19} {:<5} DESCRIPTION",
        "TARGET", "TRIPLE", "PRECISION", "ENGINES", "ACCELERATOR", "HERE"
    );
    for t in neoc_targets::CATALOG {
        let (_, _, runs, _) = status(t);
        let accel = match t.accelerator.arch() {
            Some(a) => format!("{} {a}", t.accelerator.as_str()),
            None => "-".into(),
        };
        let precisions = t.precisions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",");
        let engines = t.engines.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(",");
        println!(
            "{:<19} {:<30} {:<10} {:<15} {:<19} {:<5} {}",
            t.name,
            t.triple,
            precisions,
            engines,
            accel,
            if runs { "yes" } else { "no" },
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
    // as neorun does, so that `--engine auto` times models as devices run them
    neoc_runtime::tune_allocator();
    let cli = Cli::parse();
    neoc_compiler::cleanup::on_signals();
    let result = match cli.command {
        Command::Compile(args) => compile(args),
        Command::Keygen { output, force } => keygen(&output, force),
        Command::Inspect { bundle, key, json } => inspect(&bundle, key.as_deref(), json),
        Command::Verify { bundle, key, provenance, json } => verify(&bundle, &key, provenance.as_deref(), json),
        Command::Pull(args) => pull(args),
        Command::Push(args) => push(args),
        Command::Ls(args) => ls(args),
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
