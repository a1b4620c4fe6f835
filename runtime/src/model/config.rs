//! Model hyper-parameters from GGUF metadata, for the architectures tern runs.

use crate::{Result, RuntimeError};
use tern_converters::model::{Activation, RopePairing};
use tern_formats::gguf::GgufFile;

/// The architectures tern runs, with what each implies when the file does not say otherwise.
/// All share one graph: pre-norm decoder layers of ternary projections, with sub-norms where the
/// file has them.
pub struct ArchTraits {
    pub name: &'static str,
    /// The MLP activation without `tern.activation` or `<arch>.hidden_activation`.
    pub default_activation: Activation,
    /// The RoPE pairing without `tern.rope.pairing` (llama.cpp's rope type for the arch).
    pub rope_pairing: RopePairing,
}

pub const ARCHITECTURES: &[ArchTraits] = &[
    // bitnet.cpp's 2B-4T graphs square the ReLU.
    ArchTraits {
        name: "bitnet-b1.58",
        default_activation: Activation::Relu2,
        rope_pairing: RopePairing::HalfSplit,
    },
    ArchTraits {
        name: "bitnet-25",
        default_activation: Activation::Relu2,
        rope_pairing: RopePairing::HalfSplit,
    },
    // llama.cpp's `bitnet` (1bitLLM first): SiLU unless a key says otherwise — or the file has
    // 2B-4T's grouped-query attention (see `from_gguf`); a NEOX-type RoPE, i.e. half-split.
    ArchTraits { name: "bitnet", default_activation: Activation::Silu, rope_pairing: RopePairing::HalfSplit },
    // Llama3-8B-1.58 / Falcon3-1.58bit as bitnet.cpp and tern write them: q/k rows permuted for
    // llama.cpp's interleaved (NORM) RoPE.
    ArchTraits {
        name: "llama",
        default_activation: Activation::Silu,
        rope_pairing: RopePairing::Interleaved,
    },
];

pub fn arch_names() -> String {
    ARCHITECTURES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

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
    pub rope_pairing: RopePairing,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let md = f.metadata();
        let err = |msg: String| RuntimeError::Model { path: f.path.clone(), msg };
        let arch = md.get_str("general.architecture").ok_or_else(|| err("no general.architecture".into()))?;
        let traits = ARCHITECTURES.iter().find(|a| a.name == arch).ok_or_else(|| {
            err(format!("architecture {arch:?} is not supported (tern runs {})", arch_names()))
        })?;
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
        let hidden_act_key = format!("{arch}.hidden_activation");
        let activation = match md
            .get_str("tern.activation")
            .map(|n| ("tern.activation", n))
            .or_else(|| md.get_str(&hidden_act_key).map(|n| (hidden_act_key.as_str(), n)))
        {
            Some((key, name)) => Activation::from_hf(name)
                .ok_or_else(|| err(format!("{key} is {name:?}; tern runs relu2 and silu")))?,
            // llama.cpp writes no activation key for arch `bitnet` and runs every such file with
            // SiLU, right for 1bitLLM (multi-head attention) but not for 2B-4T conversions
            // (grouped-query attention, relu²). The head layout tells the two apart.
            None if arch == "bitnet" && kv_heads < heads => Activation::Relu2,
            None => traits.default_activation,
        };
        let rope_pairing = match md.get_str("tern.rope.pairing") {
            Some(p) => RopePairing::from_name(p).ok_or_else(|| {
                err(format!("tern.rope.pairing {p:?} is not supported (half-split or interleaved)"))
            })?,
            None => traits.rope_pairing,
        };
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
            rope_pairing,
        })
    }
}
