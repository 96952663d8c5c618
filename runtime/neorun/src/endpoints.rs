//! Live endpoints: what the data plane routes to. An endpoint is a set of
//! production variants (a model and a weight each), shadow variants (a
//! model and a sampling share) and a capture destination. Like the model
//! table, an entry is replaced whole — a weight change or a new
//! configuration publishes a new `LiveEndpoint` — and a request keeps the
//! one it started with, so nothing in flight fails or waits on a change.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tract_core::prelude::*;

use crate::alarms::Counters;
use crate::capture::CaptureSpec;
use crate::metrics::VariantSeries;
use crate::models::LiveModel;

/// A production variant.
pub struct Variant {
    pub name: String,
    pub model_name: String,
    /// Its model, loaded (`None` for a serverless or multi-model variant,
    /// whose models `lazy` loads on demand).
    pub live: Option<Arc<LiveModel>>,
    pub lazy: Option<Arc<crate::lazy::LazyModels>>,
    pub weight: f64,
    pub series: VariantSeries,
    /// What alarms watch (this fleet's own: blue and green count apart).
    pub counters: Arc<Counters>,
}

/// A shadow variant: sees a copy of `sampling` of live requests.
pub struct Shadow {
    pub name: String,
    pub model_name: String,
    pub live: Arc<LiveModel>,
    /// The share of requests copied to it, 0..=1.
    pub sampling: f64,
    /// Its weight as configured (`sampling` × the production weights).
    pub weight: f64,
    pub series: VariantSeries,
    /// Its copies running now: one slow shadow may not take every spare
    /// thread and starve the others.
    pub running: Arc<std::sync::atomic::AtomicUsize>,
    pub counters: Arc<Counters>,
}

pub struct LiveEndpoint {
    pub name: String,
    pub variants: Vec<Variant>,
    pub shadows: Vec<Shadow>,
    pub capture: Option<Arc<CaptureSpec>>,
    /// During a blue/green update: the new fleet and the share of requests
    /// it gets (this entry's own variants are blue).
    pub green: Option<Green>,
}

pub struct Green {
    pub fleet: Arc<LiveEndpoint>,
    /// 0..=1.
    pub share: f64,
}

/// Why no variant was chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// `X-Amzn-SageMaker-Target-Variant` named one the endpoint lacks.
    Unknown { name: String, variants: Vec<String> },
    /// Every weight is zero and the request named no variant.
    NoWeight,
}

impl LiveEndpoint {
    /// The fleet a request goes to, and its variant: during an update a
    /// request goes to green with probability `share`; a named variant goes
    /// to the fleet that has it (drawn by share when both have it).
    pub fn route(self: &Arc<Self>, target: Option<&str>) -> Result<(Arc<LiveEndpoint>, usize), Choice> {
        let fleet = match &self.green {
            None => self.clone(),
            Some(g) => {
                let to_green = g.share >= 1.0 || (g.share > 0.0 && fastrand::f64() < g.share);
                let has = |f: &LiveEndpoint, t: &str| f.variants.iter().any(|v| v.name == t);
                match target {
                    Some(t) if has(self, t) && !has(&g.fleet, t) => self.clone(),
                    Some(t) if has(&g.fleet, t) && !has(self, t) => g.fleet.clone(),
                    Some(t) if !has(self, t) && !has(&g.fleet, t) => {
                        let mut variants: Vec<String> = self.variants.iter().map(|v| v.name.clone()).collect();
                        variants.extend(g.fleet.variants.iter().map(|v| v.name.clone()));
                        variants.dedup();
                        return Err(Choice::Unknown { name: t.to_string(), variants });
                    }
                    _ if to_green => g.fleet.clone(),
                    _ => self.clone(),
                }
            }
        };
        let chosen = fleet.choose(target)? as *const Variant;
        let i = fleet.variants.iter().position(|v| std::ptr::eq(v, chosen)).expect("chosen from this fleet");
        Ok((fleet, i))
    }

    /// Every variant's counters, with its name (both fleets, shadows too).
    pub fn sources(&self) -> Vec<(String, Arc<Counters>)> {
        let mut out: Vec<(String, Arc<Counters>)> =
            self.variants.iter().map(|v| (v.name.clone(), v.counters.clone())).collect();
        out.extend(self.shadows.iter().map(|s| (s.name.clone(), s.counters.clone())));
        if let Some(g) = &self.green {
            out.extend(g.fleet.sources());
        }
        out
    }

