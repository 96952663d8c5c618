//! `neorun`: the neoc edge runtime.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use neoc_bundle::sign::TrustedKey;
use neoc_runtime::request::{self, Format};
use neoc_runtime::{LoadError, Model, OpenOptions, PredictError};

const EXIT_HELP: &str = "Exit status: 0 success; 1 other error; 2 usage error; \
3 bundle refused (signature, digest, format, target or runtime version); 4 bad request.";

#[derive(Parser)]
#[command(name = "neorun", version, about = "Verify and run neoc bundles", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Trust {
    /// Public key (minisign .pub) trusted to sign bundles; repeatable
    #[arg(long = "trusted-key", value_name = "PUB", env = "NEORUN_TRUSTED_KEY")]
    trusted_keys: Vec<PathBuf>,
    /// Run bundles that carry no signature (signed ones are still checked)
    #[arg(long)]
    allow_unsigned: bool,
    /// Run an accelerator bundle (CUDA, Neuron) on the CPU, with the CPU model it carries, when this neorun cannot drive the accelerator
    #[arg(long)]
    cpu_fallback: bool,
    /// Run an OpenVINO bundle with the tract model it carries when OpenVINO cannot be loaded here (missing or too old)
    #[arg(long)]
    engine_fallback: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one request: read it from a file or stdin, print the result on stdout
    Predict {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Request body; `-` for stdin
        #[arg(long, short, default_value = "-")]
        input: String,
        /// Request format: csv, json, text/csv, application/json (default: from the file name or content)
        #[arg(long)]
        content_type: Option<String>,
        /// Response format: json or csv
        #[arg(long, default_value = "json")]
        accept: String,
    },
    /// Serve bundles over HTTP: SageMaker's inference contract and the Open Inference Protocol v2
    Serve(ServeArgs),
    /// Batch transform: run every line of a CSV or JSON Lines file, write the results in input order
    Batch {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Input file: one row per line (CSV, or JSON Lines of arrays)
        #[arg(long, short)]
        input: PathBuf,
        /// Output file (written whole or not at all)
        #[arg(long, short)]
        output: PathBuf,
        /// Input format: csv or jsonlines (default: from the file name)
        #[arg(long)]
        content_type: Option<String>,
        /// Output format: csv or jsonlines (default: the input's)
        #[arg(long)]
        accept: Option<String>,
        /// Rows per model run
        #[arg(long, default_value_t = 1024)]
        max_rows: usize,
        /// Inference threads
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Measure in-process latency and throughput on the bundle's test vectors
    Bench {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Inference threads
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Rows per run (models with a symbolic batch axis; test rows are repeated to fill it)
        #[arg(long)]
        batch: Option<usize>,
        /// Timed runs
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Untimed runs first
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
        /// Try thread counts 1..=CPUs and batches 1, 8, 64, 256 (symbolic-batch models), and recommend the best for latency and for throughput
        #[arg(long)]
        sweep: bool,
        /// Time every operator of a tract model over the timed runs and print the slowest, with tract's description of each (kernel, shapes) and the time per operator type
        #[arg(long, conflicts_with = "sweep")]
        profile: bool,
    },
    /// Verify a bundle, load it and run its test vectors (the device health check)
    Check {
        bundle: PathBuf,
        #[command(flatten)]
        trust: Trust,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Bundles to serve; each is named by its manifest (the first answers /invocations)
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
    #[command(flatten)]
    trust: Trust,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (printed on stdout)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Name of the (single) model, instead of the manifest's
    #[arg(long)]
    name: Option<String>,
    /// Inferences running at once (default: the number of CPUs)
    #[arg(long)]
    threads: Option<usize>,
    /// Requests allowed to wait for an inference slot; beyond, 503 with Retry-After
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body, in bytes
    #[arg(long, default_value_t = 6 * 1024 * 1024)]
    max_body: usize,
    /// Request timeout, in seconds
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Require `Authorization: Bearer TOKEN` on every route but health checks
    #[arg(long, env = "NEORUN_AUTH_TOKEN", conflicts_with = "auth_token_file")]
    auth_token: Option<String>,
    /// Read the bearer token from a file
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Dynamic batching: merge concurrent requests into runs of at most this many rows (1 = off)
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Dynamic batching: how long a request may wait for others to join its batch, in µs
    #[arg(long, default_value_t = 0)]
    max_queue_delay: u64,
    /// Production variant name (X-Amzn-Invoked-Production-Variant)
    #[arg(long, default_value = "AllTraffic")]
    variant: String,
    /// Log format on stderr: text or json
    #[arg(long, default_value = "text")]
    log_format: String,
}

enum Failure {
    Refused(LoadError),
    BadRequest(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}

fn open(bundle: &PathBuf, trust: &Trust) -> Result<Model, Failure> {
    let mut trusted_keys = Vec::new();
    for p in &trust.trusted_keys {
        trusted_keys.push(TrustedKey::from_file(p).map_err(|e| Failure::Refused(e.into()))?);
    }
    if trusted_keys.is_empty() && !trust.allow_unsigned {
        return Err(Failure::Other(anyhow::anyhow!(
            "no trusted key given\nhint: pass --trusted-key KEY.pub (the signer's public key), or --allow-unsigned for unsigned bundles"
        )));
    }
    let m = Model::open(
        bundle,
        &OpenOptions {
            trusted_keys,
            allow_unsigned: trust.allow_unsigned,
            allow_cpu_fallback: trust.cpu_fallback,
            allow_engine_fallback: trust.engine_fallback,
        },
    )
    .map_err(Failure::Refused)?;
    if m.running.contains("fallback for") {
        eprintln!("note: {}: running {} (--engine-fallback)", bundle.display(), m.running);
    }
    if m.placement == neoc_runtime::model::Placement::CpuFallback {
        eprintln!(
            "note: {} targets {} ({}); running its CPU model on this host (--cpu-fallback)",
            bundle.display(),
            m.manifest.target.name,
            m.manifest.target.accelerator
        );
    }
    Ok(m)
}

fn predict(
    bundle: PathBuf,
    trust: Trust,
    input: String,
    content_type: Option<String>,
    accept: String,
) -> Result<(), Failure> {
    let accept_fmt = Format::parse(&accept)
        .ok_or_else(|| anyhow::anyhow!("--accept {accept:?} is not supported; use json or csv"))?;
    let given_fmt = match &content_type {
        Some(ct) => Some(
            Format::parse(ct)
                .ok_or_else(|| anyhow::anyhow!("--content-type {ct:?} is not supported; use csv or json"))?,
        ),
        None => None,
    };
    let model = open(&bundle, &trust)?;
    let body = if input == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
        v
    } else {
        std::fs::read(&input).map_err(|e| anyhow::anyhow!("{input}: {e}"))?
    };
    let format = given_fmt.unwrap_or_else(|| {
        if input.ends_with(".csv") {
            Format::Csv
        } else if input.ends_with(".json") {
            Format::Json
        } else {
            Format::sniff(&body)
        }
    });
    let batch = request::parse(&body, format, &model.manifest.inputs).map_err(|e| {
        Failure::BadRequest(format!(
            "{e}\nhint: the model's inputs are {}",
            request::describe_inputs(&model.manifest.inputs)
        ))
    })?;
    let rows = batch.rows;
    let outputs = model.predict(batch).map_err(|e| match e {
        PredictError::BadRequest(b) => Failure::BadRequest(b.0),
        PredictError::Engine(m) => Failure::Other(anyhow::anyhow!("inference failed: {m}")),
    })?;
    let names = model.output_names();
    let out = match accept_fmt {
        Format::Json => request::to_json(&names, &outputs),
        Format::Csv => request::to_csv(&names, &outputs, rows),
    }
    .map_err(|e| Failure::BadRequest(e.to_string()))?;
    std::io::stdout().write_all(&out).map_err(|e| anyhow::anyhow!("writing stdout: {e}"))?;
    Ok(())
}

fn check(bundle: PathBuf, trust: Trust) -> Result<(), Failure> {
    let model = open(&bundle, &trust)?;
    let m = &model.manifest;
    let signer = match &model.signer {
        neoc_bundle::container::Signer::Key { key_id, .. } => format!("signed by {key_id}"),
        neoc_bundle::container::Signer::Unsigned => "UNSIGNED".to_string(),
    };
    let st = model.self_test().map_err(|e| anyhow::anyhow!("health check failed: {e}"))?;
    println!(
        "ok: {}:{} for {} ({signer}), running {}: {} test vectors pass (max abs error {:.2e})",
        m.model.name, m.model.version, m.target.name, model.running, st.cases, st.max_abs_error
    );
    if let Some(here) = model.gpu_placement() {
        use neoc_runtime::placement::summary;
        println!("GPU placement on this GPU: {}", summary(&here));
        if let Some(compiled) = &m.gpu_placement {
            println!("GPU placement found by neoc ({}): {}", compiled.method, summary(compiled));
            let names = |p: &neoc_bundle::manifest::GpuPlacement| -> std::collections::BTreeSet<String> {
                p.cpu_ops.iter().map(|o| o.node.clone()).collect()
            };
            let (here_cpu, compiled_cpu) = (names(&here), names(compiled));
            for n in here_cpu.difference(&compiled_cpu) {
                println!("  on the CPU here, not in neoc's placement: {n}");
            }
            for n in compiled_cpu.difference(&here_cpu) {
                println!("  on the CPU in neoc's placement, not here: {n}");
            }
        }
    }
    Ok(())
}

/// One measured configuration of `bench`.
struct Measured {
    threads: usize,
    batch: usize,
    median_us: f64,
    p99_us: f64,
    throughput: f64,
}

fn bench_sweep(bundle: PathBuf, trust: Trust, iterations: usize, warmup: usize, json: bool) -> Result<(), Failure> {
    use neoc_bundle::manifest::Dim;
    let model = open(&bundle, &trust)?;
    let symbolic = model.manifest.inputs.iter().all(|i| matches!(i.shape.first(), Some(Dim::Symbol(_))));
    drop(model);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let batches: Vec<Option<usize>> = if symbolic { vec![Some(1), Some(8), Some(64), Some(256)] } else { vec![None] };
    let mut results = Vec::new();
    for t in 1..=cpus {
        for b in &batches {
            results.push(measure(&bundle, &trust, t, *b, iterations, warmup)?);
        }
    }
    let latency = results
        .iter()
        .filter(|r| r.batch == results[0].batch)
        .min_by(|a, b| a.median_us.total_cmp(&b.median_us))
        .expect("one result");
    let throughput = results.iter().max_by(|a, b| a.throughput.total_cmp(&b.throughput)).expect("one result");
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| serde_json::json!({"threads": r.threads, "batch": r.batch, "median_us": r.median_us, "p99_us": r.p99_us, "throughput_per_s": r.throughput}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"schema_version": 1, "results": rows,
                "recommended": {"latency": {"threads": latency.threads, "batch": latency.batch},
                                "throughput": {"threads": throughput.threads, "batch": throughput.batch}}})
        );
    } else {
        println!("{:>7} {:>6} {:>11} {:>11} {:>12}", "threads", "batch", "median µs", "p99 µs", "rows/s");
        for r in &results {
            println!("{:>7} {:>6} {:>11.1} {:>11.1} {:>12.0}", r.threads, r.batch, r.median_us, r.p99_us, r.throughput);
        }
        println!(
            "recommended for latency: --threads {} (batch {}); for throughput: --threads {} --max-batch {}",
            latency.threads, latency.batch, throughput.threads, throughput.batch
        );
    }
    Ok(())
}

