//! The server's Prometheus metrics, kept with the Prometheus project's own
//! client (`prometheus-client`) and exposed on `/metrics` in the text format
//! (`promtool check metrics` passes it; a test runs it).
//!
//! Gauges are kept by guards (`Tracked`): a request counted as queued or
//! running stops being counted when its guard is dropped, on every path.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub variant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub model: String,
    pub variant: String,
    /// `4xx` (the request's fault) or `5xx`.
    pub class: String,
}

const LATENCY_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn batch_rows() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// An endpoint's variant, labelled as CloudWatch dimensions name them
/// (`EndpointName`, `VariantName`), so dashboards translate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VariantLabels {
    pub endpoint_name: String,
    pub variant_name: String,
    /// `production` or `shadow`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComparisonLabels {
    pub endpoint_name: String,
    pub variant_name: String,
    /// `agree`, `disagree` (an answer that differs from production's) or
    /// `shadow_error` (the shadow failed where production answered).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    pub endpoint_name: String,
    pub variant_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type VariantHistograms = Family<VariantLabels, Histogram, fn() -> Histogram>;
type ShadowHistograms = Family<CaptureLabels, Histogram, fn() -> Histogram>;

/// Sizes of a disagreement: the largest absolute difference between a
/// shadow's answer and production's.
const DIFF_BUCKETS: [f64; 10] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e4];

fn diff_sizes() -> Histogram {
    Histogram::new(DIFF_BUCKETS)
}

/// The endpoint, shadow and capture families (SageMaker's CloudWatch
/// names: `Invocations`, `Invocation4XXErrors`, `Invocation5XXErrors`,
/// `ModelLatency`, `OverheadLatency`, in Prometheus' spelling).
#[derive(Clone)]
struct EndpointFamilies {
    invocations: Family<VariantLabels, Counter>,
    errors_4xx: Family<VariantLabels, Counter>,
    errors_5xx: Family<VariantLabels, Counter>,
    model_latency: VariantHistograms,
    overhead_latency: VariantHistograms,
    comparisons: Family<ComparisonLabels, Counter>,
    difference: ShadowHistograms,
    shadow_shed: Family<CaptureLabels, Counter>,
    capture_written: Family<CaptureLabels, Counter>,
    capture_dropped: Family<ReasonLabels, Counter>,
    capture_paused: Gauge,
    model_loads: Family<VariantLabels, Counter>,
    model_unloads: Family<VariantLabels, Counter>,
    model_setup: VariantHistograms,
    throttled: Family<VariantLabels, Counter>,
}

/// A serverless or multi-model variant's loading series: `kind` in the
/// labels says which event (`cold_start`; `idle` or `evicted` for unloads).
#[derive(Clone, Debug)]
pub struct LazySeries {
    pub cold_starts: Counter,
    pub idle_unloads: Counter,
    pub evictions: Counter,
    pub setup_time: Histogram,
    pub throttled: Counter,
}

