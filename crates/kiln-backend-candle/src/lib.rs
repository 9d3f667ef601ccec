//! Candle backend: safetensors weights run by model families written in Rust.
//!
//! - `bert_embedding`: a BERT encoder (`candle-transformers`) with the Hugging Face
//!   tokenizer from `tokenizer.json`: UTF-8 texts in (BYTES `[batch]`), mean-pooled
//!   and L2-normalised sentence embeddings out (FP32 `[batch, hidden]`), as
//!   sentence-transformers computes them.
//! - `mlp`: a plain multilayer perceptron whose layer sizes come from `config.json`.
//!
//! Each version folder holds `model.safetensors` and `config.json` (plus
//! `tokenizer.json` for text models).

use candle_core::{DType, Device, Tensor as CTensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use kiln_core::backend::{Backend, BackendError, BackendFactory, LoadRequest};
use kiln_core::config::ModelFamily;
use kiln_core::{DataType, ModelSignature, Tensor, TensorSpec};
use kiln_text::{read_json, TextEncoder};
use std::path::Path;

const NAME: &str = "candle";

/// Loads safetensors model families with Candle (CPU).
#[derive(Default)]
pub struct CandleFactory;

impl BackendFactory for CandleFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> &'static str {
        "candle"
    }

    fn availability(&self) -> Result<(), String> {
        Ok(())
    }

    fn load(&self, req: &LoadRequest<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let err = |message: String| BackendError::Load {
            backend: NAME,
            path: req.path.to_path_buf(),
            message,
        };
        match req.config.family {
            Some(ModelFamily::BertEmbedding) => {
                Ok(Box::new(BertEmbedding::load(req).map_err(err)?))
            }
            Some(ModelFamily::Mlp) => Ok(Box::new(Mlp::load(req).map_err(err)?)),
            None => Err(err("backend = \"candle\" needs a family".into())),
        }
    }
}

/// A Candle error's message without the backtrace Candle attaches when
/// `RUST_BACKTRACE` is set: clients and the repository index get the message only.
fn plain(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain(inner),
        e => e.to_string(),
    }
}

/// Candle's device for a model's `device` setting. CUDA needs the `cuda` cargo
/// feature (CUDA toolkit with nvcc at build time); without it a GPU placement is
/// a clear load error, never a silent CPU run.
fn candle_device(d: kiln_core::Device) -> Result<Device, String> {
    match d {
        kiln_core::Device::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        kiln_core::Device::Cuda(n) => Device::new_cuda(n as usize).map_err(|e| {
            format!(
                "device = \"cuda:{n}\": Candle cannot open the GPU: {}",
                plain(&e)
            )
        }),
        #[cfg(not(feature = "cuda"))]
        kiln_core::Device::Cuda(n) => Err(format!(
            "device = \"cuda:{n}\": this build of Kiln has no CUDA support in Candle \
             (build it with `cargo build --release --features cuda`)"
        )),
    }
}

fn weights(path: &Path, device: &Device) -> Result<VarBuilder<'static>, String> {
    // Read into memory rather than mmap: the file may be replaced while serving.
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    VarBuilder::from_buffered_safetensors(data, DType::F32, device)
        .map_err(|e| format!("{}: {}", path.display(), plain(&e)))
}

fn run_err(e: candle_core::Error) -> BackendError {
    BackendError::Run(plain(&e))
}

/// BERT sentence embeddings.
struct BertEmbedding {
    model: BertModel,
    text: TextEncoder,
    /// Padded tokens per forward pass ([`kiln_text::groups`]).
    group_tokens: usize,
    signature: ModelSignature,
    device: Device,
}

impl BertEmbedding {
    fn load(req: &LoadRequest<'_>) -> Result<Self, String> {
        let dir = req.path.parent().unwrap_or(Path::new("."));
        let device = candle_device(req.device)?;
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let model = BertModel::load(weights(req.path, &device)?, &config).map_err(|e| {
            format!(
                "cannot build BERT from {}: {}",
                req.path.display(),
                plain(&e)
            )
        })?;
        let text = TextEncoder::load(dir, req.config, Some(config.max_position_embeddings))?;
        Ok(BertEmbedding {
            model,
            text,
            group_tokens: kiln_text::group_tokens(req.config, req.device),
            signature: kiln_text::embedding_signature(config.hidden_size),
            device,
        })
    }

