//! Dynamic batching: a task per model that merges queued requests into one
//! run. It takes the first waiting request, then whatever else is queued (or
//! arrives within `max_queue_delay`) up to `max_batch` rows, waits for one
//! inference slot for all of them, runs them as one batch on the blocking
//! pool and splits the outputs back. The next batch gathers while one runs.
//! Requests whose client has gone are dropped before they cost a run.

use std::sync::Arc;

use neoc_runtime::Model;
use tokio::sync::mpsc::UnboundedReceiver;
use tract_core::prelude::*;

use super::{InferError, Inference, Job};
use crate::metrics::ModelSeries;

pub(super) async fn run(inf: Arc<Inference>, series: ModelSeries, model: Arc<Model>, mut rx: UnboundedReceiver<Job>) {
    let max_rows = inf.settings.max_batch;
    let delay = inf.settings.max_queue_delay;
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        if first.reply.is_closed() {
            continue;
        }
        let mut rows = first.batch.rows;
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + delay;
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) if delay.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
            };
            let Some(j) = next else { break };
            if j.reply.is_closed() {
                continue;
            }
            if rows + j.batch.rows > max_rows {
                carry = Some(j);
                break;
            }
            rows += j.batch.rows;
            jobs.push(j);
        }
        for j in &jobs {
            series.queued_for(j.queued.since().elapsed());
        }
        let mut parts = Vec::with_capacity(jobs.len());
        let mut queued = Vec::with_capacity(jobs.len());
        for j in jobs {
            parts.push((j.batch.inputs, j.batch.rows, j.reply));
            queued.push(j.queued);
        }
        let running = match inf.admission.start(queued).await {
            Ok(r) => r,
            Err(e) => {
                for (_, _, reply) in parts {
                    let _ = reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        series.batch_of(rows);
        let model = model.clone();
        tokio::spawn(async move {
            let (inputs, replies): (Vec<(Vec<Tensor>, usize)>, Vec<_>) =
                parts.into_iter().map(|(i, n, r)| ((i, n), r)).unzip();
            let results = tokio::task::spawn_blocking(move || {
                let _running = running;
                run_merged(&model, inputs)
            })
            .await;
            match results {
                Ok(results) => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let e = InferError::Internal(format!("inference task failed: {e}"));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Runs requests (inputs, rows) as one batch and splits the outputs back.
/// When the merged run fails, each request is run alone, so that one
/// request the engine fails on does not fail the others merged with it.
fn run_merged(model: &Model, parts: Vec<(Vec<Tensor>, usize)>) -> Vec<Result<Vec<Tensor>, InferError>> {
    if parts.len() == 1 {
        let (inputs, _) = parts.into_iter().next().expect("one part");
        return vec![model.run(inputs).map_err(InferError::from)];
    }
    let merged = (0..parts[0].0.len())
        .map(|i| {
            let all: Vec<&Tensor> = parts.iter().map(|(ins, _)| &ins[i]).collect();
            Tensor::stack_tensors(0, &all)
        })
        .collect::<TractResult<Vec<_>>>();
    let outputs = match merged {
        Ok(m) => model.run(m),
        Err(e) => return vec![Err(InferError::Internal(format!("merging a batch: {e}"))); parts.len()],
    };
    match outputs {
        Ok(outputs) => {
            let mut start = 0;
            parts
                .iter()
                .map(|(_, n)| {
                    let mine = outputs
                        .iter()
                        .map(|t| t.slice(0, start, start + n))
                        .collect::<TractResult<Vec<_>>>()
                        .map_err(|e| InferError::Internal(format!("splitting a batch: {e}")));
                    start += n;
                    mine
                })
                .collect()
        }
        Err(_) => parts.into_iter().map(|(inputs, _)| model.run(inputs).map_err(InferError::from)).collect(),
    }
}
