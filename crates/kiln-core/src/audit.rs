//! The audit trail: one structured log event (target `kiln::audit`) for every
//! control-plane change (a load, an unload, a traffic change, an automatic
//! rollback, a key-file or certificate reload) naming who did it, from where,
//! to which model, the state before and after, and the outcome; and a counter
//! of them. Nothing about a request's tensors is ever in it.

use crate::model::Version;
use crate::traffic::policy::TrafficPolicy;
use std::net::IpAddr;

/// Counts audit events by `action` and `outcome` (`ok`, `failed`).
pub const AUDIT_EVENTS: &str = "kiln_audit_events_total";

/// Who made a change: a key's id (or `anonymous` on an open server) and the
/// client's address, or Kiln itself (`kiln`: rollbacks, file reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub addr: Option<IpAddr>,
}

impl Actor {
    /// Kiln itself.
    pub fn kiln() -> Actor {
        Actor {
            name: "kiln".into(),
            addr: None,
        }
    }
}

/// One change, as the trail records it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// `load`, `unload`, `traffic`, `rollback`, `keys_reload`, `tls_reload`.
    pub action: &'static str,
    pub model: Option<&'a str>,
    pub before: String,
    pub after: String,
}

/// Records one change and its outcome (`Err(reason)` when it failed).
pub fn record(actor: &Actor, change: Change<'_>, outcome: Result<(), &str>) {
    let source = actor.addr.map(|a| a.to_string());
    let (result, error) = match outcome {
        Ok(()) => ("ok", None),
        Err(e) => ("failed", Some(e)),
    };
    tracing::info!(
        target: "kiln::audit",
        action = change.action,
        actor = actor.name.as_str(),
        source = source.as_deref().unwrap_or(""),
        model = change.model.unwrap_or(""),
        before = change.before.as_str(),
        after = change.after.as_str(),
        outcome = result,
        error = error.unwrap_or(""),
        "audit"
    );
    metrics::counter!(AUDIT_EVENTS, "action" => change.action, "outcome" => result).increment(1);
}

/// Records a change of the versions a model serves (a load or an unload):
/// those serving `after` it, or the error (the versions `before` it still serve).
pub fn record_versions(
    actor: &Actor,
    action: &'static str,
    model: &str,
    before: &[Version],
    after: Result<&[Version], &str>,
) {
    let change = Change {
        action,
        model: Some(model),
        before: versions(before),
        after: versions(after.unwrap_or(before)),
    };
    record(actor, change, after.map(|_| ()));
}

/// Versions as the trail writes them: `[1, 2]`.
pub fn versions(v: &[Version]) -> String {
    let list: Vec<String> = v.iter().map(Version::to_string).collect();
    format!("[{}]", list.join(", "))
}

/// A traffic policy as the trail writes it.
pub fn policy(p: &TrafficPolicy) -> String {
    let v = |v: Option<Version>| v.map_or("latest".to_string(), |v| v.to_string());
    let mut s = format!("stable={}", v(p.stable));
    if let Some(c) = p.canary {
        s.push_str(&format!(" canary={c}@{}%", p.canary_percent));
    }
    if let Some(sh) = p.shadow {
        s.push_str(&format!(" shadow={sh}@{}%", p.shadow_percent));
    }
    if p.rollback.is_some() {
        s.push_str(" rollback=on");
    }
    s
}
