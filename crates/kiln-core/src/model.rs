//! Identities and signatures of models.

use crate::dtype::DataType;
use std::fmt;

/// A model version number (the numeric folder name in the repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Version {
    /// Parses a version as it appears in a URL or request; `None` when it is not a number.
    pub fn parse(s: &str) -> Option<Version> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().map(Version)
    }
}

/// A tensor the model takes or produces. `shape` is the full shape the backend
/// sees, batch dimension included; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
}

/// A model's inputs and outputs, in the backend's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelSignature {
    /// True when every input and output has a variable first dimension, i.e. the
    /// model can take a batch of any size.
    pub fn has_dynamic_batch(&self) -> bool {
        !self.inputs.is_empty()
            && self
                .inputs
                .iter()
                .chain(&self.outputs)
                .all(|t| t.shape.first() == Some(&-1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(Version::parse("3"), Some(Version(3)));
        assert_eq!(Version::parse(""), None);
        assert_eq!(Version::parse("-1"), None);
        assert_eq!(Version::parse("1a"), None);
        assert_eq!(Version::parse("99999999999999999999999"), None);
    }

    #[test]
    fn dynamic_batch_detection() {
        let spec = |shape: Vec<i64>| TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape,
        };
        let mut sig = ModelSignature {
            inputs: vec![spec(vec![-1, 4])],
            outputs: vec![spec(vec![-1, 2])],
        };
        assert!(sig.has_dynamic_batch());
        sig.outputs.push(spec(vec![3]));
        assert!(!sig.has_dynamic_batch());
    }
}