    /// The variant a request goes to: the one it names, else one drawn
    /// with probability weight / sum of weights.
    pub fn choose(&self, target: Option<&str>) -> Result<&Variant, Choice> {
        if let Some(t) = target {
            return self.variants.iter().find(|v| v.name == t).ok_or_else(|| Choice::Unknown {
                name: t.to_string(),
                variants: self.variants.iter().map(|v| v.name.clone()).collect(),
            });
        }
        let total: f64 = self.variants.iter().map(|v| v.weight).sum();
        if total <= 0.0 || !total.is_finite() {
            return Err(Choice::NoWeight);
        }
        let mut x = fastrand::f64() * total;
        for v in &self.variants {
            if x < v.weight {
                return Ok(v);
            }
            x -= v.weight;
        }
        // rounding at the top end: the last variant with weight
        Ok(self.variants.iter().rev().find(|v| v.weight > 0.0).expect("total > 0"))
    }
}

#[derive(Default)]
pub struct EndpointTable {
    inner: RwLock<BTreeMap<String, Arc<LiveEndpoint>>>,
}

impl EndpointTable {
    pub fn get(&self, name: &str) -> Option<Arc<LiveEndpoint>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Publishes `e` under its name; returns the entry it replaced.
    pub fn publish(&self, e: LiveEndpoint) -> Option<Arc<LiveEndpoint>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).insert(e.name.clone(), Arc::new(e))
    }

    /// Publishes an entry already shared (a fleet that served beside
    /// another during an update).
    pub fn publish_arc(&self, e: Arc<LiveEndpoint>) -> Option<Arc<LiveEndpoint>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).insert(e.name.clone(), e)
    }

    pub fn remove(&self, name: &str) -> Option<Arc<LiveEndpoint>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    pub fn all(&self) -> Vec<Arc<LiveEndpoint>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// How a shadow's answer compares with production's on the same request.
#[derive(Debug, PartialEq)]
pub enum Agreement {
    Agree,
    /// With the largest absolute difference (infinite when shapes, types
    /// or counts differ).
    Disagree(f64),
}

/// Answers agree when they have the same outputs, shapes and types, and
/// every value is within `1e-5` (absolute, or relative to the larger).
pub fn compare(production: &[Tensor], shadow: &[Tensor]) -> Agreement {
    if production.len() != shadow.len() {
        return Agreement::Disagree(f64::INFINITY);
    }
    let mut largest = 0.0f64;
    for (p, s) in production.iter().zip(shadow) {
        if p.shape() != s.shape() {
            return Agreement::Disagree(f64::INFINITY);
        }
        let (Ok(p), Ok(s)) = (p.cast_to::<f64>(), s.cast_to::<f64>()) else {
            return if p == s { Agreement::Agree } else { Agreement::Disagree(f64::INFINITY) };
        };
        let values = |t: &Tensor| t.try_as_plain_ram().and_then(|p| p.as_slice::<f64>().map(|s| s.to_vec()));
        let (Ok(p), Ok(s)) = (values(&p), values(&s)) else {
            return Agreement::Disagree(f64::INFINITY);
        };
        for (a, b) in p.iter().zip(s) {
            let d = (a - b).abs();
            let tol = 1e-5 * a.abs().max(b.abs()).max(1.0);
            if d > tol || d.is_nan() {
                largest = largest.max(if d.is_nan() { f64::INFINITY } else { d });
            }
        }
    }
    if largest > 0.0 {
        Agreement::Disagree(largest)
    } else {
        Agreement::Agree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_compare_by_value_within_a_tolerance() {
        let a = vec![tensor1(&[1.0f32, 2.0]), tensor1(&[1i64])];
        assert_eq!(compare(&a, &a.clone()), Agreement::Agree);
        let b = vec![tensor1(&[1.0f32, 2.000_001]), tensor1(&[1i64])];
        assert_eq!(compare(&a, &b), Agreement::Agree);
        let c = vec![tensor1(&[1.0f32, 2.5]), tensor1(&[1i64])];
        assert_eq!(compare(&a, &c), Agreement::Disagree(0.5));
        let d = vec![tensor1(&[1.0f32, 2.0]), tensor1(&[0i64])];
        assert_eq!(compare(&a, &d), Agreement::Disagree(1.0));
        assert_eq!(compare(&a, &a[..1]), Agreement::Disagree(f64::INFINITY));
        let e = vec![tensor1(&[1.0f32, 2.0, 3.0]), tensor1(&[1i64])];
        assert_eq!(compare(&a, &e), Agreement::Disagree(f64::INFINITY));
    }
}
