//! What every text-embedding backend shares, whichever runtime computes the
//! encoder (Candle builds it in Rust, ONNX Runtime runs a graph): UTF-8 texts in
//! (BYTES `[batch]`), the Hugging Face tokenizer from `tokenizer.json` with the
//! model's length limit, padding a batch to its longest text with an attention
//! mask, and sentence-transformers' mean pooling with L2 normalisation.

use kiln_core::backend::BackendError;
use kiln_core::config::ModelConfig;
use kiln_core::{DataType, ModelSignature, Tensor, TensorSpec};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// Input and output names of the `bert_embedding` family.
pub const TEXT_INPUT: &str = "text";
pub const EMBEDDING_OUTPUT: &str = "embedding";

/// Reads and parses a JSON file, the error naming it.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a Hugging Face `config.json` says about the encoder's size.
#[derive(Debug, Default, serde::Deserialize)]
pub struct EncoderShape {
    pub hidden_size: Option<usize>,
    pub max_position_embeddings: Option<usize>,
}

impl EncoderShape {
    /// `config.json` in `dir`, or nothing known when there is none.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join("config.json");
        if path.is_file() {
            read_json(&path)
        } else {
            Ok(Self::default())
        }
    }
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// The signature of a text-embedding model: texts in, `hidden` floats per text out.
pub fn embedding_signature(hidden: usize) -> ModelSignature {
    ModelSignature {
        inputs: vec![TensorSpec {
            name: TEXT_INPUT.into(),
            dtype: DataType::Bytes,
            shape: vec![-1],
        }],
        outputs: vec![TensorSpec {
            name: EMBEDDING_OUTPUT.into(),
            dtype: DataType::Fp32,
            shape: vec![-1, hidden as i64],
        }],
    }
}

/// The tokenizer of one model version, with its length limit.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_len: usize,
    truncate: bool,
}

impl TextEncoder {
    /// `tokenizer.json` from `dir`. The length limit is the config's
    /// `max_sequence_length`, else sentence-transformers' `max_seq_length`
    /// (`sentence_bert_config.json`), else the position embeddings; never more
    /// than the position embeddings (`positions`, when known).
    pub fn load(
        dir: &Path,
        config: &ModelConfig,
        positions: Option<usize>,
    ) -> Result<Self, String> {
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| format!("cannot read {}: {e}", tok_path.display()))?;
        let st_path = dir.join("sentence_bert_config.json");
        let own = if st_path.is_file() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
        } else {
            None
        };
        let max_len = config
            .max_sequence_length
            .or(own)
            .or(positions)
            .ok_or_else(|| {
                format!(
                    "no length limit for texts: set max_sequence_length, or give {} max_seq_length or config.json max_position_embeddings",
                    st_path.display()
                )
            })?
            .min(positions.unwrap_or(usize::MAX));
        let truncate = config.truncate;
        // Padding happens per batch, to its longest text, with a real attention mask.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(truncate.then(|| TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        Ok(TextEncoder {
            tokenizer,
            max_len,
            truncate,
        })
    }

    /// Tokens per text, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of each text (special tokens included). Text that is not UTF-8,
    /// or too long when truncation is off, is the client's error.
    pub fn encode(&self, texts: &Tensor) -> Result<Vec<Vec<u32>>, BackendError> {
        let elements = texts
            .byte_elements()
            .map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        let mut ids = Vec::with_capacity(elements.len());
        for (i, raw) in elements.iter().enumerate() {
            let text = std::str::from_utf8(raw).map_err(|e| {
                BackendError::InvalidInput(format!(
                    "input '{TEXT_INPUT}' element {i} is not UTF-8 text ({e})"
                ))
            })?;
            let enc = self
                .tokenizer
                .encode(text, true)
                .map_err(|e| BackendError::Run(format!("tokenizer: {e}")))?;
            if !self.truncate && enc.len() > self.max_len {
                return Err(BackendError::InvalidInput(format!(
                    "input '{TEXT_INPUT}' element {i} has {} tokens, over the model's limit of {} (truncate = false)",
                    enc.len(),
                    self.max_len
                )));
            }
            ids.push(enc.get_ids().to_vec());
        }
        Ok(ids)
    }

    /// Tokens of the longest text, estimated without tokenising: WordPiece makes
    /// at most one token per byte, plus [CLS] and [SEP]; capped at the limit.
    pub fn row_cost(&self, inputs: &[Tensor]) -> Option<usize> {
        let longest = inputs
            .first()?
            .byte_elements()
            .ok()?
            .iter()
            .map(|t| t.len())
            .max()
            .unwrap_or(0);
        Some((longest + 2).min(self.max_len))
    }
}

/// A batch of token ids padded to its longest row, row-major `[rows, len]`.
#[derive(Debug, PartialEq)]
pub struct Padded {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    /// 1 for a real token, 0 for padding.
    pub mask: Vec<u32>,
}

