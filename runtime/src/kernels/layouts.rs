//! Σ t·q for every ternary layout, over a range of rows of one matrix, dispatched by
//! [`Layout`]. Every path computes the same exact integers as the I2_S kernels (tested in
//! `tests/runtime.rs`: all layouts give bit-identical hidden states).
//!
//! - I2_S: `kernels::i2s` (scalar, AVX2, AVX-512 VNNI, NEON).
//! - TQ2_0: scalar, and AVX2 (its 2-bit codes are I2_S's with the shift order reversed:
//!   byte `qs[32h + m]` holds weights 128h + m + 32l in bits 2l..2l+1).
//! - TQ1_0: scalar (base-3 digits decoded per block).
//! - TL1: AVX2 lookup-table kernel (bm = 32): per token, int16 tables of the 9 sums of each
//!   activation pair, `pshufb` lookups for 16 rows at a time, int16 sums per K block — exact.
//! - TL2: AVX2 lookup-table kernel: int16 tables of the 14 triple magnitudes per token, the sign
//!   plane turned into per-row masks, the pair tail through TL1-style tables — exact.
//! - TL1 (bm = 64), and every layout without AVX2: scalar, one row block at a time.

use crate::cpu::Isa;
use crate::kernels::i2s;
use tern_formats::tiles::Tiles;
use tern_formats::{Layout, i2s as i2s_format, tl1, tl2, tq1_0, tq2_0};

/// A ternary matrix's bytes with what is needed to read them.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub tiles: Option<Tiles>,
    /// The whole tensor's data.
    pub bytes: &'a [u8],
}

impl Packed<'_> {
    /// Rows stored together (the unit rows can be split at): BM for tiled layouts, else 1.
    pub fn row_group(&self) -> usize {
        self.tiles.map_or(1, |t| t.rows)
    }

    /// Activations per token the kernels read (I2_S rows are padded to 128-weight blocks).
    pub fn padded_cols(&self) -> usize {
        match self.layout {
            Layout::I2S => i2s_format::row_bytes(self.cols) * 4,
            _ => self.cols,
        }
    }
}

fn dot(codes: &[i8], act: &[i8]) -> i32 {
    codes.iter().zip(act).map(|(&t, &q)| t as i32 * q as i32).sum()
}

