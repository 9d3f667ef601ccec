//! JSON shapes of metadata, model config and the repository index.

use kiln_core::config::{config_dims, input_config_dims, input_metadata_shape, scalar_per_row};
use kiln_core::config::{Device, VersionPolicy};
use kiln_core::stats::{StatDuration, StatsSnapshot};
use kiln_core::{IndexEntry, LoadReport, ModelVersion, TensorSpec, TrafficView, Version};
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
        "inputs": mv.signature.inputs.iter().map(|s| {
            let mut t = tensor(s);
            t["shape"] = json!(input_metadata_shape(s, mv.max_batch_size));
            t
        }).collect::<Vec<_>>(),
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
        "version_policy": version_policy(&mv.config.version_policy()),
        "max_batch_size": mb,
        "input": mv.signature.inputs.iter().map(|s| {
            let mut i = json!({
                "name": s.name,
                "data_type": s.dtype.config_name(),
                "format": "FORMAT_NONE",
                "dims": input_config_dims(s, mb),
                "optional": false,
            });
            if scalar_per_row(s, mb) {
                i["reshape"] = json!({ "shape": [] });
            }
            i
        }).collect::<Vec<_>>(),
        "output": mv.signature.outputs.iter().map(|s| json!({
            "name": s.name,
            "data_type": s.dtype.config_name(),
            "dims": config_dims(s, mb),
        })).collect::<Vec<_>>(),
        "instance_group": mv.instance_groups().iter().enumerate().map(|(i, (device, count))| match device {
            Device::Cpu => json!({ "name": format!("{}_{i}", mv.name), "kind": "KIND_CPU", "count": count }),
            Device::Cuda(n) => json!({ "name": format!("{}_{i}", mv.name), "kind": "KIND_GPU", "count": count, "gpus": [n] }),
        }).collect::<Vec<_>>(),
        "default_model_filename": mv.config.model_filename(),
        "parameters": {},
    });
    let batching = dynamic_batching(mv);
    if !batching.is_null() {
        v["dynamic_batching"] = batching;
    }
    v
}

fn version_policy(p: &VersionPolicy) -> Value {
    match p {
        VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Specific(list) => {
            json!({ "specific": { "versions": list.iter().map(|v| v.0).collect::<Vec<_>>() } })
        }
    }
}

pub fn load_report(name: &str, r: &LoadReport) -> Value {
    let list = |l: &[Version]| l.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    json!({
        "name": name,
        "serving": list(&r.serving),
        "loaded": list(&r.loaded),
        "retired": list(&r.retired),
    })
}

pub fn traffic(t: &TrafficView) -> Value {
    let v = |v: Option<Version>| v.map(|v| v.to_string());
    let p = &t.state.policy;
    json!({
        "name": t.name,
        "versions": t.versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "stable": v(t.stable),
        "canary": v(p.canary),
        "canary_serving": t.canary.is_some(),
        "canary_percent": p.canary_percent,
        "shadow": v(p.shadow),
        "shadow_percent": p.shadow_percent,
        "rollback": p.rollback.as_ref().map(|r| json!({
            "min_requests": r.min_requests,
            "window_secs": r.window_secs,
            "max_error_rate_increase": r.max_error_rate_increase,
            "max_p99_ratio": r.max_p99_ratio,
        })),
        "rolled_back": t.state.rolled_back.as_ref().map(|rb| json!({
            "version": rb.version.to_string(),
            "reason": rb.reason,
            "at_unix_ms": rb.at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        })),
        "source": t.state.source.as_str(),
    })
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
