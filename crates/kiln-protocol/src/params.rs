//! Request parameters both protocols carry, read once: Triton's `timeout`, Kiln's
//! `routing_key`, the refused `classification` extension on outputs, and a
//! repository load's `config` (with `file:` parameters refused).

use kiln_core::config::ModelConfig;
use kiln_core::error::quote;
use kiln_core::KilnError;
use std::fmt;
use std::time::Duration;

/// Request parameter carrying a routing key (REST `parameters`, gRPC `parameters`).
pub const ROUTING_KEY_PARAMETER: &str = "routing_key";

/// A parameter's value as a front end found it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Anything else (a JSON array or object), as its text.
    Other(String),
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Param::Null => f.write_str("null"),
            Param::Bool(b) => write!(f, "{b}"),
            Param::Int(n) => write!(f, "{n}"),
            Param::Uint(n) => write!(f, "{n}"),
            Param::Double(x) => write!(f, "{x}"),
            Param::Str(s) => write!(f, "\"{}\"", quote(s)),
            Param::Bytes(b) => write!(f, "{} bytes", b.len()),
            Param::Other(text) => f.write_str(&quote(text)),
        }
    }
}

/// What an inference request's parameters ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InferParams {
    /// Triton's `timeout` (microseconds; 0 or absent: none).
    pub timeout: Option<Duration>,
    /// Makes the canary draw sticky.
    pub routing_key: Option<String>,
}

/// Reads an inference request's parameters; `get` looks one up by name.
pub fn infer_params(get: impl Fn(&str) -> Option<Param>) -> Result<InferParams, KilnError> {
    let timeout = match get("timeout") {
        None | Some(Param::Int(0)) | Some(Param::Uint(0)) => None,
        Some(Param::Int(us)) if us > 0 => Some(Duration::from_micros(us.unsigned_abs())),
        Some(Param::Uint(us)) => Some(Duration::from_micros(us)),
        Some(other) => {
            return Err(KilnError::invalid(format!(
                "request parameter 'timeout' must be a non-negative integer of microseconds, got {other}"
            )))
        }
    };
    let key = ROUTING_KEY_PARAMETER;
    let routing_key = match get(key) {
        None | Some(Param::Null) => None,
        Some(Param::Str(s)) => Some(s).filter(|s| !s.is_empty()),
        Some(Param::Int(n)) => Some(n.to_string()),
        Some(Param::Uint(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(KilnError::invalid(format!(
                "request parameter '{key}' must be a string, got {other}"
            )))
        }
    };
    Ok(InferParams {
        timeout,
        routing_key,
    })
}

/// Refuses what Kiln does not implement on a requested output.
pub fn check_output(output: &str, has_parameter: impl Fn(&str) -> bool) -> Result<(), KilnError> {
    if has_parameter("classification") {
        return Err(KilnError::invalid(format!(
            "output '{output}': the classification extension is not supported"
        )));
    }
    Ok(())
}

/// A boolean parameter (`what` names where it was, for the message).
pub fn bool_param(value: Option<Param>, key: &str, what: &str) -> Result<Option<bool>, KilnError> {
    match value {
        None => Ok(None),
        Some(Param::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(KilnError::invalid(format!(
            "{what} parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

/// A repository load's parameters: `config` (Kiln's config keys as JSON or
/// TOML) replaces `config.toml` for this load; `file:` parameters are refused.
pub fn load_config<'a>(
    mut names: impl Iterator<Item = &'a str>,
    config: Option<Param>,
) -> Result<Option<ModelConfig>, KilnError> {
    if let Some(k) = names.find(|k| k.starts_with("file:")) {
        return Err(KilnError::invalid(format!(
            "parameter '{}': loading model files through the API is not supported; place them in the repository",
            quote(k)
        )));
    }
    let text = match config {
        None | Some(Param::Null) => return Ok(None),
        Some(Param::Str(text)) | Some(Param::Other(text)) => text,
        Some(Param::Bytes(b)) => String::from_utf8(b)
            .map_err(|_| KilnError::invalid("parameter 'config' is not UTF-8"))?,
        Some(_) => {
            return Err(KilnError::invalid(
                "parameter 'config' must be a string (or a JSON object)",
            ))
        }
    };
    ModelConfig::parse_override(&text)
        .map(Some)
        .map_err(|e| KilnError::invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::ErrorKind;

    fn params<'a>(list: &'a [(&'a str, Param)]) -> impl Fn(&str) -> Option<Param> + 'a {
        move |k| list.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn timeouts_and_routing_keys() {
        let p = infer_params(params(&[
            ("timeout", Param::Int(2500)),
            ("routing_key", Param::Uint(7)),
        ]))
        .unwrap();
        assert_eq!(p.timeout, Some(Duration::from_micros(2500)));
        assert_eq!(p.routing_key.as_deref(), Some("7"));
        let none = infer_params(params(&[
            ("timeout", Param::Uint(0)),
            ("routing_key", Param::Str(String::new())),
        ]))
        .unwrap();
        assert_eq!(none, InferParams::default());
        for (k, bad) in [
            ("timeout", Param::Int(-1)),
            ("timeout", Param::Str("5".into())),
            ("timeout", Param::Double(1.5)),
            ("routing_key", Param::Bool(true)),
        ] {
            let e = infer_params(params(&[(k, bad.clone())])).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert!(
                e.message.contains(k) && e.message.contains(&bad.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn refused_extensions_and_load_parameters() {
        assert!(check_output("y", |k| k == "classification").is_err());
        assert!(check_output("y", |k| k == "binary_data").is_ok());
        let e = load_config(["file:1/model.onnx"].into_iter(), None).unwrap_err();
        assert!(e.message.contains("file:1/model.onnx"), "{e}");
        assert_eq!(load_config([].into_iter(), None).unwrap(), None);
        let cfg = load_config(
            ["config"].into_iter(),
            Some(Param::Str("max_batch_size = 3".into())),
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.max_batch_size, Some(3));
        for bad in [
            Param::Int(7),
            Param::Bytes(vec![0xff]),
            Param::Str(r#"{"max_batch": 2}"#.into()),
        ] {
            let e = load_config([].into_iter(), Some(bad)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
        }
        assert_eq!(
            bool_param(Some(Param::Int(1)), "binary_data", "output 'y'")
                .unwrap_err()
                .message,
            "output 'y' parameter 'binary_data' must be a boolean, got 1"
        );
    }
}