/// `out[(r − r0)·tokens + t] = Σ_k t[r,k]·q[t,k]` for rows `r0..r1` (multiples of the row group;
/// `acts` holds `tokens` rows of `padded_cols()` activations, `sums` their Σq).
pub fn gemm_rows(isa: Isa, w: &Packed, r0: usize, r1: usize, acts: &[i8], sums: &[i32], out: &mut [i32]) {
    let tokens = sums.len();
    let k = w.padded_cols();
    assert!(
        r0 <= r1
            && r1 <= w.rows
            && r0.is_multiple_of(w.row_group())
            && (r1.is_multiple_of(w.row_group()) || r1 == w.rows)
    );
    assert_eq!((acts.len(), out.len()), (tokens * k, (r1 - r0) * tokens));
    match w.layout {
        Layout::I2S => {
            let rb = i2s_format::row_bytes(w.cols);
            i2s::gemm(isa, &w.bytes[r0 * rb..r1 * rb], rb, acts, sums, out);
        }
        Layout::TQ2_0 => {
            let rb = w.cols / tq2_0::BLOCK * tq2_0::BLOCK_BYTES;
            for (r, o) in (r0..r1).zip(out.chunks_exact_mut(tokens)) {
                let row = &w.bytes[r * rb..][..rb];
                for ((slot, act), &sum) in o.iter_mut().zip(acts.chunks_exact(k)).zip(sums) {
                    *slot = tq2_dot(isa, row, act, sum);
                }
            }
        }
        Layout::TQ1_0 => {
            let rb = w.cols / tq1_0::BLOCK * tq1_0::BLOCK_BYTES;
            let mut codes = vec![0i8; w.cols];
            for (r, o) in (r0..r1).zip(out.chunks_exact_mut(tokens)) {
                let row = &w.bytes[r * rb..][..rb];
                for (block, dst) in
                    row.chunks_exact(tq1_0::BLOCK_BYTES).zip(codes.chunks_exact_mut(tq1_0::BLOCK))
                {
                    tq1_0::decode_block(block, dst);
                }
                for (slot, act) in o.iter_mut().zip(acts.chunks_exact(k)) {
                    *slot = dot(&codes, act);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Layout::TL1
            if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
                && isa.supported()
                && w.tiles.is_some_and(|t| t.sub_rows == 32) =>
        {
            let t = w.tiles.expect("checked above");
            let mut lut = vec![0u8; w.cols / 8 * 128];
            let mut acc = vec![0i32; t.rows];
            for (o_tok, act) in acts.chunks_exact(k).enumerate() {
                tl1_tables(act, &mut lut);
                for i0 in r0 / t.rows..r1.div_ceil(t.rows) {
                    let block = &w.bytes[i0 * t.rows * w.cols / 4..][..t.rows * w.cols / 4];
                    // SAFETY: AVX2 was detected; block and lut sizes follow the tiles (checked at load).
                    unsafe { tl1_block_avx2(block, &lut, w.cols, t, &mut acc) };
                    for (j, &v) in acc.iter().enumerate() {
                        out[(i0 * t.rows + j - r0) * tokens + o_tok] = v;
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Layout::TL2 if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) && isa.supported() => {
            let t = w.tiles.expect("tiled layouts carry tiles");
            let k3 = w.cols - w.cols % t.cols;
            let mut tri = vec![0u8; k3 / 3 * 32];
            let mut pairs = vec![0u8; (w.cols - k3) / 2 * 32];
            let mut acc = vec![0i32; t.rows];
            for (o_tok, act) in acts.chunks_exact(k).enumerate() {
                tl2_tables(act, k3, &mut tri, &mut pairs);
                for i0 in r0 / t.rows..r1.div_ceil(t.rows) {
                    // SAFETY: AVX2 was detected; the planes' extents follow the tiles (checked at load).
                    unsafe { tl2_block_avx2(w.bytes, w.rows, w.cols, t, i0, &tri, &pairs, &mut acc) };
                    for (j, &v) in acc.iter().enumerate() {
                        out[(i0 * t.rows + j - r0) * tokens + o_tok] = v;
                    }
                }
            }
        }
        Layout::TL1 | Layout::TL2 => {
            let t = w.tiles.expect("tiled layouts carry tiles");
            let mut codes = vec![0i8; t.rows * w.cols];
            for i0 in r0 / t.rows..r1.div_ceil(t.rows) {
                match w.layout {
                    Layout::TL1 => tl1::decode_row_block(w.bytes, w.cols, t, i0, &mut codes),
                    _ => tl2::decode_row_block(w.bytes, w.rows, w.cols, t, i0, &mut codes),
                }
                for (j, row) in codes.chunks_exact(w.cols).enumerate() {
                    let r = i0 * t.rows + j;
                    for (slot, act) in out[(r - r0) * tokens..][..tokens].iter_mut().zip(acts.chunks_exact(k))
                    {
                        *slot = dot(row, act);
                    }
                }
            }
        }
    }
}

/// TL1 lookup tables for one token, in the order the AVX2 kernel reads them: for each group of
/// 8 columns (pairs P..P+3), 128 bytes = [low bytes of P | of P+2], [high bytes of P | of P+2],
/// [low of P+1 | of P+3], [high of P+1 | of P+3], each half 16 entries: entry i = (i/3 − 1)·a₀ +
/// (i%3 − 1)·a₁ for the pair's activations (i ≤ 8; the rest 0). Exact in int16 (|v| ≤ 256).
#[cfg(target_arch = "x86_64")]
fn tl1_tables(act: &[i8], lut: &mut [u8]) {
    for (g, dst) in lut.chunks_exact_mut(128).enumerate() {
        let pair = |p: usize, i: usize| -> i16 {
            let (a0, a1) = (act[2 * p] as i16, act[2 * p + 1] as i16);
            if i > 8 { 0 } else { (i as i16 / 3 - 1) * a0 + (i as i16 % 3 - 1) * a1 }
        };
        let p = 4 * g;
        for (slot, (pa, pb)) in [(0usize, (p, p + 2)), (2, (p + 1, p + 3))] {
            for i in 0..16 {
                let (va, vb) = (pair(pa, i), pair(pb, i));
                dst[slot * 32 + i] = va as u8;
                dst[slot * 32 + 16 + i] = vb as u8;
                dst[(slot + 1) * 32 + i] = (va >> 8) as u8;
                dst[(slot + 1) * 32 + 16 + i] = (vb >> 8) as u8;
            }
        }
    }
}

/// Σ t·q for the BM rows of one TL1 row block (bm = 32, so by = 8: each 32-byte load holds 16
/// rows × 8 columns, the first 16 bytes columns c..c+4, the next 16 columns c+4..c+8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tl1_block_avx2(block: &[u8], lut: &[u8], k: usize, t: Tiles, acc: &mut [i32]) {
    use std::arch::x86_64::*;
    let (bm_big, bk) = (t.rows, t.cols);
    assert!(
        t.sub_rows == 32 && block.len() == bm_big * k / 4 && lut.len() == k / 8 * 128 && acc.len() == bm_big
    );
    acc.fill(0);
    let nib = _mm256_set1_epi8(0x0F);
    let mut pos = 0;
    for j0 in 0..k / bk {
        for r0 in 0..bm_big / 32 {
            // int16 partial sums of rows 0-15 and 16-31 of this sub-tile, low/high unpack halves;
            // lane 0 and lane 1 hold different columns of the same rows.
            let mut a = [_mm256_setzero_si256(); 4];
            for j2 in 0..bk / 8 {
                // SAFETY: tables for column group (j0·BK/8 + j2) lie in lut; 64 bytes of this
                // (j0, r0, j2) lie in block (sizes asserted above).
                unsafe {
                    let tb = lut.as_ptr().add((j0 * bk / 8 + j2) * 128);
                    let th_lo = _mm256_loadu_si256(tb as *const __m256i);
                    let th_hi = _mm256_loadu_si256(tb.add(32) as *const __m256i);
                    let tl_lo = _mm256_loadu_si256(tb.add(64) as *const __m256i);
                    let tl_hi = _mm256_loadu_si256(tb.add(96) as *const __m256i);
                    for half in 0..2 {
                        let w = _mm256_loadu_si256(block.as_ptr().add(pos + 32 * half) as *const __m256i);
                        let ih = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
                        let il = _mm256_and_si256(w, nib);
                        for (idx, lo_t, hi_t) in [(ih, th_lo, th_hi), (il, tl_lo, tl_hi)] {
                            let lo = _mm256_shuffle_epi8(lo_t, idx);
                            let hi = _mm256_shuffle_epi8(hi_t, idx);
                            a[2 * half] = _mm256_add_epi16(a[2 * half], _mm256_unpacklo_epi8(lo, hi));
                            a[2 * half + 1] = _mm256_add_epi16(a[2 * half + 1], _mm256_unpackhi_epi8(lo, hi));
                        }
                    }
                }
                pos += 64;
            }
            // Widen: unpacklo covers bytes 0-7 (rows 0-7) of each lane, unpackhi rows 8-15;
            // the two lanes are the same rows (different columns) and add up.
            let mut tmp = [0i16; 16];
            for (q, v) in a.iter().enumerate() {
                // SAFETY: tmp holds 16 i16 = 32 bytes.
                unsafe { _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, *v) };
                let base = r0 * 32 + (q / 2) * 16 + (q % 2) * 8;
                for i in 0..8 {
                    acc[base + i] += tmp[i] as i32 + tmp[8 + i] as i32;
                }
            }
        }
    }
}

/// TL2 tables for one token: for each triple T of the first `k3` columns, 32 bytes = 16 low
/// bytes and 16 high bytes of the int16 entries `lut[i] = Σ digits(i)·a` over the balanced-ternary
/// digits of i = 9·w0 + 3·w1 + w2 (i ≤ 13; the rest 0); for each pair of the tail, TL1's table.
#[cfg(target_arch = "x86_64")]
fn tl2_tables(act: &[i8], k3: usize, tri: &mut [u8], pairs: &mut [u8]) {
    for (tt, dst) in tri.chunks_exact_mut(32).enumerate() {
        let a = &act[3 * tt..3 * tt + 3];
        for i in 0..16 {
            let v: i16 = if i > 13 {
                0
            } else {
                let (mut rest, mut sum) = (i as i32, 0i32);
                for j in (0..3).rev() {
                    let digit = ((rest % 3) + 4) % 3 - 1;
                    sum += digit * a[j] as i32;
                    rest = (rest - digit) / 3;
                }
                sum as i16
            };
            dst[i] = v as u8;
            dst[16 + i] = (v >> 8) as u8;
        }
    }
    for (p, dst) in pairs.chunks_exact_mut(32).enumerate() {
        let (a0, a1) = (act[k3 + 2 * p] as i16, act[k3 + 2 * p + 1] as i16);
        for i in 0..16 {
            let v = if i > 8 { 0 } else { (i as i16 / 3 - 1) * a0 + (i as i16 % 3 - 1) * a1 };
            dst[i] = v as u8;
            dst[16 + i] = (v >> 8) as u8;
        }
    }
}

/// Looks up 32 rows' int16 entries for the nibbles `idx` (one byte per row, in TL2's permuted
/// order) in a 16-entry table broadcast to both lanes: returns (rows 0-15, rows 16-31).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tl2_lookup(
    idx: std::arch::x86_64::__m256i,
    table: &[u8],
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // SAFETY: table holds 32 bytes (low plane, high plane).
    let (lo_t, hi_t) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr() as *const __m128i)),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr().add(16) as *const __m128i)),
        )
    };
    let lo = _mm256_shuffle_epi8(lo_t, idx);
    let hi = _mm256_shuffle_epi8(hi_t, idx);
    // Byte p of the load is row PERM[p/8]·8 + p%8: unpacking bytes 0-7 of each lane gives rows
    // 0-7 then 8-15, bytes 8-15 give rows 16-23 then 24-31 — natural order.
    (_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi))
}

