//! Traffic between a model's versions: the canary split, sticky routing keys,
//! shadow copies, and the health windows behind automatic canary rollback.

use crate::config::{RollbackConfig, TrafficConfig};
use crate::dtype::DataType;
use crate::error::KilnError;
use crate::model::Version;
use crate::tensor::Tensor;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// HTTP header carrying a routing key (gRPC: the same name as metadata).
pub const ROUTING_KEY_HEADER: &str = "x-kiln-routing-key";
/// Request parameter carrying a routing key (REST `parameters`, gRPC `parameters`).
pub const ROUTING_KEY_PARAMETER: &str = "routing_key";
/// Version labels accepted in place of a number.
pub const LABEL_STABLE: &str = "stable";
pub const LABEL_CANARY: &str = "canary";

/// A model's traffic policy as it applies now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficPolicy {
    /// `None`: the highest serving version.
    pub stable: Option<Version>,
    pub canary: Option<Version>,
    pub canary_percent: f64,
    pub shadow: Option<Version>,
    pub shadow_percent: f64,
    pub rollback: Option<RollbackConfig>,
}

impl TrafficPolicy {
    pub fn from_config(t: Option<&TrafficConfig>, r: Option<&RollbackConfig>) -> Self {
        let t = t.cloned().unwrap_or_default();
        TrafficPolicy {
            stable: t.stable.map(Version),
            canary: t.canary.map(Version),
            canary_percent: t.canary_percent.unwrap_or(0.0),
            shadow: t.shadow.map(Version),
            shadow_percent: t.shadow_percent.unwrap_or(0.0),
            rollback: r.cloned(),
        }
    }
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    Config,
    Api,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Config => "config",
            PolicySource::Api => "api",
        }
    }
}

/// A rollback that happened: the canary's share was set to 0.
#[derive(Debug, Clone, PartialEq)]
pub struct RolledBack {
    pub version: Version,
    pub reason: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficState {
    pub policy: TrafficPolicy,
    pub source: PolicySource,
    pub rolled_back: Option<RolledBack>,
}

impl TrafficState {
    pub fn from_config(t: Option<&TrafficConfig>, r: Option<&RollbackConfig>) -> Self {
        TrafficState {
            policy: TrafficPolicy::from_config(t, r),
            source: PolicySource::Config,
            rolled_back: None,
        }
    }
}

/// A change of policy through the API: each field present replaces the current
/// value; `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficUpdate {
    pub stable: Option<Option<Version>>,
    pub canary: Option<Option<Version>>,
    pub canary_percent: Option<f64>,
    pub shadow: Option<Option<Version>>,
    pub shadow_percent: Option<f64>,
    pub rollback: Option<Option<RollbackConfig>>,
}

impl TrafficUpdate {
    /// Reads the JSON body of `POST /v2/models/{m}/traffic`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, KilnError> {
        let obj = v
            .as_object()
            .ok_or_else(|| KilnError::invalid("the traffic body must be a JSON object"))?;
        let mut u = TrafficUpdate::default();
        let version = |k: &str, v: &serde_json::Value| -> Result<Option<Version>, KilnError> {
            match v {
                serde_json::Value::Null => return Ok(None),
                serde_json::Value::Number(n) => n.as_u64().map(Version),
                serde_json::Value::String(s) => Version::parse(s),
                _ => None,
            }
            .map(Some)
            .ok_or_else(|| KilnError::invalid(format!("'{k}' must be a version number or null")))
        };
        let percent = |k: &str, v: &serde_json::Value| -> Result<f64, KilnError> {
            v.as_f64()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| KilnError::invalid(format!("'{k}' must be a number from 0 to 100")))
        };
        for (k, v) in obj {
            match k.as_str() {
                "stable" => u.stable = Some(version(k, v)?),
                "canary" => u.canary = Some(version(k, v)?),
                "shadow" => u.shadow = Some(version(k, v)?),
                "canary_percent" => u.canary_percent = Some(percent(k, v)?),
                "shadow_percent" => u.shadow_percent = Some(percent(k, v)?),
                "rollback" => {
                    u.rollback = Some(if v.is_null() {
                        None
                    } else {
                        let r: RollbackConfig = serde_json::from_value(v.clone())
                            .map_err(|e| KilnError::invalid(format!("'rollback': {e}")))?;
                        r.check().map_err(|(f, m)| {
                            KilnError::invalid(format!("'rollback.{f}': {m}"))
                        })?;
                        Some(r)
                    })
                }
                other => {
                    return Err(KilnError::invalid(format!(
                        "unknown traffic field '{other}' (expected stable, canary, canary_percent, shadow, shadow_percent, rollback)"
                    )))
                }
            }
        }
        Ok(u)
    }

    pub fn apply(&self, p: &TrafficPolicy) -> TrafficPolicy {
        let mut p = p.clone();
        if let Some(v) = self.stable {
            p.stable = v;
        }
        if let Some(v) = self.canary {
            p.canary = v;
        }
        if let Some(v) = self.canary_percent {
            p.canary_percent = v;
        }
        if let Some(v) = self.shadow {
            p.shadow = v;
        }
        if let Some(v) = self.shadow_percent {
            p.shadow_percent = v;
        }
        if let Some(v) = &self.rollback {
            p.rollback = v.clone();
        }
        p
    }
}

