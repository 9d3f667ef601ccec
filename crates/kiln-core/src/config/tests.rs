//! The config as a whole: parsing, typing, defaults, and reconciling with a
//! model's signature.

use crate::config::device::Device;
use crate::config::error::ConfigError;
use crate::config::model::{ModelConfig, DEFAULT_MAX_BATCH_SIZE};
use crate::config::signature::resolve_signature;
use crate::dtype::DataType;
use crate::model::{ModelSignature, TensorSpec};
use std::path::Path;

fn sig() -> ModelSignature {
    ModelSignature {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            shape: vec![-1, -1],
        }],
        outputs: vec![TensorSpec {
            name: "y".into(),
            dtype: DataType::Fp32,
            shape: vec![-1, 4],
        }],
    }
}

fn parse(text: &str) -> Result<ModelConfig, ConfigError> {
    ModelConfig::parse(text, Path::new("m/config.toml"))
}

#[test]
fn empty_config_derives_everything() {
    let cfg = parse("").unwrap();
    let r = resolve_signature(&sig(), &cfg, Path::new("m")).unwrap();
    assert_eq!(r.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
    assert_eq!(r.signature, sig());
}

#[test]
fn dims_narrow_the_model_shape() {
    let cfg = parse("max_batch_size = 8\n[[input]]\nname = \"x\"\ndims = [16]\n").unwrap();
    let r = resolve_signature(&sig(), &cfg, Path::new("m")).unwrap();
    assert_eq!(r.max_batch_size, 8);
    assert_eq!(r.signature.inputs[0].shape, vec![-1, 16]);
}

#[test]
fn errors_name_file_and_field() {
    let e = parse("backend = \"tensorrt\"").unwrap_err().to_string();
    assert!(e.contains("m/config.toml"), "{e}");
    let e = parse("max_batch = 3").unwrap_err().to_string();
    assert!(e.contains("max_batch"), "{e}");
    let e = parse("instance_count = 0").unwrap_err().to_string();
    assert!(e.contains("instance_count"), "{e}");
    for (bad, why) in [
        ("device = \"cpu\"\ndevices = [\"cpu\"]", "not both"),
        ("devices = []", "between 1 and 64"),
        ("devices = [\"cuda:0\", \"tpu\"]", "not a device"),
        (
            "devices = [\"cpu\", \"cpu\"]\ninstance_count = 200",
            "at most 256",
        ),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains("devices") && e.contains(why), "{bad}: {e}");
    }
    for bad in [
        "max_batch_size = 4\npreferred_batch_sizes = [8]",
        "preferred_batch_sizes = [0]",
        "max_queue_delay_us = 99999999999",
        "max_batch_size = 100000",
        "max_queue_size = 0",
    ] {
        let field = bad.lines().last().unwrap().split(' ').next().unwrap();
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
    let cfg = parse("preferred_batch_sizes = [64]").unwrap();
    let e = resolve_signature(&sig(), &cfg, Path::new("m"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("preferred_batch_sizes"), "{e}");
    let e = parse("[[input]]\nname = \"x\"\ndatatype = \"FP8\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("input[0].datatype"), "{e}");
    let cfg = parse("[[input]]\nname = \"nope\"").unwrap();
    let e = resolve_signature(&sig(), &cfg, Path::new("m"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("input[0].name") && e.contains("nope"), "{e}");
    let cfg = parse("[[output]]\nname = \"y\"\ndims = [5]").unwrap();
    let e = resolve_signature(&sig(), &cfg, Path::new("m"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("output[0].dims"), "{e}");
    let cfg = parse("[[output]]\nname = \"y\"\ndatatype = \"INT64\"").unwrap();
    assert!(resolve_signature(&sig(), &cfg, Path::new("m")).is_err());
}

#[test]
fn batching_defaults_on_for_batching_models() {
    let cfg = parse("").unwrap();
    assert!(cfg.batching(32));
    assert!(!cfg.batching(0));
    assert!(!cfg.batching(1));
    assert_eq!(cfg.max_queue_delay, std::time::Duration::ZERO);
    assert_eq!(cfg.timeout, None);
    let cfg = parse("dynamic_batching = false\ntimeout_us = 2500\nmax_queue_delay_us = 100\npreferred_batch_sizes = [4, 8]").unwrap();
    assert!(!cfg.batching(32));
    assert_eq!(cfg.timeout, Some(std::time::Duration::from_micros(2500)));
    assert_eq!(cfg.max_queue_delay, std::time::Duration::from_micros(100));
}

#[test]
fn version_policy_traffic_and_rollback() {
    use crate::model::Version;
    let on_disk: Vec<Version> = [1, 2, 5].map(Version).to_vec();
    let pick = |text: &str| -> Vec<u64> {
        parse(text)
            .unwrap()
            .version_policy
            .select(&on_disk)
            .iter()
            .map(|v| v.0)
            .collect()
    };
    assert_eq!(pick(""), [5]);
    assert_eq!(pick("version_policy = { latest = 2 }"), [2, 5]);
    assert_eq!(pick("version_policy = { latest = 9 }"), [1, 2, 5]);
    assert_eq!(pick("version_policy = { all = true }"), [1, 2, 5]);
    assert_eq!(pick("version_policy = { specific = [1, 5, 7] }"), [1, 5]);
    for bad in [
        "version_policy = { latest = 0 }",
        "version_policy = { latest = 1, all = true }",
        "version_policy = {}",
        "version_policy = { specific = [] }",
        "version_policy = { newest = 1 }",
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("version_policy") || e.contains("newest"),
            "{bad}: {e}"
        );
    }
    let cfg =
        parse("[traffic]\ncanary = 2\ncanary_percent = 12.5\n[rollback]\nmax_p99_ratio = 2.0\n")
            .unwrap();
    assert_eq!(cfg.traffic.as_ref().unwrap().canary_percent, Some(12.5));
    let rb = cfg.rollback.as_ref().unwrap();
    assert_eq!(
        (rb.min_requests, rb.window_secs, rb.max_p99_ratio),
        (100, 60, 2.0)
    );
    // Only traffic changed: the versions need no reload.
    let other = parse("[traffic]\ncanary = 3\n").unwrap();
    assert_eq!(cfg.for_versions(), other.for_versions());
    assert_ne!(
        cfg.for_versions(),
        parse("max_queue_size = 3").unwrap().for_versions()
    );
    for (bad, field) in [
        ("[traffic]\ncanary_percent = 101", "traffic.canary_percent"),
        ("[traffic]\nshadow_percent = -1", "traffic.shadow_percent"),
        ("[traffic]\nstable = 2\ncanary = 2", "traffic.canary"),
        ("[rollback]\nmin_requests = 0", "rollback.min_requests"),
        ("[rollback]\nmax_p99_ratio = 0.5", "rollback.max_p99_ratio"),
        (
            "[rollback]\nmax_error_rate_increase = 2",
            "rollback.max_error_rate_increase",
        ),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
    let json = ModelConfig::parse_override(
        r#"{"max_batch_size": 4, "traffic": {"canary": 2, "canary_percent": 5}}"#,
    )
    .unwrap();
    assert_eq!(json.max_batch_size, Some(4));
    assert_eq!(json.traffic.unwrap().canary, Some(2));
    assert!(ModelConfig::parse_override("max_batch_size = 4").is_ok());
    let e = ModelConfig::parse_override(r#"{"max_batch": 4}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_batch"), "{e}");
}

#[test]
fn fixed_first_dim_cannot_batch() {
    let mut s = sig();
    s.outputs[0].shape = vec![1, 4];
    let r = resolve_signature(&s, &parse("").unwrap(), Path::new("m")).unwrap();
    assert_eq!(r.max_batch_size, 0);
    assert!(resolve_signature(&s, &parse("max_batch_size = 4").unwrap(), Path::new("m")).is_err());
}

#[test]
fn instances_are_placed_per_device() {
    let cfg = parse("devices = [\"cuda:1\", \"cpu\"]\ninstance_count = 2").unwrap();
    assert_eq!(
        cfg.placements(),
        [Device::Cuda(1), Device::Cuda(1), Device::Cpu, Device::Cpu]
    );
    let cfg = parse("device = \"cuda\"").unwrap();
    assert_eq!(cfg.placements(), [Device::Cuda(0)]);
    assert!(!cfg.cpu_fallback);
    assert_eq!(ModelConfig::default().placements(), [Device::Cpu]);
    assert_eq!(parse("").unwrap(), ModelConfig::default());
}

#[test]
fn fields_are_typed_once_and_numbers_bounded() {
    let cfg = parse(
        "backend = \"candle\"\nfamily = \"mlp\"\ntimeout_us = 0\nintra_op_threads = 0\n[[input]]\nname = \"x\"\ndatatype = \"FP16\"\n",
    )
    .unwrap();
    assert_eq!(cfg.family, Some(crate::config::model::ModelFamily::Mlp));
    assert_eq!(cfg.model_filename, "model.safetensors");
    let ort =
        parse("backend = \"onnxruntime\"\nfamily = \"bert_embedding\"\ntruncate = false").unwrap();
    assert_eq!(
        ort.family,
        Some(crate::config::model::ModelFamily::BertEmbedding)
    );
    assert_eq!(
        (ort.model_filename.as_str(), ort.truncate),
        ("model.onnx", false)
    );
    assert_eq!(cfg.input[0].datatype, Some(DataType::Fp16));
    assert_eq!((cfg.timeout, cfg.intra_op_threads), (None, None));
    for (bad, field) in [
        ("backend = \"candle\"\nfamily = \"gpt\"", "family"),
        ("family = \"mlp\"", "family"),
        ("backend = \"onnxruntime\"\nfamily = \"mlp\"", "family"),
        ("backend = \"tract\"\nfamily = \"bert_embedding\"", "family"),
        ("family = \"bert_embedding\"", "family"),
        ("truncate = false", "max_sequence_length"),
        ("max_tokens_per_call = 512", "max_sequence_length"),
        (
            "instance_count = 18446744073709551615\ndevices = [\"cpu\", \"cpu\"]",
            "instance_count",
        ),
        ("intra_op_threads = 100000", "intra_op_threads"),
        ("max_queue_size = 99999999", "max_queue_size"),
        ("[[output]]\nname = \"y\"\ndims = [-2]", "output[0].dims"),
        ("max_batch_size = -1", "max_batch_size"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("m/config.toml") && e.contains(field),
            "{bad}: {e}"
        );
    }
}
