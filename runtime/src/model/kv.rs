//! The KV cache's storage: keys or values of every layer and position, in f32 (the default: the
//! numbers the f32 reference computes) or in f16 (`--kv-type f16`, llama.cpp's default: half the
//! memory — 9.4 MiB instead of 18.75 for 128 positions of 2B-4T — at a rounding of each cached
//! element to 11 significant bits).

use half::f16;
use half::slice::HalfFloatSliceExt;
use std::borrow::Cow;

/// The element type of a session's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// One cache (keys or values): rows of f32 in, f32 arithmetic out, stored as [`KvType`].
pub(super) enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvStore {
    /// `len` zeroed elements (untouched pages cost no resident memory).
    pub(super) fn new(ty: KvType, len: usize) -> KvStore {
        match ty {
            KvType::F32 => KvStore::F32(vec![0.0; len]),
            KvType::F16 => KvStore::F16(vec![f16::ZERO; len]),
        }
    }

    /// Stores `src` at element `at` (f16: rounded to nearest, ties to even).
    pub(super) fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvStore::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    /// Elements `at..at + len` as f32: borrowed from an f32 store, converted into `buf` from an
    /// f16 one (F16C when the CPU has it).
    pub(super) fn row<'a>(&'a self, at: usize, len: usize, buf: &'a mut [f32]) -> &'a [f32] {
        match self {
            KvStore::F32(v) => &v[at..at + len],
            KvStore::F16(v) => {
                v[at..at + len].convert_to_f32_slice(&mut buf[..len]);
                &buf[..len]
            }
        }
    }

    /// Elements `at..at + len` as f32, like [`KvStore::row`] but allocating for an f16 store:
    /// a prompt's attention converts a layer's keys and values once this way, rather than once
    /// per query token and head that reads them.
    pub(super) fn rows(&self, at: usize, len: usize) -> Cow<'_, [f32]> {
        match self {
            KvStore::F32(v) => Cow::Borrowed(&v[at..at + len]),
            KvStore::F16(v) => Cow::Owned(v[at..at + len].to_f32_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 rows come back exactly; f16 rows as the f16 rounding of each element (the `half`
    /// crate's scalar conversion, independent of the slice conversion used here); untouched
    /// rows are zero.
    #[test]
    fn both_stores_give_back_what_was_written() {
        for len in [128, 301] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3).collect();
            let rounded: Vec<f32> = row.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            assert!(rounded != row, "the test would not see f16 rounding");
            for (ty, want) in [(KvType::F32, &row), (KvType::F16, &rounded)] {
                let mut s = KvStore::new(ty, 3 * len);
                s.write(len, &row);
                assert_eq!(&s.rows(len, len)[..], &want[..], "{} {len}", ty.name());
                let mut buf = vec![0f32; len];
                assert_eq!(s.row(len, len, &mut buf), &want[..], "{} {len}", ty.name());
                assert!(s.rows(0, len).iter().all(|&x| x == 0.0), "{}", ty.name());
            }
        }
    }
}