/// Whether a request goes to the canary: a routing key always lands in the same
/// bucket of 10,000; without one the draw is uniform random.
pub fn to_canary(percent: f64, key: Option<&str>) -> bool {
    if percent <= 0.0 {
        return false;
    }
    let draw = match key {
        Some(k) => bucket(k),
        None => fastrand::u32(..10_000),
    };
    f64::from(draw) < percent * 100.0
}

/// Whether this request is copied to the shadow version (uniform random).
pub fn to_shadow(percent: f64) -> bool {
    percent > 0.0 && f64::from(fastrand::u32(..10_000)) < percent * 100.0
}

/// A routing key's bucket in 0..10,000: FNV-1a, then a 64-bit finaliser so that
/// similar keys spread evenly.
pub fn bucket(key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % 10_000) as u32
}

/// Latency buckets of the health windows: bucket i holds latencies up to
/// 10 µs × 1.25^i (a 25 % resolution, up to hours).
const LATENCY_BUCKETS: usize = 96;
const FIRST_BOUND_US: f64 = 10.0;
const GROWTH: f64 = 1.25;

fn latency_bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FIRST_BOUND_US {
        return 0;
    }
    let i = ((us / FIRST_BOUND_US).ln() / GROWTH.ln()).ceil();
    (i as usize).min(LATENCY_BUCKETS - 1)
}

fn bucket_bound(i: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BOUND_US * GROWTH.powi(i as i32) / 1e6)
}

/// Requests, failures and a latency histogram of one version over some span.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub requests: u64,
    pub errors: u64,
    latency: [u32; LATENCY_BUCKETS],
}

impl Default for Health {
    fn default() -> Self {
        Health {
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Health {
    pub fn record(&mut self, ok: bool, latency: Duration) {
        self.requests += 1;
        if !ok {
            self.errors += 1;
        }
        let b = &mut self.latency[latency_bucket(latency)];
        *b = b.saturating_add(1);
    }

    pub fn add(&mut self, other: &Health) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 99th percentile latency (the upper bound of its bucket).
    pub fn p99(&self) -> Duration {
        let total: u64 = self.latency.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let want = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.latency.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                return bucket_bound(i);
            }
        }
        bucket_bound(LATENCY_BUCKETS - 1)
    }
}

/// What a version accumulates between two looks of the rollback watcher.
#[derive(Debug, Default)]
pub struct HealthRecorder {
    inner: Mutex<Health>,
}

impl HealthRecorder {
    pub fn record(&self, ok: bool, latency: Duration) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ok, latency);
    }

    /// Takes what was recorded since the last call.
    pub fn take(&self) -> Health {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The sliding window the watcher keeps per model: slices of stable's and the
/// canary's health, each stamped with when it was taken.
#[derive(Debug, Default)]
pub struct RollbackWindow {
    /// The (stable, canary) pair the slices belong to; a new pair starts afresh.
    pair: Option<(Version, Version)>,
    slices: VecDeque<(Instant, Health, Health)>,
}

impl RollbackWindow {
    /// Adds a slice and returns the sums over the window.
    pub fn push(
        &mut self,
        pair: (Version, Version),
        now: Instant,
        window: Duration,
        stable: Health,
        canary: Health,
    ) -> (Health, Health) {
        if self.pair != Some(pair) {
            self.pair = Some(pair);
            self.slices.clear();
        }
        self.slices.push_back((now, stable, canary));
        while let Some((t, _, _)) = self.slices.front() {
            if now.duration_since(*t) > window {
                self.slices.pop_front();
            } else {
                break;
            }
        }
        let (mut s, mut c) = (Health::default(), Health::default());
        for (_, a, b) in &self.slices {
            s.add(a);
            c.add(b);
        }
        (s, c)
    }

    pub fn clear(&mut self) {
        self.pair = None;
        self.slices.clear();
    }
}

/// Why the canary breaches the policy against stable, if it does.
pub fn judge(policy: &RollbackConfig, stable: &Health, canary: &Health) -> Option<String> {
    if stable.requests < policy.min_requests || canary.requests < policy.min_requests {
        return None;
    }
    let (se, ce) = (stable.error_rate(), canary.error_rate());
    if ce - se > policy.max_error_rate_increase {
        return Some(format!(
            "error rate {:.2}% against stable's {:.2}% over {} and {} requests (allowed increase {:.2} points)",
            ce * 100.0,
            se * 100.0,
            canary.requests,
            stable.requests,
            policy.max_error_rate_increase * 100.0
        ));
    }
    let (sp, cp) = (stable.p99(), canary.p99());
    if sp > Duration::ZERO && cp.as_secs_f64() > policy.max_p99_ratio * sp.as_secs_f64() {
        return Some(format!(
            "p99 latency {:.3} ms against stable's {:.3} ms ({:.2}x, allowed {:.2}x) over {} and {} requests",
            cp.as_secs_f64() * 1e3,
            sp.as_secs_f64() * 1e3,
            cp.as_secs_f64() / sp.as_secs_f64(),
            policy.max_p99_ratio,
            canary.requests,
            stable.requests
        ));
    }
    None
}

/// How a shadow's output compares with the primary's.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// Largest absolute difference over every element of every compared output.
    MaxAbs(f64),
    /// An output is missing, or its shape or datatype differs, or non-numeric data differs.
    Mismatch(String),
}