/// Σ t·q for the BM rows of TL2 row block `i0` (bm = 32). Planes as in `formats::tl2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tl2_block_avx2(
    bytes: &[u8],
    m: usize,
    k: usize,
    t: Tiles,
    i0: usize,
    tri: &[u8],
    pairs: &[u8],
    acc: &mut [i32],
) {
    use std::arch::x86_64::*;
    let (bm_big, bk) = (t.rows, t.cols);
    let k3 = k - k % bk;
    let k2 = k % bk;
    assert!(acc.len() == bm_big && tri.len() == k3 / 3 * 32 && pairs.len() == k2 / 2 * 32);
    assert!(bytes.len() >= m * k3 / 6 + m * k3 / 24 + m * k2 / 4);
    acc.fill(0);
    let nib = _mm256_set1_epi8(0x0F);
    let widen = |acc: &mut [i32], base: usize, v: __m256i| {
        let mut tmp = [0i16; 16];
        // SAFETY: tmp holds 32 bytes.
        unsafe { _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, v) };
        for (a, x) in acc[base..base + 16].iter_mut().zip(tmp) {
            *a += x as i32;
        }
    };
    let mut a_pos = i0 * bm_big * k3 / 6;
    let mut s_pos = m * k3 / 6 + i0 * bm_big * k3 / 24;
    for t0 in 0..k3 / bk {
        for r0 in 0..bm_big / 32 {
            let (mut lo_rows, mut hi_rows) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for g in 0..bk / 24 {
                // SAFETY: 16 sign words of group g (32 bytes) lie in the S plane.
                let words =
                    unsafe { _mm256_loadu_si256(bytes.as_ptr().add(s_pos + 32 * g) as *const __m256i) };
                for t2 in 0..4 {
                    // 32 rows × 6 columns: the high nibble is triple 2·t2, the low one 2·t2 + 1
                    // of this group of 8 triples.
                    // SAFETY: the A plane holds these 32 bytes.
                    let w = unsafe {
                        _mm256_loadu_si256(bytes.as_ptr().add(a_pos + 32 * (4 * g + t2)) as *const __m256i)
                    };
                    for (tt, idx) in [
                        (2 * t2, _mm256_and_si256(_mm256_srli_epi16(w, 4), nib)),
                        (2 * t2 + 1, _mm256_and_si256(w, nib)),
                    ] {
                        let triple = (t0 * bk + 24 * g) / 3 + tt;
                        let (v0, v1) = tl2_lookup(idx, &tri[32 * triple..][..32]);
                        // Sign of triple tt: bit 15 − 2tt (rows 0-15) / 14 − 2tt (rows 16-31) of word u = row u.
                        let m0 =
                            _mm256_srai_epi16(_mm256_sll_epi16(words, _mm_cvtsi32_si128(2 * tt as i32)), 15);
                        let m1 = _mm256_srai_epi16(
                            _mm256_sll_epi16(words, _mm_cvtsi32_si128(2 * tt as i32 + 1)),
                            15,
                        );
                        lo_rows = _mm256_add_epi16(lo_rows, _mm256_xor_si256(_mm256_add_epi16(v0, m0), m0));
                        hi_rows = _mm256_add_epi16(hi_rows, _mm256_xor_si256(_mm256_add_epi16(v1, m1), m1));
                    }
                }
            }
            a_pos += 32 * bk / 6;
            s_pos += 32 * bk / 24;
            widen(acc, r0 * 32, lo_rows);
            widen(acc, r0 * 32 + 16, hi_rows);
        }
    }
    // The pair tail (K2 columns, TL1's code, 32-row chunks in the same permuted order).
    let mut b_pos = m * k3 / 6 + m * k3 / 24 + i0 * bm_big * k2 / 4;
    for j0 in 0..k2 / 32 {
        for r0 in 0..bm_big / 32 {
            let (mut lo_rows, mut hi_rows) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for j2 in 0..8 {
                // SAFETY: the B plane holds these 32 bytes.
                let w = unsafe { _mm256_loadu_si256(bytes.as_ptr().add(b_pos) as *const __m256i) };
                b_pos += 32;
                let pair = (j0 * 32 + j2 * 4) / 2;
                for (p, idx) in [
                    (pair, _mm256_and_si256(_mm256_srli_epi16(w, 4), nib)),
                    (pair + 1, _mm256_and_si256(w, nib)),
                ] {
                    let (v0, v1) = tl2_lookup(idx, &pairs[32 * p..][..32]);
                    lo_rows = _mm256_add_epi16(lo_rows, v0);
                    hi_rows = _mm256_add_epi16(hi_rows, v1);
                }
            }
            widen(acc, r0 * 32, lo_rows);
            widen(acc, r0 * 32 + 16, hi_rows);
        }
    }
}

