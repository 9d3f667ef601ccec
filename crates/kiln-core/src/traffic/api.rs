//! The traffic API: a model's policy as it applies now, and changes to it at
//! run time.

use crate::error::KilnError;
use crate::model::Version;
use crate::registry::{lock, Registry};
use crate::traffic::policy::{PolicySource, TrafficState, TrafficUpdate};
use crate::traffic::routing::{canary, stable, unknown_model};
use std::sync::Arc;

/// A model's traffic policy as the API shows it.
#[derive(Debug, Clone)]
pub struct TrafficView {
    pub name: String,
    /// Serving versions, ascending.
    pub versions: Vec<Version>,
    /// The version unpinned traffic goes to when not sent to the canary.
    pub stable: Option<Version>,
    /// The canary, when it serves and differs from stable.
    pub canary: Option<Version>,
    pub state: TrafficState,
}

/// The traffic policy of a model and the versions it applies to.
pub fn view(registry: &Registry, name: &str) -> Result<TrafficView, KilnError> {
    let slot = registry.slot(name).ok_or_else(|| unknown_model(name))?;
    let served = slot.served.load();
    let state = TrafficState::clone(&slot.traffic.load());
    Ok(TrafficView {
        name: name.to_string(),
        versions: served.versions.keys().copied().collect(),
        stable: stable(&served, &state.policy).map(|v| v.version),
        canary: canary(&served, &state.policy).map(|v| v.version),
        state,
    })
}

/// Changes a model's traffic policy at run time. Versions it names must be
/// serving. It holds until the next change through the API or to the model's
/// `[traffic]`/`[rollback]` config, and clears a recorded rollback.
pub fn set(
    registry: &Registry,
    name: &str,
    update: &TrafficUpdate,
) -> Result<TrafficView, KilnError> {
    let slot = registry.slot(name).ok_or_else(|| unknown_model(name))?;
    {
        let _w = lock(&slot.window);
        let served = slot.served.load();
        let policy = update.apply(&slot.traffic.load().policy);
        for (what, v) in [
            ("stable", policy.stable),
            ("canary", policy.canary),
            ("shadow", policy.shadow),
        ] {
            if let Some(v) = v {
                if !served.versions.contains_key(&v) {
                    return Err(KilnError::invalid(format!(
                        "{what} version {v} of '{name}' is not serving (serving: {:?})",
                        served.versions.keys().map(|v| v.0).collect::<Vec<_>>()
                    )));
                }
            }
        }
        if policy.canary.is_some() && policy.canary == stable(&served, &policy).map(|v| v.version) {
            return Err(KilnError::invalid(format!(
                "the canary of '{name}' must differ from its stable version"
            )));
        }
        tracing::info!(model = %name, ?policy, "traffic policy changed through the API");
        slot.traffic.store(Arc::new(TrafficState {
            policy,
            source: PolicySource::Api,
            rolled_back: None,
        }));
    }
    view(registry, name)
}
