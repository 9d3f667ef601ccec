//! Calls back when files change: the key file and TLS files, meant to be
//! mounted Secrets. The folders holding them are watched, not the files:
//! Kubernetes updates a Secret volume by swapping a `..data` symlink in its
//! folder, and cert-manager or an editor may replace a file by renaming a new
//! one over it, and neither is an event on the old file. Events are gathered
//! for a moment (a rotation writes several files) before the callback, which
//! runs on the watcher's own thread, off the async runtime.

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long after an event more are awaited before the callback.
const SETTLE: Duration = Duration::from_millis(200);

pub fn on_change(
    files: &[PathBuf],
    what: &'static str,
    mut changed: impl FnMut() + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if e.is_ok() {
            let _ = tx.send(());
        }
    })
    .context("cannot watch files")?;
    let mut folders: Vec<&Path> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .collect();
    folders.sort();
    folders.dedup();
    for folder in folders {
        watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .with_context(|| {
                format!(
                    "cannot watch {} for changes to the {what}",
                    folder.display()
                )
            })?;
    }
    std::thread::Builder::new()
        .name("kiln-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            while rx.recv().is_ok() {
                while rx.recv_timeout(SETTLE).is_ok() {}
                changed();
            }
        })
        .context("cannot start a file watcher")?;
    Ok(())
}
