//! The key file: who may call, with which scopes, on which models, how often.
//!
//! ```toml
//! [[key]]
//! id = "checkout"                 # what logs, metrics and audit events name
//! sha256 = "<64 hex digits>"      # of the secret: printf %s "$KEY" | sha256sum
//! scopes = ["infer"]              # infer, admin, metrics
//! models = ["resnet", "bert-*"]   # optional: every model when absent
//! rate = 50.0                     # optional: requests per second
//! burst = 100                     # optional: requests at once (default: rate)
//!
//! [[key]]
//! id = "loadtest"
//! subject = "CN=loadtest,O=Acme"  # instead of sha256: a client certificate's subject
//! scopes = ["infer", "metrics"]
//! ```
//!
//! Only hashes of secrets are stored, so the file (a mounted Secret) gives no
//! key away. A presented key is hashed, and the hash looked up in a table of
//! the stored ones: what the lookup's timing could tell is about the SHA-256 of
//! a key the caller chose, which says nothing of the stored keys (finding a key
//! from its hash is the preimage problem); the match found is then confirmed
//! with a constant-time comparison. A linear constant-time scan would cost
//! ~32 ns per key in the file on every request (3.4 µs with 100 keys,
//! `benches/access.rs`); the table costs the same with 1 key or 10,000.

use crate::scope::Scope;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// What is wrong with a key file. Never quotes a hash or a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the key file is not valid TOML of the expected form: {0}")]
    Syntax(String),
    #[error("key {index} ('{id}'): {problem}")]
    Key {
        index: usize,
        id: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    sha256: Option<String>,
    subject: Option<String>,
    scopes: Vec<String>,
    models: Option<Vec<String>>,
    rate: Option<f64>,
    burst: Option<u32>,
}

/// How one key is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The SHA-256 of a bearer secret.
    Secret([u8; 32]),
    /// A client certificate's subject, as Kiln writes it (RFC 4514, `CN=…,O=…`).
    Subject(String),
}

/// A request rate: so many per second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// The time between two requests at this rate.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }
}

/// Models a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Models {
    All,
    /// Exact names, and prefixes (from names ending in `*`).
    Some {
        names: HashSet<String>,
        prefixes: Vec<String>,
    },
}

impl Models {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Models::All => true,
            Models::Some { names, prefixes } => {
                names.contains(model) || prefixes.iter().any(|p| model.starts_with(p.as_str()))
            }
        }
    }
}

/// One key of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub id: String,
    pub credential: Credential,
    pub scopes: Vec<Scope>,
    pub models: Models,
    /// Its own rate; `None`: the server's default (`--rate-limit`), if any.
    pub rate: Option<Rate>,
}

/// Every key of a file, as parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keys {
    pub keys: Vec<Key>,
    /// The position of each key with a secret, by the secret's hash.
    by_hash: HashMap<[u8; 32], usize>,
}

/// The SHA-256 of a secret, as the key file stores it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Keys {
    pub fn parse(text: &str) -> Result<Keys, KeyFileError> {
        let file: File =
            toml::from_str(text).map_err(|e| KeyFileError::Syntax(e.message().to_string()))?;
        let mut ids = HashSet::new();
        let keys: Vec<Key> = file
            .key
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let id = raw.id.clone();
                let fail = |problem: String| KeyFileError::Key {
                    index: i + 1,
                    id: kiln_core::error::quote(&id),
                    problem,
                };
                if raw.id.trim().is_empty() {
                    return Err(fail("an empty id".into()));
                }
                if !ids.insert(raw.id.clone()) {
                    return Err(fail("a second key with this id".into()));
                }
                parse_key(raw).map_err(fail)
            })
            .collect::<Result<_, _>>()?;
        let mut by_hash = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            if let Credential::Secret(hash) = &key.credential {
                if by_hash.insert(*hash, i).is_some() {
                    return Err(KeyFileError::Key {
                        index: i + 1,
                        id: kiln_core::error::quote(&key.id),
                        problem: "the same secret as another key".into(),
                    });
                }
            }
        }
        Ok(Keys { keys, by_hash })
    }

    /// The position of the key whose secret hashes to `hash` (see the module's
    /// note on timing).
    pub fn by_secret(&self, hash: &[u8; 32]) -> Option<usize> {
        let &i = self.by_hash.get(hash)?;
        match &self.keys[i].credential {
            Credential::Secret(stored) if bool::from(stored.ct_eq(hash)) => Some(i),
            _ => None,
        }
    }

    /// The position of the key that names this client-certificate subject.
    pub fn by_subject(&self, subject: &str) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| matches!(&k.credential, Credential::Subject(s) if s == subject))
    }
}

