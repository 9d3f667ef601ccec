//! Request rates: a token bucket per key, and one per client address for
//! callers without a key on an open server. governor's GCRA keeps each in one
//! atomic word, so a check costs a compare-and-swap, not a lock.

use crate::keys::Rate;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    // `rate` checked it: at least one per 1,000 s, at most 1e9 per second.
    Quota::with_period(rate.period())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Seconds until a request would pass, as `Retry-After` says them: whole and
/// at least 1.
fn retry_after(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// One key's bucket.
pub struct KeyLimiter {
    pub rate: Rate,
    bucket: DefaultDirectRateLimiter,
}

impl KeyLimiter {
    pub fn new(rate: Rate) -> Self {
        KeyLimiter {
            rate,
            bucket: DefaultDirectRateLimiter::direct(quota(rate)),
        }
    }

    /// `Err(seconds to wait)` when over the rate.
    pub fn check(&self) -> Result<(), u32> {
        self.bucket
            .check()
            .map_err(|e| retry_after(e.wait_time_from(DefaultClock::default().now())))
    }
}

/// How many checks between two sweeps of the address buckets (which drops
/// those that are full again, so that their number stays that of the
/// addresses seen in the last burst's worth of time).
const SWEEP_EVERY: u32 = 4096;

/// A bucket per client address.
pub struct AddressLimiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

impl AddressLimiter {
    pub fn new(rate: Rate) -> Self {
        AddressLimiter {
            buckets: DefaultKeyedRateLimiter::keyed(quota(rate)),
            checks: AtomicU32::new(0),
        }
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), u32> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.buckets.retain_recent();
        }
        self.buckets
            .check_key(&addr)
            .map_err(|e| retry_after(e.wait_time_from(DefaultClock::default().now())))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = KeyLimiter::new(Rate {
            per_second: 0.5,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(l.check(), Ok(()));
        }
        // One every 2 s: the next is due in (just under) 2 s.
        assert_eq!(l.check(), Err(2));
    }

    #[test]
    fn addresses_have_their_own_buckets_and_full_ones_are_swept() {
        let l = AddressLimiter::new(Rate {
            per_second: 1000.0,
            burst: 1,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(l.check(a), Ok(()));
        assert_eq!(l.check(a), Err(1));
        assert_eq!(l.check(b), Ok(()));
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..SWEEP_EVERY {
            let _ = l.check(IpAddr::from([10, 1, (i >> 8) as u8, i as u8]));
            std::thread::sleep(Duration::from_micros(1));
        }
        assert!(l.len() < SWEEP_EVERY as usize, "{} buckets kept", l.len());
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::from_secs(5)), 5);
    }
}
