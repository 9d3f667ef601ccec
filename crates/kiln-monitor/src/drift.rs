//! Drift scores of a live window against the reference, on the reference's bins.

/// Shares below this count as this, so that an empty bin on either side gives a
/// large but finite score (the usual smoothing for the population stability index).
const FLOOR: f64 = 1e-4;

/// Population stability index: sum over bins of (live - ref) x ln(live / ref),
/// the shares floored at 1e-4. Below 0.1 is usually read as no shift, above 0.25
/// as a major one. `None` when the window is empty or the bins do not match.
pub fn psi(reference: &[f64], live: &[u64]) -> Option<f64> {
    let n: u64 = live.iter().sum();
    if n == 0 || reference.len() != live.len() {
        return None;
    }
    Some(
        reference
            .iter()
            .zip(live)
            .map(|(&r, &c)| {
                let (p, q) = (r.max(FLOOR), (c as f64 / n as f64).max(FLOOR));
                (q - p) * (q / p).ln()
            })
            .sum(),
    )
}

/// A two-sample Kolmogorov-Smirnov test on binned data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    /// The largest gap between the two cumulative distributions at the bin
    /// edges (a lower bound of the gap over all values).
    pub statistic: f64,
    /// The asymptotic p-value of that gap for `n_ref` and the window's sizes.
    pub p_value: f64,
}

/// Kolmogorov-Smirnov between the reference's shares (from `n_ref` values) and a
/// live window's bin counts. `None` when either side is empty or the bins differ.
pub fn ks_binned(reference: &[f64], n_ref: u64, live: &[u64]) -> Option<KsResult> {
    let n: u64 = live.iter().sum();
    if n == 0 || n_ref == 0 || reference.len() != live.len() {
        return None;
    }
    let (mut cr, mut cl, mut d) = (0f64, 0f64, 0f64);
    for (&r, &c) in reference.iter().zip(live) {
        cr += r;
        cl += c as f64 / n as f64;
        d = d.max((cr - cl).abs());
    }
    let ne = (n_ref as f64 * n as f64) / (n_ref + n) as f64;
    let lambda = (ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d;
    Some(KsResult {
        statistic: d,
        p_value: kolmogorov_q(lambda),
    })
}

/// Q(λ) = 2 Σ (-1)^(k-1) exp(-2 k² λ²): the probability of a larger gap under
/// the null hypothesis.
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += if k as u64 % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_the_same_shares_and_grows_with_a_shift() {
        let reference = [0.25; 4];
        assert!(psi(&reference, &[25, 25, 25, 25]).unwrap().abs() < 1e-12);
        let small = psi(&reference, &[30, 25, 25, 20]).unwrap();
        let large = psi(&reference, &[70, 10, 10, 10]).unwrap();
        assert!(
            small > 0.0 && small < 0.1 && large > 0.25,
            "{small} {large}"
        );
        // By hand: (0.7-0.25) ln(2.8) + 3 (0.1-0.25) ln(0.4).
        let want = 0.45 * 2.8f64.ln() + 3.0 * -0.15 * 0.4f64.ln();
        assert!((large - want).abs() < 1e-12);
        // An empty reference bin is floored, not infinite.
        assert!(psi(&[0.5, 0.5, 0.0], &[1, 1, 2]).unwrap().is_finite());
        assert_eq!(psi(&reference, &[0, 0, 0, 0]), None);
        assert_eq!(psi(&reference, &[1, 2]), None);
    }

    #[test]
    fn ks_finds_the_largest_cumulative_gap_and_its_significance() {
        let reference = [0.25; 4];
        let same = ks_binned(&reference, 1000, &[250, 250, 250, 250]).unwrap();
        assert_eq!(same.statistic, 0.0);
        assert_eq!(same.p_value, 1.0);
        let shifted = ks_binned(&reference, 1000, &[100, 150, 350, 400]).unwrap();
        // Cumulative: 0.25/0.10, 0.50/0.25, 0.75/0.60: largest gap 0.25.
        assert!((shifted.statistic - 0.25).abs() < 1e-12);
        assert!(shifted.p_value < 1e-6, "{shifted:?}");
        // A small window with the same gap is far less significant.
        let few = ks_binned(&reference, 1000, &[2, 3, 7, 8]).unwrap();
        assert!(few.p_value > 0.05, "{few:?}");
        // Q at λ = 1 is 0.27: the textbook value.
        assert!((kolmogorov_q(1.0) - 0.2700).abs() < 1e-3);
        assert_eq!(ks_binned(&reference, 0, &[1, 1, 1, 1]), None);
    }
}
