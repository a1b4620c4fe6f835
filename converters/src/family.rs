//! The model families tern converts, one row each in [`FAMILIES`]. A family fixes the HF tensor
//! names of the sub-norms, the MLP activation and the GGUF architecture name; everything else
//! (dims, quantisation mode, tied or not) is read from the checkpoint. Facts per family:
//! `../shared/docs/hf-checkpoints.md`.

use crate::model::{Activation, RopePairing};
use tern_formats::hf::HfConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// microsoft/bitnet-b1.58-2B-4T (`BitNetForCausalLM`, model_type `bitnet`): GQA, relu²,
    /// `attn_sub_norm` / `ffn_sub_norm`, tied embeddings; bf16 master or packed U8.
    BitNet,
    /// 1bitLLM bitnet_b1_58-large / -3B (`BitnetForCausalLM`, model_type `llama`): MHA, SiLU,
    /// sub-norms `inner_attn_ln` / `ffn_layernorm`, fp16 masters quantised online.
    OneBitLlm,
    /// HF1BitLLM Llama3-8B-1.58 and tiiuae Falcon3-*-1.58bit (`LlamaForCausalLM` with a bitnet
    /// `quantization_config`): packed U8 + `weight_scale` divided out, no sub-norms, SiLU,
    /// untied lm_head. Written as llama.cpp's arch `llama`, q/k rows permuted for its RoPE.
    Llama158,
}

pub struct FamilyTraits {
    pub family: Family,
    /// Stable name, written to GGUF as `tern.family`.
    pub name: &'static str,
    pub description: &'static str,
    /// Architectures in config.json that select this family (with `model_type`).
    pub architectures: &'static [&'static str],
    pub model_types: &'static [&'static str],
    /// The GGUF architecture tern writes (bitnet.cpp's name for this graph).
    pub gguf_arch: &'static str,
    /// HF name (under `model.layers.N.`) of the sub-norm before o_proj, if the family has one.
    pub attn_sub_norm: Option<&'static str>,
    /// HF name of the sub-norm before down_proj, if any.
    pub ffn_sub_norm: Option<&'static str>,
    /// The activation the family uses when config.json does not name one.
    pub default_activation: Activation,
    /// The q/k row order tern writes (what engines running `gguf_arch` expect).
    pub rope_pairing: RopePairing,
    /// Only checkpoints with `quantization_config.quant_method == "bitnet"` belong to the family
    /// (a plain float Llama is not ternary).
    pub needs_bitnet_quantization: bool,
}

pub const FAMILIES: &[FamilyTraits] = &[
    FamilyTraits {
        family: Family::BitNet,
        name: "bitnet-b1.58",
        description: "microsoft/bitnet-b1.58-2B-4T and its bf16 / packed repos",
        architectures: &["BitNetForCausalLM"],
        model_types: &["bitnet"],
        gguf_arch: "bitnet-b1.58",
        attn_sub_norm: Some("self_attn.attn_sub_norm"),
        ffn_sub_norm: Some("mlp.ffn_sub_norm"),
        default_activation: Activation::Relu2,
        rope_pairing: RopePairing::HalfSplit,
        needs_bitnet_quantization: false,
    },
    FamilyTraits {
        family: Family::OneBitLlm,
        name: "1bitllm",
        description: "1bitLLM/bitnet_b1_58-large and -3B (fp16 masters)",
        architectures: &["BitnetForCausalLM"],
        model_types: &["llama"],
        // bitnet.cpp's and llama.cpp's name for this graph (SiLU, sub-norms, half-split RoPE).
        gguf_arch: "bitnet",
        attn_sub_norm: Some("self_attn.inner_attn_ln"),
        ffn_sub_norm: Some("mlp.ffn_layernorm"),
        default_activation: Activation::Silu,
        rope_pairing: RopePairing::HalfSplit,
        needs_bitnet_quantization: false,
    },
    FamilyTraits {
        family: Family::Llama158,
        name: "llama-1.58",
        description: "HF1BitLLM/Llama3-8B-1.58-*, tiiuae/Falcon3-*-1.58bit and Falcon-E-* (packed U8)",
        architectures: &["LlamaForCausalLM"],
        model_types: &["llama"],
        gguf_arch: "llama",
        attn_sub_norm: None,
        ffn_sub_norm: None,
        default_activation: Activation::Silu,
        rope_pairing: RopePairing::Interleaved,
        needs_bitnet_quantization: true,
    },
];

