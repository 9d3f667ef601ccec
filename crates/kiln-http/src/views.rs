//! The protocol layer's views in their JSON form.

use kiln_core::config::VersionPolicy;
use kiln_core::stats::StatDuration;
use kiln_core::{IndexEntry, LoadReport, TrafficView, Version};
use kiln_protocol::views::{ConfigTensor, ModelConfigView, ModelMetadata, ModelStats};
use kiln_protocol::ServerMetadata;
use serde_json::{json, Value};

pub fn server_metadata(m: &ServerMetadata) -> Value {
    json!({ "name": m.name, "version": m.version, "extensions": m.extensions })
}

pub fn metadata(m: &ModelMetadata) -> Value {
    let tensors = |list: &[kiln_protocol::views::TensorMetadata]| {
        list.iter()
            .map(|t| json!({ "name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape }))
            .collect::<Vec<_>>()
    };
    json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })
}

/// Triton's model configuration in its JSON form.
pub fn config(c: &ModelConfigView) -> Value {
    let input = |t: &ConfigTensor| {
        let mut i = json!({
            "name": t.name,
            "data_type": t.datatype.config_name(),
            "format": "FORMAT_NONE",
            "dims": t.dims,
            "optional": false,
        });
        if let Some(shape) = &t.reshape {
            i["reshape"] = json!({ "shape": shape });
        }
        i
    };
    let output = |t: &ConfigTensor| json!({ "name": t.name, "data_type": t.datatype.config_name(), "dims": t.dims });
    let mut v = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "version_policy": version_policy(&c.version_policy),
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(input).collect::<Vec<_>>(),
        "output": c.output.iter().map(output).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| match g.gpu {
            None => json!({ "name": g.name, "kind": "KIND_CPU", "count": g.count }),
            Some(n) => json!({ "name": g.name, "kind": "KIND_GPU", "count": g.count, "gpus": [n] }),
        }).collect::<Vec<_>>(),
        "default_model_filename": c.default_model_filename,
        "parameters": {},
    });
    if let Some(b) = &c.dynamic_batching {
        v["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "preserve_ordering": false,
        });
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

fn duration(d: &StatDuration) -> Value {
    json!({ "count": d.count, "ns": d.ns })
}

/// Triton's statistics response: every count and `ns` a JSON integer.
pub fn stats(list: &[ModelStats]) -> Value {
    let models: Vec<Value> = list
        .iter()
        .map(|m| {
            let s = &m.stats;
            json!({
                "name": m.name,
                "version": m.version,
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
