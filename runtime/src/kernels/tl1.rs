//! TL1 lookup-table kernels (bitnet.cpp's pair layout, `formats::tl1`): Σ t·q for the BM rows of
//! one row block, any tiles (BM, BK, bm = 32 or 64).
//!
//! Per token, [`tables`] holds for every activation pair (a₀, a₁) the 9 sums (i/3 − 1)·a₀ +
//! (i%3 − 1)·a₁ as int16, split into a plane of low bytes and a plane of high bytes (16 entries
//! each, the last 7 zero): 32 bytes per pair. A weight byte holds two 4-bit pair indices; one
//! `pshufb`/`tbl` per plane looks up 16 or 32 rows at once, and the two planes interleave back
//! into int16 sums. Those stay in int16 for one K block: |entry| ≤ 254 for activations in
//! −127..=127 (what `act::quantise` produces), and `tiles::check` keeps BK/2·254 ≤ i16::MAX.
//! They are then widened to int32, so the result equals the I2_S kernels' exactly.
//!
//! Byte order inside a row block (see `formats::tl1`): per (K block, sub-tile, j2), 64 bytes —
//! bm = 32: four 16-byte runs of 16 rows: (rows 0-15, columns c..c+4), (0-15, c+4..c+8),
//! (16-31, c..c+4), (16-31, c+4..c+8); bm = 64: rows 0-15, 16-31, 32-47, 48-63 of columns c..c+4.
//!
//! Variants: scalar (decodes the block), AVX2, NEON; exact, tested against each other.

use crate::cpu::Isa;
use tern_formats::tiles::Tiles;

/// Bytes of one token's tables for K columns.
pub fn tables_len(k: usize) -> usize {
    k / 2 * 32
}

/// Writes the pair tables of one token's activations (`out.len() == tables_len(act.len())`).
pub fn tables(act: &[i8], out: &mut [u8]) {
    for (pair, dst) in act.chunks_exact(2).zip(out.chunks_exact_mut(32)) {
        let (a0, a1) = (pair[0] as i16, pair[1] as i16);
        let mut v = [0i16; 16];
        for (i, slot) in v.iter_mut().enumerate().take(9) {
            *slot = (i as i16 / 3 - 1) * a0 + (i as i16 % 3 - 1) * a1;
        }
        for i in 0..16 {
            dst[i] = v[i] as u8;
            dst[16 + i] = (v[i] >> 8) as u8;
        }
    }
}

