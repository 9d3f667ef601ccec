//! A model's traffic policy: stable, canary and shadow versions, their shares,
//! the changes the API makes to it, and the draw that splits requests.

use crate::config::{RollbackConfig, TrafficConfig};
use crate::error::KilnError;
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
}
