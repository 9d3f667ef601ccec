//! Which version a request runs on: an explicit version or label wins; otherwise
//! the stable version, or the canary for its share of unpinned requests (sticky
//! per routing key); and, maybe, a shadow copy.

use crate::error::{quote, KilnError};
use crate::model::Version;
use crate::registry::{ModelVersion, Registry, Served};
use crate::traffic::policy::{self, TrafficPolicy, LABEL_CANARY, LABEL_STABLE};
use std::sync::Arc;

/// Where a request goes: its primary version and, maybe, a shadow copy.
pub(crate) struct Route {
    pub(crate) primary: Arc<ModelVersion>,
    pub(crate) shadow: Option<Arc<ModelVersion>>,
}

/// The version unpinned traffic goes to when no canary takes it: the policy's
/// stable version when it serves, else the highest serving version.
pub(crate) fn stable<'a>(served: &'a Served, p: &TrafficPolicy) -> Option<&'a Arc<ModelVersion>> {
    p.stable
        .and_then(|v| served.versions.get(&v))
        .or_else(|| served.versions.values().next_back())
}

/// The policy's canary, when it serves and differs from stable.
pub(crate) fn canary<'a>(served: &'a Served, p: &TrafficPolicy) -> Option<&'a Arc<ModelVersion>> {
    let stable = stable(served, p)?.version;
    p.canary
        .filter(|&c| c != stable)
        .and_then(|c| served.versions.get(&c))
}

pub(crate) fn unknown_model(name: &str) -> KilnError {
    KilnError::not_found(format!("unknown model '{}'", quote(name)))
}

/// Picks the version a request runs on. `version`: a number, `stable` or
/// `canary`, or none. `split`: unpinned requests are drawn between stable and
/// canary, and a share is copied to the shadow; without it, no draw is made.
pub(crate) fn route(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
    key: Option<&str>,
    split: bool,
) -> Result<Route, KilnError> {
    let slot = registry.slot(name).ok_or_else(|| unknown_model(name))?;
    let served = slot.served.load();
    let traffic = slot.traffic.load();
    // The name is the table's (a known model); a version is the client's.
    let policy = &traffic.policy;
    let no_version = || {
        let reason = served
            .index
            .iter()
            .map(|i| i.reason.as_str())
            .find(|r| !r.is_empty())
            .unwrap_or("");
        KilnError::unavailable(format!("model '{name}' has no ready version: {reason}"))
    };
    let pinned = version.filter(|v| !v.is_empty());
    let primary = match pinned {
        None | Some(LABEL_STABLE) => {
            let stable = stable(&served, policy).ok_or_else(no_version)?;
            match canary(&served, policy) {
                Some(c)
                    if split && pinned.is_none() && policy::to_canary(policy.canary_percent, key) =>
                {
                    c
                }
                _ => stable,
            }
        }
        Some(LABEL_CANARY) => canary(&served, policy).ok_or_else(|| {
            KilnError::not_found(format!("model '{name}' has no canary version serving"))
        })?,
        Some(v) => {
            let parsed = Version::parse(v).ok_or_else(|| {
                KilnError::not_found(format!(
                    "model '{name}' has no version '{}' (a version is a number, '{LABEL_STABLE}' or '{LABEL_CANARY}')",
                    quote(v)
                ))
            })?;
            served.versions.get(&parsed).ok_or_else(|| {
                let known = served.index.iter().any(|i| i.version == Some(parsed));
                if known {
                    KilnError::unavailable(format!("model '{name}' version {v} is not ready"))
                } else {
                    KilnError::not_found(format!("model '{name}' has no version '{}'", quote(v)))
                }
            })?
        }
    }
    .clone();
    let shadow = policy
        .shadow
        .filter(|&s| split && s != primary.version)
        .and_then(|s| served.versions.get(&s))
        .filter(|_| policy::to_shadow(policy.shadow_percent))
        .cloned();
    Ok(Route { primary, shadow })
}
