//! A profile built from reference data, then live windows scored against it: the
//! same distribution shows no drift, a shifted one does, a blanked feature shows
//! as missing values in exactly that feature.

use kiln_core::Tensor;
use kiln_monitor::{ks_binned, psi, BuildOptions, ProfileBuilder, WindowCounts};

/// Deterministic standard normal values (splitmix64 and Box-Muller).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// `rows` rows of 3 features, N(0, 1), the first shifted by `shift`, the last NaN when `blank`.
fn batch(g: &mut Normal, rows: usize, shift: f32, blank: bool) -> Tensor {
    let mut v = Vec::with_capacity(rows * 3);
    for _ in 0..rows {
        v.push(g.next() + shift);
        v.push(g.next());
        v.push(if blank { f32::NAN } else { g.next() });
    }
    Tensor::from_vec(vec![rows, 3], v).unwrap()
}

#[test]
fn drift_and_data_quality_show_in_the_features_that_changed() {
    let mut g = Normal(7);
    let mut b = ProfileBuilder::new(BuildOptions::default());
    for _ in 0..20 {
        b.observe(&[("X", &batch(&mut g, 500, 0.0, false))], &[])
            .unwrap();
    }
    let profile = b.finish("reference");
    let x = profile.tensor(false, "X").unwrap();
    let window = |t: &Tensor| -> Vec<WindowCounts> {
        let (_, n, values) = kiln_monitor::feature_rows(t).unwrap();
        let mut w: Vec<WindowCounts> = x.features.iter().map(WindowCounts::new).collect();
        for row in values.chunks_exact(n) {
            for ((w, f), &v) in w.iter_mut().zip(&x.features).zip(row) {
                w.observe(f, v);
            }
        }
        w
    };
    let scores = |w: &[WindowCounts]| -> Vec<(f64, f64)> {
        w.iter()
            .zip(&x.features)
            .map(|(w, f)| {
                match (
                    psi(&f.freqs, &w.bins),
                    ks_binned(&f.freqs, f.count, &w.bins),
                ) {
                    (Some(p), Some(k)) => (p, k.p_value),
                    _ => (f64::NAN, f64::NAN),
                }
            })
            .collect()
    };

    let same = window(&batch(&mut g, 2000, 0.0, false));
    for (psi, p) in scores(&same) {
        assert!(
            psi < 0.1 && p > 0.01,
            "no drift expected: psi {psi}, ks p {p}"
        );
    }
    assert!(same.iter().all(|w| w.missing == 0));

    let shifted = window(&batch(&mut g, 2000, 1.0, true));
    let s = scores(&shifted);
    assert!(
        s[0].0 > 0.25 && s[0].1 < 1e-6,
        "feature 0 shifted: {:?}",
        s[0]
    );
    assert!(s[1].0 < 0.1, "feature 1 unchanged: {:?}", s[1]);
    assert_eq!(
        shifted.iter().map(|w| w.missing).collect::<Vec<_>>(),
        [0, 0, 2000]
    );
    assert!(shifted[0].out_of_range > shifted[1].out_of_range);
}
