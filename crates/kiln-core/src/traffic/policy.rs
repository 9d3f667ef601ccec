//! A model's traffic policy: stable, canary and shadow versions, their shares,
//! the changes the API makes to it, and the draw that splits requests.

use crate::config::{RollbackConfig, TrafficConfig};
use crate::model::Version;
use std::time::SystemTime;

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
}
