//! Kiln's access control, shared by both front ends: who a caller is (a bearer
//! key, a client certificate's subject, or nobody on an open server), whether
//! it may use an endpoint on a model, and whether it is within its rate.
//!
//! A front end calls [`Access::identify`] once per request, with what the
//! request carried, then [`Access::permit`] with the scope and the model the
//! endpoint touches, before it reads a body or queues anything. Errors are the
//! core's [`KilnError`] kinds (unauthenticated, permission denied, rate
//! limited), which each front end maps to its status in its one function.

pub mod keys;
pub mod rate;
pub mod scope;

use arc_swap::ArcSwap;
use keys::{hash_secret, Key, KeyFileError, Keys, Rate};
use kiln_core::error::quote;
use kiln_core::{ErrorKind, KilnError};
use rate::{AddressLimiter, KeyLimiter};
pub use scope::Scope;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Counts requests refused for their credentials, by `reason`
/// (`unauthenticated`, `forbidden`).
pub const AUTH_REFUSED: &str = "kiln_auth_refused_total";
/// Counts requests refused for their rate, by `key` and `model`.
pub const RATE_LIMITED: &str = "kiln_rate_limited_total";

pub fn describe_metrics() {
    metrics::describe_counter!(
        AUTH_REFUSED,
        "Requests refused for their credentials: reason unauthenticated (401 / UNAUTHENTICATED) or forbidden (403 / PERMISSION_DENIED)"
    );
    metrics::describe_counter!(
        RATE_LIMITED,
        "Requests refused for being over their key's rate (429 / RESOURCE_EXHAUSTED), by key id and model (empty for the server's endpoints and for names not loaded)"
    );
}

#[derive(Debug, Clone, Default)]
pub struct AccessOptions {
    /// The key file; `None`: an open server (anyone may call anything).
    pub key_file: Option<PathBuf>,
    /// Health endpoints answer without a key.
    pub open_health: bool,
    /// The rate of keys without their own, and of each client address on an
    /// open server; `None`: no limit.
    pub default_rate: Option<Rate>,
}

/// The far end of a connection, as the listener found it: attached to every
/// request that arrives on it (an HTTP request extension; gRPC's connect info).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<std::net::SocketAddr>,
    /// The subject of the client certificate the TLS handshake verified
    /// (shared: every request on the connection carries a copy of the peer).
    pub subject: Option<Arc<str>>,
}

/// What a request carried that may identify its caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The value of `Authorization` (HTTP header or gRPC metadata).
    pub authorization: Option<&'a str>,
    /// The verified client certificate's subject (mTLS).
    pub subject: Option<&'a str>,
    pub addr: Option<IpAddr>,
}

/// What an endpoint touches, as far as a key's model list goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The server itself (its metadata, health): no model.
    Server,
    /// One model, by the name the client gave.
    Model(&'a str),
    /// Every model (the index, statistics of all, `/metrics`): only for keys
    /// not limited to some models.
    AllModels,
}

/// A key of the file and its bucket.
struct Entry {
    key: Key,
    limiter: Option<Arc<KeyLimiter>>,
}

#[derive(Clone)]
enum Identity {
    /// No key file: everyone is let in.
    Open,
    Key(Arc<Entry>),
    /// Keys are required and none the server knows was presented.
    Unknown,
}

/// Who made a request, as [`Access::identify`] found.
#[derive(Clone)]
pub struct Caller {
    identity: Identity,
    addr: Option<IpAddr>,
}

impl Caller {
    /// Who the audit trail names: the key's id, or `anonymous`.
    pub fn name(&self) -> &str {
        match &self.identity {
            Identity::Key(e) => &e.key.id,
            Identity::Open | Identity::Unknown => "anonymous",
        }
    }

    /// The caller as the audit trail names it.
    pub fn actor(&self) -> kiln_core::audit::Actor {
        kiln_core::audit::Actor {
            name: self.name().to_string(),
            addr: self.addr,
        }
    }

    /// A caller nobody identified: refused wherever a key or an open server
    /// is needed (what a front end falls back on, failing closed).
    pub fn unidentified() -> Caller {
        Caller {
            identity: Identity::Unknown,
            addr: None,
        }
    }
}

