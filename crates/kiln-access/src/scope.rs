//! What an endpoint needs of its caller.

use std::fmt;

/// The permission an endpoint needs. A key lists the scopes it holds; health
/// is not one of them (any key may probe, and probes need none unless
/// `--open-health false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Liveness and readiness of the server.
    Health,
    /// Inference, model metadata, configuration and readiness, server metadata.
    Infer,
    /// The repository (index, load, unload) and traffic APIs.
    Admin,
    /// `/metrics` on the API port, and the statistics extension.
    Metrics,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Health => "health",
            Scope::Infer => "infer",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    /// A scope a key file may grant.
    pub fn grantable(name: &str) -> Option<Scope> {
        match name {
            "infer" => Some(Scope::Infer),
            "admin" => Some(Scope::Admin),
            "metrics" => Some(Scope::Metrics),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