    /// One padded group: mean pooling over real tokens, then L2 normalisation.
    fn embed(&self, p: kiln_text::Padded) -> Result<Vec<f32>, candle_core::Error> {
        let input_ids = CTensor::from_vec(p.ids, (p.rows, p.len), &self.device)?;
        let mask = CTensor::from_vec(p.mask, (p.rows, p.len), &self.device)?;
        let type_ids = input_ids.zeros_like()?;
        let hidden = self.model.forward(&input_ids, &type_ids, Some(&mask))?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        mean.broadcast_div(&norm)?.flatten_all()?.to_vec1::<f32>()
    }
}

impl Backend for BertEmbedding {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn row_cost(&self, inputs: &[Tensor]) -> Option<usize> {
        self.text.row_cost(inputs)
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let texts = inputs
            .first()
            .ok_or_else(|| BackendError::Run("no input".into()))?;
        let hidden = self.signature.outputs[0].shape[1] as usize;
        let ids = self.text.encode(texts)?;
        let values = kiln_text::embed_grouped(&ids, hidden, self.group_tokens, |p| {
            self.embed(p).map_err(run_err)
        })?;
        Tensor::from_vec(vec![ids.len(), hidden], values)
            .map(|t| vec![t])
            .map_err(|e| BackendError::Run(e.to_string()))
    }
}

/// A multilayer perceptron: `config.json` says `{"sizes": [in, hidden..., out],
/// "activation": "relu" | "tanh" | "gelu" | "none"}`; weights are
/// `layers.{i}.weight` `[out, in]` and `layers.{i}.bias` `[out]`; no activation
/// after the last layer.
struct Mlp {
    layers: Vec<Linear>,
    activation: Activation,
    signature: ModelSignature,
    device: Device,
}

#[derive(serde::Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Activation {
    Relu,
    Tanh,
    Gelu,
    None,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpConfig {
    sizes: Vec<usize>,
    #[serde(default = "relu")]
    activation: Activation,
}

fn relu() -> Activation {
    Activation::Relu
}

impl Mlp {
    fn load(req: &LoadRequest<'_>) -> Result<Self, String> {
        let dir = req.path.parent().unwrap_or(Path::new("."));
        let cfg: MlpConfig = read_json(&dir.join("config.json"))?;
        if cfg.sizes.len() < 2 || cfg.sizes.contains(&0) || cfg.sizes.iter().any(|&s| s > 1 << 20) {
            return Err(format!(
                "config.json: sizes {:?} must list at least an input and an output size, each 1 to 1048576",
                cfg.sizes
            ));
        }
        let device = candle_device(req.device)?;
        let vb = weights(req.path, &device)?;
        let mut layers = Vec::new();
        for (i, pair) in cfg.sizes.windows(2).enumerate() {
            let l = candle_nn::linear(pair[0], pair[1], vb.pp(format!("layers.{i}")))
                .map_err(|e| format!("layer {i} ({} -> {}): {}", pair[0], pair[1], plain(&e)))?;
            layers.push(l);
        }
        let spec = |name: &str, n: usize| TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            shape: vec![-1, n as i64],
        };
        Ok(Mlp {
            layers,
            activation: cfg.activation,
            signature: ModelSignature {
                inputs: vec![spec("INPUT0", cfg.sizes[0])],
                outputs: vec![spec("OUTPUT0", cfg.sizes[cfg.sizes.len() - 1])],
            },
            device,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Vec<f32>, candle_core::Error> {
        let shape = x.shape();
        let values = x
            .to_vec::<f32>()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut h = CTensor::from_vec(values, (shape[0], shape[1]), &self.device)?;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = match self.activation {
                    Activation::Relu => h.relu()?,
                    Activation::Tanh => h.tanh()?,
                    Activation::Gelu => h.gelu_erf()?,
                    Activation::None => h,
                };
            }
        }
        h.flatten_all()?.to_vec1::<f32>()
    }
}

