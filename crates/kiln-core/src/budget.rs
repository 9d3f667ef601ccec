//! The server-wide budget of request bytes held in memory: bodies being read and
//! decoded, and decoded tensors waiting in a queue or being computed. A request
//! is charged before its bytes are held and refused when the budget is spent, so
//! that many large requests at once are answered "busy" instead of growing the
//! process past its memory limit.

use crate::error::{ErrorKind, KilnError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Shared by every front end; cheap to clone.
#[derive(Clone, Debug)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// `used`, exported (a handle looked up once: no registry lookup per request).
    held: metrics::Gauge,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteBudget")
            .field("limit", &self.limit)
            .field("used", &self.used)
            .finish()
    }
}

impl ByteBudget {
    /// A budget of `limit` bytes (`usize::MAX`: in effect none).
    pub fn new(limit: usize) -> Self {
        if limit != usize::MAX {
            metrics::gauge!(crate::metrics::REQUEST_BYTES_LIMIT).set(limit as f64);
        }
        ByteBudget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
                held: metrics::gauge!(crate::metrics::REQUEST_BYTES_HELD),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Charges `bytes`, held until the charge is dropped.
    pub fn charge(&self, bytes: usize) -> Result<Charge, KilnError> {
        self.take(bytes)?;
        Ok(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    fn take(&self, bytes: usize) -> Result<(), KilnError> {
        let limit = self.inner.limit;
        if bytes > limit {
            // No amount of waiting admits it: the request itself is too large.
            return Err(KilnError::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "the request needs {bytes} bytes in memory; the server holds at most {limit} bytes of requests at once"
                ),
            ));
        }
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .map(|_| self.inner.held.increment(bytes as f64))
            .map_err(|used| {
                KilnError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the server is busy: it holds {used} bytes of requests and takes at most {limit}; retry later"
                    ),
                )
            })
    }

    fn give_back(&self, bytes: usize) {
        self.inner.used.fetch_sub(bytes, Ordering::AcqRel);
        self.inner.held.decrement(bytes as f64);
    }
}

/// Bytes charged to one request; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: ByteBudget,
    bytes: usize,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the charge to `bytes`: growing may be refused (the charge then
    /// stays as it was); shrinking always succeeds.
    pub fn set(&mut self, bytes: usize) -> Result<(), KilnError> {
        if bytes > self.bytes {
            self.budget.take(bytes - self.bytes)?;
        } else {
            self.budget.give_back(self.bytes - bytes);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_until_the_limit_then_refuses_as_busy() {
        let b = ByteBudget::new(100);
        let first = b.charge(60).unwrap();
        let e = b.charge(50).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(b.used(), 60);
        drop(first);
        assert_eq!(b.used(), 0);
        let _again = b.charge(100).unwrap();
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_is_the_clients_problem() {
        let b = ByteBudget::new(100);
        assert_eq!(
            b.charge(101).unwrap_err().kind,
            ErrorKind::ResourceExhausted
        );
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_charge_grows_and_shrinks() {
        let b = ByteBudget::new(100);
        let mut c = b.charge(10).unwrap();
        c.set(90).unwrap();
        assert_eq!(b.used(), 90);
        let other = b.charge(10).unwrap();
        // Growing past the limit is refused and leaves the charge as it was.
        assert_eq!(c.set(95).unwrap_err().kind, ErrorKind::Unavailable);
        assert_eq!((c.bytes(), b.used()), (90, 100));
        c.set(5).unwrap();
        assert_eq!(b.used(), 15);
        drop((c, other));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn concurrent_charges_never_exceed_the_limit() {
        let b = ByteBudget::new(1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(c) = b.charge(300) {
                            assert!(b.used() <= 1000);
                            drop(c);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.used(), 0);
    }
}
