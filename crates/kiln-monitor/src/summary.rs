//! Summaries of one feature's values: the reference's (to build a profile) and a
//! live window's (to compare against it). Both take bounded memory.

use crate::profile::FeatureProfile;

/// The bin of `x` among `edges` (sorted): bin 0 is (-inf, edges[0]], bin i is
/// (edges[i-1], edges[i]], the last is (edges[last], inf).
pub fn bin(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|&e| e < x)
}

/// A reference feature being summarised: exact count, NaN/inf counts, range,
/// mean and variance (Welford), and a uniform sample of at most `capacity`
/// values (reservoir sampling) for the quantile bins.
#[derive(Debug, Clone)]
pub struct FeatureSummary {
    count: u64,
    missing: u64,
    infinite: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    sample: Vec<f64>,
    capacity: usize,
    rng: u64,
}

impl FeatureSummary {
    pub fn new(capacity: usize) -> Self {
        FeatureSummary {
            count: 0,
            missing: 0,
            infinite: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            sample: Vec::new(),
            capacity: capacity.max(1),
            // A fixed seed: the same data set gives the same profile.
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// splitmix64: reservoir sampling needs uniform indices, not cryptography.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn observe(&mut self, x: f64) {
        if x.is_nan() {
            self.missing += 1;
            return;
        }
        if x.is_infinite() {
            self.infinite += 1;
            return;
        }
        self.count += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let d = x - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (x - self.mean);
        if self.sample.len() < self.capacity {
            self.sample.push(x);
        } else {
            let j = self.next() % self.count;
            if (j as usize) < self.capacity {
                self.sample[j as usize] = x;
            }
        }
    }

    /// The profile of what was seen: edges at the sample's quantiles (`bins`
    /// bins; repeated edges merge, so a discrete feature gets a bin per value
    /// at most) and each bin's share of the sample.
    pub fn profile(&self, bins: usize) -> FeatureProfile {
        let mut sorted = self.sample.clone();
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::new();
        if !sorted.is_empty() {
            for i in 1..bins.max(1) {
                let q = sorted[(i * (sorted.len() - 1)) / bins];
                if edges.last() != Some(&q) {
                    edges.push(q);
                }
            }
        }
        let mut freqs = vec![0f64; edges.len() + 1];
        for &x in &sorted {
            freqs[bin(&edges, x)] += 1.0;
        }
        let n = sorted.len().max(1) as f64;
        freqs.iter_mut().for_each(|f| *f /= n);
        let seen = self.count > 0;
        FeatureProfile {
            count: self.count,
            missing: self.missing,
            infinite: self.infinite,
            min: if seen { self.min } else { 0.0 },
            max: if seen { self.max } else { 0.0 },
            mean: self.mean,
            variance: if self.count > 1 {
                self.m2 / (self.count - 1) as f64
            } else {
                0.0
            },
            edges,
            freqs,
        }
    }
}

/// A live window of one feature against its reference: counts per reference
/// bin, and the data-quality counts.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCounts {
    pub bins: Vec<u64>,
    pub missing: u64,
    pub infinite: u64,
    /// Finite values outside the reference's [min, max].
    pub out_of_range: u64,
}

impl WindowCounts {
    pub fn new(reference: &FeatureProfile) -> Self {
        WindowCounts {
            bins: vec![0; reference.edges.len() + 1],
            missing: 0,
            infinite: 0,
            out_of_range: 0,
        }
    }

    pub fn observe(&mut self, reference: &FeatureProfile, x: f64) {
        if x.is_nan() {
            self.missing += 1;
        } else if x.is_infinite() {
            self.infinite += 1;
        } else {
            if x < reference.min || x > reference.max {
                self.out_of_range += 1;
            }
            if let Some(b) = self.bins.get_mut(bin(&reference.edges, x)) {
                *b += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_closed_on_the_right() {
        let e = [1.0, 2.0];
        assert_eq!(
            [0.5, 1.0, 1.5, 2.0, 9.0].map(|x| bin(&e, x)),
            [0, 0, 1, 1, 2]
        );
        assert_eq!(bin(&[], 3.0), 0);
    }

    #[test]
    fn a_summary_has_exact_moments_and_quantile_bins() {
        let mut s = FeatureSummary::new(10_000);
        for i in 0..1000 {
            s.observe(i as f64);
        }
        s.observe(f64::NAN);
        s.observe(f64::INFINITY);
        let p = s.profile(10);
        assert_eq!((p.count, p.missing, p.infinite), (1000, 1, 1));
        assert_eq!((p.min, p.max), (0.0, 999.0));
        assert!((p.mean - 499.5).abs() < 1e-9);
        // Sample variance of 0..999: n(n+1)/12 with n = 1000.
        assert!(
            (p.variance - 1000.0 * 1001.0 / 12.0).abs() < 1e-6,
            "{}",
            p.variance
        );
        assert_eq!(p.edges.len(), 9);
        assert!(
            p.freqs.iter().all(|&f| (f - 0.1).abs() < 0.002),
            "{:?}",
            p.freqs
        );
        // A discrete feature: a bin per value (and an empty one above the max).
        let mut d = FeatureSummary::new(100);
        for i in 0..300 {
            d.observe((i % 3) as f64);
        }
        let p = d.profile(10);
        assert_eq!(p.edges, [0.0, 1.0, 2.0]);
        assert!((p.freqs[0] - 1.0 / 3.0).abs() < 0.1, "{:?}", p.freqs);
        assert_eq!(p.freqs[3], 0.0);
        // The reservoir stays bounded and the moments exact.
        assert!(d.sample.len() == 100 && d.count == 300);
    }

    #[test]
    fn a_window_counts_bins_and_quality() {
        let mut s = FeatureSummary::new(100);
        (0..100).for_each(|i| s.observe(i as f64 / 100.0));
        let p = s.profile(4);
        let mut w = WindowCounts::new(&p);
        for x in [0.1, 0.6, 0.9, 5.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            w.observe(&p, x);
        }
        assert_eq!((w.missing, w.infinite, w.out_of_range), (1, 1, 2));
        assert_eq!(w.bins.iter().sum::<u64>(), 5);
        assert_eq!(w.bins[0], 2); // 0.1 and -1.0
    }
}
