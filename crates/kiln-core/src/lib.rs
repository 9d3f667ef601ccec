//! Kiln's serving core: tensors, model configuration and repository, the backend
//! trait, the model table and the inference path. Front ends (REST, gRPC) and
//! backends (ONNX Runtime, tract) depend on this crate, never the reverse.

pub mod backend;
pub mod config;
pub mod dtype;
pub mod elements;
pub mod error;
pub mod infer;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod repository;
pub mod scheduler;
pub mod server;
pub mod stats;
pub mod tensor;
pub mod traffic;

pub use backend::{Backend, BackendError, BackendFactory, Backends, LoadRequest};
pub use config::Device;
pub use dtype::DataType;
pub use error::{ErrorKind, KilnError};
pub use infer::{InferInput, InferOutput, InferRequest, InferResponse};
pub use lifecycle::{LoadReport, PollState};
pub use model::{ModelSignature, TensorSpec, Version};
pub use server::{
    ControlMode, Core, CoreOptions, IndexEntry, ModelState, ModelVersion, TrafficView,
};
pub use tensor::Tensor;
