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
    /// The client took longer to send its request than the server waits
    /// (HTTP 408, DEADLINE_EXCEEDED).
    ClientTimeout,
    /// The server or backend failed (HTTP 500, INTERNAL).
    Internal,
    /// No credentials, or none the server accepts (HTTP 401, UNAUTHENTICATED).
    Unauthenticated,
    /// The caller's key may not do this, or not to this model (HTTP 403,
    /// PERMISSION_DENIED).
    PermissionDenied,
    /// The caller is over its request rate; it may try again after so many
    /// seconds (HTTP 429 with Retry-After, RESOURCE_EXHAUSTED).
    RateLimited { retry_after_secs: u32 },
}

/// An error as it leaves the core: a kind and a message that names the model,
/// the tensor and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KilnError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Longest message an error carries: room for any real explanation, and small
/// enough for gRPC's trailing metadata whatever a client sent (a name it gave
/// may be megabytes long).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest client-given name or value an error quotes.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `s` as an error quotes it: its first [`MAX_QUOTED_CHARS`] characters, and its
/// length when it is longer.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => s.to_string(),
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()),
    }
}

/// A message cut to [`MAX_MESSAGE_BYTES`] (on a character boundary).
fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… ({total} bytes in all)"));
    message
}

impl KilnError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        KilnError {
            kind,
            message: bounded(message.into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_messages_are_bounded() {
        assert_eq!(quote("resnet"), "resnet");
        let long = "é".repeat(100_000);
        let q = quote(&long);
        assert!(q.starts_with(&"é".repeat(MAX_QUOTED_CHARS)), "{q}");
        assert!(q.ends_with("… (200000 bytes)"), "{q}");
        let e = KilnError::invalid(format!("unknown model '{long}'"));
        assert!(
            e.message.len() < MAX_MESSAGE_BYTES + 40,
            "{}",
            e.message.len()
        );
        assert!(e.message.ends_with("bytes in all)"), "{}", e.message);
        assert_eq!(KilnError::invalid("short").message, "short");
    }
}
