//! The one transport-neutral error every front end maps to its own status codes.

/// What kind of failure, independent of the protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the model (HTTP 400, INVALID_ARGUMENT).
    InvalidArgument,
    /// The model or version does not exist (HTTP 404, NOT_FOUND).
    NotFound,
    /// Not ready, overloaded or shutting down (HTTP 503, UNAVAILABLE).
    Unavailable,
    /// The request's deadline passed before it was computed (HTTP 504, DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// The request is larger than the server takes (HTTP 413, RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// The server or backend failed (HTTP 500, INTERNAL).
    Internal,
}

/// An error as it leaves the core: a kind and a message that names the model,
/// the tensor and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KilnError {
    pub kind: ErrorKind,
    pub message: String,
}

impl KilnError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        KilnError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}