impl EndpointFamilies {
    fn register(r: &mut Registry) -> EndpointFamilies {
        let f = EndpointFamilies {
            invocations: Family::default(),
            errors_4xx: Family::default(),
            errors_5xx: Family::default(),
            model_latency: VariantHistograms::new_with_constructor(latency as fn() -> Histogram),
            overhead_latency: VariantHistograms::new_with_constructor(latency as fn() -> Histogram),
            comparisons: Family::default(),
            difference: ShadowHistograms::new_with_constructor(diff_sizes as fn() -> Histogram),
            shadow_shed: Family::default(),
            capture_written: Family::default(),
            capture_dropped: Family::default(),
            capture_paused: Gauge::default(),
            model_loads: Family::default(),
            model_unloads: Family::default(),
            model_setup: VariantHistograms::new_with_constructor(latency as fn() -> Histogram),
            throttled: Family::default(),
        };
        r.register(
            "neorun_model_loads",
            "Models loaded on demand by serverless and multi-model variants (cold starts)",
            f.model_loads.clone(),
        );
        r.register(
            "neorun_model_unloads",
            "Models unloaded by serverless and multi-model variants, by kind (idle, evicted: over the memory budget)",
            f.model_unloads.clone(),
        );
        r.register(
            "neorun_model_setup_seconds",
            "Time to load a model on demand, verify and health-check it (SageMaker's ModelSetupTime, in seconds)",
            f.model_setup.clone(),
        );
        r.register(
            "neorun_throttled",
            "Requests refused with 429 ThrottlingException over a serverless variant's MaxConcurrency",
            f.throttled.clone(),
        );
        r.register(
            "neorun_invocations",
            "Invocations: requests an endpoint variant answered (SageMaker's Invocations)",
            f.invocations.clone(),
        );
        r.register(
            "neorun_invocation_4xx_errors",
            "Invocations answered with a 4xx (SageMaker's Invocation4XXErrors)",
            f.errors_4xx.clone(),
        );
        r.register(
            "neorun_invocation_5xx_errors",
            "Invocations answered with a 5xx (SageMaker's Invocation5XXErrors)",
            f.errors_5xx.clone(),
        );
        r.register(
            "neorun_model_latency_seconds",
            "Time the model took to answer (SageMaker's ModelLatency, in seconds)",
            f.model_latency.clone(),
        );
        r.register("neorun_overhead_latency_seconds", "Time spent around the model: reading, decoding, queueing, encoding (SageMaker's OverheadLatency, in seconds)", f.overhead_latency.clone());
        r.register(
            "neorun_shadow_comparisons",
            "Shadow answers compared with production's answer to the same request, by outcome",
            f.comparisons.clone(),
        );
        r.register(
            "neorun_shadow_difference",
            "Largest absolute difference between a shadow's answer and production's, for answers that disagree",
            f.difference.clone(),
        );
        r.register(
            "neorun_shadow_shed",
            "Shadow copies not run because the machine was busy (live traffic first)",
            f.shadow_shed.clone(),
        );
        r.register("neorun_capture_records", "Data capture records written", f.capture_written.clone());
        r.register(
            "neorun_capture_dropped",
            "Data capture records not written, by reason (queue_full, disk_high_water, write_error, shutting_down)",
            f.capture_dropped.clone(),
        );
        r.register(
            "neorun_capture_paused",
            "1 while data capture is paused because a destination disk is over its high-water mark",
            f.capture_paused.clone(),
        );
        f
    }
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<ModelLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Histograms,
    queue_duration: Histograms,
    batch: Histograms,
    rejected: Counter,
    /// Requests admitted and waiting for an inference slot.
    pub waiting: Gauge,
    /// Requests whose inference is running (at most `--threads` model runs;
    /// a merged batch counts each of its requests).
    pub running: Gauge,
    variant: String,
    endpoints: EndpointFamilies,
}

