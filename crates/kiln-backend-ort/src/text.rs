//! The `bert_embedding` family on ONNX Runtime: texts in, the tokenizer in
//! Kiln (`kiln-text`), the encoder in the ONNX graph.
//!
//! The graph takes `input_ids` and `attention_mask` (and `token_type_ids`, if it
//! has that input: all 0) as INT64 or INT32 `[batch, seq]`. Its output is either
//! the sentence embedding already (`embedding` or `sentence_embedding`, FP32
//! `[batch, hidden]`, pooled as the graph does it), or the last hidden states
//! (`last_hidden_state` or `token_embeddings`, FP32 `[batch, seq, hidden]`),
//! which Kiln mean-pools over the real tokens and L2-normalises, as
//! sentence-transformers does. A graph with one output of either rank needs no
//! names. So both `scripts/minilm_onnx.py`'s graph and a plain Hugging Face
//! export serve.

use crate::{specs, Outlets, Sessions};
use kiln_core::backend::{Backend, BackendError};
use kiln_core::config::ModelConfig;
use kiln_core::{DataType, ModelSignature, Tensor, TensorSpec};
use kiln_text::{EncoderShape, TextEncoder};
use ort::session::SessionInputValue;
use ort::value::DynValue;
use std::borrow::Cow;
use std::path::Path;

const IDS: &str = "input_ids";
const MASK: &str = "attention_mask";
const TYPES: &str = "token_type_ids";
const POOLED: [&str; 2] = ["embedding", "sentence_embedding"];
const HIDDEN: [&str; 2] = ["last_hidden_state", "token_embeddings"];

