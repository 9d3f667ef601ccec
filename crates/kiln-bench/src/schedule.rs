//! When requests are sent. A closed loop sends each worker's next request when
//! its previous one is answered; an open loop sends at times fixed in advance —
//! evenly spaced, or as a Poisson process — whether or not answers keep up, and
//! each latency counts from the request's intended send time, so a server that
//! falls behind shows its queueing instead of slowing the client down
//! (coordinated omission).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `concurrency` requests outstanding at all times.
    Closed { concurrency: usize },
    /// `rate` requests per second, spaced evenly or (`poisson`) at random.
    Open { rate: f64, poisson: bool },
}

/// The intended send times of an open loop, as offsets from its start.
pub struct Arrivals {
    gap: f64,
    poisson: Option<SmallRng>,
    next: f64,
}

impl Arrivals {
    /// `seed` makes a Poisson schedule repeatable.
    pub fn new(rate: f64, poisson: bool, seed: u64) -> Self {
        Arrivals {
            gap: 1.0 / rate,
            poisson: poisson.then(|| SmallRng::seed_from_u64(seed)),
            next: 0.0,
        }
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let at = self.next;
        self.next += match &mut self.poisson {
            // Exponential gaps of mean 1/rate: 1 - U lies in (0, 1], so ln is finite.
            Some(rng) => -(1.0 - rng.random::<f64>()).ln() * self.gap,
            None => self.gap,
        };
        Some(Duration::from_secs_f64(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_rate_is_evenly_spaced() {
        let times: Vec<Duration> = Arrivals::new(4.0, false, 0).take(5).collect();
        let ms: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
        assert_eq!(ms, [0, 250, 500, 750, 1000]);
    }

    #[test]
    fn poisson_arrivals_have_the_rate_and_exponential_gaps() {
        let rate = 1000.0;
        let n = 200_000;
        let times: Vec<f64> = Arrivals::new(rate, true, 7)
            .take(n)
            .map(|t| t.as_secs_f64())
            .collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        // Mean 1/rate within 1% (its standard error here is 0.22%).
        assert!((mean * rate - 1.0).abs() < 0.01, "mean gap {mean}");
        // Exponential: the share of gaps over the mean is e^-1 (binomial sd 0.1%).
        let over = gaps.iter().filter(|&&g| g > 1.0 / rate).count() as f64 / gaps.len() as f64;
        assert!((over - (-1.0f64).exp()).abs() < 0.005, "{over}");
        // Variance 1/rate^2 (coefficient of variation 1).
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.02,
            "cv {}",
            var.sqrt() / mean
        );
        // The same seed, the same schedule.
        let again: Vec<f64> = Arrivals::new(rate, true, 7)
            .take(10)
            .map(|t| t.as_secs_f64())
            .collect();
        assert_eq!(again, times[..10]);
    }
}
