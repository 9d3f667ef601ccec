//! JSON shapes of metadata, model config and the repository index.

use kiln_core::config::config_dims;
use kiln_core::{IndexEntry, ModelVersion, TensorSpec, Version};
use serde_json::{json, Value};

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
    json!({
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
    })
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
