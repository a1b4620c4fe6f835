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
    pub fn parse(name: &str) -> Option<KvType> {
        [KvType::F32, KvType::F16].into_iter().find(|t| t.name() == name)
    }

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

    /// The `len` elements from `at` (one layer's cached positions) for reading rows as f32.
    /// `convert_now`: convert an f16 store's elements here, once (a prompt's attention reads each
    /// row once per query token and head); otherwise rows are converted as they are read (one
    /// token reads each row once per head, and copying a long context per token costs more than
    /// the f16 cache saves). An f32 store is borrowed either way.
    pub(super) fn layer(&self, at: usize, len: usize, convert_now: bool) -> LayerRows<'_> {
        match self {
            KvStore::F32(v) => LayerRows::F32(Cow::Borrowed(&v[at..at + len])),
            KvStore::F16(v) if convert_now => LayerRows::F32(Cow::Owned(v[at..at + len].to_f32_vec())),
            KvStore::F16(v) => LayerRows::F16(&v[at..at + len]),
        }
    }
}

/// One layer's cached keys or values, read a row at a time as f32 ([`KvStore::layer`]).
pub(super) enum LayerRows<'a> {
    F32(Cow<'a, [f32]>),
    F16(&'a [f16]),
}

impl LayerRows<'_> {
    /// Elements `at..at + len`; from f16, converted into `buf` by `convert` (each f16 is exactly
    /// an f32, so every conversion gives the same bits: the caller picks the fastest it may use).
    #[inline(always)]
    pub(super) fn row<'b>(
        &'b self,
        at: usize,
        len: usize,
        buf: &'b mut Vec<f32>,
        convert: impl Fn(&[f16], &mut [f32]),
    ) -> &'b [f32] {
        match self {
            LayerRows::F32(v) => &v[at..at + len],
            LayerRows::F16(v) => {
                buf.resize(len, 0.0);
                convert(&v[at..at + len], buf);
                buf
            }
        }
    }
}

/// The portable f16 → f32 row conversion (the `half` crate's, F16C when it detects it).
pub(super) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    src.convert_to_f32_slice(dst);
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
                let mut buf = Vec::new();
                for convert_now in [true, false] {
                    let layer = s.layer(0, 3 * len, convert_now);
                    assert_eq!(layer.row(len, len, &mut buf, f16_to_f32), &want[..], "{} {len}", ty.name());
                    assert!(
                        layer.row(0, len, &mut buf, f16_to_f32).iter().all(|&x| x == 0.0),
                        "{}",
                        ty.name()
                    );
                }
            }
        }
    }
}
