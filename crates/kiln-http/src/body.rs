//! Request bodies, read under a size limit and charged to the server's byte
//! budget before they are held: the declared `Content-Length` up front, a
//! chunked body as it grows. The buffer is reserved once from the declared
//! length (never more than the limit), so a body is held once, not once per
//! chunk and again joined. A body must arrive within a time limit, so that a
//! client trickling it cannot hold its connection and its charge for ever.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;
use kiln_core::budget::{ByteBudget, Charge};
use kiln_core::{ErrorKind, KilnError};
use std::time::Duration;

/// A body and the budget charge that covers it.
pub struct Read {
    pub bytes: Vec<u8>,
    pub charge: Charge,
}

fn too_large(limit: usize) -> KilnError {
    KilnError::new(
        ErrorKind::ResourceExhausted,
        format!("request body exceeds {limit} bytes"),
    )
}

pub async fn read(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
    budget: &ByteBudget,
) -> Result<Read, KilnError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let declared = match declared {
        Some(n) if n > limit as u64 => return Err(too_large(limit)),
        Some(n) => n as usize,
        None => 0,
    };
    let mut charge = budget.charge(declared)?;
    let mut bytes = Vec::with_capacity(declared);
    let mut body = body;
    let ends = tokio::time::Instant::now() + timeout;
    loop {
        let frame = match tokio::time::timeout_at(ends, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(KilnError::new(
                    ErrorKind::ClientTimeout,
                    format!(
                        "the request body did not arrive within {} s ({} of {} bytes did)",
                        timeout.as_secs_f64(),
                        bytes.len(),
                        if declared > 0 {
                            declared.to_string()
                        } else {
                            "?".into()
                        }
                    ),
                ))
            }
        };
        let frame =
            frame.map_err(|e| KilnError::invalid(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = bytes.len() + data.len();
        if total > limit {
            return Err(too_large(limit));
        }
        if total > charge.bytes() {
            charge.set(total)?;
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Read { bytes, charge })
}
