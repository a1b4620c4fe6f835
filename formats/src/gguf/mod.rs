//! GGUF containers (spec: ggml's `docs/gguf.md`): typed metadata, tensor infos, aligned data.
//!
//! tern has its own reader and writer because no crate passes through bitnet.cpp's type ids
//! (I2_S = 36, TL1/TL2) with tern's size rules, streams tensors out one at a time, and keeps
//! metadata order (so tern's outputs are byte-reproducible). See docs/architecture.md.

mod read;
mod value;
mod write;

pub use read::{GgufFile, GgufHeader, TensorInfo, parse_header};
pub use value::{Array, Metadata, Value, ValueType};
pub use write::{GgufWriter, TensorSpec};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
