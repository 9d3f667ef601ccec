//! The local copy of a remote repository: `<root>/<model>/<version>/<digest>/`,
//! where the digest names the version's file list (names, sizes, ETags), so an
//! unchanged version is found again, across restarts too, and never downloaded
//! twice. A version is downloaded whole into `<root>/.partial/` and renamed into
//! place, so a folder in place is always complete. Bounded: before a download,
//! the least recently used versions are removed until it fits (a removed version
//! that still serves keeps its open files; it is downloaded again only if it
//! must load again).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

pub const PARTIAL: &str = ".partial";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use the model cache folder {path}: {source}")]
    Unusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the version needs {needed} bytes but the model cache holds at most {limit} (--model-cache-max-bytes)")]
    TooLarge { needed: u64, limit: u64 },
}

pub struct Cache {
    root: PathBuf,
    limit: u64,
    /// Serialises making room, so two downloads do not both count the same space.
    room: Mutex<()>,
    next_partial: AtomicU64,
}

impl Cache {
    /// Opens (creating) the cache folder and checks that it can be written; a
    /// download left half-done by an earlier run is removed.
    pub fn open(root: &Path, limit: u64) -> Result<Cache, CacheError> {
        let unusable = |source| CacheError::Unusable {
            path: root.to_path_buf(),
            source,
        };
        let partial = root.join(PARTIAL);
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(unusable)?;
        }
        std::fs::create_dir_all(&partial).map_err(unusable)?;
        let probe = partial.join("probe");
        std::fs::write(&probe, b"kiln").map_err(unusable)?;
        std::fs::remove_file(&probe).map_err(unusable)?;
        let cache = Cache {
            root: root.to_path_buf(),
            limit,
            room: Mutex::new(()),
            next_partial: AtomicU64::new(0),
        };
        cache.report();
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a version with this digest lives once complete.
    pub fn version_dir(&self, model: &str, version: u64, digest: &str) -> PathBuf {
        self.root.join(model).join(version.to_string()).join(digest)
    }

    /// Whether the version is here already; marks it used.
    pub fn lookup(&self, dir: &Path) -> bool {
        if !dir.is_dir() {
            return false;
        }
        // Least recently used goes first: a hit counts as a use.
        if let Ok(f) = std::fs::File::open(dir) {
            let _ = f.set_modified(SystemTime::now());
        }
        true
    }

    /// Makes room for `needed` more bytes, removing the least recently used
    /// versions; fails when the limit itself is smaller.
    pub fn make_room(&self, needed: u64) -> Result<(), CacheError> {
        if needed > self.limit {
            return Err(CacheError::TooLarge {
                needed,
                limit: self.limit,
            });
        }
        let _room = self.room.lock().unwrap_or_else(|p| p.into_inner());
        let mut versions = self.versions();
        let mut used: u64 =
            versions.iter().map(|v| v.bytes).sum::<u64>() + folder_bytes(&self.root.join(PARTIAL));
        versions.sort_by_key(|v| v.used);
        for v in versions {
            if used + needed <= self.limit {
                break;
            }
            tracing::info!(folder = %v.path.display(), bytes = v.bytes, "model cache full: removing the least recently used version");
            if std::fs::remove_dir_all(&v.path).is_ok() {
                used = used.saturating_sub(v.bytes);
            }
        }
        Ok(())
    }

    /// A fresh folder to download into.
    pub fn partial(&self) -> Result<PathBuf, std::io::Error> {
        let n = self.next_partial.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join(PARTIAL)
            .join(format!("{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Moves a complete download into place. Another download of the same
    /// version that got there first wins; this one is dropped.
    pub fn commit(&self, partial: &Path, dir: &Path) -> Result<(), std::io::Error> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let result = match std::fs::rename(partial, dir) {
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(partial);
                Ok(())
            }
            other => other,
        };
        self.report();
        result
    }

    /// Drops a download that failed.
    pub fn abandon(&self, partial: &Path) {
        let _ = std::fs::remove_dir_all(partial);
    }

    /// Bytes held by complete versions.
    pub fn bytes(&self) -> u64 {
        self.versions().iter().map(|v| v.bytes).sum()
    }

    fn report(&self) {
        metrics::gauge!(crate::metrics::CACHE_BYTES).set(self.bytes() as f64);
        metrics::gauge!(crate::metrics::CACHE_LIMIT_BYTES).set(self.limit as f64);
    }

    /// Every complete version folder (`<model>/<version>/<digest>`).
    fn versions(&self) -> Vec<Cached> {
        let mut out = Vec::new();
        for model in subfolders(&self.root) {
            if model.file_name().is_some_and(|n| n == PARTIAL) {
                continue;
            }
            for version in subfolders(&model) {
                for digest in subfolders(&version) {
                    let used = std::fs::metadata(&digest)
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push(Cached {
                        bytes: folder_bytes(&digest),
                        path: digest,
                        used,
                    });
                }
            }
        }
        out
    }
}

struct Cached {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

fn subfolders(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Cache, model: &str, digest: &str, bytes: usize) -> PathBuf {
        let partial = cache.partial().unwrap();
        std::fs::write(partial.join("model.onnx"), vec![0u8; bytes]).unwrap();
        let dir = cache.version_dir(model, 1, digest);
        cache.commit(&partial, &dir).unwrap();
        dir
    }

    #[test]
    fn evicts_the_least_recently_used_and_refuses_what_cannot_fit() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), 100).unwrap();
        let a = put(&cache, "a", "d1", 40);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = put(&cache, "b", "d1", 40);
        assert_eq!(cache.bytes(), 80);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A use of `a` makes `b` the older one.
        assert!(cache.lookup(&a));
        cache.make_room(30).unwrap();
        assert!(a.is_dir() && !b.exists());
        assert!(matches!(
            cache.make_room(101),
            Err(CacheError::TooLarge {
                needed: 101,
                limit: 100
            })
        ));
        // A second copy of the same version is dropped, the first kept.
        let again = put(&cache, "a", "d1", 5);
        assert_eq!(again, a);
        assert_eq!(std::fs::metadata(a.join("model.onnx")).unwrap().len(), 40);
        // Leftovers of an interrupted download go at the next start.
        let leftover = cache.partial().unwrap();
        drop(cache);
        Cache::open(root.path(), 100).unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn a_read_only_folder_is_refused_at_open() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let e = Cache::open(&file.join("cache"), 10).err().unwrap();
        assert!(
            e.to_string().contains("cannot use the model cache folder"),
            "{e}"
        );
    }
}
