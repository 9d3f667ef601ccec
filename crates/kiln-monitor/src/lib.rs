//! Model monitoring: what a version's inputs and outputs looked like in a
//! reference data set (a [`Profile`]), summaries of what it is served now
//! ([`FeatureSummary`]), and how far the two have drifted ([`drift`]).
//!
//! A tensor is seen as rows of features ([`features`]): the rows are its batch
//! dimension, the features its columns (`[batch, F]`), its channels with each
//! row's mean over the other dimensions (`[batch, C, ...]`, e.g. images), a
//! single value per row (`[batch]`), or for text each string's length in bytes.

pub mod builder;
pub mod drift;
pub mod features;
pub mod profile;
pub mod summary;

pub use builder::{BuildOptions, ProfileBuilder};
pub use drift::{ks_binned, psi, KsResult};
pub use features::{feature_rows, Reduction};
pub use profile::{FeatureProfile, Profile, ProfileError, TensorProfile};
pub use summary::{bin, FeatureSummary, WindowCounts};