/// Σ t·q over a TQ2_0 row (`act_sum` = Σq, used by the unsigned-code SIMD path).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn tq2_dot(isa: Isa, row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if isa.supported() => {
            // SAFETY: AVX2 was detected (Isa::supported); lengths are checked inside.
            unsafe { tq2_dot_avx2(row, act) - act_sum }
        }
        _ => tq2_dot_scalar(row, act),
    }
}

pub fn tq2_dot_scalar(row: &[u8], act: &[i8]) -> i32 {
    let mut codes = [0i8; tq2_0::BLOCK];
    row.chunks_exact(tq2_0::BLOCK_BYTES)
        .zip(act.chunks_exact(tq2_0::BLOCK))
        .map(|(block, a)| {
            // Code 3 never reaches a kernel: the loader rejects it.
            tq2_0::decode_block(block, &mut codes).expect("validated at load");
            dot(&codes, a)
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tq2_dot_avx2(row: &[u8], act: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    assert_eq!(row.len() / tq2_0::BLOCK_BYTES * tq2_0::BLOCK, act.len());
    let mask = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_si256();
    for (b, block) in row.chunks_exact(tq2_0::BLOCK_BYTES).enumerate() {
        for h in 0..2 {
            // SAFETY: 32 bytes at block[32h] lie within the 66-byte block; 128 activations at
            // act[256b + 128h] lie within act (length asserted above).
            unsafe {
                let packed = _mm256_loadu_si256(block.as_ptr().add(32 * h) as *const __m256i);
                let q = act.as_ptr().add(tq2_0::BLOCK * b + 128 * h);
                // TQ2_0: the I2_S codes with the shift order reversed.
                let codes = [0, 2, 4, 6]
                    .map(|shift| _mm256_and_si256(_mm256_srl_epi16(packed, _mm_cvtsi32_si128(shift)), mask));
                acc = crate::kernels::i2s::x86::madd_codes4(acc, codes, q);
            }
        }
    }
    crate::kernels::i2s::x86::hsum256(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Every layout's kernel equals the naive product of the codes it was packed from, on every
    /// instruction set, for whole matrices and for row ranges.
    #[test]
    fn every_layout_computes_the_exact_product() {
        for (m, k) in [(64usize, 256usize), (128, 512), (256, 288), (96, 768), (64, 320), (32, 2560)] {
            let mut r = stream(m as u64 * 31 + k as u64);
            let codes: Vec<i8> = (0..m * k).map(|_| (r() % 3) as i8 - 1).collect();
            let tokens = 3;
            let acts: Vec<i8> = (0..tokens * k).map(|i| if i % 17 == 0 { -128 } else { r() as i8 }).collect();
            let want: Vec<i32> = (0..m)
                .flat_map(|row| {
                    let c = &codes[row * k..][..k];
                    acts.chunks_exact(k).map(move |a| dot(c, a)).collect::<Vec<_>>()
                })
                .collect();
            for layout in [Layout::I2S, Layout::TL1, Layout::TL2, Layout::TQ1_0, Layout::TQ2_0] {
                let Some(tiles) = layout.fit(m, k) else { continue };
                let bytes = layout.pack(&codes, m, k, 1.0, tiles);
                let w = Packed { layout, rows: m, cols: k, tiles, bytes: &bytes };
                let kp = w.padded_cols();
                let mut padded = vec![0i8; tokens * kp];
                for (dst, src) in padded.chunks_exact_mut(kp).zip(acts.chunks_exact(k)) {
                    dst[..k].copy_from_slice(src);
                }
                let sums: Vec<i32> =
                    acts.chunks_exact(k).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
                for isa in crate::cpu::available() {
                    let mut out = vec![0; m * tokens];
                    gemm_rows(isa, &w, 0, m, &padded, &sums, &mut out);
                    assert_eq!(out, want, "{} {m}x{k} {}", layout.name(), isa.name());
                    let g = w.row_group();
                    if 2 * g > m {
                        continue;
                    }
                    let mut part = vec![0; g * tokens];
                    gemm_rows(isa, &w, g, 2 * g, &padded, &sums, &mut part);
                    assert_eq!(
                        part[..],
                        want[g * tokens..2 * g * tokens],
                        "{} rows {g}..{}",
                        layout.name(),
                        2 * g
                    );
                }
            }
        }
    }
}