/// The keys in force.
struct KeyState {
    keys: Keys,
    entries: Vec<Arc<Entry>>,
    /// The file's SHA-256, to tell a change from a touch.
    file_hash: [u8; 32],
}

/// What a reload of the key file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The file is as it was.
    Unchanged,
    /// New keys are in force; the ids before and after.
    Changed {
        before: Vec<String>,
        after: Vec<String>,
    },
}

/// Access control for a server: cheap to share (`Arc`), swapped whole on a
/// reload so that a request sees one key set or the other, never a mix.
pub struct Access {
    opts: AccessOptions,
    keys: Option<ArcSwap<KeyState>>,
    anonymous: Option<AddressLimiter>,
    /// Whether a model name is one the server serves, so that the rate-limit
    /// counter's `model` label takes only names of loaded models.
    known_model: Box<dyn Fn(&str) -> bool + Send + Sync>,
    reloading: Mutex<()>,
}

/// The answer to a missing or unknown key: the same for both, so that it does
/// not tell whether a key exists.
fn unauthenticated() -> KilnError {
    metrics::counter!(AUTH_REFUSED, "reason" => "unauthenticated").increment(1);
    KilnError::new(
        ErrorKind::Unauthenticated,
        "missing or unrecognised credentials: send a key as 'Authorization: Bearer <key>'",
    )
}

fn forbidden(message: String) -> KilnError {
    metrics::counter!(AUTH_REFUSED, "reason" => "forbidden").increment(1);
    KilnError::new(ErrorKind::PermissionDenied, message)
}

/// The secret of an `Authorization: Bearer <secret>` value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, secret) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

/// The key file's text and its SHA-256 (to tell a change from a touch before
/// parsing anything).
fn read_key_file(path: &std::path::Path) -> Result<(String, [u8; 32]), KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| KeyFileError::Syntax("not UTF-8".into()))?;
    let hash = hash_secret(&text);
    Ok((text, hash))
}