/// How the graph's inputs and output are used.
#[derive(Debug, PartialEq)]
struct Plan {
    /// Each input in the graph's order: which of ids, mask or token types it
    /// takes, and as INT64 (true) or INT32.
    inputs: Vec<(String, Feed, bool)>,
    output: String,
    /// The output is the embedding already (else: hidden states to pool).
    pooled: bool,
    /// The output's last dimension, when the graph fixes it.
    hidden: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Feed {
    Ids,
    Mask,
    Types,
}

/// Checks the graph's signature against the family's and picks its output.
fn plan(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<Plan, String> {
    let mut fed = Vec::new();
    for i in inputs {
        let feed = match i.name.as_str() {
            IDS => Feed::Ids,
            MASK => Feed::Mask,
            TYPES => Feed::Types,
            other => {
                return Err(format!(
                "input '{other}': family = \"bert_embedding\" feeds only {IDS}, {MASK} and {TYPES}"
            ))
            }
        };
        let wide = match i.dtype {
            DataType::Int64 => true,
            DataType::Int32 => false,
            d => return Err(format!("input '{}' is {d}, not INT64 or INT32", i.name)),
        };
        if i.shape.len() != 2 {
            return Err(format!(
                "input '{}' has rank {}, not [batch, seq]",
                i.name,
                i.shape.len()
            ));
        }
        fed.push((i.name.clone(), feed, wide));
    }
    for needed in [IDS, MASK] {
        if !fed.iter().any(|(n, ..)| n == needed) {
            return Err(format!("the graph has no input '{needed}'"));
        }
    }
    let named = |names: [&str; 2]| outputs.iter().find(|o| names.contains(&o.name.as_str()));
    let (out, pooled) = match (named(POOLED), named(HIDDEN), outputs) {
        (Some(o), ..) => (o, true),
        (None, Some(o), _) => (o, false),
        (None, None, [o]) if o.shape.len() == 2 => (o, true),
        (None, None, [o]) if o.shape.len() == 3 => (o, false),
        _ => {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(format!(
                "no output to take the embedding from among {names:?}: name it {} ([batch, hidden]) or {} ([batch, seq, hidden])",
                POOLED.join(" or "),
                HIDDEN.join(" or ")
            ));
        }
    };
    let rank = if pooled { 2 } else { 3 };
    if out.dtype != DataType::Fp32 || out.shape.len() != rank {
        return Err(format!(
            "output '{}' is {} of rank {}; it must be FP32 of rank {rank}",
            out.name,
            out.dtype,
            out.shape.len()
        ));
    }
    Ok(Plan {
        inputs: fed,
        output: out.name.clone(),
        pooled,
        hidden: out
            .shape
            .last()
            .and_then(|&d| usize::try_from(d).ok())
            .filter(|&d| d > 0),
    })
}

/// A sentence-embedding model on ONNX Runtime.
pub(crate) struct TextEmbedding {
    sessions: Sessions,
    text: TextEncoder,
    plan: Plan,
    hidden: usize,
    /// Padded tokens per ONNX Runtime call ([`kiln_text::groups`]).
    group_tokens: usize,
    signature: ModelSignature,
}

impl TextEmbedding {
    /// The family around loaded sessions; `dir` holds `tokenizer.json` (and
    /// `config.json`, `sentence_bert_config.json` when the model has them).
    pub(crate) fn new(
        sessions: Sessions,
        dir: &Path,
        config: &ModelConfig,
        group_tokens: usize,
        inputs: &Outlets,
        outputs: &Outlets,
    ) -> Result<Self, String> {
        let plan = plan(&specs(inputs, "input")?, &specs(outputs, "output")?)?;
        let shape = EncoderShape::read(dir)?;
        let hidden = plan.hidden.or(shape.hidden_size).ok_or_else(|| {
            format!(
                "output '{}' does not fix the embedding's size and there is no config.json hidden_size",
                plan.output
            )
        })?;
        let text = TextEncoder::load(dir, config, shape.max_position_embeddings)?;
        Ok(TextEmbedding {
            sessions,
            text,
            plan,
            hidden,
            group_tokens,
            signature: kiln_text::embedding_signature(hidden),
        })
    }

    fn feed(
        &self,
        p: &kiln_text::Padded,
    ) -> Result<Vec<(Cow<'_, str>, SessionInputValue<'_>)>, BackendError> {
        let shape = [p.rows, p.len];
        let has_types = self.plan.inputs.iter().any(|(_, f, _)| *f == Feed::Types);
        let zeros = if has_types {
            vec![0u32; p.ids.len()]
        } else {
            Vec::new()
        };
        let mut values = Vec::with_capacity(self.plan.inputs.len());
        for (name, feed, wide) in &self.plan.inputs {
            let data: &[u32] = match feed {
                Feed::Ids => &p.ids,
                Feed::Mask => &p.mask,
                Feed::Types => &zeros,
            };
            let err = |e: ort::Error| BackendError::Run(format!("input '{name}': {e}"));
            // Token ids are below the vocabulary's size, far under i32::MAX.
            let value: DynValue = if *wide {
                let v: Vec<i64> = data.iter().map(|&x| i64::from(x)).collect();
                ort::value::Tensor::from_array((shape, v))
                    .map_err(err)?
                    .into_dyn()
            } else {
                let v: Vec<i32> = data.iter().map(|&x| x as i32).collect();
                ort::value::Tensor::from_array((shape, v))
                    .map_err(err)?
                    .into_dyn()
            };
            values.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        Ok(values)
    }

    /// One padded group through the graph: `hidden` floats per row.
    fn encode(&self, p: kiln_text::Padded) -> Result<Vec<f32>, BackendError> {
        let feed = self.feed(&p)?;
        let out = &self.plan.output;
        self.sessions.with_session(|s| {
            let mut outputs = s.run(feed).map_err(|e| BackendError::Run(e.to_string()))?;
            let value = outputs.remove(out.as_str()).ok_or_else(|| {
                BackendError::Run(format!("output '{out}' missing from ONNX Runtime's result"))
            })?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| BackendError::Run(format!("output '{out}': {e}")))?;
            let want: Vec<i64> = if self.plan.pooled {
                vec![p.rows as i64, self.hidden as i64]
            } else {
                vec![p.rows as i64, p.len as i64, self.hidden as i64]
            };
            if shape.iter().copied().ne(want.iter().copied()) {
                return Err(BackendError::Run(format!(
                    "output '{out}' has shape {shape:?}, expected {want:?}"
                )));
            }
            Ok(if self.plan.pooled {
                data.to_vec()
            } else {
                kiln_text::mean_pool_normalised(data, &p.mask, p.rows, p.len)
            })
        })
    }
}

impl Backend for TextEmbedding {
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
        let ids = self.text.encode(texts)?;
        let values =
            kiln_text::embed_grouped(&ids, self.hidden, self.group_tokens, |p| self.encode(p))?;
        Tensor::from_vec(vec![ids.len(), self.hidden], values)
            .map(|t| vec![t])
            .map_err(|e| BackendError::Run(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn the_graph_is_checked_and_its_output_picked() {
        let ids = spec(IDS, DataType::Int64, &[-1, -1]);
        let mask = spec(MASK, DataType::Int64, &[-1, -1]);
        let types = spec(TYPES, DataType::Int32, &[-1, -1]);
        let pooled = spec("embedding", DataType::Fp32, &[-1, 384]);
        let hidden = spec("last_hidden_state", DataType::Fp32, &[-1, -1, 384]);
        let other = spec("pooler_output", DataType::Fp32, &[-1, 384]);

        // scripts/minilm_onnx.py's graph: pooled in the graph.
        let p = plan(&[ids.clone(), mask.clone()], std::slice::from_ref(&pooled)).unwrap();
        assert_eq!(
            (p.output.as_str(), p.pooled, p.hidden),
            ("embedding", true, Some(384))
        );
        // A Hugging Face export: hidden states (named) beside BERT's pooler, and token types.
        let p = plan(
            &[ids.clone(), mask.clone(), types.clone()],
            &[hidden.clone(), other.clone()],
        )
        .unwrap();
        assert_eq!((p.output.as_str(), p.pooled), ("last_hidden_state", false));
        assert_eq!(p.inputs[2], (TYPES.to_string(), Feed::Types, false));
        // One unnamed output: its rank says which.
        let lone = spec("out", DataType::Fp32, &[-1, -1, -1]);
        let p = plan(&[mask.clone(), ids.clone()], std::slice::from_ref(&lone)).unwrap();
        assert_eq!((p.pooled, p.hidden), (false, None));
        assert_eq!(p.inputs[0].1, Feed::Mask);

        for (inputs, outputs, needle) in [
            (
                vec![ids.clone()],
                vec![pooled.clone()],
                "no input 'attention_mask'",
            ),
            (
                vec![
                    ids.clone(),
                    mask.clone(),
                    spec("pixel", DataType::Fp32, &[-1, 3]),
                ],
                vec![pooled.clone()],
                "input 'pixel'",
            ),
            (
                vec![spec(IDS, DataType::Fp32, &[-1, -1]), mask.clone()],
                vec![pooled.clone()],
                "not INT64 or INT32",
            ),
            (
                vec![ids.clone(), spec(MASK, DataType::Int64, &[-1])],
                vec![pooled.clone()],
                "rank 1",
            ),
            (
                vec![ids.clone(), mask.clone()],
                vec![other.clone(), lone.clone()],
                "pooler_output",
            ),
            (
                vec![ids.clone(), mask.clone()],
                vec![spec("embedding", DataType::Fp16, &[-1, 384])],
                "must be FP32 of rank 2",
            ),
        ] {
            let e = plan(&inputs, &outputs).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
