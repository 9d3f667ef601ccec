//! Downloads one version's objects into a folder: several at once (bounded),
//! each checked against its listing (size and ETag), with a timeout on every wait
//! and a few tries for a transfer cut short.

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// One object to download: its key (relative to the store's root), where it
/// goes inside the folder, and what the listing said of it.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub key: String,
    pub path: String,
    pub size: u64,
    pub tag: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest wait for the store: an answer to a request, or the next
    /// chunk of a download.
    pub timeout: Duration,
    /// Tries after the first for a transfer that was cut short or timed out.
    pub retries: usize,
    /// Objects downloaded at once.
    pub parallel: usize,
}

/// Why one object did not download.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("it is gone from the store (deleted after it was listed)")]
    Vanished,
    #[error("it changed after it was listed (size {listed} then {now}, or another ETag); the next scan sees the new one")]
    Changed { listed: u64, now: u64 },
    #[error("the transfer stopped after {got} of {size} bytes")]
    Truncated { got: u64, size: u64 },
    #[error("no answer from the store within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Worth another try: the transfer, not the object or the cache, failed
    /// (object_store has retried the store's own server errors already).
    fn transient(&self) -> bool {
        matches!(
            self,
            DownloadError::Truncated { .. } | DownloadError::Timeout(_)
        )
    }
}

/// Whether two ETags name the same content. Stores quote them differently in a
/// listing and in a GET's header (Azure lists `0x8D…` and answers `"0x8D…"`);
/// a weak tag's `W/` is not part of the content's name either.
fn same_tag(a: &str, b: &str) -> bool {
    let bare = |t: &str| t.trim_start_matches("W/").trim_matches('"').to_string();
    bare(a) == bare(b)
}

/// Downloads every object into `into`; the first object that fails (after its
/// tries) fails the whole version, with its key.
pub async fn version(
    store: &dyn ObjectStore,
    objects: Vec<Wanted>,
    into: &Path,
    limits: Limits,
) -> Result<u64, (String, DownloadError)> {
    let sizes = futures_util::stream::iter(objects.into_iter().map(|w| async move {
        let mut attempt = 0;
        loop {
            match object(store, &w, into, limits.timeout).await {
                Ok(n) => return Ok(n),
                Err(e) if e.transient() && attempt < limits.retries => {
                    attempt += 1;
                    tracing::warn!(key = %w.key, attempt, "download failed ({e}); trying again");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                }
                Err(e) => return Err((w.key.clone(), e)),
            }
        }
    }))
    .buffer_unordered(limits.parallel.max(1))
    .try_collect::<Vec<u64>>()
    .await?;
    Ok(sizes.iter().sum())
}

async fn object(
    store: &dyn ObjectStore,
    w: &Wanted,
    into: &Path,
    timeout: Duration,
) -> Result<u64, DownloadError> {
    let location = ObjectPath::from(w.key.as_str());
    let get = store.get(&location);
    let got = match tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| DownloadError::Timeout(timeout))?
    {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Err(DownloadError::Vanished),
        Err(e) => return Err(e.into()),
    };
    let tag_changed = got.meta.e_tag.as_deref().is_some_and(|t| {
        !w.tag.is_empty() && !w.tag.starts_with("modified:") && !same_tag(t, &w.tag)
    });
    if got.meta.size != w.size || tag_changed {
        return Err(DownloadError::Changed {
            listed: w.size,
            now: got.meta.size,
        });
    }
    let dest = into.join(&w.path);
    let write_err = |source| DownloadError::Write {
        path: dest.display().to_string(),
        source,
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let mut file = std::fs::File::create(&dest).map_err(write_err)?;
    let mut stream = got.into_stream();
    let mut written: u64 = 0;
    loop {
        let chunk = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| DownloadError::Timeout(timeout))?;
        match chunk {
            None => break,
            Some(Ok(bytes)) => {
                file.write_all(&bytes).map_err(write_err)?;
                written += bytes.len() as u64;
            }
            // A body cut off mid-way: say how far it got.
            Some(Err(_)) => {
                return Err(DownloadError::Truncated {
                    got: written,
                    size: w.size,
                })
            }
        }
    }
    if written != w.size {
        return Err(DownloadError::Truncated {
            got: written,
            size: w.size,
        });
    }
    file.sync_all().map_err(write_err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::same_tag;

    #[test]
    fn etags_compare_without_their_quotes() {
        assert!(same_tag("\"0x8DC\"", "0x8DC"));
        assert!(same_tag("W/\"abc\"", "\"abc\""));
        assert!(!same_tag("\"abc\"", "\"abd\""));
    }
}