/// Pads `rows` with 0 (BERT's [PAD]) to the longest one.
pub fn pad(rows: &[&[u32]]) -> Padded {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut flat = vec![0u32; rows.len() * len];
    let mut mask = vec![0u32; rows.len() * len];
    for (row, seq) in rows.iter().enumerate() {
        flat[row * len..row * len + seq.len()].copy_from_slice(seq);
        mask[row * len..row * len + seq.len()].fill(1);
    }
    Padded {
        rows: rows.len(),
        len,
        ids: flat,
        mask,
    }
}

/// Padded tokens one encoder call takes on the CPU: batches of 4 to 16 texts of
/// 128 tokens run fastest there (in-process MiniLM on ONNX Runtime, benches/README.md
/// "MiniLM"); a bigger call only spills the activations out of the caches.
pub const CPU_GROUP_TOKENS: usize = 2048;

/// The group budget of a model on `device`: the config's `max_tokens_per_call`
/// (0: the whole batch), else [`CPU_GROUP_TOKENS`] on the CPU and the whole
/// batch (sorted) on a GPU, which wants large calls.
pub fn group_tokens(config: &ModelConfig, device: kiln_core::Device) -> usize {
    match (config.max_tokens_per_call, device) {
        (Some(0), _) => usize::MAX,
        (Some(n), _) => n,
        (None, kiln_core::Device::Cpu) => CPU_GROUP_TOKENS,
        (None, kiln_core::Device::Cuda(_)) => usize::MAX,
    }
}

/// The rows of a batch in the groups the encoder runs them in: sorted by length,
/// so that texts of like length are padded together, and cut so that each group's
/// rows × longest row stays within `budget` padded tokens (a row longer than the
/// budget runs alone). Each group lists indices into `ids`.
pub fn groups(ids: &[Vec<u32>], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out: Vec<Vec<usize>> = Vec::new();
    for i in order {
        // Sorted ascending: the row joining a group is its longest.
        let fits = out
            .last()
            .is_some_and(|g| (g.len() + 1) * ids[i].len().max(1) <= budget);
        match out.last_mut() {
            Some(g) if fits => g.push(i),
            _ => out.push(vec![i]),
        }
    }
    out
}

/// Embeds every row of `ids`, group by group ([`groups`]), with `encode` turning
/// one padded group into `hidden` floats per row; the result is in `ids`' order.
pub fn embed_grouped(
    ids: &[Vec<u32>],
    hidden: usize,
    budget: usize,
    mut encode: impl FnMut(Padded) -> Result<Vec<f32>, BackendError>,
) -> Result<Vec<f32>, BackendError> {
    let mut out = vec![0f32; ids.len() * hidden];
    for group in groups(ids, budget) {
        let rows: Vec<&[u32]> = group.iter().map(|&i| ids[i].as_slice()).collect();
        let values = encode(pad(&rows))?;
        if values.len() != group.len() * hidden {
            return Err(BackendError::Run(format!(
                "the encoder gave {} values for {} rows of {hidden}",
                values.len(),
                group.len()
            )));
        }
        for (k, &i) in group.iter().enumerate() {
            out[i * hidden..(i + 1) * hidden]
                .copy_from_slice(&values[k * hidden..(k + 1) * hidden]);
        }
    }
    Ok(out)
}