fn parse_key(raw: RawKey) -> Result<Key, String> {
    let credential = match (raw.sha256, raw.subject) {
        (Some(h), None) => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut hash)
                .map_err(|_| "sha256 must be 64 hexadecimal digits".to_string())?;
            Credential::Secret(hash)
        }
        (None, Some(s)) if !s.trim().is_empty() => Credential::Subject(s.trim().to_string()),
        (None, Some(_)) => return Err("an empty subject".into()),
        _ => return Err("needs exactly one of sha256 and subject".into()),
    };
    let scopes = raw
        .scopes
        .iter()
        .map(|s| {
            Scope::grantable(s).ok_or_else(|| {
                format!(
                    "unknown scope '{}' (expected infer, admin or metrics)",
                    kiln_core::error::quote(s)
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err("no scopes".into());
    }
    let models = match raw.models {
        None => Models::All,
        Some(list) if list.iter().any(|m| m == "*") => Models::All,
        Some(list) => {
            let mut names = HashSet::new();
            let mut prefixes = Vec::new();
            for m in list {
                match m.strip_suffix('*') {
                    Some(p) => prefixes.push(p.to_string()),
                    None => {
                        names.insert(m);
                    }
                }
            }
            Models::Some { names, prefixes }
        }
    };
    let rate = match (raw.rate, raw.burst) {
        (None, None) => None,
        (None, Some(_)) => return Err("a burst without a rate".into()),
        (Some(r), burst) => Some(rate(r, burst)?),
    };
    Ok(Key {
        id: raw.id,
        credential,
        scopes,
        models,
        rate,
    })
}

/// A rate of `per_second` (with `burst`, default the rate rounded up), checked.
pub fn rate(per_second: f64, burst: Option<u32>) -> Result<Rate, String> {
    if !(per_second.is_finite() && (1e-3..=1e9).contains(&per_second)) {
        return Err(format!(
            "rate {per_second} is not between 0.001 and 1e9 requests per second"
        ));
    }
    let burst = burst.unwrap_or(per_second.ceil() as u32).max(1);
    Ok(Rate { per_second, burst })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(secret: &str) -> String {
        hex::encode(hash_secret(secret))
    }

    #[test]
    fn parses_keys_and_finds_them_by_secret_or_subject() {
        let text = format!(
            r#"
            [[key]]
            id = "a"
            sha256 = "{}"
            scopes = ["infer"]
            models = ["resnet", "bert-*"]
            rate = 2.5

            [[key]]
            id = "b"
            subject = "CN=client"
            scopes = ["admin", "metrics"]
            "#,
            hex_of("secret-a")
        );
        let keys = Keys::parse(&text).unwrap();
        let a = &keys.keys[keys.by_secret(&hash_secret("secret-a")).unwrap()];
        assert_eq!(a.id, "a");
        assert_eq!(a.scopes, vec![Scope::Infer]);
        assert!(a.models.allows("resnet") && a.models.allows("bert-large"));
        assert!(!a.models.allows("resnet2") && !a.models.allows("bert"));
        assert_eq!(
            a.rate,
            Some(Rate {
                per_second: 2.5,
                burst: 3
            })
        );
        assert!(keys.by_secret(&hash_secret("secret-b")).is_none());
        let b = &keys.keys[keys.by_subject("CN=client").unwrap()];
        assert_eq!((b.id.as_str(), &b.models), ("b", &Models::All));
        assert!(keys.by_subject("CN=other").is_none());
        assert_eq!(Keys::parse("").unwrap(), Keys::default());
    }

    #[test]
    fn malformed_files_are_refused_without_quoting_hashes() {
        let h = hex_of("s");
        let bad = [
            ("[[key]]\nid = \"a\"\nscopes = [\"infer\"]\n".to_string(), "exactly one of"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nsubject = \"CN=x\"\nscopes = [\"infer\"]\n"), "exactly one of"),
            ("[[key]]\nid = \"a\"\nsha256 = \"abc\"\nscopes = [\"infer\"]\n".to_string(), "64 hexadecimal"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscopes = [\"root\"]\n"), "unknown scope 'root'"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscopes = []\n"), "no scopes"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscopes = [\"infer\"]\nrate = 0\n"), "rate 0"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscopes = [\"infer\"]\nburst = 3\n"), "without a rate"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscopes = [\"infer\"]\n[[key]]\nid = \"a\"\nsubject = \"CN=b\"\nscopes = [\"infer\"]\n"), "second key"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscopes = [\"infer\"]\n[[key]]\nid = \"b\"\nsha256 = \"{h}\"\nscopes = [\"admin\"]\n"), "same secret"),
            (format!("[[key]]\nid = \"a\"\nsha256 = \"{h}\"\nscope = [\"infer\"]\n"), "unknown field"),
            ("[[key]\n".to_string(), "TOML"),
        ];
        for (text, expected) in bad {
            let e = Keys::parse(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{e} (expected {expected})");
            assert!(!e.contains(&h), "{e} quotes a hash");
        }
    }
}
