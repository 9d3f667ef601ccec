//! JSON shapes of metadata, model config and the repository index.

use kiln_core::config::config_dims;
use kiln_core::stats::{StatDuration, StatsSnapshot};
use kiln_core::{IndexEntry, ModelVersion, TensorSpec, Version};
use serde_json::{json, Value};
use std::sync::Arc;

fn tensor(s: &TensorSpec) -> Value {
    json!({ "name": s.name, "datatype": s.dtype.as_str(), "shape": s.shape })
}

pub fn metadata(mv: &ModelVersion, versions: &[Version]) -> Value {
    json!({
        "name": mv.name,
        "versions": versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "platform": mv.platform,
        "inputs": mv.signature.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "outputs": mv.signature.outputs.iter().map(tensor).collect::<Vec<_>>(),
    })
}

/// Triton's model configuration in its JSON form (`dims` exclude the batch dimension).
pub fn config(mv: &ModelVersion) -> Value {
    let mb = mv.max_batch_size;
    let mut v = json!({
        "name": mv.name,
        "platform": mv.platform,
        "backend": mv.backend,
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": mb,
        "input": mv.signature.inputs.iter().map(|s| json!({
            "name": s.name,
            "data_type": s.dtype.config_name(),
            "format": "FORMAT_NONE",
            "dims": config_dims(s, mb),
            "optional": false,
        })).collect::<Vec<_>>(),
        "output": mv.signature.outputs.iter().map(|s| json!({
            "name": s.name,
            "data_type": s.dtype.config_name(),
            "dims": config_dims(s, mb),
        })).collect::<Vec<_>>(),
        "instance_group": [{ "name": format!("{}_0", mv.name), "kind": "KIND_CPU", "count": mv.config.instances() }],
        "default_model_filename": mv.config.model_filename(),
        "parameters": {},
    });
    let batching = dynamic_batching(mv);
    if !batching.is_null() {
        v["dynamic_batching"] = batching;
    }
    v
}

fn dynamic_batching(mv: &ModelVersion) -> Value {
    let s = mv.scheduling();
    if !s.batches() {
        return Value::Null;
    }
    json!({
        "preferred_batch_size": s.preferred_batch_sizes,
        "max_queue_delay_microseconds": s.max_queue_delay.as_micros() as u64,
        "preserve_ordering": false,
    })
}

fn duration(d: &StatDuration) -> Value {
    json!({ "count": d.count, "ns": d.ns })
}

/// Triton's statistics response: every count and `ns` a JSON integer.
pub fn stats(list: &[(Arc<ModelVersion>, StatsSnapshot)]) -> Value {
    let models: Vec<Value> = list
        .iter()
        .map(|(mv, s)| {
            json!({
                "name": mv.name,
                "version": mv.version.to_string(),
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(&s.success),
                    "fail": duration(&s.fail),
                    "queue": duration(&s.queue),
                    "compute_input": duration(&s.compute_input),
                    "compute_infer": duration(&s.compute_infer),
                    "compute_output": duration(&s.compute_output),
                    "cache_hit": duration(&s.cache_hit),
                    "cache_miss": duration(&s.cache_miss),
                },
                "response_stats": {},
                "batch_stats": s.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": duration(&b.compute_input),
                    "compute_infer": duration(&b.compute_infer),
                    "compute_output": duration(&b.compute_output),
                })).collect::<Vec<_>>(),
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": models })
}

pub fn index(entries: &[IndexEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut v =
                    json!({ "name": e.name, "state": e.state.as_str(), "reason": e.reason });
                if let Some(ver) = e.version {
                    v["version"] = json!(ver.to_string());
                }
                v
            })
            .collect(),
    )
}