impl Family {
    pub fn traits(self) -> &'static FamilyTraits {
        FAMILIES.iter().find(|f| f.family == self).expect("every Family has a row in FAMILIES")
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// The family whose architecture and model_type both match, or a message listing what is
    /// supported.
    pub fn detect(config: &HfConfig) -> Result<Family, String> {
        let arch_ok = |f: &FamilyTraits| {
            config.architectures.is_empty()
                || config.architectures.iter().any(|a| f.architectures.contains(&a.as_str()))
        };
        let bitnet_quantized = config.quantization.as_ref().is_some_and(|q| q.quant_method == "bitnet");
        let candidates: Vec<&FamilyTraits> = FAMILIES
            .iter()
            .filter(|f| f.model_types.contains(&config.model_type.as_str()) && arch_ok(f))
            .collect();
        let pick = candidates
            .iter()
            .find(|f| f.needs_bitnet_quantization && bitnet_quantized)
            .or_else(|| candidates.iter().find(|f| !f.needs_bitnet_quantization));
        if let (None, Some(f)) = (pick, candidates.first()) {
            return Err(format!(
                "{:?} without quantization_config.quant_method \"bitnet\" is a float model, not a ternary one; tern converts {} checkpoints whose config.json has a bitnet quantization_config",
                config.architectures.first().map_or(config.model_type.as_str(), String::as_str),
                f.name
            ));
        }
        pick.map(|f| f.family).ok_or_else(|| {
            let supported: Vec<String> = FAMILIES
                .iter()
                .map(|f| {
                    format!(
                        "{} (model_type {:?}, architectures {:?})",
                        f.name, f.model_types, f.architectures
                    )
                })
                .collect();
            format!(
                "unknown architecture: model_type {:?}, architectures {:?}; supported: {}",
                config.model_type,
                config.architectures,
                supported.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn detect(json: &str) -> Result<Family, String> {
        let base = r#""hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 10"#;
        let c = HfConfig::parse(Path::new("config.json"), &format!("{{{base}, {json}}}")).unwrap();
        Family::detect(&c)
    }

    #[test]
    fn each_family_is_found_by_its_architecture_and_config() {
        let bitnet = r#""architectures": ["BitNetForCausalLM"], "model_type": "bitnet""#;
        assert_eq!(detect(bitnet), Ok(Family::BitNet));
        let one_bit = r#""architectures": ["BitnetForCausalLM"], "model_type": "llama", "weight_bits": 1"#;
        assert_eq!(detect(one_bit), Ok(Family::OneBitLlm));
        // HF1BitLLM: the key twice, the last one wins (as in Python).
        let hf1bit = r#""architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "quantization_config": {"modules_to_not_convert": null, "quant_method": "bitnet"},
            "quantization_config": {"quant_method": "bitnet"}"#;
        assert_eq!(detect(hf1bit), Ok(Family::Llama158));
        let falcon3 = r#""architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "quantization_config": {"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"}"#;
        assert_eq!(detect(falcon3), Ok(Family::Llama158));
    }

    #[test]
    fn float_llamas_and_unknown_models_say_what_is_supported() {
        let e = detect(r#""architectures": ["LlamaForCausalLM"], "model_type": "llama""#).unwrap_err();
        assert!(e.contains("float model") && e.contains("llama-1.58"), "{e}");
        let e = detect(
            r#""architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "quantization_config": {"quant_method": "gptq"}"#,
        )
        .unwrap_err();
        assert!(e.contains("float model"), "{e}");
        let e = detect(r#""architectures": ["MistralForCausalLM"], "model_type": "mistral""#).unwrap_err();
        assert!(
            e.contains("unknown architecture") && e.contains("1bitllm") && e.contains("bitnet-b1.58"),
            "{e}"
        );
    }
}