impl Access {
    /// Reads the key file (a server must not start on a bad one) and says,
    /// once, when the server is open.
    pub fn new(
        opts: AccessOptions,
        known_model: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Access, KeyFileError> {
        let keys = match &opts.key_file {
            None => {
                tracing::warn!(
                    "no --api-keys file: the server is open, anyone who reaches it may infer, load, unload and re-route models"
                );
                None
            }
            Some(path) => {
                let (text, file_hash) = read_key_file(path)?;
                let keys = Keys::parse(&text)?;
                let entries = entries(&keys, opts.default_rate, &[]);
                tracing::info!(
                    "API keys: {} from {} ({})",
                    keys.keys.len(),
                    path.display(),
                    ids(&keys).join(", ")
                );
                Some(ArcSwap::from_pointee(KeyState {
                    keys,
                    entries,
                    file_hash,
                }))
            }
        };
        let anonymous = match (&keys, opts.default_rate) {
            (None, Some(rate)) => Some(AddressLimiter::new(rate)),
            _ => None,
        };
        Ok(Access {
            opts,
            keys,
            anonymous,
            known_model: Box::new(known_model),
            reloading: Mutex::new(()),
        })
    }

    /// The caller a request's credentials name. Never fails: a caller without
    /// a known key is refused by [`Access::permit`], where the endpoint says
    /// whether it needs one.
    pub fn identify(&self, creds: Credentials<'_>) -> Caller {
        let identity = match &self.keys {
            None => Identity::Open,
            Some(state) => {
                let state = state.load();
                let found = match (creds.authorization.map(bearer), creds.subject) {
                    // A credential given but not a bearer key: not known.
                    (Some(None), _) => None,
                    (Some(Some(secret)), _) => state.keys.by_secret(&hash_secret(secret)),
                    (None, Some(subject)) => state.keys.by_subject(subject),
                    (None, None) => None,
                };
                found
                    .and_then(|i| state.entries.get(i))
                    .map_or(Identity::Unknown, |e| Identity::Key(e.clone()))
            }
        };
        Caller {
            identity,
            addr: creds.addr,
        }
    }

    /// Refuses an unknown caller where a key is needed; for a front end that
    /// wants to refuse before it decodes a request (the scope and model are
    /// checked by [`Access::permit`] once it has).
    pub fn authenticated(&self, caller: &Caller, scope: Scope) -> Result<(), KilnError> {
        match caller.identity {
            Identity::Unknown if !(scope == Scope::Health && self.opts.open_health) => {
                Err(unauthenticated())
            }
            _ => Ok(()),
        }
    }

    /// Whether `caller` may use an endpoint of `scope` on `target` now: its
    /// key, scope and model list, then its rate.
    pub fn permit(
        &self,
        caller: &Caller,
        scope: Scope,
        target: Target<'_>,
    ) -> Result<(), KilnError> {
        if scope == Scope::Health && self.opts.open_health {
            return Ok(());
        }
        let limited =
            match &caller.identity {
                Identity::Unknown => return Err(unauthenticated()),
                Identity::Open => self
                    .anonymous
                    .as_ref()
                    .zip(caller.addr)
                    .map(|(l, addr)| l.check(addr)),
                Identity::Key(e) => {
                    let key = &e.key;
                    if scope != Scope::Health && !key.scopes.contains(&scope) {
                        return Err(forbidden(format!(
                            "this key does not hold the '{scope}' scope"
                        )));
                    }
                    match target {
                        Target::Server => {}
                        Target::Model(m) if key.models.allows(m) => {}
                        Target::Model(m) => {
                            return Err(forbidden(format!(
                                "this key may not use model '{}'",
                                quote(m)
                            )))
                        }
                        Target::AllModels if key.models == keys::Models::All => {}
                        Target::AllModels => return Err(forbidden(
                            "this key is limited to some models; this endpoint covers all of them"
                                .into(),
                        )),
                    }
                    e.limiter.as_ref().map(|l| l.check())
                }
            };
        match limited {
            Some(Err(retry_after_secs)) => {
                let model = match target {
                    Target::Model(m) if (self.known_model)(m) => m.to_string(),
                    _ => String::new(),
                };
                let key = match &caller.identity {
                    Identity::Key(e) => e.key.id.clone(),
                    _ => String::new(),
                };
                metrics::counter!(RATE_LIMITED, "key" => key, "model" => model).increment(1);
                Err(KilnError::new(
                    ErrorKind::RateLimited { retry_after_secs },
                    format!("over this caller's request rate; retry in {retry_after_secs} s"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Re-reads the key file. A file that cannot be read or parsed leaves the
    /// keys in force as they were (never an open server) and is the error.
    pub fn reload(&self) -> Result<Reloaded, KeyFileError> {
        let (Some(state), Some(path)) = (&self.keys, &self.opts.key_file) else {
            return Ok(Reloaded::Unchanged);
        };
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let (text, file_hash) = read_key_file(path)?;
        let old = state.load();
        if old.file_hash == file_hash {
            return Ok(Reloaded::Unchanged);
        }
        let keys = Keys::parse(&text)?;
        let entries = entries(&keys, self.opts.default_rate, &old.entries);
        let report = Reloaded::Changed {
            before: ids(&old.keys),
            after: ids(&keys),
        };
        state.store(Arc::new(KeyState {
            keys,
            entries,
            file_hash,
        }));
        Ok(report)
    }
}

fn ids(keys: &Keys) -> Vec<String> {
    keys.keys.iter().map(|k| k.id.clone()).collect()
}

/// The entries of `keys`, keeping the bucket of a key whose id and rate did not
/// change (a reload must not refill every bucket).
fn entries(keys: &Keys, default_rate: Option<Rate>, old: &[Arc<Entry>]) -> Vec<Arc<Entry>> {
    keys.keys
        .iter()
        .map(|key| {
            let rate = key.rate.or(default_rate);
            let kept = old
                .iter()
                .find(|e| e.key.id == key.id)
                .and_then(|e| e.limiter.clone())
                .filter(|l| Some(l.rate) == rate);
            Arc::new(Entry {
                key: key.clone(),
                limiter: kept.or_else(|| rate.map(|r| Arc::new(KeyLimiter::new(r)))),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
