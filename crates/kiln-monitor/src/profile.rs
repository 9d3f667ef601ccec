//! A version's reference profile (`profile.json` beside the model): per input and
//! output tensor and per feature, what the reference data looked like.

use crate::features::Reduction;
use serde::{Deserialize, Serialize};

/// The profile format this build reads and writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// [`FORMAT`].
    pub format: u32,
    /// Where it came from: the data set's file, or "first N served requests".
    pub source: String,
    /// Rows (samples) summarised.
    pub rows: u64,
    pub inputs: Vec<TensorProfile>,
    pub outputs: Vec<TensorProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorProfile {
    pub name: String,
    pub reduction: Reduction,
    pub features: Vec<FeatureProfile>,
}

/// One feature of the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    /// Finite values seen.
    pub count: u64,
    /// NaN values seen (missing).
    pub missing: u64,
    pub infinite: u64,
    /// Range, mean and (sample) variance of the finite values.
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub variance: f64,
    /// Histogram bin edges, increasing: bins (-inf, e0], (e0, e1], ..., (e_last, inf).
    pub edges: Vec<f64>,
    /// Each bin's share of the reference (one more than `edges`, summing to 1).
    pub freqs: Vec<f64>,
}

/// Why a profile cannot be used, naming the place in it.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile: {0}")]
    Parse(String),
    #[error("profile format {0} is not {FORMAT}")]
    Format(u32),
    #[error("profile {place}: {message}")]
    Invalid { place: String, message: String },
}

impl Profile {
    /// Parses and checks a profile.
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let p: Profile =
            serde_json::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    pub fn to_json(&self) -> String {
        // A profile is plain data: it always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Every tensor and feature is usable: names unique, numbers finite,
    /// edges increasing, one more share than edges, shares summing to 1.
    pub fn check(&self) -> Result<(), ProfileError> {
        if self.format != FORMAT {
            return Err(ProfileError::Format(self.format));
        }
        for (side, tensors) in [("input", &self.inputs), ("output", &self.outputs)] {
            let mut names = std::collections::HashSet::new();
            for t in tensors {
                if !names.insert(t.name.as_str()) {
                    return Err(invalid(format!("{side} '{}'", t.name), "appears twice"));
                }
                for (j, f) in t.features.iter().enumerate() {
                    f.check()
                        .map_err(|m| invalid(format!("{side} '{}' feature {j}", t.name), m))?;
                }
            }
        }
        Ok(())
    }

    /// The profile of the input or output named `name`.
    pub fn tensor(&self, output: bool, name: &str) -> Option<&TensorProfile> {
        let list = if output { &self.outputs } else { &self.inputs };
        list.iter().find(|t| t.name == name)
    }
}

fn invalid(place: String, message: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        place,
        message: message.into(),
    }
}

impl FeatureProfile {
    fn check(&self) -> Result<(), String> {
        let numbers = [self.min, self.max, self.mean, self.variance];
        if numbers.iter().any(|x| !x.is_finite()) || self.variance < 0.0 {
            return Err("min, max, mean and variance must be finite, variance >= 0".into());
        }
        if self.count > 0 && self.min > self.max {
            return Err(format!("min {} is above max {}", self.min, self.max));
        }
        if self.edges.iter().any(|e| !e.is_finite()) || self.edges.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("edges must be finite and strictly increasing".into());
        }
        if self.freqs.len() != self.edges.len() + 1 {
            return Err(format!(
                "{} freqs for {} edges (need one more)",
                self.freqs.len(),
                self.edges.len()
            ));
        }
        if self.freqs.iter().any(|f| !f.is_finite() || *f < 0.0) {
            return Err("freqs must be finite and >= 0".into());
        }
        let sum: f64 = self.freqs.iter().sum();
        if self.count > 0 && (sum - 1.0).abs() > 1e-6 {
            return Err(format!("freqs sum to {sum}, not 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature() -> FeatureProfile {
        FeatureProfile {
            count: 10,
            missing: 0,
            infinite: 0,
            min: 0.0,
            max: 1.0,
            mean: 0.5,
            variance: 0.1,
            edges: vec![0.5],
            freqs: vec![0.5, 0.5],
        }
    }

    fn profile() -> Profile {
        Profile {
            format: FORMAT,
            source: "train.npz".into(),
            rows: 10,
            inputs: vec![TensorProfile {
                name: "X".into(),
                reduction: Reduction::Column,
                features: vec![feature(), feature()],
            }],
            outputs: vec![],
        }
    }

    #[test]
    fn a_profile_round_trips_through_json() {
        let p = profile();
        assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
        assert!(p.tensor(false, "X").is_some() && p.tensor(true, "X").is_none());
    }

    #[test]
    fn a_malformed_profile_says_where() {
        type Breaks = Box<dyn Fn(&mut Profile)>;
        let cases: Vec<(Breaks, &str)> = vec![
            (Box::new(|p| p.format = 2), "format 2"),
            (
                Box::new(|p| p.inputs[0].features[1].freqs = vec![0.5]),
                "input 'X' feature 1: 1 freqs",
            ),
            (
                Box::new(|p| p.inputs[0].features[0].freqs = vec![0.5, 0.6]),
                "sum to",
            ),
            (
                Box::new(|p| p.inputs[0].features[0].edges = vec![0.5, 0.5]),
                "strictly increasing",
            ),
            (
                Box::new(|p| p.inputs[0].features[0].variance = -1.0),
                "variance >= 0",
            ),
            (Box::new(|p| p.inputs[0].features[0].min = 2.0), "above max"),
            (
                Box::new(|p| p.inputs.push(p.inputs[0].clone())),
                "appears twice",
            ),
        ];
        for (break_it, needle) in cases {
            let mut p = profile();
            break_it(&mut p);
            let e = Profile::from_json(&p.to_json()).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = Profile::from_json("{\"format\": 1}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("profile: missing field"), "{e}");
        let e = Profile::from_json(
            &profile()
                .to_json()
                .replace("\"rows\"", "\"colour\": 1, \"rows\""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
