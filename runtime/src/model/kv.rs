//! The KV cache's storage: keys or values of every layer and position, in f32 (the default: the
//! numbers the f32 reference computes) or in f16 (`--kv-type f16`, llama.cpp's default: half the
//! memory — 9.4 MiB instead of 18.75 for 128 positions of 2B-4T — at a rounding of each cached
//! element to 11 significant bits).

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;
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

/// One sequence's KV cache: keys and values of every layer for up to `ctx` positions, the first
/// `pos` of them written. A [`super::Session`] owns one; a server keeps one per slot and runs
/// them together through one session (`Session::forward_batch`).
pub struct KvCache {
    pub(super) pos: usize,
    pub(super) ctx: usize,
    /// `[layers][kv_heads][ctx][head_dim]` (head-major: see `Session::kv_index`).
    pub(super) keys: KvStore,
    pub(super) values: KvStore,
}

impl KvCache {
    /// A cache for `ctx` positions (at least 1, at most the model's context), allocated zeroed so
    /// untouched positions cost no resident memory.
    pub fn new(config: &super::ModelConfig, ctx: usize, ty: KvType) -> KvCache {
        let ctx = ctx.clamp(1, config.context.max(1));
        let len = KvCache::elements(config, ctx);
        KvCache { pos: 0, ctx, keys: KvStore::new(ty, len), values: KvStore::new(ty, len) }
    }

    /// Bytes a cache of `ctx` positions of `ty` takes once every position is written.
    pub fn bytes_for(config: &super::ModelConfig, ctx: usize, ty: KvType) -> usize {
        2 * KvCache::elements(config, ctx.clamp(1, config.context.max(1))) * ty.bytes()
    }

    fn elements(c: &super::ModelConfig, ctx: usize) -> usize {
        c.layers * ctx * c.kv_heads * c.head_dim
    }

    /// Positions written.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Positions it has room for.
    pub fn context(&self) -> usize {
        self.ctx
    }

    /// Forgets every position (keeps the allocation).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Keeps only the first `pos` positions.
    pub fn rewind(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }
}

/// An empty cache (no room): what a session holds while its own cache is lent to a batch.
impl Default for KvCache {
    fn default() -> KvCache {
        KvCache { pos: 0, ctx: 0, keys: KvStore::F32(Vec::new()), values: KvStore::F32(Vec::new()) }
    }
}

/// Where one layer's cached rows sit in a store: `heads` KV heads, head g's rows starting at
/// element `at + g·ctx·d` (head-major, so one head's rows are one contiguous run and reading
/// them one forward stream), the first `positions` of them written, `d` elements each.
#[derive(Debug, Clone, Copy)]
pub(super) struct LayerSpan {
    pub at: usize,
    pub heads: usize,
    pub ctx: usize,
    pub positions: usize,
    pub d: usize,
}

impl LayerSpan {
    /// Where head g's rows start.
    fn head(&self, g: usize) -> usize {
        self.at + g * self.ctx * self.d
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
            // Zeroed u16s come from the allocator already zero (calloc: pages untouched until
            // written); `vec![f16::ZERO; len]` wrote every element, so a 4096-position f16 cache
            // was resident in full (315 MB for 2B-4T) and outweighed the f32 one.
            KvType::F16 => KvStore::F16(vec![0u16; len].reinterpret_into()),
        }
    }

    /// Stores `src` at element `at` (f16: rounded to nearest, ties to even).
    pub(super) fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            KvStore::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            KvStore::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    /// One layer's cached rows for attention, and how far apart two heads' first rows are in
    /// them. `convert_now`: convert an f16 store's rows here, once (a prompt's attention reads
    /// each row once per query token and head); otherwise rows are converted as they are read
    /// (one token reads each row once per head, and copying a long context per token costs more
    /// than the f16 cache saves). An f32 store is borrowed either way.
    pub(super) fn layer(&self, span: LayerSpan, convert_now: bool) -> (LayerRows<'_>, usize) {
        let (at, rows) = (span.at, span.positions * span.d);
        let end = span.head(span.heads.saturating_sub(1)) + rows;
        match self {
            KvStore::F32(v) => (LayerRows::F32(Cow::Borrowed(&v[at..end])), span.ctx * span.d),
            KvStore::F16(v) if convert_now => {
                let mut converted = vec![0f32; span.heads * rows];
                for (g, out) in converted.chunks_exact_mut(rows.max(1)).enumerate() {
                    v[span.head(g)..span.head(g) + rows].convert_to_f32_slice(out);
                }
                (LayerRows::F32(Cow::Owned(converted)), rows)
            }
            KvStore::F16(v) => (LayerRows::F16(&v[at..end]), span.ctx * span.d),
        }
    }

    /// Asks for up to `limit` bytes of each head's written rows to be brought into L2: a hint,
    /// no effect off x86. Head-major rows make this one short run per head.
    pub(super) fn prefetch(&self, span: LayerSpan, limit: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
            let (base, size) = match self {
                KvStore::F32(v) => (v.as_ptr() as *const i8, 4),
                KvStore::F16(v) => (v.as_ptr() as *const i8, 2),
            };
            for g in 0..span.heads {
                let start = span.head(g) * size;
                for offset in (0..(span.positions * span.d * size).min(limit)).step_by(64) {
                    // SAFETY: a prefetch never faults, whatever the address.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(start + offset)) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (span, limit);
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
    /// rows are zero. Two heads with room for three positions, two of them cached; the row
    /// written is head 1's position 1, found through the returned distance between heads
    /// whether the rows are borrowed (three positions apart) or converted (two).
    #[test]
    fn both_stores_give_back_what_was_written() {
        for d in [128, 301] {
            let row: Vec<f32> = (0..d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3).collect();
            let rounded: Vec<f32> = row.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            assert!(rounded != row, "the test would not see f16 rounding");
            let (heads, ctx, positions) = (2, 3, 2);
            for (ty, want) in [(KvType::F32, &row), (KvType::F16, &rounded)] {
                let mut s = KvStore::new(ty, heads * ctx * d);
                s.write((ctx + 1) * d, &row);
                let mut buf = Vec::new();
                for convert_now in [true, false] {
                    let span = LayerSpan { at: 0, heads, ctx, positions, d };
                    let (layer, head) = s.layer(span, convert_now);
                    assert_eq!(head, if convert_now && ty == KvType::F16 { positions * d } else { ctx * d });
                    let got = layer.row(head + d, d, &mut buf, f16_to_f32).to_vec();
                    assert_eq!(got, want[..], "{} {d}", ty.name());
                    for at in [0, d, head] {
                        let zero = layer.row(at, d, &mut buf, f16_to_f32);
                        assert!(zero.iter().all(|&x| x == 0.0), "{} at {at}", ty.name());
                    }
                }
            }
        }
    }
}
