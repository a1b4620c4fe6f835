//! tern-converters: from a Hugging Face BitNet checkpoint to a GGUF model, tensor by tensor.
//!
//! - [`family`]: the model families tern knows ([`Family`], one table row each) and how a
//!   checkpoint is recognised.
//! - [`model`]: [`ModelSpec`], what a checkpoint *is* (dims, activation, where each weight lives,
//!   how its ternary weights are stored), shared with the reference forward pass.
//! - [`weights`]: the ternary codes and scale of one projection, from master weights or packed.
//! - [`tokenizer`]: `tokenizer.json` → GGUF `tokenizer.ggml.*` metadata.
//! - [`convert`]: the streaming conversion plan and writer; [`output`]: atomic output files.

pub mod convert;
pub mod family;
pub mod model;
pub mod output;
pub mod tokenizer;
pub mod weights;

pub use convert::{Compat, ConvertOptions, ConvertSummary, OutputType, Plan};
pub use family::Family;
pub use model::{Activation, ModelSpec, QuantMode};

/// Errors of the converters crate: a formats error, or a model the mapping cannot handle.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Format(#[from] tern_formats::FormatError),
    /// The checkpoint is readable but does not describe a model tern can convert.
    #[error("{path}: {msg}")]
    Model { path: std::path::PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConvertError {
    pub fn model(path: impl Into<std::path::PathBuf>, msg: impl Into<String>) -> Self {
        ConvertError::Model { path: path.into(), msg: msg.into() }
    }
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;
