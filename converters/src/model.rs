//! [`ModelSpec`]: everything tern needs to know about a checkpoint before touching its data —
//! family, dims, activation, how ternary weights are stored, tied or separate lm_head — checked
//! against the tensors actually present, so a mismatch is reported before any work starts.

use crate::family::Family;
use crate::{ConvertError, Result};
use tern_formats::hf::HfCheckpoint;
use tern_formats::safetensors_file::Dtype;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// relu(x)², the 2B-4T MLP: `relu(gate)² · up`.
    Relu2,
    /// SwiGLU: `silu(gate) · up`.
    Silu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }

    pub fn from_hf(name: &str) -> Option<Activation> {
        match name {
            "relu2" => Some(Activation::Relu2),
            "silu" | "swish" => Some(Activation::Silu),
            // llama.cpp's spelling of the same op (`LLM_FFN_RELU_SQR`).
            "relu_sqr" | "relu_squared" => Some(Activation::Relu2),
            _ => None,
        }
    }
}

/// Which elements of a head RoPE rotates together, as stored in a GGUF's q/k rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairing {
    /// Element j with j + d/2 (transformers' `rotate_half`; the HF row order, arch `bitnet*`).
    HalfSplit,
    /// Element 2i with 2i + 1 (llama.cpp's arch `llama`): its converters permute the q/k rows of
    /// each head so that interleaved RoPE on them equals half-split RoPE on the HF rows.
    Interleaved,
}

impl RopePairing {
    pub fn name(self) -> &'static str {
        match self {
            RopePairing::HalfSplit => "half-split",
            RopePairing::Interleaved => "interleaved",
        }
    }

    pub fn from_name(name: &str) -> Option<RopePairing> {
        match name {
            "half-split" => Some(RopePairing::HalfSplit),
            "interleaved" => Some(RopePairing::Interleaved),
            _ => None,
        }
    }

    /// The HF row (within one head of `head_dim` rows) stored at row `stored` of that head.
    /// Interleaved: stored row 2i + j holds HF row j·d/2 + i (llama.cpp's `permute`).
    pub fn hf_row(self, stored: usize, head_dim: usize) -> usize {
        match self {
            RopePairing::HalfSplit => stored,
            RopePairing::Interleaved => (stored % 2) * (head_dim / 2) + stored / 2,
        }
    }

    /// `values` (rows of `width`, heads of `head_dim` rows each, in HF order) reordered to this
    /// pairing's stored order. Used on weight rows at conversion and on reference q/k outputs.
    pub fn reorder<T: Copy>(self, values: &[T], head_dim: usize, width: usize) -> Vec<T> {
        if self == RopePairing::HalfSplit {
            return values.to_vec();
        }
        let mut out = Vec::with_capacity(values.len());
        let rows = values.len() / width;
        for r in 0..rows {
            let (head, within) = (r / head_dim, r % head_dim);
            let src = head * head_dim + self.hf_row(within, head_dim);
            out.extend_from_slice(&values[src * width..(src + 1) * width]);
        }
        out
    }
}

/// How the checkpoint stores its ternary projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    /// Float master weights, ternarised with absmean β (bf16 repo, 1bitLLM).
    Online,
    /// Packed U8 + `weight_scale` = β, multiplied in (`autobitlinear` + offline: packed 2B-4T).
    OfflineMultiply,
    /// Packed U8 + `weight_scale` = 1/β, divided out (`bitlinear`: Llama3-8B-1.58, Falcon3).
    OfflineDivide,
}

impl QuantMode {
    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Online => "online",
            QuantMode::OfflineMultiply => "offline-multiply",
            QuantMode::OfflineDivide => "offline-divide",
        }
    }
}

/// The seven ternary projections of a layer, in the order tern writes them.
pub const PROJECTIONS: [Projection; 7] = [
    Projection::Q,
    Projection::K,
    Projection::V,
    Projection::O,
    Projection::Gate,
    Projection::Up,
    Projection::Down,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub fn hf_suffix(self) -> &'static str {
        match self {
            Projection::Q => "self_attn.q_proj",
            Projection::K => "self_attn.k_proj",
            Projection::V => "self_attn.v_proj",
            Projection::O => "self_attn.o_proj",
            Projection::Gate => "mlp.gate_proj",
            Projection::Up => "mlp.up_proj",
            Projection::Down => "mlp.down_proj",
        }
    }

    pub fn gguf_suffix(self) -> &'static str {
        match self {
            Projection::Q => "attn_q",
            Projection::K => "attn_k",
            Projection::V => "attn_v",
            Projection::O => "attn_output",
            Projection::Gate => "ffn_gate",
            Projection::Up => "ffn_up",
            Projection::Down => "ffn_down",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub family: Family,
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
    pub quant: QuantMode,
    pub tied: bool,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// A human name for the model (the checkpoint folder's name).
    pub name: String,
}

impl ModelSpec {
    /// `(rows = out, cols = in)` of a projection.
    pub fn projection_shape(&self, p: Projection) -> (usize, usize) {
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        match p {
            Projection::Q => (q, self.hidden),
            Projection::K | Projection::V => (kv, self.hidden),
            Projection::O => (self.hidden, q),
            Projection::Gate | Projection::Up => (self.intermediate, self.hidden),
            Projection::Down => (self.hidden, self.intermediate),
        }
    }

    pub fn hf_projection(&self, layer: usize, p: Projection) -> String {
        format!("model.layers.{layer}.{}.weight", p.hf_suffix())
    }

