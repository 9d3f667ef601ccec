//! The traffic API's JSON body (`POST /v2/models/{m}/traffic`) as a change to
//! the core's traffic policy.

use kiln_core::config::RollbackConfig;
use kiln_core::traffic::policy::TrafficUpdate;
use kiln_core::{KilnError, Version};

/// Each field present replaces the policy's value; `null` clears it.
pub fn update(v: &serde_json::Value) -> Result<TrafficUpdate, KilnError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::traffic::policy::TrafficPolicy;

    #[test]
    fn updates_parse_and_apply() {
        let u = update(&serde_json::json!({
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
        let cleared = update(&serde_json::json!({"canary": null, "rollback": null}))
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
            assert!(update(&bad).is_err(), "{bad}");
        }
    }
}
