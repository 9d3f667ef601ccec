//! The health windows behind automatic canary rollback: what each version
//! records between two looks of the watcher, the sliding window over those
//! records, and the judgement of a canary against its stable version.

use crate::config::RollbackConfig;
use crate::model::Version;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
