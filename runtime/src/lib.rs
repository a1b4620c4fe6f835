//! tern's CPU runtime: kernels per packed layout, the forward pass, KV cache, sampler, tokenizer,
//! and the f32 reference forward that `tern verify` measures packed files against.
//!
//! - [`reference`]: transformers' `BitNetForCausalLM` forward in f32 on candle-core, straight from
//!   a Hugging Face checkpoint — the yardstick.
//! - [`parity`]: how two sets of logits are compared (rel-L2, max abs, top-1, KL).
//! - [`cpu`], [`kernels`]: instruction-set dispatch and the integer/float kernels; [`team`]: the
//!   spinning threads a generated token's parallel operations run on.
//! - [`model`]: GGUF models and the forward pass with a KV cache.
//! - [`tokenizer`], [`sampler`], [`generate`]: text in, tokens out.
//! - [`verify`]: parity of a packed model against the reference; [`perplexity`]: perplexity and
//!   KL divergence over a text; [`bench`]: speed.

pub mod bench;
pub mod cpu;
pub mod generate;
pub mod kernels;
pub mod model;
pub mod pages;
pub mod parity;
pub mod perplexity;
pub mod reference;
pub mod rope;
pub mod sampler;
pub mod team;
pub mod tokenizer;
pub mod verify;

/// Errors of the runtime crate.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Convert(#[from] tern_converters::ConvertError),
    #[error(transparent)]
    Format(#[from] tern_formats::FormatError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
    /// A model file that is valid GGUF but not a model tern can run.
    #[error("{path}: {msg}")]
    Model { path: std::path::PathBuf, msg: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
