//! Poll mode: each scan loads models whose folder changed and has stayed the
//! same for the settle time, and unloads models whose folder is gone. A failed
//! load is retried only once the folder changes again.

use crate::audit;
use crate::loader::reconcile::{retire, Loader};
use crate::registry::{lock, ModelSlot};
use crate::repository::ModelPrint;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Poll mode's memory between two scans.
#[derive(Default)]
pub struct PollState {
    /// A changed fingerprint and when it was first seen: it loads once it has
    /// stayed the same for the settle time.
    pending: HashMap<String, (ModelPrint, Instant)>,
}

impl Loader {
    /// One scan of the repository (blocking).
    pub fn poll(&self, state: &mut PollState, settle: Duration) {
        let dirs = match self.repository.scan() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("poll: {e}");
                return;
            }
        };
        let names: HashSet<&str> = dirs.iter().map(|d| d.name.as_str()).collect();
        let gone: Vec<(String, Arc<ModelSlot>)> = self
            .registry
            .slots()
            .iter()
            .filter(|(n, _)| !names.contains(n.as_str()))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, slot) in gone {
            let before = self.registry.serving(&name);
            retire(&name, &slot, "removed from the repository");
            self.registry.remove(&name);
            state.pending.remove(&name);
            audit::record_versions(&audit::Actor::kiln(), "unload", &name, &before, Ok(&[]));
        }
        let now = Instant::now();
        for dir in &dirs {
            let fingerprint = self.repository.fingerprint(dir);
            let applied = self
                .registry
                .slot(&dir.name)
                .and_then(|s| lock(&s.load).fingerprint.clone());
            if applied.as_ref() == Some(&fingerprint) {
                state.pending.remove(&dir.name);
                continue;
            }
            match state.pending.get(&dir.name) {
                Some((p, since)) if *p == fingerprint => {
                    if now.duration_since(*since) >= settle {
                        state.pending.remove(&dir.name);
                        tracing::info!(model = %dir.name, "changed in the repository; loading");
                        let before = self.registry.serving(&dir.name);
                        let result = self.reconcile(&dir.name, None);
                        if let Err(e) = &result {
                            tracing::error!(model = %dir.name, "{e}");
                        }
                        let error = result.as_ref().err().map(ToString::to_string);
                        let after = result
                            .as_ref()
                            .map(|r| &r.serving[..])
                            .map_err(|_| error.as_deref().unwrap_or_default());
                        audit::record_versions(
                            &audit::Actor::kiln(),
                            "load",
                            &dir.name,
                            &before,
                            after,
                        );
                    }
                }
                _ => {
                    state.pending.insert(dir.name.clone(), (fingerprint, now));
                }
            }
        }
    }
}
