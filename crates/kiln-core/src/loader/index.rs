//! The repository index: one line per model version known, and a line for each
//! model in the repository that is not loaded.

use crate::loader::reconcile::Loader;
use crate::registry::{IndexEntry, ModelState};

impl Loader {
    /// Sorted by name and version (blocking: it lists the repository).
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let table = self.registry.slots();
        let mut out: Vec<IndexEntry> = Vec::new();
        for slot in table.values() {
            let served = slot.served.load();
            let traffic = slot.traffic.load();
            for line in &served.index {
                let mut line = line.clone();
                if let Some(rb) = &traffic.rolled_back {
                    if line.version == Some(rb.version) {
                        line.reason = format!("canary rolled back: {}", rb.reason);
                    }
                }
                out.push(line);
            }
        }
        if let Ok(dirs) = self.repository.scan() {
            for d in dirs {
                if !table.contains_key(&d.name) {
                    out.push(IndexEntry::new(
                        &d.name,
                        None,
                        ModelState::Unavailable,
                        "not loaded".into(),
                    ));
                }
            }
        }
        out.retain(|i| !ready_only || i.state == ModelState::Ready);
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }
}
