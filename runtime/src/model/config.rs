//! Model hyper-parameters from GGUF metadata, for the architectures tern runs.

use crate::{Result, RuntimeError};
use tern_converters::model::Activation;
use tern_formats::gguf::GgufFile;

/// Architectures whose graph is the BitNet b1.58 one (sub-norms, ternary projections).
pub const ARCHITECTURES: [&str; 3] = ["bitnet-b1.58", "bitnet-25", "bitnet"];

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub activation: Activation,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let md = f.metadata();
        let err = |msg: String| RuntimeError::Model { path: f.path.clone(), msg };
        let arch = md.get_str("general.architecture").ok_or_else(|| err("no general.architecture".into()))?;
        if !ARCHITECTURES.contains(&arch) {
            return Err(err(format!(
                "architecture {arch:?} is not supported (tern runs {})",
                ARCHITECTURES.join(", ")
            )));
        }
        let int = |key: &str| -> Result<Option<usize>> {
            match md.get(&format!("{arch}.{key}")) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| err(format!("{arch}.{key} is {v}, not an integer"))),
            }
        };
        let req = |key: &str| -> Result<usize> {
            int(key)?.filter(|&n| n > 0).ok_or_else(|| err(format!("missing or zero {arch}.{key}")))
        };
        let hidden = req("embedding_length")?;
        let heads = req("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv")?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(err(format!("{heads} attention heads cannot share {kv_heads} KV heads")));
        }
        let head_dim = match int("attention.key_length")? {
            Some(d) => d,
            None => int("rope.dimension_count")?.unwrap_or(hidden / heads),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(err(format!("head dimension {head_dim} must be positive and even")));
        }
        // Sane limits: far above any real model, far below what could overflow the kernels'
        // i32 accumulators (K · 2 · 128 < 2^31) or the KV-cache size arithmetic.
        const MAX_DIM: usize = 1 << 22;
        for (name, v) in [("embedding_length", hidden), ("head_count", heads), ("key_length", head_dim)] {
            if v > MAX_DIM {
                return Err(err(format!("{arch}.{name} = {v} is larger than tern supports ({MAX_DIM})")));
            }
        }
        if heads.checked_mul(head_dim).is_none_or(|d| d > MAX_DIM) {
            return Err(err(format!("{heads} heads of {head_dim} are larger than tern supports")));
        }
        let vocab = match int("vocab_size")? {
            Some(v) => v,
            None => f
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).map(|&d| d as usize))
                .ok_or_else(|| err("no vocab_size and no token_embd.weight".into()))?,
        };
        let float = |key: &str, default: f64| md.get_f64(&format!("{arch}.{key}")).unwrap_or(default) as f32;
        let activation = match md.get_str("tern.activation") {
            Some(name) => {
                Activation::from_hf(name).ok_or_else(|| err(format!("unknown tern.activation {name:?}")))?
            }
            // bitnet.cpp's and llama.cpp's BitNet graphs (2B-4T) square the ReLU.
            None => Activation::Relu2,
        };
        if let Some(p) = md.get_str("tern.rope.pairing").filter(|p| *p != "half-split") {
            return Err(err(format!("tern.rope.pairing {p:?} is not supported")));
        }
        let intermediate = req("feed_forward_length")?;
        let layers = req("block_count")?;
        if intermediate > MAX_DIM || layers > 4096 || vocab > MAX_DIM * 4 {
            return Err(err(format!(
                "dims larger than tern supports: feed_forward_length {intermediate}, block_count {layers}, vocab {vocab}"
            )));
        }
        let context = int("context_length")?.unwrap_or(4096);
        if context > 1 << 24 {
            return Err(err(format!("{arch}.context_length {context} is larger than tern supports (2^24)")));
        }
        Ok(ModelConfig {
            arch: arch.to_string(),
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context,
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: float("rope.freq_base", 10_000.0),
            activation,
        })
    }
}
