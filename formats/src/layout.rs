//! [`Layout`]: the packed ternary layouts tern can write, one row each.
//!
//! A layout turns a ternary matrix (codes in {-1, 0, +1}, row-major `[rows = out, cols = in]`)
//! plus its per-tensor scale β into the bytes of one GGUF tensor, and back. Each layout lives in
//! its own module (`i2s`, `tl1`, `tl2`, `tq1_0`, `tq2_0`) with byte-exact tests against
//! bitnet.cpp's or llama.cpp's bytes; this table is the only place the rest of tern learns which
//! layouts exist. `general.file_type` values follow bitnet.cpp's fork (llama_ftype).

use crate::tensor_type::TensorType;
use crate::tiles::{self, Tiles};
use crate::{i2s, tl1, tl2, tq1_0, tq2_0};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// bitnet.cpp I2_S, x86 `ACT_PARALLEL` form: 2-bit codes in 128-weight blocks, f32 scale tail.
    I2S,
    /// bitnet.cpp TL1: pairs → 4-bit indices, tiled (BM, BK, bm), scale tail + `_scale` tensor.
    TL1,
    /// bitnet.cpp TL2: triples → 4-bit index + sign plane, pair tail, tiled, scale tail.
    TL2,
    /// llama.cpp TQ1_0: 5 trits per byte, 256-weight blocks with an f16 scale.
    TQ1_0,
    /// llama.cpp TQ2_0: 2-bit codes, 256-weight blocks with an f16 scale.
    TQ2_0,
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
    /// Whether the layout needs tile parameters (TL1, TL2).
    pub tiled: bool,
    /// Whether bitnet.cpp stores the scale as a separate `<name>_scale` F32 tensor too.
    pub scale_tensor: bool,
}

pub const LAYOUTS: &[LayoutTraits] = &[
    LayoutTraits {
        layout: Layout::I2S,
        name: "i2_s",
        tensor_type: TensorType::I2S,
        file_type: 40,
        tiled: false,
        scale_tensor: false,
    },
    LayoutTraits {
        layout: Layout::TL1,
        name: "tl1",
        tensor_type: TensorType::TL1,
        file_type: 38,
        tiled: true,
        scale_tensor: true,
    },
    LayoutTraits {
        layout: Layout::TL2,
        name: "tl2",
        tensor_type: TensorType::TL2,
        file_type: 39,
        tiled: true,
        scale_tensor: true,
    },
    LayoutTraits {
        layout: Layout::TQ1_0,
        name: "tq1_0",
        tensor_type: TensorType::TQ1_0,
        file_type: 36,
        tiled: false,
        scale_tensor: false,
    },
    LayoutTraits {
        layout: Layout::TQ2_0,
        name: "tq2_0",
        tensor_type: TensorType::TQ2_0,
        file_type: 37,
        tiled: false,
        scale_tensor: false,
    },
];

impl Layout {
    #[allow(clippy::expect_used)] // a static table, complete by construction (tested)
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

    /// The tiles this layout stores an `m × k` matrix with (`Some(None)` for untiled layouts),
    /// or None when the shape does not fit the layout exactly.
    pub fn fit(self, m: usize, k: usize) -> Option<Option<Tiles>> {
        match self {
            Layout::I2S => Some(None),
            Layout::TL1 | Layout::TL2 => tiles::choose(self, m, k).map(Some),
            Layout::TQ1_0 | Layout::TQ2_0 => (k.is_multiple_of(256) && m > 0).then_some(None),
        }
    }

    /// The tensor's bytes as written to GGUF (for I2_S/TL1/TL2 including the 32-byte scale tail).
    #[allow(clippy::expect_used)] // a caller precondition (tiles come from `fit`), not file data
    pub fn pack(self, codes: &[i8], m: usize, k: usize, scale: f32, tiles: Option<Tiles>) -> Vec<u8> {
        let need = || tiles.expect("tiled layouts need tiles");
        match self {
            Layout::I2S => i2s::pack(codes, m, k, scale),
            Layout::TL1 => tl1::pack(codes, m, k, scale, need()),
            Layout::TL2 => tl2::pack(codes, m, k, scale, need()),
            Layout::TQ1_0 => tq1_0::pack(codes, m, k, scale),
            Layout::TQ2_0 => tq2_0::pack(codes, m, k, scale),
        }
    }

