//! Kiln's serving core: tensors, model configuration and repository, the backend
//! trait, the model registry, the loader, routing and the inference path. Front
//! ends (REST, gRPC) and backends (ONNX Runtime, tract, Candle) depend on this
//! crate, never the reverse.
//!
//! Modules never import a module that imports them back (a test checks it), and
//! refer to each other by full path, never through the re-exports below.

pub mod audit;
pub mod backend;
pub mod budget;
pub mod config;
pub mod dtype;
pub mod elements;
pub mod error;
pub mod handle;
pub mod infer;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod repository;
pub mod scheduler;
pub mod server;
pub mod stats;
pub mod tensor;
pub mod trace;
pub mod traffic;

pub use backend::{Backend, BackendError, BackendFactory, Backends, LoadRequest};
pub use config::Device;
pub use dtype::DataType;
pub use error::{ErrorKind, KilnError};
pub use handle::{Core, CoreOptions};
pub use infer::{InferInput, InferOutput, InferRequest, InferResponse, Timing};
pub use loader::{ControlMode, LoadError, LoadReport};
pub use model::{ModelSignature, TensorSpec, Version};
pub use registry::{IndexEntry, ModelState, ModelVersion};
pub use tensor::Tensor;
pub use traffic::api::TrafficView;