impl Metrics {
    pub fn new(variant: &str) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<ModelLabels, Counter>::default();
        registry.register("neorun_requests", "Inference requests answered, by model", requests.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "neorun_errors",
            "Inference requests answered with an error, by status class (a model error, answered 424 ModelError, is the model's 5xx)",
            errors.clone(),
        );
        let duration = Histograms::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "neorun_request_duration_seconds",
            "Time from the request's arrival to its answer",
            duration.clone(),
        );
        let queue_duration = Histograms::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "neorun_queue_duration_seconds",
            "Time a request waited for an inference slot",
            queue_duration.clone(),
        );
        let batch = Histograms::new_with_constructor(batch_rows as fn() -> Histogram);
        registry.register("neorun_batch_rows", "Rows per model run", batch.clone());
        let rejected = Counter::default();
        registry.register("neorun_rejected", "Requests refused with 503 because the queue was full", rejected.clone());
        let waiting = Gauge::default();
        registry.register("neorun_queue_waiting", "Requests waiting for an inference slot", waiting.clone());
        let running = Gauge::default();
        registry.register("neorun_inflight_requests", "Requests whose inference is running", running.clone());
        let endpoints = EndpointFamilies::register(&mut registry);
        Metrics {
            endpoints,
            registry,
            requests,
            errors,
            duration,
            queue_duration,
            batch,
            rejected,
            waiting,
            running,
            variant: variant.to_string(),
        }
    }

    /// Creates the model's series at zero (so they are there before its
    /// first request) and returns handles to them: a request updates its
    /// model's series through these, with no lookup by name. `variant`:
    /// the endpoint variant it serves, else the server's `--variant`.
    pub fn register_model(&self, model: &str, variant: Option<&str>) -> ModelSeries {
        let variant = variant.unwrap_or(&self.variant).to_string();
        let l = ModelLabels { model: model.to_string(), variant: variant.clone() };
        let error = |class: &str| {
            let e = ErrorLabels { model: model.into(), variant: variant.clone(), class: class.into() };
            self.errors.get_or_create(&e).clone()
        };
        ModelSeries {
            requests: self.requests.get_or_create(&l).clone(),
            errors_4xx: error("4xx"),
            errors_5xx: error("5xx"),
            duration: self.duration.get_or_create(&l).clone(),
            queue_duration: self.queue_duration.get_or_create(&l).clone(),
            batch: self.batch.get_or_create(&l).clone(),
        }
    }

    /// An endpoint variant's series (production or shadow), at zero.
    pub fn register_variant(&self, endpoint: &str, variant: &str, shadow: bool) -> VariantSeries {
        let f = &self.endpoints;
        let l = VariantLabels {
            endpoint_name: endpoint.into(),
            variant_name: variant.into(),
            kind: if shadow { "shadow" } else { "production" }.into(),
        };
        let c = CaptureLabels { endpoint_name: endpoint.into(), variant_name: variant.into() };
        let outcome = |o: &str| {
            let l =
                ComparisonLabels { endpoint_name: endpoint.into(), variant_name: variant.into(), outcome: o.into() };
            f.comparisons.get_or_create(&l).clone()
        };
        VariantSeries {
            invocations: f.invocations.get_or_create(&l).clone(),
            errors_4xx: f.errors_4xx.get_or_create(&l).clone(),
            errors_5xx: f.errors_5xx.get_or_create(&l).clone(),
            model_latency: f.model_latency.get_or_create(&l).clone(),
            overhead_latency: f.overhead_latency.get_or_create(&l).clone(),
            shadow: shadow.then(|| ShadowSeries {
                agree: outcome("agree"),
                disagree: outcome("disagree"),
                shadow_error: outcome("shadow_error"),
                difference: f.difference.get_or_create(&c).clone(),
                shed: f.shadow_shed.get_or_create(&c).clone(),
            }),
        }
    }

    /// A serverless or multi-model variant's loading series.
    pub fn register_lazy(&self, endpoint: &str, variant: &str) -> LazySeries {
        let f = &self.endpoints;
        let l = |kind: &str| VariantLabels {
            endpoint_name: endpoint.into(),
            variant_name: variant.into(),
            kind: kind.into(),
        };
        // one statement each: a family's read guard lives to the end of its
        // statement, and a second label set of the same family needs its
        // write lock
        let cold_starts = f.model_loads.get_or_create(&l("cold_start")).clone();
        let idle_unloads = f.model_unloads.get_or_create(&l("idle")).clone();
        let evictions = f.model_unloads.get_or_create(&l("evicted")).clone();
        let setup_time = f.model_setup.get_or_create(&l("production")).clone();
        let throttled = f.throttled.get_or_create(&l("production")).clone();
        LazySeries { cold_starts, idle_unloads, evictions, setup_time, throttled }
    }

    /// Handles for the capture writer.
    pub fn capture(&self) -> CaptureMetrics {
        CaptureMetrics {
            written: self.endpoints.capture_written.clone(),
            dropped: self.endpoints.capture_dropped.clone(),
            paused: self.endpoints.capture_paused.clone(),
        }
    }

    pub fn rejected(&self) {
        self.rejected.inc();
    }

    /// The OpenMetrics text exposition (`application/openmetrics-text`).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// The Prometheus text exposition (`text/plain; version=0.0.4`), what
    /// scrapers and `promtool` read when they do not ask for OpenMetrics.
    pub fn render(&self) -> String {
        prometheus_text(&self.render_openmetrics())
    }
}

/// One model's series (handles sharing the registry's values).
#[derive(Clone, Debug)]
pub struct ModelSeries {
    requests: Counter,
    errors_4xx: Counter,
    errors_5xx: Counter,
    duration: Histogram,
    queue_duration: Histogram,
    batch: Histogram,
}

