//! The protocol layer's views as Triton's protobuf messages.

use crate::convert;
use crate::pb::*;
use kiln_protocol::views::{ConfigTensor, ModelConfigView, ModelMetadata, ModelStats};

fn tensor_metadata(
    t: &kiln_protocol::views::TensorMetadata,
) -> model_metadata_response::TensorMetadata {
    model_metadata_response::TensorMetadata {
        name: t.name.clone(),
        datatype: t.datatype.as_str().to_string(),
        shape: t.shape.clone(),
    }
}

pub fn metadata(m: ModelMetadata) -> ModelMetadataResponse {
    ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform.to_string(),
        inputs: m.inputs.iter().map(tensor_metadata).collect(),
        outputs: m.outputs.iter().map(tensor_metadata).collect(),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub fn model_config(c: ModelConfigView) -> ModelConfig {
    use kiln_core::config::VersionPolicy;
    let input = |t: &ConfigTensor| ModelInput {
        name: t.name.clone(),
        data_type: convert::config_type(t.datatype) as i32,
        dims: t.dims.clone(),
        reshape: t.reshape.clone().map(|shape| ModelTensorReshape { shape }),
        ..Default::default()
    };
    let output = |t: &ConfigTensor| ModelOutput {
        name: t.name.clone(),
        data_type: convert::config_type(t.datatype) as i32,
        dims: t.dims.clone(),
    };
    ModelConfig {
        name: c.name,
        platform: c.platform.to_string(),
        backend: c.backend.to_string(),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: c.input.iter().map(input).collect(),
        output: c.output.iter().map(output).collect(),
        instance_group: c
            .instance_group
            .iter()
            .map(|g| ModelInstanceGroup {
                name: g.name.clone(),
                count: count(g.count),
                gpus: g
                    .gpu
                    .map(|n| vec![i32::try_from(n).unwrap_or(i32::MAX)])
                    .unwrap_or_default(),
                kind: match g.gpu {
                    None => model_instance_group::Kind::Cpu,
                    Some(_) => model_instance_group::Kind::Gpu,
                } as i32,
            })
            .collect(),
        default_model_filename: c.default_model_filename,
        scheduling_choice: c.dynamic_batching.map(|b| {
            model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                preferred_batch_size: b.preferred_batch_size.iter().map(|&n| count(n)).collect(),
                max_queue_delay_microseconds: b.max_queue_delay_microseconds,
                preserve_ordering: false,
            })
        }),
        version_policy: Some(ModelVersionPolicy {
            policy_choice: Some(match c.version_policy {
                VersionPolicy::Latest(n) => {
                    model_version_policy::PolicyChoice::Latest(model_version_policy::Latest {
                        num_versions: u32::try_from(n).unwrap_or(u32::MAX),
                    })
                }
                VersionPolicy::All => {
                    model_version_policy::PolicyChoice::All(model_version_policy::All {})
                }
                VersionPolicy::Specific(list) => {
                    model_version_policy::PolicyChoice::Specific(model_version_policy::Specific {
                        versions: list
                            .iter()
                            .map(|v| i64::try_from(v.0).unwrap_or(i64::MAX))
                            .collect(),
                    })
                }
            }),
        }),
        ..Default::default()
    }
}

fn duration(d: &kiln_core::stats::StatDuration) -> Option<StatisticDuration> {
    Some(StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

pub fn model_stats(m: &ModelStats) -> ModelStatistics {
    let s = &m.stats;
    ModelStatistics {
        name: m.name.clone(),
        version: m.version.clone(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: duration(&s.cache_hit),
            cache_miss: duration(&s.cache_miss),
        }),
        batch_stats: s
            .batch_stats
            .iter()
            .map(|b| InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(&b.compute_input),
                compute_infer: duration(&b.compute_infer),
                compute_output: duration(&b.compute_output),
            })
            .collect(),
        memory_usage: vec![],
        response_stats: Default::default(),
    }
}