impl Backend for Mlp {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let x = inputs
            .first()
            .ok_or_else(|| BackendError::Run("no input".into()))?;
        let rows = x.shape().first().copied().unwrap_or(0);
        let out = self.signature.outputs[0].shape[1] as usize;
        let values = if rows == 0 {
            Vec::new()
        } else {
            self.forward(x).map_err(run_err)?
        };
        Tensor::from_vec(vec![rows, out], values)
            .map(|t| vec![t])
            .map_err(|e| BackendError::Run(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn candle_errors_lose_their_backtraces() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("no device".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(e.to_string().len() > "no device".len());
        assert_eq!(super::plain(&e), "no device");
        assert_eq!(super::plain(&candle_core::Error::Msg("x".into())), "x");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_placement_without_the_cuda_feature_is_a_clear_error() {
        assert!(matches!(
            super::candle_device(kiln_core::Device::Cpu),
            Ok(candle_core::Device::Cpu)
        ));
        let e = super::candle_device(kiln_core::Device::Cuda(1)).unwrap_err();
        assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
    }

    use super::*;
    use kiln_core::config::ModelConfig;
    use kiln_core::Version;
    use std::collections::HashMap;

    /// A Candle config of `family`; a family the config refuses is the load's error.
    fn cfg(family: &str) -> Result<ModelConfig, String> {
        let text = format!("backend = \"candle\"\nfamily = \"{family}\"\n");
        ModelConfig::parse(&text, Path::new("config.toml")).map_err(|e| e.to_string())
    }

    fn load(dir: &Path, c: &Result<ModelConfig, String>) -> Result<Box<dyn Backend>, String> {
        let c = c.as_ref().map_err(Clone::clone)?;
        CandleFactory
            .load(&LoadRequest {
                model_name: "m",
                version: Version(1),
                path: &dir.join("model.safetensors"),
                config: c,
                device: c.devices[0],
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mlp_computes_its_layers() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut w = HashMap::new();
        // 2 -> 2 (relu) -> 1: weights chosen so the result is easy to check by hand.
        w.insert(
            "layers.0.weight".to_string(),
            CTensor::new(&[[1f32, 0.], [0., -1.]], &dev).unwrap(),
        );
        w.insert(
            "layers.0.bias".to_string(),
            CTensor::new(&[0f32, 0.], &dev).unwrap(),
        );
        w.insert(
            "layers.1.weight".to_string(),
            CTensor::new(&[[2f32, 3.]], &dev).unwrap(),
        );
        w.insert(
            "layers.1.bias".to_string(),
            CTensor::new(&[1f32], &dev).unwrap(),
        );
        candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"sizes": [2, 2, 1]}"#).unwrap();
        let b = load(dir.path(), &cfg("mlp")).unwrap();
        assert_eq!(b.signature().inputs[0].shape, vec![-1, 2]);
        let x = Tensor::from_vec(vec![2, 2], vec![1f32, 1., 2., -3.]).unwrap();
        let y = b.run(vec![x]).unwrap();
        // Row 1: relu([1, -1]) = [1, 0] -> 2 + 1 = 3. Row 2: relu([2, 3]) -> 4 + 9 + 1 = 14.
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![3.0, 14.0]);
        let empty = Tensor::from_vec(vec![0, 2], Vec::<f32>::new()).unwrap();
        assert_eq!(b.run(vec![empty]).unwrap()[0].shape(), &[0, 1]);

        // Sizes that do not match the weights, a bad family, a missing file.
        std::fs::write(dir.path().join("config.json"), r#"{"sizes": [3, 2, 1]}"#).unwrap();
        let e = load(dir.path(), &cfg("mlp")).err().unwrap().to_string();
        assert!(e.contains("layer 0"), "{e}");
        std::fs::write(dir.path().join("config.json"), r#"{"sizes": [2]}"#).unwrap();
        assert!(load(dir.path(), &cfg("mlp")).is_err());
        let e = load(dir.path(), &cfg("gpt")).err().unwrap().to_string();
        assert!(e.contains("unknown family"), "{e}");
        let e = load(dir.path(), &cfg("bert_embedding"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