/// Compares outputs by name.
pub fn compare(primary: &[(String, Tensor)], shadow: &[(String, Tensor)]) -> Difference {
    let mut max = 0.0f64;
    for (name, p) in primary {
        let Some((_, s)) = shadow.iter().find(|(n, _)| n == name) else {
            return Difference::Mismatch(format!("the shadow has no output '{name}'"));
        };
        if p.shape() != s.shape() || p.dtype() != s.dtype() {
            return Difference::Mismatch(format!(
                "output '{name}': {} {:?} against the shadow's {} {:?}",
                p.dtype(),
                p.shape(),
                s.dtype(),
                s.shape()
            ));
        }
        match (as_f64(p), as_f64(s)) {
            (Some(a), Some(b)) => {
                for (x, y) in a.iter().zip(&b) {
                    let d = (x - y).abs();
                    if d.is_nan() {
                        if !(x.is_nan() && y.is_nan()) {
                            return Difference::Mismatch(format!("output '{name}': NaN differs"));
                        }
                    } else if d > max {
                        max = d;
                    }
                }
            }
            _ => {
                if p.data() != s.data() {
                    return Difference::Mismatch(format!("output '{name}' differs"));
                }
            }
        }
    }
    Difference::MaxAbs(max)
}

fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    fn conv<T: crate::tensor::Element, F: Fn(T) -> f64>(t: &Tensor, f: F) -> Option<Vec<f64>> {
        t.to_vec::<T>().ok().map(|v| v.into_iter().map(f).collect())
    }
    match t.dtype() {
        DataType::Fp32 => conv::<f32, _>(t, f64::from),
        DataType::Fp64 => conv::<f64, _>(t, |x| x),
        DataType::Fp16 => conv::<half::f16, _>(t, |x| x.to_f64()),
        DataType::Bf16 => conv::<half::bf16, _>(t, |x| x.to_f64()),
        DataType::Int8 => conv::<i8, _>(t, f64::from),
        DataType::Int16 => conv::<i16, _>(t, f64::from),
        DataType::Int32 => conv::<i32, _>(t, f64::from),
        DataType::Int64 => conv::<i64, _>(t, |x| x as f64),
        DataType::Uint8 => conv::<u8, _>(t, f64::from),
        DataType::Uint16 => conv::<u16, _>(t, f64::from),
        DataType::Uint32 => conv::<u32, _>(t, f64::from),
        DataType::Uint64 => conv::<u64, _>(t, |x| x as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_close_to_the_percent_and_sticky() {
        let n = 100_000;
        let random = (0..n).filter(|_| to_canary(10.0, None)).count();
        assert!((9_500..10_500).contains(&random), "{random}");
        let keyed = (0..n)
            .filter(|i| to_canary(25.0, Some(&format!("user-{i}"))))
            .count();
        assert!((24_000..26_000).contains(&keyed), "{keyed}");
        for i in 0..100 {
            let k = format!("k{i}");
            let first = to_canary(30.0, Some(&k));
            assert!((0..20).all(|_| to_canary(30.0, Some(&k)) == first));
        }
        assert!(!(0..1000).any(|_| to_canary(0.0, None)));
        assert!((0..1000).all(|_| to_canary(100.0, None)));
        assert!((0..1000).all(|i| to_canary(100.0, Some(&i.to_string()))));
    }

    #[test]
    fn p99_and_error_rates() {
        let mut h = Health::default();
        for i in 0..1000 {
            let ms = if i < 990 { 1 } else { 100 };
            h.record(i % 10 != 0, Duration::from_millis(ms));
        }
        assert_eq!(h.requests, 1000);
        assert!((h.error_rate() - 0.1).abs() < 1e-9);
        let p99 = h.p99().as_secs_f64();
        assert!((0.001..0.00126).contains(&p99), "{p99}");
        h.record(true, Duration::from_millis(100));
        h.record(true, Duration::from_millis(100));
        assert!(h.p99() >= Duration::from_millis(100));
        assert_eq!(Health::default().p99(), Duration::ZERO);
    }

    fn health(n: u64, errors: u64, ms: u64) -> Health {
        let mut h = Health::default();
        for i in 0..n {
            h.record(i >= errors, Duration::from_millis(ms));
        }
        h
    }

    #[test]
    fn judge_fires_on_worse_and_not_on_equal() {
        let p = RollbackConfig {
            min_requests: 50,
            window_secs: 10,
            max_error_rate_increase: 0.05,
            max_p99_ratio: 2.0,
        };
        assert_eq!(judge(&p, &health(500, 5, 2), &health(100, 1, 2)), None);
        assert_eq!(judge(&p, &health(500, 5, 2), &health(49, 49, 50)), None);
        let e = judge(&p, &health(500, 5, 2), &health(100, 10, 2)).unwrap();
        assert!(e.contains("error rate"), "{e}");
        let e = judge(&p, &health(500, 0, 2), &health(100, 0, 10)).unwrap();
        assert!(e.contains("p99"), "{e}");
    }

    #[test]
    fn window_slides_and_restarts_for_a_new_pair() {
        let mut w = RollbackWindow::default();
        let t0 = Instant::now();
        let pair = (Version(1), Version(2));
        let win = Duration::from_secs(10);
        w.push(pair, t0, win, health(10, 0, 1), health(5, 0, 1));
        let (s, c) = w.push(
            pair,
            t0 + Duration::from_secs(5),
            win,
            health(10, 0, 1),
            health(5, 0, 1),
        );
        assert_eq!((s.requests, c.requests), (20, 10));
        let (s, _) = w.push(
            pair,
            t0 + Duration::from_secs(12),
            win,
            health(1, 0, 1),
            health(1, 0, 1),
        );
        assert_eq!(s.requests, 11);
        let (s, _) = w.push(
            (Version(1), Version(3)),
            t0 + Duration::from_secs(13),
            win,
            health(1, 0, 1),
            health(1, 0, 1),
        );
        assert_eq!(s.requests, 1);
    }

    #[test]
    fn updates_parse_and_apply() {
        let u = TrafficUpdate::from_json(&serde_json::json!({
            "canary": 2, "canary_percent": 12.5, "shadow": "3", "rollback": {"max_p99_ratio": 3.0}
        }))
        .unwrap();
        let p = u.apply(&TrafficPolicy {
            stable: Some(Version(1)),
            ..Default::default()
        });
        assert_eq!(p.stable, Some(Version(1)));
        assert_eq!(p.canary, Some(Version(2)));
        assert_eq!(p.shadow, Some(Version(3)));
        assert_eq!(p.canary_percent, 12.5);
        assert_eq!(p.rollback.as_ref().unwrap().max_p99_ratio, 3.0);
        let cleared =
            TrafficUpdate::from_json(&serde_json::json!({"canary": null, "rollback": null}))
                .unwrap()
                .apply(&p);
        assert_eq!((cleared.canary, cleared.rollback.is_none()), (None, true));
        for bad in [
            serde_json::json!({"canary_percent": 101}),
            serde_json::json!({"canary": "x"}),
            serde_json::json!({"canary": -1}),
            serde_json::json!({"weight": 1}),
            serde_json::json!({"rollback": {"min_requests": 0}}),
            serde_json::json!({"rollback": {"nope": 1}}),
            serde_json::json!([1]),
        ] {
            assert!(TrafficUpdate::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compare_outputs() {
        let t = |v: Vec<f32>| Tensor::from_vec(vec![v.len()], v).unwrap();
        let p = vec![("y".to_string(), t(vec![1.0, 2.0, 3.0]))];
        let s = vec![("y".to_string(), t(vec![1.0, 2.5, 3.0]))];
        assert_eq!(compare(&p, &s), Difference::MaxAbs(0.5));
        assert_eq!(compare(&p, &p), Difference::MaxAbs(0.0));
        assert!(matches!(
            compare(&p, &[("z".into(), t(vec![1.0]))]),
            Difference::Mismatch(_)
        ));
        let s2 = vec![("y".to_string(), t(vec![1.0, 2.0]))];
        assert!(matches!(compare(&p, &s2), Difference::Mismatch(_)));
    }
}
