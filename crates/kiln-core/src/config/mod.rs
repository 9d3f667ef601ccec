//! Per-model configuration: `<repo>/<model>/config.toml`.
//!
//! Everything is optional: inputs, outputs, datatypes, shapes and whether the model
//! batches are read from the model file. The file only states what differs. Its
//! serde shape (`file`) is checked and typed once (`model`); `signature`
//! reconciles it with the model file; `device` and `traffic` hold the placement
//! and the traffic sections.

mod device;
mod error;
mod file;
mod model;
mod signature;
#[cfg(test)]
mod tests;
mod traffic;

pub use device::{device_label, group_devices, Device};
pub use error::{ConfigError, FieldError};
pub use file::{BackendChoice, ConfigFile, TensorConfig, VersionPolicyConfig, CONFIG_FILE};
pub use model::{
    ModelConfig, ModelFamily, TensorOverride, VersionPolicy, DEFAULT_CANDLE_FILENAME,
    DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_SIZE, DEFAULT_MODEL_FILENAME, MAX_BATCH_SIZE_LIMIT,
    MAX_QUEUE_DELAY_US_LIMIT,
};
pub use signature::{resolve_signature, scalar_per_row, ResolvedSignature};
pub use traffic::{RollbackConfig, TrafficConfig};
