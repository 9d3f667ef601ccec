//! Building a profile from tensors seen in order: a data set run through the
//! model (`kiln profile`), or a version's first served requests.

use crate::features::{feature_rows, Reduction};
use crate::profile::{Profile, ProfileError, TensorProfile, FORMAT};
use crate::summary::FeatureSummary;
use kiln_core::Tensor;

/// How finely a profile summarises.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Histogram bins per feature (quantile bins; fewer for discrete features).
    pub bins: usize,
    /// Values kept per feature to place the bins (a uniform sample).
    pub sample: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            bins: 10,
            sample: 4096,
        }
    }
}

/// One tensor's summaries, fixed by the first tensor seen under its name.
struct Tensors {
    name: String,
    reduction: Reduction,
    features: Vec<FeatureSummary>,
}

/// Accumulates input and output tensors into a [`Profile`].
pub struct ProfileBuilder {
    options: BuildOptions,
    rows: u64,
    inputs: Vec<Tensors>,
    outputs: Vec<Tensors>,
}

impl ProfileBuilder {
    pub fn new(options: BuildOptions) -> Self {
        ProfileBuilder {
            options,
            rows: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Adds one request (or data set batch): its inputs and the model's outputs
    /// for them (text tensors as their strings' lengths). A tensor whose features differ
    /// from the first seen under its name is an error, and nothing is added.
    pub fn observe(
        &mut self,
        inputs: &[(&str, &Tensor)],
        outputs: &[(&str, &Tensor)],
    ) -> Result<(), ProfileError> {
        let mut rows = None;
        let mut planned = Vec::new();
        for (output, list) in [(false, inputs), (true, outputs)] {
            for &(name, t) in list {
                let Some((reduction, n, values)) = feature_rows(t) else {
                    continue;
                };
                let side = if output { "output" } else { "input" };
                let known = if output { &self.outputs } else { &self.inputs };
                if let Some(k) = known.iter().find(|k| k.name == name) {
                    if k.reduction != reduction || k.features.len() != n {
                        return Err(ProfileError::Invalid {
                            place: format!("{side} '{name}'"),
                            message: format!(
                                "{n} features ({reduction:?}) where earlier data had {} ({:?})",
                                k.features.len(),
                                k.reduction
                            ),
                        });
                    }
                }
                rows.get_or_insert(t.shape()[0]);
                planned.push((output, name, reduction, n, values));
            }
        }
        for (output, name, reduction, n, values) in planned {
            let options = self.options;
            let list = if output {
                &mut self.outputs
            } else {
                &mut self.inputs
            };
            let pos = match list.iter().position(|k| k.name == name) {
                Some(p) => p,
                None => {
                    list.push(Tensors {
                        name: name.to_string(),
                        reduction,
                        features: vec![FeatureSummary::new(options.sample); n],
                    });
                    list.len() - 1
                }
            };
            let features = &mut list[pos].features;
            if n > 0 {
                for row in values.chunks_exact(n) {
                    for (f, &x) in features.iter_mut().zip(row) {
                        f.observe(x);
                    }
                }
            }
        }
        self.rows += rows.unwrap_or(0) as u64;
        Ok(())
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn finish(self, source: impl Into<String>) -> Profile {
        let bins = self.options.bins;
        let done = |list: Vec<Tensors>| {
            list.into_iter()
                .map(|t| TensorProfile {
                    name: t.name,
                    reduction: t.reduction,
                    features: t.features.iter().map(|f| f.profile(bins)).collect(),
                })
                .collect()
        };
        Profile {
            format: FORMAT,
            source: source.into(),
            rows: self.rows,
            inputs: done(self.inputs),
            outputs: done(self.outputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_accumulate_into_a_profile_that_checks_and_round_trips() {
        let mut b = ProfileBuilder::new(BuildOptions::default());
        for batch in 0..10 {
            let x: Vec<f32> = (0..8).map(|i| (batch * 8 + i) as f32).collect();
            let x = Tensor::from_vec(vec![4, 2], x).unwrap();
            let y = Tensor::from_vec(vec![4], vec![batch as i64 % 2; 4]).unwrap();
            let text = Tensor::from_byte_elements(vec![4], &[b"a".as_slice(); 4]).unwrap();
            b.observe(&[("X", &x), ("note", &text)], &[("label", &y)])
                .unwrap();
        }
        assert_eq!(b.rows(), 40);
        // A batch with a different feature count is refused and changes nothing.
        let wide = Tensor::from_vec(vec![1, 3], vec![0f32; 3]).unwrap();
        let e = b.observe(&[("X", &wide)], &[]).unwrap_err().to_string();
        assert!(e.contains("input 'X'") && e.contains("3 features"), "{e}");
        assert_eq!(b.rows(), 40);
        let p = b.finish("train.npz");
        p.check().unwrap();
        assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
        let x = p.tensor(false, "X").unwrap();
        assert_eq!((x.reduction, x.features.len()), (Reduction::Column, 2));
        // Column 0 holds the even numbers 0..78, column 1 the odd ones.
        assert_eq!((x.features[0].min, x.features[0].max), (0.0, 78.0));
        assert_eq!((x.features[1].min, x.features[1].max), (1.0, 79.0));
        let note = p.tensor(false, "note").unwrap();
        assert_eq!(
            (note.reduction, note.features[0].mean),
            (Reduction::ByteLength, 1.0)
        );
        let label = &p.tensor(true, "label").unwrap().features[0];
        assert_eq!(label.edges, [0.0, 1.0]);
        assert_eq!(label.freqs, [0.5, 0.5, 0.0]);
    }
}
