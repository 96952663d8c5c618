//! `neorun bench`: in-process latency and throughput on the bundle's test
//! vectors; `--sweep` over threads and batches; `--profile` per operator.

use std::path::Path;

use anyhow::anyhow;
use neoc_bundle::manifest::Dim;
use neoc_runtime::tensors::NamedTensor;
use neoc_runtime::{Model, OpenOptions};
use serde_json::json;
use tract_core::prelude::Tensor;

use crate::cli::BenchArgs;
use crate::exit::Failure;

pub fn run(a: BenchArgs) -> Result<(), Failure> {
    if a.sweep {
        return sweep(&a);
    }
    let options = crate::settings::open_options(&a.load, Some(a.threads))?;
    if a.profile {
        return profile(&a, &options);
    }
    let r = measure(&a.bundle, &options, a.batch, a.iterations, a.warmup)?;
    let model = super::open(&a.bundle, &options)?;
    let m = &model.manifest;
    if a.json {
        println!(
            "{}",
            json!({
                "schema_version": 1, "model": format!("{}:{}", m.model.name, m.model.version), "engine": m.engine.name, "running": model.running,
                "threads": r.threads, "batch": r.batch, "iterations": a.iterations.max(1),
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
            a.iterations.max(1),
            r.median_us,
            r.p99_us,
            r.throughput
        );
    }
    Ok(())
}

/// One measured configuration.
struct Measured {
    threads: usize,
    batch: usize,
    median_us: f64,
    p99_us: f64,
    throughput: f64,
}

fn sweep(a: &BenchArgs) -> Result<(), Failure> {
    let probe = super::open(&a.bundle, &crate::settings::open_options(&a.load, None)?)?;
    let symbolic = probe.symbolic_batch();
    drop(probe);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let batches: Vec<Option<usize>> = if symbolic { vec![Some(1), Some(8), Some(64), Some(256)] } else { vec![None] };
    let mut results = Vec::new();
    for t in 1..=cpus {
        let options = crate::settings::open_options(&a.load, Some(t))?;
        for b in &batches {
            results.push(measure(&a.bundle, &options, *b, a.iterations, a.warmup)?);
        }
    }
    let latency = results
        .iter()
        .filter(|r| r.batch == results[0].batch)
        .min_by(|x, y| x.median_us.total_cmp(&y.median_us))
        .expect("one result");
    let throughput = results.iter().max_by(|x, y| x.throughput.total_cmp(&y.throughput)).expect("one result");
    if a.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| json!({"threads": r.threads, "batch": r.batch, "median_us": r.median_us, "p99_us": r.p99_us, "throughput_per_s": r.throughput}))
            .collect();
        println!(
            "{}",
            json!({"schema_version": 1, "results": rows,
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

fn measure(
    bundle: &Path,
    options: &OpenOptions,
    batch: Option<usize>,
    iterations: usize,
    warmup: usize,
) -> Result<Measured, Failure> {
    let model = super::open(bundle, options)?;
    let inputs = bench_inputs(&model, batch)?;
    let rows = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
    for _ in 0..warmup {
        model.run(inputs.clone()).map_err(|e| anyhow!("{e}"))?;
    }
    let mut times = Vec::with_capacity(iterations.max(1));
    let start = std::time::Instant::now();
    for _ in 0..iterations.max(1) {
        let ins = inputs.clone();
        let t0 = std::time::Instant::now();
        let out = model.run(ins).map_err(|e| anyhow!("{e}"))?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    let throughput = (rows * times.len()) as f64 / total;
    Ok(Measured {
        threads: options.threads.unwrap_or(1),
        batch: rows,
        median_us: pct(0.5),
        p99_us: pct(0.99),
        throughput,
    })
}

/// `--profile`: where a tract model's time goes, operator by operator.
fn profile(a: &BenchArgs, options: &OpenOptions) -> Result<(), Failure> {
    let model = super::open(&a.bundle, options)?;
    let inputs = bench_inputs(&model, a.batch)?;
    let runs = a.iterations.max(1);
    let nodes = model.profile(&inputs, runs).map_err(|e| anyhow!("{e}"))?;
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
    by_op.sort_by(|x, y| y.1.total_cmp(&x.1));
    let m = &model.manifest;
    if a.json {
        let ops: Vec<_> = by_op
            .iter()
            .map(|(op, us, count)| json!({"op": op, "mean_us": us, "nodes": count, "share": us / total}))
            .collect();
        println!(
            "{}",
            json!({
                "schema_version": 1, "model": format!("{}:{}", m.model.name, m.model.version), "running": model.running,
                "threads": a.threads, "runs": runs, "total_us": total, "by_op": ops, "nodes": nodes,
            })
        );
        return Ok(());
    }
    println!(
        "{}:{} ({}), {} thread(s), mean of {runs} runs: {total:.1} µs in {} operators",
        m.model.name,
        m.model.version,
        model.running,
        a.threads,
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
fn bench_inputs(model: &Model, batch: Option<usize>) -> Result<Vec<Tensor>, Failure> {
    let vectors = model.test_vectors().map_err(|e| anyhow!("{e}"))?;
    let case = vectors
        .as_ref()
        .and_then(|tv| tv.cases.first())
        .ok_or_else(|| anyhow!("bundle has no test vectors to benchmark with"))?;
    let symbolic = model.manifest.inputs.iter().all(|i| matches!(i.shape.first(), Some(Dim::Symbol(_))));
    let mut inputs = Vec::new();
    for t in &case.inputs {
        let t: &NamedTensor = t;
        let tensor = t.to_tensor().map_err(|e| anyhow!("test vector: {e}"))?;
        let tensor = match batch {
            Some(b) if symbolic && tensor.rank() >= 1 && tensor.shape()[0] > 0 => {
                let have = tensor.shape()[0];
                let parts: Vec<_> = (0..b)
                    .map(|r| tensor.slice(0, r % have, r % have + 1))
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow!("{e}"))?;
                Tensor::stack_tensors(0, &parts).map_err(|e| anyhow!("{e}"))?
            }
            Some(b) if tensor.shape().first() != Some(&b) => {
                return Err(Failure::Other(anyhow!(
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
