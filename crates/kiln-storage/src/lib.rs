//! Model repositories in object storage: `s3://`, `gs://` and `az://` URLs read
//! through `object_store`, laid out as on disk, mirrored version by version into
//! a bounded local cache (see `cache`). Implements the core's `Repository`, so
//! poll mode, explicit mode, the ready marker, warm-up and hot swap behave as
//! they do on disk: the loader sees folders; this crate lists, compares by ETag
//! and downloads.
//!
//! Everything here blocks the calling thread: the core calls a repository from
//! its loader threads. The store's requests run on a small runtime of their own,
//! never on the server's.

pub mod cache;
pub mod download;
pub mod layout;
pub mod location;
pub mod metrics;
mod store;

use crate::cache::{Cache, CacheError};
use crate::download::{Limits, Wanted};
use crate::layout::{Listed, ModelListing};
use futures_util::StreamExt;
use kiln_core::model::Version;
use kiln_core::repository::{
    FetchError, FilesPrint, Layout, ModelDir, ModelPrint, Repository, RepositoryError, Stamp,
};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use location::{Location, LocationError, RemoteUrl, Scheme};

/// How to reach the store and where to keep its copy.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// An S3-compatible store's URL (MinIO, Ceph), or Azure's / GCS's emulator.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `https://<bucket>.<endpoint>` rather than path-style `<endpoint>/<bucket>`.
    pub virtual_hosted_style: bool,
    /// The longest wait for the store: to connect, for an answer, for the next
    /// chunk of a download.
    pub timeout: Duration,
    /// Tries after the first for a request or transfer that failed on the way.
    pub retries: usize,
    /// Objects of a version downloaded at once.
    pub parallel_downloads: usize,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// A version counts only once it holds an object of this name.
    pub ready_marker: Option<String>,
    pub layout: Layout,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot use {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot start the storage threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// A model repository in object storage.
pub struct ObjectRepository {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    io: Io,
    cache: Cache,
    opts: StorageOptions,
    /// The last listing of each model: what its fingerprint is taken from.
    listed: Mutex<BTreeMap<String, ModelListing>>,
}

impl ObjectRepository {
    /// Sets up the client and the cache; nothing is listed yet (the first scan
    /// is the server's start-up load, which fails the start if it fails).
    pub fn open(url: RemoteUrl, opts: StorageOptions) -> Result<Self, StorageError> {
        let store = store::build(&url, &opts).map_err(|source| StorageError::Store {
            url: url.to_string(),
            source,
        })?;
        let cache = Cache::open(&opts.cache_dir, opts.cache_max_bytes)?;
        let io = Io::start().map_err(StorageError::Threads)?;
        Ok(ObjectRepository {
            url,
            store,
            io,
            cache,
            opts,
            listed: Mutex::new(BTreeMap::new()),
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.opts.timeout,
            retries: self.opts.retries,
            parallel: self.opts.parallel_downloads,
        }
    }

    /// The key of a path under the repository's prefix.
    fn key(&self, rel: &str) -> String {
        match (self.url.prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.url.prefix.clone(),
            (false, false) => format!("{}/{rel}", self.url.prefix),
        }
    }

    /// Every object under `rel` (a model's folder, or "" for all).
    fn list(&self, rel: &str) -> Result<Vec<Listed>, RepositoryError> {
        let full = self.key(rel);
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let store = self.store.clone();
        let timeout = self.opts.timeout;
        let result = self.io.run(async move {
            let prefix = (!full.is_empty()).then(|| ObjectPath::from(full.as_str()));
            let mut stream = store.list(prefix.as_ref());
            let mut out = Vec::new();
            loop {
                let next = tokio::time::timeout(timeout, stream.next())
                    .await
                    .map_err(|_| format!("no answer from the store within {timeout:?}"))?;
                match next {
                    None => return Ok(out),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(meta)) => {
                        let key = meta.location.as_ref();
                        let Some(rel) = key.strip_prefix(&strip) else {
                            continue;
                        };
                        out.push(Listed {
                            key: rel.to_string(),
                            size: meta.size,
                            tag: meta
                                .e_tag
                                .unwrap_or_else(|| format!("modified:{}", meta.last_modified)),
                        });
                    }
                }
            }
        });
        result.map_err(|reason| {
            ::metrics::counter!(metrics::ERRORS, "operation" => "list").increment(1);
            RepositoryError {
                location: if rel.is_empty() {
                    self.url.to_string()
                } else {
                    self.url.of(rel)
                },
                reason,
            }
        })
    }

    fn model_dir(name: &str, m: &ModelListing) -> ModelDir {
        let versions = m
            .versions
            .iter()
            .map(|(v, files)| {
                // A single model's loose files are version 1 at the prefix itself.
                let folder = match files.first() {
                    Some(f) if f.object.key == f.path => String::new(),
                    _ => format!("{}{v}", m.folder),
                };
                (*v, PathBuf::from(folder))
            })
            .collect();
        ModelDir {
            name: name.to_string(),
            path: PathBuf::from(m.folder.trim_end_matches('/')),
            versions,
        }
    }

    fn remember(&self, models: BTreeMap<String, ModelListing>, replace_all: bool) {
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        if replace_all {
            listed.clear();
        }
        listed.extend(models);
    }

    fn listing(&self, name: &str) -> Option<ModelListing> {
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        listed.get(name).cloned()
    }
}

/// Names a version's cache folder by what it holds.
fn digest(name: &str, v: Version, files: &FilesPrint) -> String {
    let mut text = format!("{name}\0{v}\0");
    for (path, size, stamp) in files {
        let tag = match stamp {
            Stamp::Tag(t) => t.clone(),
            Stamp::Modified(t) => format!("{t:?}"),
        };
        text.push_str(&format!("{}\0{size}\0{tag}\0", path.display()));
    }
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Repository for ObjectRepository {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn scan(&self) -> Result<Vec<ModelDir>, RepositoryError> {
        let objects = self.list("")?;
        let models = layout::group(
            &objects,
            &self.opts.layout,
            self.opts.ready_marker.as_deref(),
        );
        let dirs = models.iter().map(|(n, m)| Self::model_dir(n, m)).collect();
        self.remember(models, true);
        Ok(dirs)
    }

    fn scan_model(&self, name: &str) -> Result<Option<ModelDir>, RepositoryError> {
        let folder = match &self.opts.layout {
            Layout::Models if kiln_core::repository::valid_model_name(name) => name.to_string(),
            Layout::Models => return Ok(None),
            Layout::SingleModel(single) if single == name => String::new(),
            Layout::SingleModel(_) => return Ok(None),
        };
        let objects = self.list(&folder)?;
        let mut models = layout::group(
            &objects,
            &self.opts.layout,
            self.opts.ready_marker.as_deref(),
        );
        let Some(model) = models.remove(name) else {
            return Ok(None);
        };
        let dir = Self::model_dir(name, &model);
        self.remember(BTreeMap::from([(name.to_string(), model)]), false);
        Ok(Some(dir))
    }

    fn fingerprint(&self, dir: &ModelDir) -> ModelPrint {
        let m = self.listing(&dir.name).unwrap_or_default();
        ModelPrint::new(
            m.config.map(|c| c.tag.into_bytes()),
            m.versions
                .iter()
                .map(|(v, files)| {
                    let print: FilesPrint = files
                        .iter()
                        .map(|f| {
                            (
                                PathBuf::from(&f.path),
                                f.object.size,
                                Stamp::Tag(f.object.tag.clone()),
                            )
                        })
                        .collect();
                    (*v, print)
                })
                .collect(),
        )
    }

    fn read_config(&self, dir: &ModelDir) -> Result<Option<String>, std::io::Error> {
        let Some(config) = self.listing(&dir.name).and_then(|m| m.config) else {
            return Ok(None);
        };
        let key = self.key(&config.key);
        let store = self.store.clone();
        let timeout = self.opts.timeout;
        let bytes = self.io.run(async move {
            let got = tokio::time::timeout(timeout, async {
                store
                    .get(&ObjectPath::from(key.as_str()))
                    .await?
                    .bytes()
                    .await
            })
            .await
            .map_err(|_| format!("no answer from the store within {timeout:?}"))?;
            got.map_err(|e| e.to_string())
        });
        let bytes = bytes.map_err(|reason| {
            ::metrics::counter!(metrics::ERRORS, "operation" => "get").increment(1);
            std::io::Error::other(format!(
                "cannot read {}: {reason}",
                self.url.of(&config.key)
            ))
        })?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
    }

    fn fetch(&self, dir: &ModelDir, v: Version, files: &FilesPrint) -> Result<PathBuf, FetchError> {
        let dest = self
            .cache
            .version_dir(&dir.name, v.0, &digest(&dir.name, v, files));
        if self.cache.lookup(&dest) {
            tracing::info!(model = %dir.name, version = v.0, folder = %dest.display(), "unchanged since it was downloaded: loading from the model cache");
            return Ok(dest);
        }
        let base = dir
            .version_path(v)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let wanted: Vec<Wanted> = files
            .iter()
            .map(|(path, size, stamp)| {
                let path = path.to_string_lossy().into_owned();
                let rel = if base.is_empty() {
                    path.clone()
                } else {
                    format!("{base}/{path}")
                };
                Wanted {
                    key: self.key(&rel),
                    path,
                    size: *size,
                    tag: match stamp {
                        Stamp::Tag(t) => t.clone(),
                        Stamp::Modified(_) => String::new(),
                    },
                }
            })
            .collect();
        let needed: u64 = wanted.iter().map(|w| w.size).sum();
        let model = dir.name.clone();
        let fail = |what: String| {
            ::metrics::counter!(metrics::DOWNLOADS, "model" => model.clone(), "outcome" => "failed")
                .increment(1);
            tracing::error!(model = %dir.name, version = v.0, "{what}");
            FetchError(what)
        };
        let version_url = self.url.of(&base);
        self.cache
            .make_room(needed)
            .map_err(|e| fail(format!("cannot download {version_url}: {e}")))?;
        let partial = self.cache.partial().map_err(|e| {
            fail(format!(
                "cannot download {version_url}: cannot write to the model cache {}: {e}",
                self.cache.root().display()
            ))
        })?;
        let started = Instant::now();
        let store = self.store.clone();
        let into = partial.clone();
        let limits = self.limits();
        let result = self
            .io
            .run(async move { download::version(store.as_ref(), wanted, &into, limits).await });
        let bytes = match result {
            Ok(bytes) => bytes,
            Err((key, e)) => {
                self.cache.abandon(&partial);
                ::metrics::counter!(metrics::ERRORS, "operation" => "get").increment(1);
                let object = self.url.of(key
                    .strip_prefix(&format!("{}/", self.url.prefix))
                    .unwrap_or(&key));
                return Err(fail(format!("cannot download {object}: {e}")));
            }
        };
        if let Err(e) = self.cache.commit(&partial, &dest) {
            self.cache.abandon(&partial);
            return Err(fail(format!(
                "cannot download {version_url}: cannot move it into the model cache {}: {e}",
                self.cache.root().display()
            )));
        }
        let secs = started.elapsed().as_secs_f64();
        ::metrics::counter!(metrics::DOWNLOADS, "model" => model.clone(), "outcome" => "ok")
            .increment(1);
        ::metrics::counter!(metrics::DOWNLOAD_BYTES, "model" => model.clone()).increment(bytes);
        ::metrics::histogram!(metrics::DOWNLOAD_SECONDS, "model" => model).record(secs);
        tracing::info!(model = %dir.name, version = v.0, bytes, seconds = secs, from = %version_url, "downloaded into the model cache");
        Ok(dest)
    }

    fn version_rule(&self) -> String {
        self.opts
            .ready_marker
            .as_deref()
            .map(|m| format!(" holding the marker object '{m}'"))
            .unwrap_or_default()
    }
}

/// The store's own threads: a small runtime that the blocking loader calls
/// into, so that no request to the store runs on the server's runtime.
struct Io {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Io {
    fn start() -> std::io::Result<Io> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-storage")
            .enable_all()
            .build()?;
        Ok(Io {
            runtime: Some(runtime),
        })
    }

    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the storage runtime lives as long as its repository (taken only in Drop)")
            .block_on(f)
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropped wherever the core is, possibly on the server's runtime, where
        // a blocking shutdown is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_follows_the_files() {
        let files: FilesPrint = vec![(PathBuf::from("model.onnx"), 3, Stamp::Tag("\"a\"".into()))];
        let d = digest("m", Version(1), &files);
        assert_eq!(d.len(), 16);
        assert_eq!(d, digest("m", Version(1), &files));
        assert_ne!(d, digest("m", Version(2), &files));
        let changed: FilesPrint =
            vec![(PathBuf::from("model.onnx"), 3, Stamp::Tag("\"b\"".into()))];
        assert_ne!(d, digest("m", Version(1), &changed));
    }
}
