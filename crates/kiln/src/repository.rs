//! The model repository the flags name: a local folder, or an object store
//! mirrored into the model cache.

use crate::cli::Args;
use anyhow::Context;
use kiln_core::repository::{FsRepository, Layout, Repository};
use kiln_storage::{Location, ObjectRepository, StorageOptions};
use std::sync::Arc;
use std::time::Duration;

pub fn open(args: &Args) -> anyhow::Result<Arc<dyn Repository>> {
    let layout = match &args.model_name {
        Some(name) => Layout::SingleModel(name.clone()),
        None => Layout::Models,
    };
    let marker = args.repository_ready_marker.clone();
    Ok(match &args.model_repository {
        Location::Local(path) => Arc::new(FsRepository::with_layout(path.clone(), marker, layout)),
        Location::Remote(url) => {
            let opts = StorageOptions {
                endpoint: args.storage_endpoint.clone(),
                region: args.storage_region.clone(),
                virtual_hosted_style: args.storage_virtual_hosted_style,
                timeout: Duration::from_secs_f64(args.storage_timeout_secs),
                retries: args.storage_retries,
                parallel_downloads: args.storage_parallel_downloads as usize,
                cache_dir: args
                    .model_cache_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("kiln-model-cache")),
                cache_max_bytes: args.model_cache_max_bytes,
                ready_marker: marker,
                layout,
            };
            tracing::info!(
                repository = %url,
                cache = %opts.cache_dir.display(),
                cache_max_bytes = opts.cache_max_bytes,
                "model repository in object storage"
            );
            Arc::new(
                ObjectRepository::open(url.clone(), opts)
                    .with_context(|| format!("cannot open the model repository {url}"))?,
            )
        }
    })
}
