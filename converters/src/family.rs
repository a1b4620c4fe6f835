//! The model families tern converts, one row each in [`FAMILIES`]. A family fixes the HF tensor
//! names of the sub-norms, the MLP activation and the GGUF architecture name; everything else
//! (dims, quantisation mode, tied or not) is read from the checkpoint. Facts per family:
//! `../shared/docs/hf-checkpoints.md`.

use crate::model::Activation;
use tern_formats::hf::HfConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// microsoft/bitnet-b1.58-2B-4T (`BitNetForCausalLM`, model_type `bitnet`): GQA, relu²,
    /// `attn_sub_norm` / `ffn_sub_norm`, tied embeddings; bf16 master or packed U8.
    BitNet,
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
}

pub const FAMILIES: &[FamilyTraits] = &[FamilyTraits {
    family: Family::BitNet,
    name: "bitnet-b1.58",
    description: "microsoft/bitnet-b1.58-2B-4T and its bf16 / packed repos",
    architectures: &["BitNetForCausalLM"],
    model_types: &["bitnet"],
    gguf_arch: "bitnet-b1.58",
    attn_sub_norm: Some("self_attn.attn_sub_norm"),
    ffn_sub_norm: Some("mlp.ffn_sub_norm"),
    default_activation: Activation::Relu2,
}];

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
        FAMILIES
            .iter()
            .find(|f| f.model_types.contains(&config.model_type.as_str()) && arch_ok(f))
            .map(|f| f.family)
            .ok_or_else(|| {
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
