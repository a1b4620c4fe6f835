//! tern-formats: everything about bytes at rest.
//!
//! - [`ternary`]: the BitNet b1.58 maths (absmean weight ternarisation, per-token int8
//!   activation quantisation), written to match transformers bit for bit.
//! - [`hf_packed`]: transformers' uint8 packing of ternary weights (4 rows per byte).
//! - [`layout`]: the packed ternary layouts tern writes ([`Layout`]), one module each
//!   ([`i2s`], ...).
//! - [`tensor_type`]: the GGUF tensor-type table (ids are ABI, sizes derive from it).
//! - [`gguf`]: GGUF v2/v3 reading (mmap, paranoid) and streaming writing.
//! - [`safetensors_file`] and [`hf`]: safetensors files and Hugging Face checkpoint folders.
//!
//! No threads beyond rayon inside a single tensor, no SIMD, no model semantics: the
//! converters and the runtime build on this crate, never the other way round.
//!
//! Files come from the internet: nothing here may panic on file data, so `unwrap`/`expect` are
//! denied outside tests (the few on static tables and caller preconditions say why they hold).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod float_blocks;
pub mod gguf;
pub mod hf;
pub mod hf_packed;
pub mod i2s;
pub mod layout;
pub mod npy;
pub mod safetensors_file;
pub mod tensor_type;
pub mod ternary;
pub mod tiles;
pub mod tl1;
pub mod tl2;
pub mod tq1_0;
pub mod tq2_0;

pub use error::{FormatError, Result};
pub use layout::Layout;
pub use tensor_type::TensorType;
