//! [`Layout`]: the packed ternary layouts tern can write, one row each.
//!
//! A layout turns a ternary matrix (codes in {-1, 0, +1}, row-major `[rows = out, cols = in]`)
//! plus its per-tensor scale β into the bytes of one GGUF tensor, and back. Each layout lives in
//! its own module (`i2s`, ...) with byte-exact tests against bitnet.cpp's vectors; this table is
//! the only place the rest of tern learns which layouts exist.

use crate::tensor_type::TensorType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// bitnet.cpp I2_S, x86 `ACT_PARALLEL` form: 2-bit codes in 128-weight blocks, f32 scale tail.
    I2S,
}

/// Codes and scale recovered from packed bytes, or why the bytes are not a valid tensor.
pub type Unpacked = Result<(Vec<i8>, f32), String>;

pub struct LayoutTraits {
    pub layout: Layout,
    /// The name users type (`--type i2_s`) and tern prints.
    pub name: &'static str,
    pub tensor_type: TensorType,
    /// `general.file_type` for a file whose projections are all in this layout (llama_ftype).
    pub file_type: u32,
    pub pack: fn(codes: &[i8], rows: usize, cols: usize, scale: f32) -> Vec<u8>,
    pub unpack: fn(bytes: &[u8], rows: usize, cols: usize) -> Unpacked,
}

pub const LAYOUTS: &[LayoutTraits] = &[LayoutTraits {
    layout: Layout::I2S,
    name: "i2_s",
    tensor_type: TensorType::I2S,
    file_type: 40,
    pack: crate::i2s::pack,
    unpack: crate::i2s::unpack,
}];

impl Layout {
    pub fn traits(self) -> &'static LayoutTraits {
        LAYOUTS.iter().find(|l| l.layout == self).expect("every Layout has a row in LAYOUTS")
    }

    pub fn from_name(name: &str) -> Option<Layout> {
        LAYOUTS.iter().find(|l| l.name.eq_ignore_ascii_case(name)).map(|l| l.layout)
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    pub fn tensor_type(self) -> TensorType {
        self.traits().tensor_type
    }

    pub fn pack(self, codes: &[i8], rows: usize, cols: usize, scale: f32) -> Vec<u8> {
        (self.traits().pack)(codes, rows, cols, scale)
    }

    pub fn unpack(self, bytes: &[u8], rows: usize, cols: usize) -> Unpacked {
        (self.traits().unpack)(bytes, rows, cols)
    }
}
