//! The GGUF tensor-type table: one row per type id tern knows, and every size computed from it.
//!
//! Ids are ABI and come from bitnet.cpp's ggml fork (which agrees with mainline llama.cpp below
//! 34; mainline reuses 36..41 for other types, so a tern file is always read with these
//! semantics). An id that is not in the table is an error naming the id, never a guess.
//!
//! Most types are "blocks of `block_elems` elements take `block_bytes` bytes". bitnet.cpp's
//! ternary types carry one f32 scale per tensor in a 32-byte tail instead, so their size is a
//! rule of their own ([`SizeRule`]).

use crate::layout::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    TQ1_0,
    TQ2_0,
    I2S,
    TL1,
    TL2,
}

/// How a tensor's byte size follows from its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Rows of `ne[0]` elements, cut into blocks of `elems` elements of `bytes` bytes each;
    /// `ne[0]` must be a multiple of `elems`.
    Blocks { elems: u64, bytes: u64 },
    /// bitnet.cpp I2_S (x86): each row padded to whole 128-weight blocks of 32 bytes, then a
    /// 32-byte tail holding the f32 scale. Equals bitnet.cpp's `M*K/4 + 32` whenever K % 128 == 0.
    I2S,
    /// bitnet.cpp TL1: `M*K/4 + 32` (scale tail or `<name>_scale` tensor after it).
    TL1,
    /// bitnet.cpp TL2: `(K-256)*M/3*5/8 + 256*M/2*4/8`, rounded up to 32, plus 32.
    TL2,
}

pub struct TypeTraits {
    pub ty: TensorType,
    pub id: u32,
    pub name: &'static str,
    pub size: SizeRule,
    /// The ternary layout this type stores, if it is one tern packs.
    pub layout: Option<Layout>,
}

const fn blocks(elems: u64, bytes: u64) -> SizeRule {
    SizeRule::Blocks { elems, bytes }
}

/// The table. A new type is one row here (plus its module if tern packs it).
pub const TYPES: &[TypeTraits] = &[
    TypeTraits { ty: TensorType::F32, id: 0, name: "F32", size: blocks(1, 4), layout: None },
    TypeTraits { ty: TensorType::F16, id: 1, name: "F16", size: blocks(1, 2), layout: None },
    TypeTraits { ty: TensorType::Q4_0, id: 2, name: "Q4_0", size: blocks(32, 18), layout: None },
    TypeTraits { ty: TensorType::Q4_1, id: 3, name: "Q4_1", size: blocks(32, 20), layout: None },
    TypeTraits { ty: TensorType::Q5_0, id: 6, name: "Q5_0", size: blocks(32, 22), layout: None },
    TypeTraits { ty: TensorType::Q5_1, id: 7, name: "Q5_1", size: blocks(32, 24), layout: None },
    TypeTraits { ty: TensorType::Q8_0, id: 8, name: "Q8_0", size: blocks(32, 34), layout: None },
    TypeTraits { ty: TensorType::Q8_1, id: 9, name: "Q8_1", size: blocks(32, 36), layout: None },
    TypeTraits { ty: TensorType::Q2K, id: 10, name: "Q2_K", size: blocks(256, 84), layout: None },
    TypeTraits { ty: TensorType::Q3K, id: 11, name: "Q3_K", size: blocks(256, 110), layout: None },
    TypeTraits { ty: TensorType::Q4K, id: 12, name: "Q4_K", size: blocks(256, 144), layout: None },
    TypeTraits { ty: TensorType::Q5K, id: 13, name: "Q5_K", size: blocks(256, 176), layout: None },
    TypeTraits { ty: TensorType::Q6K, id: 14, name: "Q6_K", size: blocks(256, 210), layout: None },
    TypeTraits { ty: TensorType::Q8K, id: 15, name: "Q8_K", size: blocks(256, 292), layout: None },
    TypeTraits { ty: TensorType::BF16, id: 30, name: "BF16", size: blocks(1, 2), layout: None },
    TypeTraits {
        ty: TensorType::TQ1_0,
        id: 34,
        name: "TQ1_0",
        size: blocks(256, 54),
        layout: Some(Layout::TQ1_0),
    },
    TypeTraits {
        ty: TensorType::TQ2_0,
        id: 35,
        name: "TQ2_0",
        size: blocks(256, 66),
        layout: Some(Layout::TQ2_0),
    },
    TypeTraits { ty: TensorType::I2S, id: 36, name: "I2_S", size: SizeRule::I2S, layout: Some(Layout::I2S) },
    TypeTraits { ty: TensorType::TL1, id: 38, name: "TL1", size: SizeRule::TL1, layout: Some(Layout::TL1) },
    TypeTraits { ty: TensorType::TL2, id: 39, name: "TL2", size: SizeRule::TL2, layout: Some(Layout::TL2) },
];