/// `acc[j] = Σ t·q` for rows `i0·BM + j` of the row block `block` (its BM·K/4 bytes), for one
/// token: `act` its activations, `lut` its [`tables`].
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
pub fn block(isa: Isa, block: &[u8], k: usize, t: Tiles, act: &[i8], lut: &[u8], acc: &mut [i32]) {
    assert!(block.len() == t.rows * k / 4 && lut.len() == tables_len(k) && acc.len() == t.rows);
    assert!(act.len() == k && (t.sub_rows == 32 || t.sub_rows == 64) && k.is_multiple_of(t.cols));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if isa.supported() => {
            // SAFETY: AVX2 was detected; sizes asserted above.
            unsafe {
                if t.sub_rows == 64 {
                    x86::block_avx2::<true>(block, lut, k, t, acc)
                } else {
                    x86::block_avx2::<false>(block, lut, k, t, acc)
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.supported() => {
            // SAFETY: NEON was detected; sizes asserted above.
            unsafe { arm::block_neon(block, lut, k, t, acc) }
        }
        _ => block_scalar(block, k, t, act, acc),
    }
}

/// Whether [`block_tokens`] runs for `tokens` tokens on `isa`: several tokens on AVX-512 VNNI.
/// Then a product needs no lookup tables.
pub fn runs_decoded(isa: Isa, tokens: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.supported() && tokens > 1 {
        return true;
    }
    let _ = (isa, tokens);
    false
}

/// Several tokens against one row block, decoding its weights once for all of them:
/// `out[j·tokens + t] = Σ t·q` for rows `i0·BM + j` and the tokens of `acts` (`k` activations
/// each, Σ in `sums`). Only where [`runs_decoded`] says so.
///
/// Every 16 weight bytes (16 rows × 4 columns) become two vectors of codes c = t + 1 with one
/// row per 32-bit lane, 4 columns each, and each token's four activations at those columns are
/// broadcast to every lane: `vpdpbusd` then adds 4 products to each row's own lane, so the rows
/// come out with no horizontal sums. A 16-row group is decoded once into an L1-resident buffer
/// over all of K, then read for every pass of up to 8 tokens.
pub fn block_tokens(isa: Isa, block: &[u8], k: usize, t: Tiles, acts: &[i8], sums: &[i32], out: &mut [i32]) {
    let tokens = sums.len();
    assert!(runs_decoded(isa, tokens), "the decoded TL1 GEMM runs several tokens on AVX-512 VNNI");
    assert!(block.len() == t.rows * k / 4 && acts.len() == tokens * k && out.len() == t.rows * tokens);
    assert!((t.sub_rows == 32 || t.sub_rows == 64) && k.is_multiple_of(t.cols) && t.rows.is_multiple_of(16));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 VNNI was detected (runs_decoded); sizes asserted above.
    unsafe {
        x86::block_tokens_vnni(block, k, t, acts, sums, out)
    }
}

/// The reference: decode the block's codes, then plain dots.
pub fn block_scalar(block: &[u8], k: usize, t: Tiles, act: &[i8], acc: &mut [i32]) {
    let mut codes = vec![0i8; t.rows * k];
    tern_formats::tl1::decode_row_block(block, k, t, 0, &mut codes);
    for (a, row) in acc.iter_mut().zip(codes.chunks_exact(k)) {
        *a = row.iter().zip(act).map(|(&w, &q)| w as i32 * q as i32).sum();
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::Tiles;
    use std::arch::x86_64::*;

    /// Tokens per pass of [`block_tokens_vnni`]: 2 × 8 accumulators.
    pub(crate) const PASS: usize = 8;

    /// See `tl1::block_tokens`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL and VNNI; `block` holds BM·K/4 bytes, `acts` the
    /// tokens' K activations each, `out` BM slots per token; BM a multiple of 16, K of BK.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    pub(super) unsafe fn block_tokens_vnni(
        block: &[u8],
        k: usize,
        t: Tiles,
        acts: &[i8],
        sums: &[i32],
        out: &mut [i32],
    ) {
        let (bm_big, bk, bm) = (t.rows, t.cols, t.sub_rows);
        let by = 256 / bm;
        let tokens = sums.len();
        let quads = k / 4;
        // Per column quad, the codes of rows 0-7 and 8-15 of the group: 64 bytes.
        let mut codes = vec![_mm256_setzero_si256(); 2 * quads];
        for group in 0..bm_big / 16 {
            let (r0, r2) = (group / (bm / 16), group % (bm / 16));
            for j0 in 0..k / bk {
                for j2 in 0..bk / by {
                    // formats::tl1: byte (j0, r0, j2, r2, j4, r3) at this offset + 16·j4 + r3.
                    let at = j0 * (bm_big * bk / 4) + r0 * (bk * bm / 4) + j2 * 64 + r2 * 4 * by;
                    for j4 in 0..by / 4 {
                        let q = (j0 * bk + j2 * by) / 4 + j4;
                        // SAFETY: 16 bytes at at + 16·j4 lie in the block (the caller's size).
                        let v =
                            unsafe { _mm_loadu_si128(block.as_ptr().add(at + 16 * j4) as *const __m128i) };
                        codes[2 * q] = decode_eight(v, 0);
                        codes[2 * q + 1] = decode_eight(v, 1);
                    }
                }
            }
            let mut tok = 0;
            while tok < tokens {
                let n = (tokens - tok).min(PASS);
                let a = acts[tok * k..].as_ptr();
                // SAFETY: n tokens of k activations from tok, within acts; codes covers k.
                let sums_of = unsafe { pass_dispatch(&codes, (2, 0), a, k, n) };
                for (half, lanes) in sums_of.iter().enumerate() {
                    for (l, per_token) in lanes.iter().enumerate() {
                        let row = r0 * bm + r2 * 16 + 8 * half + l;
                        for (j, &v) in per_token.iter().enumerate().take(n) {
                            out[row * tokens + tok + j] = v - sums[tok + j];
                        }
                    }
                }
                tok += n;
            }
        }
    }

    /// Bytes 8h..8h+8 of `v` (rows 8h..8h+8 of a group at one column quad) as codes, one row per
    /// 32-bit lane: (pair index j = 3c₀ + c₁) high nibble → bytes 0 and 1, low → bytes 2 and 3,
    /// each as j / 3 (the lower column) and j % 3. Indices 9-15 (not in a valid file) give
    /// codes 1, 1 — weights 0, as the lookup tables' zero entries.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    fn decode_eight(v: __m128i, h: usize) -> __m256i {
        let x = _mm256_broadcastsi128_si256(v);
        // Within each 128-bit lane: lane 0 repeats bytes 8h..8h+4 four times each, lane 1 the
        // next four.
        let b = 8 * h as i8;
        let rep = _mm256_setr_epi8(
            b,
            b,
            b,
            b,
            b + 1,
            b + 1,
            b + 1,
            b + 1,
            b + 2,
            b + 2,
            b + 2,
            b + 2,
            b + 3,
            b + 3,
            b + 3,
            b + 3,
            b + 4,
            b + 4,
            b + 4,
            b + 4,
            b + 5,
            b + 5,
            b + 5,
            b + 5,
            b + 6,
            b + 6,
            b + 6,
            b + 6,
            b + 7,
            b + 7,
            b + 7,
            b + 7,
        );
        let x = _mm256_shuffle_epi8(x, rep);
        // Bytes 0, 1 of each lane: the high nibble; bytes 2, 3: the low one.
        let nib = _mm256_and_si256(_mm256_srlv_epi16(x, _mm256_set1_epi32(4)), _mm256_set1_epi8(0x0F));
        let div = _mm256_shuffle_epi8(
            _mm256_setr_epi8(
                0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1,
                1,
            ),
            nib,
        );
        let rem = _mm256_shuffle_epi8(
            _mm256_setr_epi8(
                0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 1, 1, 1, 1, 1, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 1, 1, 1, 1, 1,
                1,
            ),
            nib,
        );
        // Odd bytes (the upper column of each pair) from the remainders.
        _mm256_mask_blend_epi8(0xAAAA_AAAA, div, rem)
    }

    /// [`pass`] for a run-time token count (1..=[`PASS`]): `[half][lane][token]`.
    ///
    /// # Safety
    /// As [`pass`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    pub(crate) unsafe fn pass_dispatch(
        codes: &[__m256i],
        layout: (usize, usize),
        a: *const i8,
        k: usize,
        n: usize,
    ) -> [[[i32; PASS]; 8]; 2] {
        let mut out = [[[0i32; PASS]; 8]; 2];
        with_pass_len!(n, T => {
            // SAFETY: forwarded from the caller.
            let acc = unsafe { pass::<T>(codes, layout, a, k) };
            for (half, per_token) in acc.iter().enumerate() {
                for (j, v) in per_token.iter().enumerate() {
                    let mut lanes = [0i32; 8];
                    // SAFETY: 8 i32 into an 8-i32 array.
                    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *v) };
                    for (l, &x) in lanes.iter().enumerate() {
                        out[half][l][j] = x;
                    }
                }
            }
        });
        out
    }

    /// Σ c·q of 16 rows' decoded codes against `T` tokens: per column quad, each token's four
    /// activations broadcast to every lane and one `vpdpbusd` per 8-row half (exact: codes ≤ 2).
    /// `(stride, first)`: quad q's two vectors are `codes[q·stride + first]` and the next.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL and VNNI; `codes` holds `stride`·k/4 vectors, `a` `T`
    /// tokens of `k` activations.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    unsafe fn pass<const T: usize>(
        codes: &[__m256i],
        (stride, first): (usize, usize),
        a: *const i8,
        k: usize,
    ) -> [[__m256i; T]; 2] {
        let (mut lo, mut hi) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
        for (q, quad) in codes.chunks_exact(stride).enumerate() {
            let pair = &quad[first..first + 2];
            for (t, (lo, hi)) in lo.iter_mut().zip(&mut hi).enumerate() {
                // SAFETY: activations 4q..4q+4 of token t, within its k.
                let x = _mm256_set1_epi32(unsafe { (a.add(t * k + 4 * q) as *const i32).read_unaligned() });
                *lo = _mm256_dpbusd_epi32(*lo, pair[0], x);
                *hi = _mm256_dpbusd_epi32(*hi, pair[1], x);
            }
        }
        [lo, hi]
    }

    /// One 32-byte load of weights (16 rows × 2 runs) looked up in the high-nibble tables `h`
    /// and low-nibble tables `l` ((low-byte plane, high-byte plane) each), added as int16 to
    /// `a[0]` (bytes 0-7 of each lane) and `a[1]` (bytes 8-15).
    #[target_feature(enable = "avx2")]
    fn lookup(w: __m256i, h: (__m256i, __m256i), l: (__m256i, __m256i), a: &mut [__m256i]) {
        let nib = _mm256_set1_epi8(0x0F);
        let ih = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
        let il = _mm256_and_si256(w, nib);
        for (idx, (lo_t, hi_t)) in [(ih, h), (il, l)] {
            let lo = _mm256_shuffle_epi8(lo_t, idx);
            let hi = _mm256_shuffle_epi8(hi_t, idx);
            a[0] = _mm256_add_epi16(a[0], _mm256_unpacklo_epi8(lo, hi));
            a[1] = _mm256_add_epi16(a[1], _mm256_unpackhi_epi8(lo, hi));
        }
    }

    /// Adds the 8 int16 in `v` widened to int32 onto `acc[0..8]`.
    #[target_feature(enable = "avx2")]
    fn widen_add(acc: &mut [i32], v: __m128i) {
        let acc = &mut acc[..8];
        // SAFETY: acc holds 8 i32 (sliced above).
        unsafe {
            let p = acc.as_mut_ptr() as *mut __m256i;
            _mm256_storeu_si256(p, _mm256_add_epi32(_mm256_loadu_si256(p), _mm256_cvtepi16_epi32(v)));
        }
    }

    /// The row block's sums; `BM64` selects bm = 64 (both lanes of a load hold the same columns
    /// for different rows) over bm = 32 (the same rows, columns c..c+4 and c+4..c+8).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_avx2<const BM64: bool>(
        block: &[u8],
        lut: &[u8],
        k: usize,
        t: Tiles,
        acc: &mut [i32],
    ) {
        let (bm_big, bk, bm) = (t.rows, t.cols, t.sub_rows);
        let by = 256 / bm;
        acc.fill(0);
        let mut pos = 0;
        for j0 in 0..k / bk {
            for r0 in 0..bm_big / bm {
                let mut a = [_mm256_setzero_si256(); 4];
                for j2 in 0..bk / by {
                    // SAFETY: pairs p..p+4 (bm = 32) or p..p+2 (bm = 64) lie in lut, and the 64
                    // bytes at pos in block (the caller asserted both sizes).
                    unsafe {
                        let tp = lut.as_ptr().add((j0 * bk + j2 * by) / 2 * 32);
                        let at = |o: usize| tp.add(o) as *const __m128i;
                        let (h, l) = if BM64 {
                            let b = |o| _mm256_broadcastsi128_si256(_mm_loadu_si128(at(o)));
                            ((b(0), b(16)), (b(32), b(48)))
                        } else {
                            // Lane 0: pairs p (high nibble), p+1 (low); lane 1: pairs p+2, p+3.
                            let b = |o| _mm256_loadu2_m128i(at(o + 64), at(o));
                            ((b(0), b(16)), (b(32), b(48)))
                        };
                        let w0 = _mm256_loadu_si256(block.as_ptr().add(pos) as *const __m256i);
                        let w1 = _mm256_loadu_si256(block.as_ptr().add(pos + 32) as *const __m256i);
                        lookup(w0, h, l, &mut a[0..2]);
                        lookup(w1, h, l, &mut a[2..4]);
                    }
                    pos += 64;
                }
                let sub = &mut acc[r0 * bm..][..bm];
                for (q, v) in a.into_iter().enumerate() {
                    let (lane0, lane1) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                    if BM64 {
                        // a[q]: lane 0 rows (q/2)·32 + (q%2)·8 .. +8, lane 1 the same + 16.
                        let r = (q / 2) * 32 + (q % 2) * 8;
                        widen_add(&mut sub[r..], lane0);
                        widen_add(&mut sub[r + 16..], lane1);
                    } else {
                        // a[q]: rows 8q..8q+8, both lanes (different columns).
                        widen_add(&mut sub[8 * q..], lane0);
                        widen_add(&mut sub[8 * q..], lane1);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Tiles;
    use std::arch::aarch64::*;

    /// The row block's sums, 16 rows per `tbl` lookup.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn block_neon(block: &[u8], lut: &[u8], k: usize, t: Tiles, acc: &mut [i32]) {
        let (bm_big, bk, bm) = (t.rows, t.cols, t.sub_rows);
        let by = 256 / bm;
        let nib = vdupq_n_u8(0x0F);
        acc.fill(0);
        let mut pos = 0;
        for j0 in 0..k / bk {
            for r0 in 0..bm_big / bm {
                // Four 16-byte runs per j2; a[u] = (rows 0-7, rows 8-15) of run u.
                let mut a = [[vdupq_n_s16(0); 2]; 4];
                for j2 in 0..bk / by {
                    let p = (j0 * bk + j2 * by) / 2;
                    for (u, slot) in a.iter_mut().enumerate() {
                        // bm = 32: runs 1 and 3 hold pairs p+2, p+3.
                        let pair = if bm == 64 { p } else { p + (u % 2) * 2 };
                        // SAFETY: 16 bytes at pos + 16u lie in block; pairs pair, pair+1 in lut.
                        unsafe {
                            let w = vld1q_u8(block.as_ptr().add(pos + 16 * u));
                            let tp = lut.as_ptr().add(pair * 32);
                            for (idx, tab) in [(vshrq_n_u8(w, 4), tp), (vandq_u8(w, nib), tp.add(32))] {
                                let lo = vqtbl1q_u8(vld1q_u8(tab), idx);
                                let hi = vqtbl1q_u8(vld1q_u8(tab.add(16)), idx);
                                slot[0] = vaddq_s16(slot[0], vreinterpretq_s16_u8(vzip1q_u8(lo, hi)));
                                slot[1] = vaddq_s16(slot[1], vreinterpretq_s16_u8(vzip2q_u8(lo, hi)));
                            }
                        }
                    }
                    pos += 64;
                }
                let sub = &mut acc[r0 * bm..][..bm];
                for (u, [r07, r815]) in a.into_iter().enumerate() {
                    let r = if bm == 64 { 16 * u } else { 16 * (u / 2) };
                    for (o, v) in [(r, r07), (r + 8, r815)] {
                        let dst = &mut sub[o..o + 8];
                        // SAFETY: dst holds 8 i32.
                        unsafe {
                            let p = dst.as_mut_ptr();
                            vst1q_s32(p, vaddw_s16(vld1q_s32(p), vget_low_s16(v)));
                            vst1q_s32(p.add(4), vaddw_high_s16(vld1q_s32(p.add(4)), v));
                        }
                    }
                }
            }
        }
    }
}