impl ModelSeries {
    /// Counts an answered request: its latency and, for an error, its class.
    pub fn answered(&self, took: Duration, status: u16) {
        self.requests.inc();
        self.duration.observe(took.as_secs_f64());
        if (400..500).contains(&status) {
            self.errors_4xx.inc();
        } else if status >= 500 {
            self.errors_5xx.inc();
        }
    }

    pub fn queued_for(&self, waited: Duration) {
        self.queue_duration.observe(waited.as_secs_f64());
    }

    pub fn batch_of(&self, rows: usize) {
        self.batch.observe(rows as f64);
    }
}

/// One endpoint variant's series.
#[derive(Clone, Debug)]
pub struct VariantSeries {
    invocations: Counter,
    errors_4xx: Counter,
    errors_5xx: Counter,
    model_latency: Histogram,
    overhead_latency: Histogram,
    /// A shadow variant's comparison series.
    pub shadow: Option<ShadowSeries>,
}

impl VariantSeries {
    /// Counts an invocation: its status, and (when the model ran) the
    /// model's time and the rest of the request's.
    pub fn invoked(&self, status: u16, total: Duration, model: Option<Duration>) {
        self.invocations.inc();
        if (400..500).contains(&status) {
            self.errors_4xx.inc();
        } else if status >= 500 {
            self.errors_5xx.inc();
        }
        if let Some(m) = model {
            self.model_latency.observe(m.as_secs_f64());
            self.overhead_latency.observe(total.saturating_sub(m).as_secs_f64());
        }
    }
}

#[derive(Clone, Debug)]
pub struct ShadowSeries {
    agree: Counter,
    disagree: Counter,
    shadow_error: Counter,
    difference: Histogram,
    shed: Counter,
}

impl ShadowSeries {
    pub fn agreed(&self) {
        self.agree.inc();
    }

    pub fn disagreed(&self, largest_difference: f64) {
        self.disagree.inc();
        self.difference.observe(largest_difference);
    }

    pub fn failed(&self) {
        self.shadow_error.inc();
    }

    pub fn shed(&self) {
        self.shed.inc();
    }
}

/// The capture writer's series.
#[derive(Clone, Debug)]
pub struct CaptureMetrics {
    written: Family<CaptureLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
    paused: Gauge,
}

impl CaptureMetrics {
    pub fn written(&self, endpoint: &str, variant: &str) {
        let l = CaptureLabels { endpoint_name: endpoint.into(), variant_name: variant.into() };
        self.written.get_or_create(&l).inc();
    }

    pub fn dropped(&self, reason: &str) {
        self.dropped.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
    }
}

/// OpenMetrics text to the Prometheus text format: the two differ here only
/// in that OpenMetrics names a counter family without its `_total` suffix
/// in `# HELP`/`# TYPE` (the samples carry it in both) and ends with `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(&name) {
                    out.push_str(&format!("{prefix}{name}_total{}\n", &rest[name.len()..]));
                    continue;
                }
                out.push_str(line);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Counts one in a gauge for as long as it lives.
#[derive(Debug)]
pub struct Tracked(Gauge);

impl Tracked {
    pub fn new(g: &Gauge) -> Tracked {
        g.inc();
        Tracked(g.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_with_their_labels_and_guards_give_gauges_back() {
        let m = Metrics::new("AllTraffic");
        let s = m.register_model("fraud", None);
        s.answered(Duration::from_millis(2), 200);
        s.answered(Duration::from_millis(2), 503);
        let g = Tracked::new(&m.running);
        let text = m.render();
        assert!(text.contains("# TYPE neorun_requests_total counter\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(m.render_openmetrics().contains("# TYPE neorun_requests counter\n"));
        assert!(text.contains("neorun_requests_total{model=\"fraud\",variant=\"AllTraffic\"} 2"), "{text}");
        assert!(text.contains("neorun_errors_total{model=\"fraud\",variant=\"AllTraffic\",class=\"5xx\"} 1"), "{text}");
        assert!(text.contains("neorun_inflight_requests 1"), "{text}");
        drop(g);
        assert!(m.render().contains("neorun_inflight_requests 0"));
    }
}
