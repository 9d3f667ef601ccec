//! Why a config could not be read: the file, the field and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field '{field}': {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// A field that does not hold what it must (the file is added by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn in_file(self, path: &std::path::Path) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            field: self.field,
            message: self.message,
        }
    }
}
