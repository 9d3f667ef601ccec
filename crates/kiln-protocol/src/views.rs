//! The model metadata, model config and statistics views of a serving version,
//! as Triton defines them, in typed form. `dims` in the config exclude the batch
//! dimension when the model batches; a batch of scalars (texts) is shown as
//! Triton shows it: metadata `[-1, 1]`, config `dims: [1]` with `reshape: []`.

use kiln_core::config::{scalar_per_row, Device, VersionPolicy};
use kiln_core::stats::StatsSnapshot;
use kiln_core::{DataType, ModelVersion, TensorSpec, Version};
use std::sync::Arc;

/// A tensor in model metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}`, ModelMetadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `versions`: the model's serving versions.
pub fn metadata(mv: &ModelVersion, versions: &[Version]) -> ModelMetadata {
    let mb = mv.max_batch_size;
    let tensor = |s: &TensorSpec, shape: Vec<i64>| TensorMetadata {
        name: s.name.clone(),
        datatype: s.dtype,
        shape,
    };
    ModelMetadata {
        name: mv.name.clone(),
        versions: versions.iter().map(Version::to_string).collect(),
        platform: mv.platform,
        inputs: mv
            .signature
            .inputs
            .iter()
            .map(|s| tensor(s, input_metadata_shape(s, mb)))
            .collect(),
        outputs: mv
            .signature
            .outputs
            .iter()
            .map(|s| tensor(s, s.shape.clone()))
            .collect(),
    }
}

/// An input or output of the model config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTensor {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
    /// Inputs that are a batch of scalars: reshaped to `[]`.
    pub reshape: Option<Vec<i64>>,
}

/// Instances on one device (Triton's instance group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceGroup {
    pub name: String,
    pub count: usize,
    /// `None`: `KIND_CPU`; `Some(n)`: `KIND_GPU` on GPU `n`.
    pub gpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicBatching {
    pub preferred_batch_size: Vec<usize>,
    pub max_queue_delay_microseconds: u64,
}

/// `GET /v2/models/{m}/config`, ModelConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfigView {
    pub name: String,
    pub platform: &'static str,
    pub backend: &'static str,
    pub version_policy: VersionPolicy,
    pub max_batch_size: u32,
    pub input: Vec<ConfigTensor>,
    pub output: Vec<ConfigTensor>,
    pub instance_group: Vec<InstanceGroup>,
    pub default_model_filename: String,
    /// Present when the version batches requests.
    pub dynamic_batching: Option<DynamicBatching>,
}

pub fn model_config(mv: &ModelVersion) -> ModelConfigView {
    let mb = mv.max_batch_size;
    let s = mv.scheduling();
    ModelConfigView {
        name: mv.name.clone(),
        platform: mv.platform,
        backend: mv.backend,
        version_policy: mv.config.version_policy.clone(),
        max_batch_size: mb,
        input: mv
            .signature
            .inputs
            .iter()
            .map(|t| ConfigTensor {
                name: t.name.clone(),
                datatype: t.dtype,
                dims: input_config_dims(t, mb),
                reshape: scalar_per_row(t, mb).then(Vec::new),
            })
            .collect(),
        output: mv
            .signature
            .outputs
            .iter()
            .map(|t| ConfigTensor {
                name: t.name.clone(),
                datatype: t.dtype,
                dims: config_dims(t, mb),
                reshape: None,
            })
            .collect(),
        instance_group: mv
            .instance_groups()
            .iter()
            .enumerate()
            .map(|(i, (device, count))| InstanceGroup {
                name: format!("{}_{i}", mv.name),
                count: *count,
                gpu: match device {
                    Device::Cpu => None,
                    Device::Cuda(n) => Some(*n),
                },
            })
            .collect(),
        default_model_filename: mv.config.model_filename.clone(),
        dynamic_batching: s.batches().then(|| DynamicBatching {
            preferred_batch_size: s.preferred_batch_sizes.clone(),
            max_queue_delay_microseconds: u64::try_from(s.max_queue_delay.as_micros())
                .unwrap_or(u64::MAX),
        }),
    }
}

/// One version's statistics (Triton's statistics extension).
#[derive(Debug, Clone)]
pub struct ModelStats {
    pub name: String,
    pub version: String,
    pub stats: StatsSnapshot,
}

pub fn statistics(list: &[(Arc<ModelVersion>, StatsSnapshot)]) -> Vec<ModelStats> {
    list.iter()
        .map(|(mv, s)| ModelStats {
            name: mv.name.clone(),
            version: mv.version.to_string(),
            stats: s.clone(),
        })
        .collect()
}

/// A tensor's shape as Triton's model config writes it: without the batch dimension
/// when the model batches.
fn config_dims(spec: &TensorSpec, max_batch_size: u32) -> Vec<i64> {
    if max_batch_size > 0 {
        spec.shape.iter().skip(1).copied().collect()
    } else {
        spec.shape.clone()
    }
}

/// An input's shape as model metadata reports it: `[-1, 1]` for a batch of
/// scalars, so that clients that size their requests from metadata
/// (perf_analyzer) agree with the config.
fn input_metadata_shape(spec: &TensorSpec, max_batch_size: u32) -> Vec<i64> {
    if scalar_per_row(spec, max_batch_size) {
        vec![-1, 1]
    } else {
        spec.shape.clone()
    }
}

/// `config_dims` for an input: `[1]` for a batch of scalars.
fn input_config_dims(spec: &TensorSpec, max_batch_size: u32) -> Vec<i64> {
    if scalar_per_row(spec, max_batch_size) {
        vec![1]
    } else {
        config_dims(spec, max_batch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape,
        }
    }

    #[test]
    fn dims_drop_the_batch_dimension_and_scalars_reshape() {
        assert_eq!(config_dims(&spec(vec![-1, 16]), 8), vec![16]);
        assert_eq!(config_dims(&spec(vec![2, 3]), 0), vec![2, 3]);
        let text = TensorSpec {
            dtype: DataType::Bytes,
            ..spec(vec![-1])
        };
        assert_eq!(input_config_dims(&text, 64), vec![1]);
        assert_eq!(input_metadata_shape(&text, 64), vec![-1, 1]);
        assert_eq!(input_metadata_shape(&spec(vec![-1, 4]), 64), vec![-1, 4]);
    }
}
