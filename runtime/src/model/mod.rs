//! A GGUF model ready to run: [`ModelConfig`] read from metadata, [`Model`] with every tensor
//! validated (type, shape, byte range, finite scales) and the weights left in the memory map,
//! and [`Session`] (forward pass with a KV cache).

mod activation;
mod attend;
mod attention;
mod bitlinear;
mod config;
mod forward;
mod kv;
mod norm;
mod output;
pub mod profile;
mod weights;

pub use config::ModelConfig;
pub use forward::{BatchPart, MICRO_BATCH, Session, Want};
pub use kv::{KvCache, KvType};
pub use norm::rms_norm;
pub use profile::{Op, Profile};
pub use weights::{Model, TernaryMatrix};
