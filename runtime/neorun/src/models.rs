//! The live model table: the models a server answers for, by name. An
//! entry can be replaced while requests run: a request holds the entry it
//! started with (an `Arc`) until it ends, so a swap publishes the new
//! version at once and the old one is freed when its last request is done.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use neoc_runtime::Model;
use tokio::sync::mpsc::UnboundedSender;

use crate::infer::Job;
use crate::metrics::ModelSeries;

/// One served model.
pub struct LiveModel {
    pub name: String,
    pub model: Arc<Model>,
    /// The model's batcher, when requests to it are merged.
    pub(crate) batcher: Option<UnboundedSender<Job>>,
    /// Its metrics.
    pub series: ModelSeries,
}

#[derive(Default)]
struct Table {
    models: BTreeMap<String, Arc<LiveModel>>,
    /// The model `/invocations` answers when the request names none.
    default: Option<String>,
}

#[derive(Default)]
pub struct ModelTable {
    inner: RwLock<Table>,
}

impl ModelTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // a writer that panicked left a consistent map (every write is one insert)
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<LiveModel>> {
        self.read().models.get(name).cloned()
    }

    pub fn default_model(&self) -> Option<Arc<LiveModel>> {
        let t = self.read();
        t.default.as_ref().and_then(|d| t.models.get(d)).cloned()
    }

    pub fn default_name(&self) -> Option<String> {
        self.read().default.clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().models.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.read().models.is_empty()
    }

    /// Publishes `live` under its name; the first model published becomes
    /// the default. Returns the entry it replaced, if any.
    pub fn publish(&self, live: LiveModel) -> Option<Arc<LiveModel>> {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if t.default.is_none() {
            t.default = Some(live.name.clone());
        }
        t.models.insert(live.name.clone(), Arc::new(live))
    }

    /// Publishes a model an endpoint already runs under another name (the
    /// model store's: the model's own name for its endpoint's production model).
    pub fn publish_as(&self, name: &str, live: Arc<LiveModel>) -> Option<Arc<LiveModel>> {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if t.default.is_none() {
            t.default = Some(name.to_string());
        }
        t.models.insert(name.to_string(), live)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use neoc_runtime::{Batch, Model};
    use tract_core::prelude::*;

    use super::ModelTable;
    use crate::infer::{InferSettings, Inference};
    use crate::metrics::Metrics;
    use crate::testing::tiny_model;

    fn version(m: &Model) -> &str {
        &m.manifest.model.version
    }

    #[tokio::test]
    async fn a_swap_publishes_the_new_entry_while_requests_finish_on_the_old() {
        let inference = Inference::new(
            InferSettings { threads: 1, max_queue: 4, max_batch: 64, max_queue_delay: Duration::ZERO },
            Arc::new(Metrics::new("v")),
        );
        let table = ModelTable::default();
        assert!(table.publish(inference.live_model("tiny".into(), tiny_model("3"))).is_none());
        let held = table.get("tiny").unwrap();
        let old = table.publish(inference.live_model("tiny".into(), tiny_model("4"))).unwrap();
        assert!(Arc::ptr_eq(&old, &held));
        assert_eq!(version(&table.get("tiny").unwrap().model), "4");
        assert_eq!(version(&table.default_model().unwrap().model), "4");
        // the request that held version 3 is still answered by it, through its batcher
        let batch = Batch { rows: 1, inputs: vec![tensor2(&[[0.9f32, 0.0]])] };
        let out = inference.infer(&held, batch).await.unwrap();
        assert_eq!(out[0], tensor1(&[1i64]));
        assert_eq!(version(&held.model), "3");
        assert_eq!(table.names(), vec!["tiny".to_string()]);
    }
}
