//! The rollback watcher: a few times a second it takes what each version
//! recorded, slides each canary's window, and sets a canary's share to 0 when it
//! breaches its model's rollback policy against the stable version.

use crate::metrics as m;
use crate::model::Version;
use crate::registry::{lock, Registry};
use crate::traffic::health::{judge, Health};
use crate::traffic::policy::{RolledBack, TrafficState};
use crate::traffic::routing::{canary, stable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One look of the watcher at every model.
pub fn watch(registry: &Registry) {
    let now = Instant::now();
    for (name, slot) in registry.slots().iter() {
        let mut window = lock(&slot.window);
        let served = slot.served.load();
        let mut health: HashMap<Version, Health> = served
            .versions
            .iter()
            .map(|(v, mv)| (*v, mv.health.take()))
            .collect();
        let state = slot.traffic.load();
        let watched = match (
            &state.policy.rollback,
            canary(&served, &state.policy),
            stable(&served, &state.policy),
        ) {
            (Some(rb), Some(c), Some(s))
                if state.policy.canary_percent > 0.0 && state.rolled_back.is_none() =>
            {
                Some((rb, c.version, s.version))
            }
            _ => None,
        };
        let Some((policy, canary, stable)) = watched else {
            window.clear();
            continue;
        };
        let (s, c) = window.push(
            (stable, canary),
            now,
            Duration::from_secs(policy.window_secs),
            health.remove(&stable).unwrap_or_default(),
            health.remove(&canary).unwrap_or_default(),
        );
        if let Some(reason) = judge(policy, &s, &c) {
            tracing::warn!(model = %name, canary = canary.0, stable = stable.0, "canary rolled back: {reason}");
            crate::audit::record(
                &crate::audit::Actor::kiln(),
                crate::audit::Change {
                    action: "rollback",
                    model: Some(name.as_str()),
                    before: crate::audit::policy(&state.policy),
                    after: format!("canary {canary} at 0% ({reason})"),
                },
                Ok(()),
            );
            metrics::counter!(m::CANARY_ROLLBACKS, "model" => name.clone(), "version" => canary.to_string()).increment(1);
            let mut policy = state.policy.clone();
            policy.canary_percent = 0.0;
            slot.traffic.store(Arc::new(TrafficState {
                policy,
                source: state.source,
                rolled_back: Some(RolledBack {
                    version: canary,
                    reason,
                    at: SystemTime::now(),
                }),
            }));
            window.clear();
        }
    }
}
