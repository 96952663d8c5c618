//! Transport-neutral inference: admission, dynamic batching and the
//! blocking pool, behind one call. HTTP handlers (and, later, shadow
//! copies, async jobs and batch transform) submit here; nothing here knows
//! about HTTP.

mod admission;
mod batcher;
pub mod error;
pub mod spare;

use std::sync::Arc;
use std::time::Duration;

use neoc_runtime::{Batch, Model};
use tract_core::prelude::Tensor;

pub use admission::{Admission, Queued};
pub use error::InferError;

use crate::metrics::Metrics;
use crate::models::LiveModel;

/// A request waiting for its model's batcher.
#[derive(Debug)]
pub struct Job {
    batch: Batch,
    queued: Queued,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Tensor>, InferError>>,
}

/// Settings of the inference layer.
#[derive(Clone, Debug)]
pub struct InferSettings {
    /// Model runs at once.
    pub threads: usize,
    /// Requests allowed to wait for a slot beyond those running.
    pub max_queue: usize,
    /// Rows per merged run (1: no dynamic batching).
    pub max_batch: usize,
    /// How long the first request of a batch may wait for others.
    pub max_queue_delay: Duration,
}

pub struct Inference {
    admission: Admission,
    metrics: Arc<Metrics>,
    settings: InferSettings,
}

impl Inference {
    pub fn new(settings: InferSettings, metrics: Arc<Metrics>) -> Arc<Inference> {
        Arc::new(Inference {
            admission: Admission::new(settings.max_queue, settings.threads, metrics.clone()),
            metrics,
            settings,
        })
    }

    /// Makes a model servable under `name`: with a batcher (a task on the
    /// current tokio runtime) when its requests can be merged.
    pub fn live_model(self: &Arc<Self>, name: String, model: Model) -> LiveModel {
        self.live_variant(name, Arc::new(model), None)
    }

    /// `live_model` for an endpoint's variant: its series carry the
    /// variant's name, and the model may be shared with other variants.
    pub fn live_variant(self: &Arc<Self>, name: String, model: Arc<Model>, variant: Option<&str>) -> LiveModel {
        let series = self.metrics.register_model(&name, variant);
        let batcher = if self.settings.max_batch > 1 && model.symbolic_batch() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(batcher::run(self.clone(), series.clone(), model.clone(), rx));
            Some(tx)
        } else {
            None
        };
        LiveModel { name, model, batcher, series }
    }

    /// Whether live requests are waiting for a slot: work that can wait
    /// (shadow copies) is shed while they are.
    pub fn busy(&self) -> bool {
        self.metrics.waiting.get() > 0
    }

    /// Runs `batch` on `live`: admitted first (or refused with
    /// `Overloaded`), then on the blocking pool, through the model's
    /// batcher when it has one. Dropping the returned future gives the
    /// queue place back; a run already started finishes, holding its slot.
    pub async fn infer(&self, live: &LiveModel, batch: Batch) -> Result<Vec<Tensor>, InferError> {
        let queued = self.admission.admit()?;
        if let Some(tx) = &live.batcher {
            // checked alone first: a bad request must not fail a merged batch
            live.model.check_inputs(&batch.inputs)?;
            let (reply, rx) = tokio::sync::oneshot::channel();
            tx.send(Job { batch, queued, reply }).map_err(|_| InferError::ShuttingDown)?;
            return rx.await.unwrap_or_else(|_| Err(InferError::Internal("the model's batcher stopped".into())));
        }
        let since = queued.since();
        let running = self.admission.start(vec![queued]).await?;
        live.series.queued_for(since.elapsed());
        live.series.batch_of(batch.rows);
        let model = live.model.clone();
        tokio::task::spawn_blocking(move || {
            let _running = running;
            model.predict(batch)
        })
        .await
        .map_err(|e| InferError::Internal(format!("inference task failed: {e}")))?
        .map_err(InferError::from)
    }
}
