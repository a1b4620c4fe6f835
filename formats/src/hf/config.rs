//! `config.json` of a Hugging Face BitNet-family checkpoint.
//!
//! Parsed through `serde_json::Value`, not a derive struct: real configs repeat keys
//! (HF1BitLLM's `quantization_config` appears twice; Python keeps the last, and so does
//! serde_json's map), spell the same thing two ways (`rope_theta` or `rope_parameters.rope_theta`,
//! `torch_dtype` or `dtype`), and carry many keys tern does not need.

use crate::error::{FormatError, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig {
    pub quant_method: String,
    /// `autobitlinear` (multiply by weight_scale) or `bitlinear`/absent (divide).
    pub linear_class: Option<String>,
    /// `online` (float master weights) or `offline` (packed).
    pub quantization_mode: Option<String>,
    pub modules_to_not_convert: Vec<String>,
    pub use_rms_norm: bool,
}

#[derive(Debug, Clone)]
pub struct HfConfig {
    pub path: PathBuf,
    pub architectures: Vec<String>,
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub hidden_act: String,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// None when the config does not say; the checkpoint's tensors then decide.
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` or `dtype`, as written.
    pub dtype: Option<String>,
    pub quantization: Option<QuantizationConfig>,
    pub raw: Value,
}

struct Reader<'a> {
    path: &'a Path,
    root: &'a Value,
}

impl Reader<'_> {
    fn err(&self, msg: String) -> FormatError {
        FormatError::corrupt(self.path, msg)
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.root.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(format!("'{key}' must be a non-negative integer, found {v}"))),
        }
    }

    /// A required size that must not be zero (a zero dimension means an empty model).
    fn positive(&self, key: &str) -> Result<usize> {
        match self.usize_req(key)? {
            0 => Err(self.err(format!("{key} is 0; it must be positive"))),
            v => Ok(v),
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.err(format!("missing required key '{key}'")))
    }

    fn f64_opt(&self, v: Option<&Value>, key: &str) -> Result<Option<f64>> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| self.err(format!("'{key}' must be a number, found {v}")))
            }
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<String>> {
        match self.root.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(format!("'{key}' must be a string, found {v}"))),
        }
    }

    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || self.err(format!("'{key}' must be a token id or a list of them"));
        match self.root.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)).collect()
            }
            Some(v) => Ok(vec![v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)?]),
        }
    }
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<HfConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<HfConfig> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| FormatError::corrupt(path, format!("not valid JSON: {e}")))?;
        if !root.is_object() {
            return Err(FormatError::corrupt(path, "config.json must hold a JSON object"));
        }
        let r = Reader { path, root: &root };
        let architectures = match root.get("architectures") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            _ => vec![],
        };
        let model_type = r.str_opt("model_type")?.unwrap_or_default();
        let hidden_size = r.usize_req("hidden_size")?;
        let num_attention_heads = r.usize_req("num_attention_heads")?;
        let num_key_value_heads = r.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if hidden_size == 0 || num_attention_heads == 0 || num_key_value_heads == 0 {
            return Err(r.err("hidden_size and the head counts must be positive".into()));
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(r.err(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        let head_dim = match r.usize_opt("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(r.err(format!(
                    "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} and no head_dim is given"
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(r.err(format!("head_dim {head_dim} must be positive and even (RoPE rotates pairs)")));
        }
        let rope_theta = match r.f64_opt(root.get("rope_theta"), "rope_theta")? {
            Some(t) => t,
            None => r
                .f64_opt(root.pointer("/rope_parameters/rope_theta"), "rope_parameters.rope_theta")?
                .unwrap_or(10_000.0),
        };
        let rms_norm_eps = r.f64_opt(root.get("rms_norm_eps"), "rms_norm_eps")?.unwrap_or(1e-6);
        let quantization = match root.get("quantization_config") {
            None | Some(Value::Null) => None,
            Some(q) => Some(QuantizationConfig {
                quant_method: q.get("quant_method").and_then(Value::as_str).unwrap_or("").to_string(),
                linear_class: q.get("linear_class").and_then(Value::as_str).map(String::from),
                quantization_mode: q.get("quantization_mode").and_then(Value::as_str).map(String::from),
                modules_to_not_convert: match q.get("modules_to_not_convert") {
                    Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                    _ => vec![],
                },
                use_rms_norm: q.get("use_rms_norm").and_then(Value::as_bool).unwrap_or(false),
            }),
        };
        let tie_word_embeddings = match root.get("tie_word_embeddings") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(r.err(format!("'tie_word_embeddings' must be true or false, found {v}"))),
        };
        let dtype = match r.str_opt("dtype")? {
            Some(d) => Some(d),
            None => r.str_opt("torch_dtype")?,
        };
        Ok(HfConfig {
            path: path.to_path_buf(),
            architectures,
            model_type,
            hidden_size,
            intermediate_size: r.positive("intermediate_size")?,
            num_hidden_layers: r.positive("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: r.positive("vocab_size")?,
            hidden_act: r.str_opt("hidden_act")?.unwrap_or_else(|| "silu".into()),
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: r.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings,
            bos_token_id: r.ids("bos_token_id")?.first().copied(),
            eos_token_ids: r.ids("eos_token_id")?,
            dtype,
            quantization,
            raw: root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HfConfig> {
        HfConfig::parse(Path::new("config.json"), text)
    }

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 10"#;

    #[test]
    fn both_spellings_and_defaults() {
        let old =
            parse(&format!(r#"{{{BASE}, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}}"#)).unwrap();
        let new = parse(&format!(
            r#"{{{BASE}, "rope_parameters": {{"rope_theta": 500000.0, "rope_type": "default"}}, "dtype": "bfloat16"}}"#
        ))
        .unwrap();
        assert_eq!((old.rope_theta, old.dtype.as_deref()), (500000.0, Some("bfloat16")));
        assert_eq!((new.rope_theta, new.dtype.as_deref()), (500000.0, Some("bfloat16")));
        assert_eq!((new.num_key_value_heads, new.head_dim), (4, 16));
        assert_eq!(new.tie_word_embeddings, None);
    }

    #[test]
    fn duplicate_keys_last_wins_like_python() {
        let c = parse(&format!(
            r#"{{{BASE}, "quantization_config": {{"modules_to_not_convert": null, "quant_method": "x"}},
                "quantization_config": {{"quant_method": "bitnet"}}, "head_dim": 32, "eos_token_id": [1, 2]}}"#
        ))
        .unwrap();
        let q = c.quantization.unwrap();
        assert_eq!(q.quant_method, "bitnet");
        assert_eq!(q.linear_class, None);
        assert_eq!(c.head_dim, 32);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = parse(r#"{"hidden_size": 64}"#).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("missing required key"), "{e}");
        let e = parse("{not json").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse(&format!(r#"{{{BASE}, "num_key_value_heads": 3}}"#)).unwrap_err().to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let e = parse(&(BASE.replace("64", "\"64\"").replace("\"hidden", "{\"hidden") + "}")).unwrap_err();
        assert!(e.to_string().contains("non-negative integer"), "{e}");
    }
}
