//! Why a load or unload failed, told apart: the caller's mistake, a model or
//! config that is wrong (the operator's to fix), or a runtime that cannot run.

use crate::config::ConfigError;
use crate::error::{quote, ErrorKind, KilnError};
use crate::model::Version;
use crate::repository::RepositoryError;

/// Why one version did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The model file, or the config as it applies to it, cannot be served.
    #[error("{0}")]
    Model(String),
    /// The runtime cannot be used here, or its compute threads cannot start.
    #[error("{0}")]
    Runtime(String),
    /// Its files could not be brought from the repository (a failed download).
    #[error("{0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("explicit model {action} is not allowed in model control mode '{mode}' (start kiln with --model-control-mode explicit)")]
    NotExplicit {
        action: &'static str,
        mode: &'static str,
    },
    #[error("'{}' is not a valid model name", quote(.0))]
    InvalidName(String),
    /// Where the repository is stays out of the message: a client may read it.
    #[error("no model '{}' in the repository", quote(.name))]
    NotInRepository { name: String },
    #[error("model '{}' is not loaded", quote(.0))]
    NotLoaded(String),
    /// The repository cannot be listed now (storage unreachable).
    #[error("failed to load '{name}': {source}")]
    Repository {
        name: String,
        #[source]
        source: RepositoryError,
    },
    /// `config.toml` (or the config given with the load) is wrong.
    #[error("failed to load '{name}': {source}")]
    Config {
        name: String,
        #[source]
        source: ConfigError,
    },
    /// The folder holds no version the policy serves.
    #[error("failed to load '{name}': {reason}")]
    NoVersion { name: String, reason: String },
    /// Some versions did not load; what served goes on serving.
    #[error("failed to load '{name}' {}", list(.failures))]
    Versions {
        name: String,
        failures: Vec<(Version, VersionError)>,
    },
}

fn list(failures: &[(Version, VersionError)]) -> String {
    let items: Vec<String> = failures
        .iter()
        .map(|(v, r)| format!("version {v}: {r}"))
        .collect();
    items.join("; ")
}

impl LoadError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LoadError::NotExplicit { .. }
            | LoadError::InvalidName(_)
            | LoadError::Config { .. }
            | LoadError::NoVersion { .. } => ErrorKind::InvalidArgument,
            LoadError::NotInRepository { .. } | LoadError::NotLoaded(_) => ErrorKind::NotFound,
            LoadError::Repository { .. } => ErrorKind::Unavailable,
            LoadError::Versions { failures, .. } => {
                let any = |f: fn(&VersionError) -> bool| failures.iter().any(|(_, e)| f(e));
                if any(|e| matches!(e, VersionError::Runtime(_))) {
                    ErrorKind::Internal
                } else if any(|e| matches!(e, VersionError::Storage(_))) {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::InvalidArgument
                }
            }
        }
    }
}

impl From<LoadError> for KilnError {
    fn from(e: LoadError) -> Self {
        KilnError::new(e.kind(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_model_is_the_callers_and_a_runtime_failure_the_servers() {
        let versions = |e: VersionError| LoadError::Versions {
            name: "m".into(),
            failures: vec![
                (Version(1), VersionError::Model("bad file".into())),
                (Version(2), e),
            ],
        };
        let model = versions(VersionError::Model("bad graph".into()));
        assert_eq!(model.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            model.to_string(),
            "failed to load 'm' version 1: bad file; version 2: bad graph"
        );
        let runtime = versions(VersionError::Runtime("no ONNX Runtime".into()));
        assert_eq!(runtime.kind(), ErrorKind::Internal);
        assert_eq!(LoadError::NotLoaded("m".into()).kind(), ErrorKind::NotFound);
        let storage = versions(VersionError::Storage("download failed".into()));
        assert_eq!(storage.kind(), ErrorKind::Unavailable);
    }
}
