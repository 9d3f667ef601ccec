//! Poll mode: each scan loads models whose folder changed and has stayed the
//! same for the settle time, and unloads models whose folder is gone. A failed
//! load is retried only once the folder changes again.

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
            retire(&name, &slot, "removed from the repository");
            self.registry.remove(&name);
            state.pending.remove(&name);
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
                        if let Err(e) = self.reconcile(&dir.name, None) {
                            tracing::error!(model = %dir.name, "{e}");
                        }
                    }
                }
                _ => {
                    state.pending.insert(dir.name.clone(), (fingerprint, now));
                }
            }
        }
    }
}