/// Sentence-transformers' pooling: the mean of each row's hidden states over its
/// real tokens, then L2-normalised (a norm below 1e-12 counts as 1e-12).
/// `hidden` is `[rows, len, dim]` row-major, `mask` `[rows, len]`.
pub fn mean_pool_normalised(hidden: &[f32], mask: &[u32], rows: usize, len: usize) -> Vec<f32> {
    let dim = hidden.len().checked_div(rows * len).unwrap_or(0);
    let mut out = vec![0f32; rows * dim];
    for r in 0..rows {
        let acc = &mut out[r * dim..(r + 1) * dim];
        let mut count = 0f32;
        for t in 0..len {
            if mask[r * len + t] == 0 {
                continue;
            }
            count += 1.0;
            let h = &hidden[(r * len + t) * dim..(r * len + t + 1) * dim];
            acc.iter_mut().zip(h).for_each(|(a, h)| *a += h);
        }
        let count = count.max(1.0);
        acc.iter_mut().for_each(|a| *a /= count);
        let norm = acc.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        acc.iter_mut().for_each(|a| *a /= norm);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fills_to_the_longest_row_with_a_mask() {
        let p = pad(&[&[101, 7, 102], &[101, 102]]);
        assert_eq!((p.rows, p.len), (2, 3));
        assert_eq!(p.ids, [101, 7, 102, 101, 102, 0]);
        assert_eq!(p.mask, [1, 1, 1, 1, 1, 0]);
        let empty = pad(&[]);
        assert_eq!((empty.rows, empty.len, empty.ids.len()), (0, 0, 0));
    }

    #[test]
    fn rows_are_grouped_by_length_within_the_budget_and_answered_in_order() {
        let ids: Vec<Vec<u32>> = [5, 2, 9, 2, 3, 20]
            .iter()
            .map(|&n| vec![n; n as usize])
            .collect();
        // Sorted: 2, 2, 3, 5, 9, 20. Budget 10: [2, 2, 3] (3 x 3 = 9), [5] (2 x 9 > 10), [9], [20] alone.
        assert_eq!(
            groups(&ids, 10),
            vec![vec![1, 3, 4], vec![0], vec![2], vec![5]]
        );
        assert_eq!(groups(&ids, 1000).len(), 1);
        assert!(groups(&[], 10).is_empty());
        // Each row's "embedding" is its length, padded width and group size: the
        // result comes back in the rows' order, each group padded to its own longest.
        let out = embed_grouped(&ids, 2, 10, |p: Padded| {
            let mut v = Vec::new();
            for r in 0..p.rows {
                let real = p.mask[r * p.len..(r + 1) * p.len].iter().sum::<u32>();
                v.extend([real as f32, p.len as f32]);
            }
            Ok(v)
        })
        .unwrap();
        assert_eq!(out, [5., 5., 2., 3., 9., 9., 2., 3., 3., 3., 20., 20.]);
        let e = embed_grouped(&ids, 2, 10, |_| Ok(vec![0.0])).unwrap_err();
        assert_eq!(e.to_string(), "the encoder gave 1 values for 3 rows of 2");
    }

    #[test]
    fn the_group_budget_is_the_configs_else_the_devices() {
        let cfg = |extra: &str| {
            let text = format!("backend = \"onnxruntime\"\nfamily = \"bert_embedding\"\n{extra}");
            ModelConfig::parse(&text, Path::new("config.toml")).unwrap()
        };
        let (cpu, gpu) = (kiln_core::Device::Cpu, kiln_core::Device::Cuda(0));
        assert_eq!(group_tokens(&cfg(""), cpu), CPU_GROUP_TOKENS);
        assert_eq!(group_tokens(&cfg(""), gpu), usize::MAX);
        assert_eq!(group_tokens(&cfg("max_tokens_per_call = 512"), gpu), 512);
        assert_eq!(
            group_tokens(&cfg("max_tokens_per_call = 0"), cpu),
            usize::MAX
        );
    }

    #[test]
    fn pooling_averages_real_tokens_only_and_normalises() {
        // Two rows of two tokens, dim 2; row 1's second token is padding.
        let hidden = [3.0, 0.0, 1.0, 4.0, 0.0, 5.0, 100.0, 100.0];
        let out = mean_pool_normalised(&hidden, &[1, 1, 1, 0], 2, 2);
        // Row 0: mean (2, 2) -> (0.7071, 0.7071); row 1: (0, 5) -> (0, 1).
        let want = [0.5f32.sqrt(), 0.5f32.sqrt(), 0.0, 1.0];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{out:?}");
        }
        // A zero vector stays zero instead of dividing by zero.
        assert_eq!(mean_pool_normalised(&[0.0, 0.0], &[1], 1, 1), [0.0, 0.0]);
        assert!(mean_pool_normalised(&[], &[], 0, 0).is_empty());
    }

    #[test]
    fn the_length_limit_comes_from_config_then_model_and_never_passes_positions() {
        let dir = tempfile::tempdir().unwrap();
        // A word-level tokenizer is enough to check the limits.
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
                "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
                "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1},"unk_token":"[UNK]"}}"#,
        )
        .unwrap();
        let cfg = |text: &str| ModelConfig::parse(text, Path::new("config.toml")).unwrap();
        let ort = "backend = \"onnxruntime\"\nfamily = \"bert_embedding\"\n";
        let e = TextEncoder::load(dir.path(), &cfg(ort), None)
            .err()
            .unwrap();
        assert!(e.contains("max_sequence_length"), "{e}");
        assert_eq!(
            TextEncoder::load(dir.path(), &cfg(ort), Some(512))
                .unwrap()
                .max_len(),
            512
        );
        std::fs::write(
            dir.path().join("sentence_bert_config.json"),
            r#"{"max_seq_length": 4}"#,
        )
        .unwrap();
        let enc = TextEncoder::load(dir.path(), &cfg(ort), Some(512)).unwrap();
        assert_eq!(enc.max_len(), 4);
        let texts =
            Tensor::from_byte_elements(vec![2], &[b"a a a a a a".as_slice(), b"a"]).unwrap();
        let ids = enc.encode(&texts).unwrap();
        assert_eq!((ids[0].len(), ids[1].len()), (4, 1)); // truncated by default
        assert_eq!(enc.row_cost(std::slice::from_ref(&texts)), Some(4));
        let long = format!("{ort}max_sequence_length = 1000\ntruncate = false\n");
        let strict = TextEncoder::load(dir.path(), &cfg(&long), Some(8)).unwrap();
        assert_eq!(strict.max_len(), 8);
        let nine = Tensor::from_byte_elements(vec![1], &[b"a a a a a a a a a".as_slice()]).unwrap();
        let e = strict.encode(&nine).unwrap_err();
        assert!(
            matches!(e, BackendError::InvalidInput(_)) && e.to_string().contains("limit of 8"),
            "{e}"
        );
        let bad = Tensor::from_byte_elements(vec![2], &[b"a".as_slice(), b"\xff"]).unwrap();
        let e = strict.encode(&bad).unwrap_err().to_string();
        assert!(e.contains("element 1 is not UTF-8"), "{e}");
    }
}
