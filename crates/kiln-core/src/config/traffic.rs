//! The `[traffic]` and `[rollback]` sections: how unpinned requests are split
//! between versions, and when a canary's share is taken back to 0.

use serde::{Deserialize, Serialize};

/// How requests that name no version are split between versions (`[traffic]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// Version serving unpinned traffic (default: the highest serving version).
    pub stable: Option<u64>,
    /// Candidate version taking `canary_percent` of unpinned traffic.
    pub canary: Option<u64>,
    /// Share of unpinned requests routed to the canary, 0–100.
    pub canary_percent: Option<f64>,
    /// Version that also receives a copy of `shadow_percent` of requests; its
    /// answers are compared and discarded.
    pub shadow: Option<u64>,
    /// Share of requests copied to the shadow version, 0–100.
    pub shadow_percent: Option<f64>,
}

/// When to take the canary's share back to 0 (`[rollback]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    /// Requests both stable and canary must have in the window before they are compared.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Sliding window over which error rates and p99 latencies are compared.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Largest canary error rate minus stable error rate (a fraction, 0.01 = 1 point).
    #[serde(default = "default_error_increase")]
    pub max_error_rate_increase: f64,
    /// Largest canary p99 latency divided by stable p99 latency.
    #[serde(default = "default_p99_ratio")]
    pub max_p99_ratio: f64,
}

fn default_min_requests() -> u64 {
    100
}
fn default_window_secs() -> u64 {
    60
}
fn default_error_increase() -> f64 {
    0.01
}
fn default_p99_ratio() -> f64 {
    1.5
}

impl Default for RollbackConfig {
    fn default() -> Self {
        RollbackConfig {
            min_requests: default_min_requests(),
            window_secs: default_window_secs(),
            max_error_rate_increase: default_error_increase(),
            max_p99_ratio: default_p99_ratio(),
        }
    }
}

impl TrafficConfig {
    /// Checks ranges; `field` prefixes the names in messages.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (name, p) in [
            ("canary_percent", self.canary_percent),
            ("shadow_percent", self.shadow_percent),
        ] {
            if let Some(p) = p {
                if !(0.0..=100.0).contains(&p) {
                    return Err((name.into(), format!("{p} is not between 0 and 100")));
                }
            }
        }
        if self.canary.is_some() && self.canary == self.stable {
            return Err(("canary".into(), "must differ from stable".into()));
        }
        Ok(())
    }
}

impl RollbackConfig {
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.min_requests == 0 {
            return Err(("min_requests".into(), "must be at least 1".into()));
        }
        if !(1..=3600).contains(&self.window_secs) {
            return Err(("window_secs".into(), "must be between 1 and 3600".into()));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate_increase) {
            return Err((
                "max_error_rate_increase".into(),
                "is a fraction between 0 and 1".into(),
            ));
        }
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.0) {
            return Err(("max_p99_ratio".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}