    pub fn gguf_arch(&self) -> &'static str {
        self.family.traits().gguf_arch
    }

    /// Reads and checks the spec of a checkpoint: the family, the dims from config.json, the
    /// quantisation mode from the projection dtypes, and that every expected tensor is present
    /// with the shape the config implies.
    pub fn from_checkpoint(ckpt: &HfCheckpoint) -> Result<ModelSpec> {
        let c = &ckpt.config;
        let family = Family::detect(c).map_err(|m| ConvertError::model(&c.path, m))?;
        let activation = Activation::from_hf(&c.hidden_act).ok_or_else(|| {
            ConvertError::model(
                &c.path,
                format!("unsupported hidden_act {:?} (relu2 and silu are supported)", c.hidden_act),
            )
        })?;
        if c.quantization.as_ref().is_some_and(|q| q.use_rms_norm) {
            return Err(ConvertError::model(
                &c.path,
                "quantization_config.use_rms_norm = true (an extra RMSNorm inside every BitLinear) is not supported",
            ));
        }

        // Packed or master weights: decided by the tensors, then checked against the config.
        let first = ckpt.require("model.layers.0.self_attn.q_proj.weight")?;
        let packed = first.info.dtype == Dtype::U8;
        let linear_class = c.quantization.as_ref().and_then(|q| q.linear_class.as_deref());
        let quant = match (packed, linear_class) {
            (false, _) => QuantMode::Online,
            (true, Some("autobitlinear")) => QuantMode::OfflineMultiply,
            (true, None | Some("bitlinear")) => QuantMode::OfflineDivide,
            (true, Some(other)) => {
                return Err(ConvertError::model(
                    &c.path,
                    format!("unknown quantization_config.linear_class {other:?}"),
                ));
            }
        };
        let mode_in_config = c.quantization.as_ref().and_then(|q| q.quantization_mode.as_deref());
        if packed && mode_in_config == Some("online") || !packed && mode_in_config == Some("offline") {
            return Err(ConvertError::model(
                &c.path,
                format!(
                    "quantization_mode is {:?} but the projection weights are {:?}",
                    mode_in_config.unwrap_or_default(),
                    first.info.dtype
                ),
            ));
        }
        if !packed && family.traits().needs_bitnet_quantization {
            return Err(ConvertError::model(
                &c.path,
                format!(
                    "a {} checkpoint stores its projections packed as U8 (transformers' BitLinear), but {} is {:?}",
                    family.name(),
                    first.info.name,
                    first.info.dtype
                ),
            ));
        }
        if packed && family == Family::BitNet && linear_class.is_none() {
            // The early packed 2B-4T config lacked linear_class; transformers would then divide by
            // weight_scale, which is wrong for that repo (hf-checkpoints.md §1.1). Refuse to guess.
            return Err(ConvertError::model(
                &c.path,
                "packed bitnet checkpoint without quantization_config.linear_class: cannot tell whether weight_scale multiplies (autobitlinear) or divides (bitlinear); add \"linear_class\": \"autobitlinear\" for microsoft/bitnet-b1.58-2B-4T",
            ));
        }

        // As transformers: an explicit `tie_word_embeddings` decides; without one, the presence
        // of lm_head.weight does.
        let tied = match (c.tie_word_embeddings, ckpt.contains("lm_head.weight")) {
            (Some(tie), true) => tie,
            (Some(false), false) => {
                return Err(ConvertError::model(
                    &c.path,
                    "tie_word_embeddings is false but the checkpoint has no lm_head.weight",
                ));
            }
            (_, false) => true,
            (None, true) => false,
        };
        let name = ckpt
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let spec = ModelSpec {
            family,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab: c.vocab_size,
            context: c.max_position_embeddings,
            rms_eps: c.rms_norm_eps as f32,
            rope_theta: c.rope_theta as f32,
            activation,
            quant,
            tied,
            bos: c.bos_token_id,
            eos: c.eos_token_ids.clone(),
            name,
        };
        spec.check_tensors(ckpt)?;
        Ok(spec)
    }

    /// Every tensor the spec expects, as (HF name, expected shape); projections excluded.
    pub fn float_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let t = self.family.traits();
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, self.hidden])];
        for l in 0..self.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}.weight");
            out.push((p("input_layernorm"), vec![self.hidden]));
            if let Some(n) = t.attn_sub_norm {
                out.push((p(n), vec![self.heads * self.head_dim]));
            }
            out.push((p("post_attention_layernorm"), vec![self.hidden]));
            if let Some(n) = t.ffn_sub_norm {
                out.push((p(n), vec![self.intermediate]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden]));
        if !self.tied {
            out.push(("lm_head.weight".to_string(), vec![self.vocab, self.hidden]));
        }
        out
    }

    fn check_tensors(&self, ckpt: &HfCheckpoint) -> Result<()> {
        for (name, shape) in self.float_tensors() {
            let t = ckpt.require(&name)?;
            if t.info.shape != shape {
                return Err(t
                    .error(format!("shape {:?}, but config.json implies {shape:?}", t.info.shape))
                    .into());
            }
            if !matches!(t.info.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
                return Err(t.error(format!("dtype {:?}, expected BF16, F16 or F32", t.info.dtype)).into());
            }
        }
        for l in 0..self.layers {
            for p in PROJECTIONS {
                let name = self.hf_projection(l, p);
                let t = ckpt.require(&name)?;
                let (rows, cols) = self.projection_shape(p);
                let expected = match self.quant {
                    QuantMode::Online => vec![rows, cols],
                    _ => vec![rows / 4, cols],
                };
                if self.quant != QuantMode::Online && rows % 4 != 0 {
                    return Err(t.error(format!("{rows} output rows cannot be packed 4 per byte")).into());
                }
                if t.info.shape != expected {
                    return Err(t
                        .error(format!("shape {:?}, but config.json implies {expected:?}", t.info.shape))
                        .into());
                }
            }
        }
        Ok(())
    }
}