fn bench(
    bundle: PathBuf,
    trust: Trust,
    threads: usize,
    batch: Option<usize>,
    iterations: usize,
    warmup: usize,
    json: bool,
) -> Result<(), Failure> {
    let r = measure(&bundle, &trust, threads, batch, iterations, warmup)?;
    let model = open(&bundle, &trust)?;
    let m = &model.manifest;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "schema_version": 1, "model": format!("{}:{}", m.model.name, m.model.version), "engine": m.engine.name, "running": model.running,
                "threads": r.threads, "batch": r.batch, "iterations": iterations.max(1),
                "median_us": r.median_us, "p99_us": r.p99_us, "throughput_per_s": r.throughput,
            })
        );
    } else {
        println!(
            "{}:{} ({}), batch {}, {} thread(s), {} runs: median {:.1} µs, p99 {:.1} µs, {:.0} rows/s",
            m.model.name,
            m.model.version,
            m.engine.name,
            r.batch,
            r.threads,
            iterations.max(1),
            r.median_us,
            r.p99_us,
            r.throughput
        );
    }
    Ok(())
}

fn measure(
    bundle: &PathBuf,
    trust: &Trust,
    threads: usize,
    batch: Option<usize>,
    iterations: usize,
    warmup: usize,
) -> Result<Measured, Failure> {
    let mut model = open(bundle, trust)?;
    model.set_threads(threads);
    let inputs = bench_inputs(&model, batch)?;
    let rows = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
    for _ in 0..warmup {
        model.run(inputs.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut times = Vec::with_capacity(iterations.max(1));
    let start = std::time::Instant::now();
    for _ in 0..iterations.max(1) {
        let ins = inputs.clone();
        let t0 = std::time::Instant::now();
        let out = model.run(ins).map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    let (median, p99) = (pct(0.5), pct(0.99));
    let throughput = (rows * times.len()) as f64 / total;
    Ok(Measured { threads, batch: rows, median_us: median, p99_us: p99, throughput })
}

/// `bench --profile`: where a tract model's time goes, operator by operator.
fn profile(
    bundle: PathBuf,
    trust: Trust,
    threads: usize,
    batch: Option<usize>,
    iterations: usize,
    json: bool,
) -> Result<(), Failure> {
    let mut model = open(&bundle, &trust)?;
    model.set_threads(threads);
    let inputs = bench_inputs(&model, batch)?;
    let runs = iterations.max(1);
    let nodes = model.profile(&inputs, runs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let total: f64 = nodes.iter().map(|n| n.mean_us).sum();
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for n in &nodes {
        match by_op.iter_mut().find(|o| o.0 == n.op) {
            Some(o) => {
                o.1 += n.mean_us;
                o.2 += 1;
            }
            None => by_op.push((n.op.clone(), n.mean_us, 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let m = &model.manifest;
    if json {
        let ops: Vec<_> = by_op
            .iter()
            .map(|(op, us, count)| serde_json::json!({"op": op, "mean_us": us, "nodes": count, "share": us / total}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "schema_version": 1, "model": format!("{}:{}", m.model.name, m.model.version), "running": model.running,
                "threads": threads, "runs": runs, "total_us": total, "by_op": ops, "nodes": nodes,
            })
        );
        return Ok(());
    }
    println!(
        "{}:{} ({}), {} thread(s), mean of {runs} runs: {total:.1} µs in {} operators",
        m.model.name,
        m.model.version,
        model.running,
        threads,
        nodes.len()
    );
    println!("\n{:>10} {:>6} {:>5}  OPERATOR TYPE", "µs", "share", "nodes");
    for (op, us, count) in &by_op {
        println!("{us:>10.1} {:>5.1}% {count:>5}  {op}", 100.0 * us / total);
    }
    println!("\n{:>10} {:>6}  NODE (operator: tract's description)", "µs", "share");
    for n in nodes.iter().take(20) {
        println!("{:>10.1} {:>5.1}%  {} ({}: {})", n.mean_us, 100.0 * n.mean_us / total, n.node, n.op, n.info);
    }
    Ok(())
}

/// The inputs `bench` runs: the bundle's first test case, its rows repeated
/// to `batch` for models with a symbolic batch axis.
fn bench_inputs(model: &Model, batch: Option<usize>) -> Result<Vec<tract_core::prelude::Tensor>, Failure> {
    use neoc_bundle::manifest::Dim;
    use neoc_runtime::tensors::NamedTensor;
    let case = model
        .test_vectors
        .as_ref()
        .and_then(|tv| tv.cases.first())
        .ok_or_else(|| anyhow::anyhow!("bundle has no test vectors to benchmark with"))?;
    let symbolic = model.manifest.inputs.iter().all(|i| matches!(i.shape.first(), Some(Dim::Symbol(_))));
    let mut inputs = Vec::new();
    for t in &case.inputs {
        let t: NamedTensor = t.clone();
        let tensor = t.to_tensor().map_err(|e| anyhow::anyhow!("test vector: {e}"))?;
        let tensor = match batch {
            Some(b) if symbolic && tensor.rank() >= 1 && tensor.shape()[0] > 0 => {
                let have = tensor.shape()[0];
                let parts: Vec<_> = (0..b)
                    .map(|r| tensor.slice(0, r % have, r % have + 1))
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                tract_core::prelude::Tensor::stack_tensors(0, &parts).map_err(|e| anyhow::anyhow!("{e}"))?
            }
            Some(b) if tensor.shape().first() != Some(&b) => {
                return Err(Failure::Other(anyhow::anyhow!(
                    "this model's batch axis is fixed at {:?}; --batch {b} is not possible",
                    tensor.shape().first()
                )))
            }
            _ => tensor,
        };
        inputs.push(tensor);
    }
    Ok(inputs)
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let ServeArgs {
        bundles,
        trust,
        host,
        port,
        name,
        threads,
        max_queue,
        max_body,
        timeout,
        auth_token,
        auth_token_file,
        variant,
        log_format,
        max_batch,
        max_queue_delay,
    } = args;
    use neoc_runtime::serve::{self, Config, Served};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match log_format.as_str() {
        "json" => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
        "text" => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).with_writer(std::io::stderr).init()
        }
        other => return Err(Failure::Other(anyhow::anyhow!("--log-format {other:?}: use text or json"))),
    }
    if name.is_some() && bundles.len() > 1 {
        return Err(Failure::Other(anyhow::anyhow!(
            "--name names a single model; with several bundles each is named by its manifest"
        )));
    }
    let token = match (auth_token, auth_token_file) {
        (Some(t), _) => Some(t),
        (None, Some(p)) => {
            Some(std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?.trim().to_string())
        }
        _ => None,
    };
    if token.as_deref() == Some("") {
        return Err(Failure::Other(anyhow::anyhow!("the auth token is empty")));
    }
    let mut threads = threads.map(|t| t.max(1));
    let mut models = Vec::new();
    for b in &bundles {
        let model = open(b, &trust)?;
        // without --threads: the first bundle's device default, at most this host's CPUs
        threads.get_or_insert_with(|| model.default_threads());
        let st = model.self_test().map_err(|e| anyhow::anyhow!("{}: health check failed: {e}", b.display()))?;
        let model_name = name.clone().unwrap_or_else(|| model.manifest.model.name.clone());
        if models.iter().any(|m: &Served| m.name == model_name) {
            return Err(Failure::Other(anyhow::anyhow!("two bundles are both named `{model_name}`")));
        }
        tracing::info!(model = %model_name, version = %model.manifest.model.version, engine = %model.running, test_vectors = st.cases, "loaded {}", b.display());
        models.push(Served { name: model_name, model });
    }
    let threads = threads.unwrap_or(1);
    let cfg = Config {
        max_body_bytes: max_body,
        timeout: std::time::Duration::from_secs(timeout.max(1)),
        max_queue,
        threads,
        auth_token: token,
        variant,
        draining: Default::default(),
        max_batch: max_batch.max(1),
        max_queue_delay_us: max_queue_delay,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(threads + 2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("listening on http://{addr}");
        std::io::stdout().flush().ok();
        tracing::info!(%addr, threads, "serving");
        serve::serve(listener, models, cfg).await.map_err(|e| anyhow::anyhow!("server error: {e}"))?;
        tracing::info!("drained; exiting");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn batch(
    bundle: PathBuf,
    trust: Trust,
    input: PathBuf,
    output: PathBuf,
    content_type: Option<String>,
    accept: Option<String>,
    max_rows: usize,
    threads: usize,
) -> Result<(), Failure> {
    use std::io::BufRead;
    let kind = |s: &str| -> Result<bool, Failure> {
        match s.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Ok(false),
            "jsonlines" | "jsonl" | "application/jsonlines" | "application/x-jsonlines" => Ok(true),
            other => Err(Failure::Other(anyhow::anyhow!(
                "format {other:?} is not supported for batch; use csv or jsonlines"
            ))),
        }
    };
    let name = input.to_string_lossy().to_string();
    let in_lines = match &content_type {
        Some(c) => kind(c)?,
        None => name.ends_with(".jsonl") || name.ends_with(".jsonlines"),
    };
    let out_lines = match &accept {
        Some(a) => kind(a)?,
        None => in_lines,
    };
    let mut model = open(&bundle, &trust)?;
    model.set_threads(threads);
    let names = model.output_names();
    let reader =
        std::io::BufReader::new(std::fs::File::open(&input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?);
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        output.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> Result<usize, Failure> {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?,
        );
        let mut chunk: Vec<String> = Vec::new();
        let mut first_line = 1;
        let mut done = 0;
        let flush = |chunk: &mut Vec<String>, first_line: usize, out: &mut dyn Write| -> Result<usize, Failure> {
            if chunk.is_empty() {
                return Ok(0);
            }
            let body = chunk.join("\n");
            let body = if in_lines {
                request::jsonlines_to_instances(body.as_bytes()).map_err(|e| Failure::BadRequest(e.0))?
            } else {
                body.into_bytes()
            };
            let fmt = if in_lines { Format::Json } else { Format::Csv };
            let b = request::parse(&body, fmt, &model.manifest.inputs).map_err(|e| {
                Failure::BadRequest(format!("lines {}-{}: {e}", first_line, first_line + chunk.len() - 1))
            })?;
            let rows = b.rows;
            let outputs = model.predict(b).map_err(|e| {
                Failure::BadRequest(format!("lines {}-{}: {e}", first_line, first_line + chunk.len() - 1))
            })?;
            let bytes = if out_lines {
                request::to_jsonlines(&names, &outputs, rows)
            } else {
                request::to_csv(&names, &outputs, rows)
            }
            .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
            out.write_all(&bytes).map_err(|e| anyhow::anyhow!("writing the output: {e}"))?;
            let n = chunk.len();
            chunk.clear();
            Ok(n)
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("{}: line {}: {e}", input.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            if chunk.is_empty() {
                first_line = i + 1;
            }
            chunk.push(line);
            if chunk.len() >= max_rows.max(1) {
                done += flush(&mut chunk, first_line, &mut out)?;
            }
        }
        done += flush(&mut chunk, first_line, &mut out)?;
        out.flush().map_err(|e| anyhow::anyhow!("writing the output: {e}"))?;
        Ok(done)
    })();
    match result {
        Ok(n) => {
            std::fs::rename(&tmp, &output).map_err(|e| anyhow::anyhow!("{}: {e}", output.display()))?;
            eprintln!("{n} rows -> {}", output.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Predict { bundle, trust, input, content_type, accept } => {
            predict(bundle, trust, input, content_type, accept)
        }
        Command::Check { bundle, trust } => check(bundle, trust),
        Command::Batch { bundle, trust, input, output, content_type, accept, max_rows, threads } => {
            batch(bundle, trust, input, output, content_type, accept, max_rows, threads)
        }
        Command::Serve(args) => serve(args),
        Command::Bench { bundle, trust, threads, batch, iterations, json, profile: true, .. } => {
            profile(bundle, trust, threads, batch, iterations, json)
        }
        Command::Bench { bundle, trust, threads, batch, iterations, warmup, json, sweep: false, .. } => {
            bench(bundle, trust, threads, batch, iterations, warmup, json)
        }
        Command::Bench { bundle, trust, iterations, warmup, json, sweep: true, .. } => {
            bench_sweep(bundle, trust, iterations, warmup, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            eprintln!("error: bundle refused: {e}");
            ExitCode::from(3)
        }
        Err(Failure::BadRequest(m)) => {
            eprintln!("error: bad request: {m}");
            ExitCode::from(4)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
