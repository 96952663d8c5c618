//! What the data plane counts for alarms: one `Counters` per variant of a
//! deployed fleet (blue and green each have their own), plain atomics on
//! the request path. The evaluator snapshots them once a second and takes
//! differences, so nothing here knows about periods or windows.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency buckets: four per octave of microseconds (each about 19% wide),
/// from 1 µs to about an hour.
pub const BUCKETS: usize = 128;

pub struct LogHist {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for LogHist {
    fn default() -> LogHist {
        LogHist { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }
}

pub fn bucket_of(us: f64) -> usize {
    if us < 1.0 {
        return 0;
    }
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// The middle (geometric) of a bucket, in microseconds.
pub fn bucket_value(b: usize) -> f64 {
    2f64.powf((b as f64 + 0.5) / 4.0)
}

impl LogHist {
    pub fn record(&self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us as u64, Relaxed);
    }

    fn read(&self) -> HistSnap {
        HistSnap { buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(), sum_us: self.sum_us.load(Relaxed) }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistSnap {
    pub buckets: Vec<u64>,
    pub sum_us: u64,
}

impl HistSnap {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, other: &HistSnap, sign: i64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS];
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.wrapping_add_signed(sign * *b as i64);
        }
        self.sum_us = self.sum_us.wrapping_add_signed(sign * other.sum_us as i64);
    }

    /// The value below which `q` (0..=1) of the samples fall, to the
    /// bucket's resolution.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b));
            }
        }
        None
    }

    pub fn extreme(&self, highest: bool) -> Option<f64> {
        let mut it = self.buckets.iter().enumerate().filter(|(_, c)| **c > 0);
        let b = if highest { it.next_back() } else { it.next() };
        b.map(|(b, _)| bucket_value(b))
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One variant's counts since it was deployed.
pub struct Counters {
    /// Unique for the life of the process (snapshots are keyed by it).
    pub id: u64,
    pub invocations: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
    pub model_errors: AtomicU64,
    pub model_latency: LogHist,
    pub overhead_latency: LogHist,
    /// Shadow variants: answers compared with production's, and how many
    /// of them disagreed; copies that failed.
    pub comparisons: AtomicU64,
    pub disagreements: AtomicU64,
    pub shadow_runs: AtomicU64,
    pub shadow_errors: AtomicU64,
    /// Copies not made because the machine was busy (shed).
    pub shadow_shed: AtomicU64,
    /// Health checks run on this variant's model during a deployment.
    pub self_tests: AtomicU64,
    pub self_test_failures: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            id: NEXT_ID.fetch_add(1, Relaxed),
            invocations: AtomicU64::new(0),
            errors_4xx: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            model_errors: AtomicU64::new(0),
            model_latency: LogHist::default(),
            overhead_latency: LogHist::default(),
            comparisons: AtomicU64::new(0),
            disagreements: AtomicU64::new(0),
            shadow_runs: AtomicU64::new(0),
            shadow_errors: AtomicU64::new(0),
            shadow_shed: AtomicU64::new(0),
            self_tests: AtomicU64::new(0),
            self_test_failures: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// One answered invocation. `model_error`: the model itself failed
    /// (`x-amzn-ErrorType: ModelError`), not the request.
    pub fn invoked(&self, status: u16, model_error: bool, total: Duration, model: Option<Duration>) {
        self.invocations.fetch_add(1, Relaxed);
        match status {
            400..=499 => self.errors_4xx.fetch_add(1, Relaxed),
            500..=599 => self.errors_5xx.fetch_add(1, Relaxed),
            _ => 0,
        };
        if model_error {
            self.model_errors.fetch_add(1, Relaxed);
        }
        if let Some(m) = model {
            self.model_latency.record(m);
            self.overhead_latency.record(total.saturating_sub(m));
        }
    }

    pub fn shadow(&self, outcome: Option<bool>) {
        self.shadow_runs.fetch_add(1, Relaxed);
        match outcome {
            Some(agreed) => {
                self.comparisons.fetch_add(1, Relaxed);
                if !agreed {
                    self.disagreements.fetch_add(1, Relaxed);
                }
            }
            None => {
                self.shadow_errors.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn shed(&self) {
        self.shadow_shed.fetch_add(1, Relaxed);
    }

    pub fn self_test(&self, passed: bool) {
        self.self_tests.fetch_add(1, Relaxed);
        if !passed {
            self.self_test_failures.fetch_add(1, Relaxed);
        }
    }

    pub fn read(&self) -> Snap {
        let c = [
            &self.invocations,
            &self.errors_4xx,
            &self.errors_5xx,
            &self.model_errors,
            &self.comparisons,
            &self.disagreements,
            &self.shadow_runs,
            &self.shadow_errors,
            &self.self_tests,
            &self.self_test_failures,
            &self.shadow_shed,
        ];
        Snap {
            counts: c.map(|a| a.load(Relaxed)),
            model: self.model_latency.read(),
            overhead: self.overhead_latency.read(),
        }
    }
}

/// Indexes into `Snap::counts`.
pub mod idx {
    pub const INVOCATIONS: usize = 0;
    pub const E4XX: usize = 1;
    pub const E5XX: usize = 2;
    pub const MODEL_ERRORS: usize = 3;
    pub const COMPARISONS: usize = 4;
    pub const DISAGREEMENTS: usize = 5;
    pub const SHADOW_RUNS: usize = 6;
    pub const SHADOW_ERRORS: usize = 7;
    pub const SELF_TESTS: usize = 8;
    pub const SELF_TEST_FAILURES: usize = 9;
    pub const SHADOW_SHED: usize = 10;
}

/// Counters read at one moment (or a difference of two readings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snap {
    pub counts: [u64; 11],
    pub model: HistSnap,
    pub overhead: HistSnap,
}

impl Snap {
    /// `self += sign × other`.
    pub fn add(&mut self, other: &Snap, sign: i64) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.wrapping_add_signed(sign * b as i64);
        }
        self.model.add(&other.model, sign);
        self.overhead.add(&other.overhead, sign);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_within_their_width() {
        let c = Counters::default();
        for us in 1..=1000u64 {
            c.invoked(200, false, Duration::from_micros(us + 10), Some(Duration::from_micros(us)));
        }
        let s = c.read();
        assert_eq!(s.counts[idx::INVOCATIONS], 1000);
        for (q, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = s.model.quantile(q).unwrap();
            assert!((got / want - 1.0).abs() < 0.2, "p{q}: {got} vs {want}");
        }
        let o = s.overhead.quantile(0.5).unwrap();
        assert!((o / 10.0 - 1.0).abs() < 0.2, "{o}");
    }

    #[test]
    fn differences_count_what_happened_between_two_readings() {
        let c = Counters::default();
        c.invoked(200, false, Duration::from_micros(5), Some(Duration::from_micros(4)));
        let a = c.read();
        c.invoked(500, true, Duration::from_micros(5), None);
        c.invoked(404, false, Duration::from_micros(5), None);
        let mut d = c.read();
        d.add(&a, -1);
        assert_eq!(d.counts[idx::INVOCATIONS], 2);
        assert_eq!(d.counts[idx::E5XX], 1);
        assert_eq!(d.counts[idx::E4XX], 1);
        assert_eq!(d.counts[idx::MODEL_ERRORS], 1);
        assert_eq!(d.model.count(), 0);
        assert_ne!(Counters::default().id, Counters::default().id);
    }
}