impl TensorType {
    #[allow(clippy::expect_used)] // a static table, complete by construction (tested)
    pub fn traits(self) -> &'static TypeTraits {
        // The table is tiny; a linear scan keeps it the single source of truth.
        TYPES.iter().find(|t| t.ty == self).expect("every TensorType has a row in TYPES")
    }

    pub fn from_id(id: u32) -> Option<TensorType> {
        TYPES.iter().find(|t| t.id == id).map(|t| t.ty)
    }

    pub fn from_name(name: &str) -> Option<TensorType> {
        TYPES.iter().find(|t| t.name.eq_ignore_ascii_case(name)).map(|t| t.ty)
    }

    pub fn id(self) -> u32 {
        self.traits().id
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// True for types whose weights are ternary codes.
    pub fn is_ternary(self) -> bool {
        matches!(
            self,
            TensorType::TQ1_0 | TensorType::TQ2_0 | TensorType::I2S | TensorType::TL1 | TensorType::TL2
        )
    }

    /// Byte size of a tensor with GGUF dims `ne` (innermost first), or why it cannot have one.
    pub fn byte_size(self, ne: &[u64]) -> Result<u64, String> {
        let k = ne.first().copied().unwrap_or(1);
        let rows = ne
            .iter()
            .skip(1)
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or("dimension product overflows")?;
        let overflow = || "size overflows".to_string();
        match self.traits().size {
            SizeRule::Blocks { elems, bytes } => {
                if k % elems != 0 {
                    return Err(format!(
                        "row length {k} is not a multiple of the {} block size {elems}",
                        self.name()
                    ));
                }
                (k / elems).checked_mul(bytes).and_then(|r| r.checked_mul(rows)).ok_or_else(overflow)
            }
            SizeRule::I2S => rows
                .checked_mul(k.div_ceil(128))
                .and_then(|b| b.checked_mul(32))
                .and_then(|b| b.checked_add(32))
                .ok_or_else(overflow),
            SizeRule::TL1 => {
                rows.checked_mul(k).map(|n| n / 4).and_then(|b| b.checked_add(32)).ok_or_else(overflow)
            }
            SizeRule::TL2 => {
                if k < 256 {
                    return Err(format!("TL2 needs a row length of at least 256, got {k}"));
                }
                let three = (k - 256).checked_mul(rows).map(|n| n / 3 * 5 / 8).ok_or_else(overflow)?;
                let two = 256u64.checked_mul(rows).map(|n| n / 2 * 4 / 8).ok_or_else(overflow)?;
                three.checked_add(two).map(|n| n.div_ceil(32) * 32 + 32).ok_or_else(overflow)
            }
        }
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The names of every type id tern knows, for error messages.
pub fn known_type_names() -> String {
    TYPES.iter().map(|t| format!("{} ({})", t.name, t.id)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        for t in TYPES {
            assert_eq!(TensorType::from_id(t.id), Some(t.ty));
            assert_eq!(TensorType::from_name(t.name), Some(t.ty));
            assert_eq!(TYPES.iter().filter(|u| u.id == t.id).count(), 1);
        }
        assert_eq!(TensorType::from_id(37), None); // I8_S is bitnet.cpp-internal, never in files
    }

    #[test]
    fn sizes_match_the_formats() {
        // bitnet.cpp I2_S: M*K/4 + 32 for K % 128 == 0 (shared vectors: 128x256 → 8224 bytes).
        assert_eq!(TensorType::I2S.byte_size(&[256, 128]), Ok(8224));
        assert_eq!(TensorType::I2S.byte_size(&[2560, 640]), Ok(409_632));
        // Rows padded to whole blocks: K = 96 → one block per row.
        assert_eq!(TensorType::I2S.byte_size(&[96, 4]), Ok(4 * 32 + 32));
        // TL2 vectors from bitnet.cpp: 256x288 → 18090 payload bytes, i.e. padded to 18112 + 32.
        assert_eq!(TensorType::TL2.byte_size(&[288, 256]), Ok(18112 + 32));
        assert_eq!(TensorType::TQ2_0.byte_size(&[512, 3]), Ok(2 * 66 * 3));
        assert!(TensorType::TQ2_0.byte_size(&[320, 3]).is_err());
        assert_eq!(TensorType::F16.byte_size(&[7]), Ok(14));
        assert!(TensorType::F32.byte_size(&[u64::MAX, 2]).is_err());
    }
}