    /// Whether `unpack` would accept `bytes`, without building the codes where a layout can
    /// check faster (TL1, TL2: one pass over the index planes).
    pub fn validate(self, bytes: &[u8], m: usize, k: usize, tiles: Option<Tiles>) -> Result<(), String> {
        let need = || tiles.ok_or_else(|| format!("{} needs tile parameters", self.name()));
        match self {
            Layout::TL1 => tl1::validate(bytes, m, k, need()?),
            Layout::TL2 => tl2::validate(bytes, m, k, need()?),
            _ => self.unpack(bytes, m, k, tiles).map(|_| ()),
        }
    }

    pub fn unpack(self, bytes: &[u8], m: usize, k: usize, tiles: Option<Tiles>) -> Unpacked {
        let need = || tiles.ok_or_else(|| format!("{} needs tile parameters", self.name()));
        match self {
            Layout::I2S => i2s::unpack(bytes, m, k),
            Layout::TL1 => tl1::unpack(bytes, m, k, need()?),
            Layout::TL2 => tl2::unpack(bytes, m, k, need()?),
            Layout::TQ1_0 => tq1_0::unpack(bytes, m, k),
            Layout::TQ2_0 => tq2_0::unpack(bytes, m, k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ternary::tests_support::random_codes;

    /// `validate` accepts what `unpack` accepts and refuses what it refuses, with its message:
    /// packed tensors as written, then each byte of the stream (every plane: TL2's indices, signs
    /// and pair tail) set to values a packer never writes.
    #[test]
    fn validate_agrees_with_unpack() {
        for (layout, m, k) in [(Layout::TL1, 64, 256), (Layout::TL2, 64, 288), (Layout::TL2, 32, 256)] {
            let tiles = layout.fit(m, k).expect("a shape the layout takes");
            let bytes = layout.pack(&random_codes(m * k, 3), m, k, 0.5, tiles);
            assert_eq!(layout.validate(&bytes, m, k, tiles), Ok(()));
            let mut refused = 0;
            for i in 0..bytes.len() {
                for bad in [0x9A, 0xE0, 0x0F, 0xFF] {
                    let mut b = bytes.clone();
                    b[i] = bad;
                    let want = layout.unpack(&b, m, k, tiles).map(|_| ());
                    refused += want.is_err() as usize;
                    assert_eq!(
                        layout.validate(&b, m, k, tiles),
                        want,
                        "{} byte {i} = {bad:#04x}",
                        layout.name()
                    );
                }
            }
            assert!(refused > 0, "{}: no corruption was refused", layout.name());
            let short = &bytes[..bytes.len() - 40];
            assert_eq!(layout.validate(short, m, k, tiles), layout.unpack(short, m, k, tiles).map(|_| ()));
        }
    }

    /// unpack ∘ pack is the identity on random ternary matrices of random shapes, for every
    /// layout and every shape it accepts; shapes it refuses are refused by `fit`, never mangled.
    #[test]
    fn pack_unpack_identity_on_random_shapes() {
        let mut state = 7u64;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        let mut accepted = std::collections::HashMap::new();
        for case in 0..60 {
            // Mostly shapes some layout takes (multiples of 32 rows, 8/32/256 columns), some odd.
            let m = [32, 64, 96, 128, 160, 256, 320][next(7)] + if case % 10 == 9 { 1 } else { 0 };
            let k = [96, 128, 256, 288, 320, 384, 512, 768, 864][next(9)];
            let codes = random_codes(m * k, case as u64);
            for l in LAYOUTS {
                let Some(tiles) = l.layout.fit(m, k) else { continue };
                let bytes = l.layout.pack(&codes, m, k, 0.37, tiles);
                let size = l.tensor_type.byte_size(&[k as u64, m as u64]).unwrap() as usize;
                assert_eq!(bytes.len(), size, "{} {m}x{k}", l.name);
                let (back, scale) = l.layout.unpack(&bytes, m, k, tiles).unwrap();
                assert!(back == codes, "{} {m}x{k} {tiles:?}", l.name);
                if !matches!(l.layout, Layout::TQ1_0 | Layout::TQ2_0) {
                    assert_eq!(scale, 0.37);
                }
                *accepted.entry(l.name).or_insert(0) += 1;
            }
        }
        // Every layout was exercised on many shapes.
        assert!(LAYOUTS.iter().all(|l| accepted.get(l.name).copied().unwrap_or(0) >= 10), "{accepted:?}");
    }
}
