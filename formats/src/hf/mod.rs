//! Hugging Face checkpoint folders: `config.json` ([`HfConfig`]) and one or more safetensors
//! shards ([`HfCheckpoint`]). What the tensors *mean* per model family is the converters' job.

mod checkpoint;
mod config;

pub use checkpoint::{HfCheckpoint, TensorRef};
pub use config::{HfConfig, QuantizationConfig};
