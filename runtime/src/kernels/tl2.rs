//! TL2 lookup-table kernels (bitnet.cpp's triple layout, `formats::tl2`): Σ t·q for the BM rows
//! of one row block, any valid tiles (bm = 32).
//!
//! Per token, [`tables`] holds for every triple of the first K3 = K − K % BK columns the 14
//! magnitudes Σ digits(i)·a over the balanced-ternary digits of i = 9·w0 + 3·w1 + w2 (i ≤ 13),
//! and for every pair of the K2 = K % BK tail TL1's 9 pair sums — int16, as a plane of low bytes
//! and a plane of high bytes, 32 bytes per group. The A plane's 4-bit magnitudes index them
//! (`pshufb` / `tbl`, 16 or 32 rows per lookup); the S plane's sign bits become per-row masks m
//! with v ↦ (v + m) ^ m negating where set. Int16 sums cover one K block (|entry| ≤ 381 for
//! activations in −127..=127; `tiles::check` keeps BK/3·381 ≤ i16::MAX) and are then widened.
//!
//! Rows inside a 32-row chunk come in the order PERM = [0, 2, 1, 3] of 8-row runs: byte p is row
//! PERM[p/8]·8 + p%8. Sign word u (of 16) covers rows u (bit 15 − 2·tt for triple tt) and
//! u + 16 (bit 14 − 2·tt).
//!
//! Variants: scalar (decodes the block), AVX2, NEON; exact, tested against each other.

use crate::cpu::Isa;
use tern_formats::tiles::Tiles;

/// K3: the columns stored as triples.
pub fn triple_cols(k: usize, t: Tiles) -> usize {
    k - k % t.cols
}

/// Bytes of one token's tables for K columns of which `k3` are triples.
pub fn tables_len(k: usize, k3: usize) -> usize {
    k3 / 3 * 32 + (k - k3) / 2 * 32
}

/// Writes one token's triple tables (first `k3` columns), then the pair tables of the tail.
pub fn tables(act: &[i8], k3: usize, out: &mut [u8]) {
    let (tri, pairs) = out.split_at_mut(k3 / 3 * 32);
    for (a, dst) in act[..k3].chunks_exact(3).zip(tri.chunks_exact_mut(32)) {
        let (a0, a1, a2) = (a[0] as i16, a[1] as i16, a[2] as i16);
        // i = 9·w0 + 3·w1 + w2 ≥ 0 with balanced digits: i = 0..=13.
        let mut v = [0i16; 16];
        for (i, slot) in v.iter_mut().enumerate().take(14) {
            let i = i as i16;
            let w2 = (i + 1).rem_euclid(3) - 1;
            let w1 = ((i - w2) / 3 + 1).rem_euclid(3) - 1;
            let w0 = (i - w2 - 3 * w1) / 9;
            *slot = w0 * a0 + w1 * a1 + w2 * a2;
        }
        for i in 0..16 {
            dst[i] = v[i] as u8;
            dst[16 + i] = (v[i] >> 8) as u8;
        }
    }
    super::tl1::tables(&act[k3..], pairs);
}

/// `acc[j] = Σ t·q` for rows `i0·BM + j` of the `m × k` TL2 tensor `bytes`, for one token:
/// `act` its activations, `lut` its [`tables`].
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
pub fn block(
    isa: Isa,
    bytes: &[u8],
    m: usize,
    k: usize,
    t: Tiles,
    i0: usize,
    act: &[i8],
    lut: &[u8],
    acc: &mut [i32],
) {
    assert!(acc.len() == t.rows && act.len() == k && lut.len() == tables_len(k, triple_cols(k, t)));
    let planes = Planes::of_block(bytes.len(), m, k, t, i0);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if isa.supported() => {
            // SAFETY: AVX2 was detected; the planes' extents asserted above.
            unsafe { x86::block_avx2(bytes, planes, k, t, lut, acc) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.supported() => {
            // SAFETY: NEON was detected; the planes' extents asserted above.
            unsafe { arm::block_neon(bytes, planes, k, t, lut, acc) }
        }
        _ => {
            let mut codes = vec![0i8; t.rows * k];
            tern_formats::tl2::decode_row_block(bytes, m, k, t, i0, &mut codes);
            for (a, row) in acc.iter_mut().zip(codes.chunks_exact(k)) {
                *a = row.iter().zip(act).map(|(&w, &q)| w as i32 * q as i32).sum();
            }
        }
    }
}

/// Whether [`block_tokens`] runs for `tokens` tokens on `isa`: several tokens on AVX-512 VNNI.
/// Then a product needs no lookup tables.
pub fn runs_decoded(isa: Isa, tokens: usize) -> bool {
    super::tl1::runs_decoded(isa, tokens)
}

/// Several tokens against row block `i0` of the `m × k` TL2 tensor `bytes`, decoding its
/// weights once for all of them: `out[j·tokens + t] = Σ t·q` for rows `i0·BM + j` and the
/// tokens of `acts` (`k` activations each, Σ in `sums`). Only where [`runs_decoded`] says so.
///
/// As TL1's (`tl1::block_tokens`), each 32-row group becomes codes with one row per 32-bit lane
/// and four columns per lane: every A-plane byte gives two triples' magnitudes, looked up as
/// lanes of three codes, negated where the S plane's bit says, and four triples shifted into
/// three column quads; the K2 tail's pair bytes decode as TL1's. The group's codes are then read
/// by passes of up to 8 tokens, 16 rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn block_tokens(
    isa: Isa,
    bytes: &[u8],
    m: usize,
    k: usize,
    t: Tiles,
    i0: usize,
    acts: &[i8],
    sums: &[i32],
    out: &mut [i32],
) {
    let tokens = sums.len();
    assert!(runs_decoded(isa, tokens), "the decoded TL2 GEMM runs several tokens on AVX-512 VNNI");
    assert!(acts.len() == tokens * k && out.len() == t.rows * tokens);
    let planes = Planes::of_block(bytes.len(), m, k, t, i0);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 VNNI was detected (runs_decoded); the planes' extents asserted above.
    unsafe {
        x86::block_tokens_vnni(bytes, planes, k, t, acts, sums, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = planes;
}

/// The 8-row run of a 32-row chunk that byte run j (bytes 8j..8j+8) holds (`formats::tl2`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PERM_RUNS: [usize; 4] = [0, 2, 1, 3];

/// Where row block i0 starts in each plane.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
#[derive(Clone, Copy)]
struct Planes {
    a: usize,
    s: usize,
    b: usize,
}

impl Planes {
    /// Row block `i0` of an `m × k` tensor of `len` bytes with tiles `t`, after checking that the
    /// tiles are ones the kernels read and that the block's planes lie within the bytes.
    fn of_block(len: usize, m: usize, k: usize, t: Tiles, i0: usize) -> Planes {
        let k3 = triple_cols(k, t);
        let k2 = k - k3;
        assert!(
            t.sub_rows == 32
                && t.rows.is_multiple_of(32)
                && t.cols.is_multiple_of(24)
                && k2.is_multiple_of(32)
        );
        assert!(len >= m * k3 / 6 + m * k3 / 24 + m * k2 / 4 && (i0 + 1) * t.rows <= m);
        Planes {
            a: i0 * t.rows * k3 / 6,
            s: m * k3 / 6 + i0 * t.rows * k3 / 24,
            b: m * k3 / 6 + m * k3 / 24 + i0 * t.rows * k2 / 4,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Planes, Tiles};

    /// Per triple magnitude v (0..=13), the codes w + 1 of its balanced digits (w0, w1, w2) of
    /// 9·w0 + 3·w1 + w2 = v in bytes 0, 1, 2 of a lane; 14 and 15 (not in a valid file) as
    /// weights 0, as the lookup tables' zero entries.
    const TRIPLE_CODES: [i32; 16] = {
        let mut table = [0x0001_0101i32; 16];
        let mut v = 0;
        while v < 14 {
            let i = v as i32;
            let w2 = (i + 1).rem_euclid(3) - 1;
            let w1 = ((i - w2) / 3 + 1).rem_euclid(3) - 1;
            let w0 = (i - w2 - 3 * w1) / 9;
            table[v] = (w0 + 1) | (w1 + 1) << 8 | (w2 + 1) << 16;
            v += 1;
        }
        table
    };

    /// Per pair index j = 3·c₀ + c₁ (0..=8), the codes c₀, c₁ in bytes 0 and 1; 9-15 as weights 0.
    const PAIR_CODES: [i32; 16] = {
        let mut table = [0x0101i32; 16];
        let mut j = 0;
        while j < 9 {
            table[j] = (j as i32 / 3) | (j as i32 % 3) << 8;
            j += 1;
        }
        table
    };

    /// Lanes of `v` (each 0..=15) looked up in a 16-entry `table` (its two halves).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    fn lookup16(table: (__m256i, __m256i), v: __m256i) -> __m256i {
        _mm256_permutex2var_epi32(table.0, v, table.1)
    }

    /// See `tl2::block_tokens`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL and VNNI; the planes of row block `planes` lie in
    /// `bytes`; `acts` holds the tokens' k activations each and `out` BM slots per token.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    pub(super) unsafe fn block_tokens_vnni(
        bytes: &[u8],
        planes: Planes,
        k: usize,
        t: Tiles,
        acts: &[i8],
        sums: &[i32],
        out: &mut [i32],
    ) {
        use crate::kernels::tl1::x86::{PASS, pass_dispatch};
        let (bm_big, bk) = (t.rows, t.cols);
        let k3 = super::triple_cols(k, t);
        let k2 = k - k3;
        let tokens = sums.len();
        let halves = |v: [i32; 16]| {
            // SAFETY: 8 i32 from each half of a 16-i32 array.
            unsafe {
                (
                    _mm256_loadu_si256(v.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(v.as_ptr().add(8) as *const __m256i),
                )
            }
        };
        let (triples, pairs) = (halves(TRIPLE_CODES), halves(PAIR_CODES));
        let (nib, flip) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(0x0002_0202));
        let eight = |at: usize| {
            // SAFETY: the caller's plane extents cover every byte run read below.
            unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.as_ptr().add(at) as *const __m128i)) }
        };
        // codes[4q + j]: column quad q of the 8-row run j (rows PERM[j]·8.. of the 32-row group).
        let mut codes = vec![_mm256_setzero_si256(); k];
        for r0 in 0..bm_big / 32 {
            for t0 in 0..k3 / bk {
                // Two sextets (12 columns: four triples, three quads) at a time.
                for t2 in (0..bk / 6).step_by(2) {
                    let col = t0 * bk + t2 * 6;
                    let at = planes.a + t0 * (bm_big * bk / 6) + r0 * (32 * bk / 6) + t2 * 32;
                    let group = planes.s + t0 * (bm_big * bk / 24) + r0 * (32 * bk / 24) + (t2 * 6 / 24) * 32;
                    for j in 0..4 {
                        let (x0, x1) = (eight(at + 8 * j), eight(at + 32 + 8 * j));
                        let magnitudes = [
                            _mm256_srli_epi32::<4>(x0),
                            _mm256_and_si256(x0, nib),
                            _mm256_srli_epi32::<4>(x1),
                            _mm256_and_si256(x1, nib),
                        ];
                        // This run's rows: 8 sign words from u0, bit 15 − (2·tt + half).
                        let first = super::PERM_RUNS[j] * 8;
                        // SAFETY: 8 words of the group's 16, in the S plane.
                        let words = unsafe {
                            _mm_loadu_si128(bytes.as_ptr().add(group + 2 * (first % 16)) as *const __m128i)
                        };
                        let tri: [__m256i; 4] = std::array::from_fn(|n| {
                            let c = col + 3 * n;
                            let tt = (c - t0 * bk) % 24 / 3;
                            let bit = 15 - (2 * tt + first / 16);
                            let negative = _mm_test_epi16_mask(words, _mm_set1_epi16((1u16 << bit) as i16));
                            let v = lookup16(triples, magnitudes[n]);
                            _mm256_mask_sub_epi32(v, negative, flip, v)
                        });
                        let q = col / 4;
                        codes[4 * q + j] = _mm256_or_si256(tri[0], _mm256_slli_epi32::<24>(tri[1]));
                        codes[4 * (q + 1) + j] =
                            _mm256_or_si256(_mm256_srli_epi32::<8>(tri[1]), _mm256_slli_epi32::<16>(tri[2]));
                        codes[4 * (q + 2) + j] =
                            _mm256_or_si256(_mm256_srli_epi32::<16>(tri[2]), _mm256_slli_epi32::<8>(tri[3]));
                    }
                }
            }
            for j0 in 0..k2 / 32 {
                for j2 in 0..8 {
                    let q = (k3 + j0 * 32 + j2 * 4) / 4;
                    let at = planes.b + j0 * 8 * bm_big + r0 * 256 + j2 * 32;
                    for j in 0..4 {
                        let x = eight(at + 8 * j);
                        let hi = lookup16(pairs, _mm256_srli_epi32::<4>(x));
                        let lo = lookup16(pairs, _mm256_and_si256(x, nib));
                        codes[4 * q + j] = _mm256_or_si256(hi, _mm256_slli_epi32::<16>(lo));
                    }
                }
            }
            // Runs 0 and 1, then 2 and 3, against every pass of tokens.
            for half in 0..2 {
                let mut tok = 0;
                while tok < tokens {
                    let n = (tokens - tok).min(PASS);
                    // SAFETY: n tokens of k activations from tok; codes covers k/4 quads of 4.
                    let got = unsafe { pass_dispatch(&codes, (4, 2 * half), acts[tok * k..].as_ptr(), k, n) };
                    for (h, lanes) in got.iter().enumerate() {
                        let first = r0 * 32 + super::PERM_RUNS[2 * half + h] * 8;
                        for (l, per_token) in lanes.iter().enumerate() {
                            for (i, &v) in per_token.iter().enumerate().take(n) {
                                out[(first + l) * tokens + tok + i] = v - sums[tok + i];
                            }
                        }
                    }
                    tok += n;
                }
            }
        }
    }
    use std::arch::x86_64::*;

    /// 32 rows' int16 entries for the nibbles `idx` (TL2's permuted byte order) in a 32-byte
    /// table (low plane, high plane): returns (rows 0-15, rows 16-31) in natural order —
    /// unpacking bytes 0-7 of each lane gives rows 0-7 then 8-15, bytes 8-15 rows 16-31.
    #[target_feature(enable = "avx2")]
    unsafe fn lookup(idx: __m256i, table: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller guarantees 32 readable bytes at table.
        let (lo_t, hi_t) = unsafe {
            (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(table as *const __m128i)),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(table.add(16) as *const __m128i)),
            )
        };
        let lo = _mm256_shuffle_epi8(lo_t, idx);
        let hi = _mm256_shuffle_epi8(hi_t, idx);
        (_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi))
    }

    /// Adds 16 int16 (natural row order) widened to int32 onto `acc[0..16]`.
    #[target_feature(enable = "avx2")]
    fn widen_add(acc: &mut [i32], v: __m256i) {
        let acc = &mut acc[..16];
        // SAFETY: acc holds 16 i32 (sliced above).
        unsafe {
            let p = acc.as_mut_ptr() as *mut __m256i;
            let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v));
            let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1));
            _mm256_storeu_si256(p, _mm256_add_epi32(_mm256_loadu_si256(p), lo));
            _mm256_storeu_si256(p.add(1), _mm256_add_epi32(_mm256_loadu_si256(p.add(1)), hi));
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_avx2(
        bytes: &[u8],
        at: Planes,
        k: usize,
        t: Tiles,
        lut: &[u8],
        acc: &mut [i32],
    ) {
        let (bm_big, bk) = (t.rows, t.cols);
        let k3 = super::triple_cols(k, t);
        let nib = _mm256_set1_epi8(0x0F);
        let (mut a_pos, mut s_pos) = (at.a, at.s);
        acc.fill(0);
        for t0 in 0..k3 / bk {
            for r0 in 0..bm_big / 32 {
                let (mut rows_lo, mut rows_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for g in 0..bk / 24 {
                    // SAFETY: the caller checked the planes' extents; tables of triples
                    // (t0·BK + 24g)/3 .. +8 lie in lut.
                    unsafe {
                        let words = _mm256_loadu_si256(bytes.as_ptr().add(s_pos + 32 * g) as *const __m256i);
                        // Signs by `psignw`: the words times 2^bit put a triple's sign bit on
                        // top (a multiply: the shift ports also do the lookups' shuffles), and
                        // bit 0 set keeps the product nonzero, so a clear sign keeps v, not 0.
                        let one = _mm256_set1_epi16(1);
                        let odd_words = _mm256_or_si256(words, one);
                        let sign_at = |bit: i32| {
                            let by = _mm256_set1_epi16((1u16 << bit) as i16);
                            if bit == 15 {
                                _mm256_or_si256(_mm256_mullo_epi16(words, by), one)
                            } else {
                                _mm256_mullo_epi16(odd_words, by)
                            }
                        };
                        for t2 in 0..4 {
                            // 32 rows × 6 columns: high nibble triple 2·t2, low nibble 2·t2 + 1.
                            let w = _mm256_loadu_si256(
                                bytes.as_ptr().add(a_pos + 32 * (4 * g + t2)) as *const __m256i
                            );
                            for (tt, idx) in [
                                (2 * t2, _mm256_and_si256(_mm256_srli_epi16(w, 4), nib)),
                                (2 * t2 + 1, _mm256_and_si256(w, nib)),
                            ] {
                                let triple = (t0 * bk + 24 * g) / 3 + tt;
                                let (v0, v1) = lookup(idx, lut.as_ptr().add(32 * triple));
                                let (s0, s1) = (sign_at(2 * tt as i32), sign_at(2 * tt as i32 + 1));
                                rows_lo = _mm256_add_epi16(rows_lo, _mm256_sign_epi16(v0, s0));
                                rows_hi = _mm256_add_epi16(rows_hi, _mm256_sign_epi16(v1, s1));
                            }
                        }
                    }
                }
                a_pos += 32 * bk / 6;
                s_pos += 32 * bk / 24;
                widen_add(&mut acc[r0 * 32..], rows_lo);
                widen_add(&mut acc[r0 * 32 + 16..], rows_hi);
            }
        }
        // The pair tail: TL1's code, 32-row chunks in the same permuted order.
        let pairs = k3 / 3 * 32;
        let mut b_pos = at.b;
        for j0 in 0..(k - k3) / 32 {
            for r0 in 0..bm_big / 32 {
                let (mut rows_lo, mut rows_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for j2 in 0..8 {
                    // SAFETY: the B plane holds these 32 bytes; pairs p, p+1 lie in lut.
                    unsafe {
                        let w = _mm256_loadu_si256(bytes.as_ptr().add(b_pos) as *const __m256i);
                        let p = (j0 * 32 + j2 * 4) / 2;
                        for (p, idx) in [
                            (p, _mm256_and_si256(_mm256_srli_epi16(w, 4), nib)),
                            (p + 1, _mm256_and_si256(w, nib)),
                        ] {
                            let (v0, v1) = lookup(idx, lut.as_ptr().add(pairs + 32 * p));
                            rows_lo = _mm256_add_epi16(rows_lo, v0);
                            rows_hi = _mm256_add_epi16(rows_hi, v1);
                        }
                    }
                    b_pos += 32;
                }
                widen_add(&mut acc[r0 * 32..], rows_lo);
                widen_add(&mut acc[r0 * 32 + 16..], rows_hi);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{Planes, Tiles};
    use std::arch::aarch64::*;

    /// Entries for 16 nibbles in a 32-byte table: (bytes 0-7, bytes 8-15) as int16.
    #[target_feature(enable = "neon")]
    unsafe fn lookup(idx: uint8x16_t, table: *const u8) -> (int16x8_t, int16x8_t) {
        // SAFETY: the caller guarantees 32 readable bytes at table.
        let (lo_t, hi_t) = unsafe { (vld1q_u8(table), vld1q_u8(table.add(16))) };
        let lo = vqtbl1q_u8(lo_t, idx);
        let hi = vqtbl1q_u8(hi_t, idx);
        (vreinterpretq_s16_u8(vzip1q_u8(lo, hi)), vreinterpretq_s16_u8(vzip2q_u8(lo, hi)))
    }

    /// Adds 8 int16 widened to int32 onto `acc[0..8]`.
    #[target_feature(enable = "neon")]
    fn widen_add(acc: &mut [i32], v: int16x8_t) {
        let acc = &mut acc[..8];
        // SAFETY: acc holds 8 i32.
        unsafe {
            let p = acc.as_mut_ptr();
            vst1q_s32(p, vaddw_s16(vld1q_s32(p), vget_low_s16(v)));
            vst1q_s32(p.add(4), vaddw_high_s16(vld1q_s32(p.add(4)), v));
        }
    }

    /// Rows 0-7, 8-15, 16-23, 24-31 of one 32-byte run: half 0 holds rows 0-7 and 16-23,
    /// half 1 rows 8-15 and 24-31 (PERM).
    const RUN_ROWS: [[usize; 2]; 2] = [[0, 16], [8, 24]];

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn block_neon(
        bytes: &[u8],
        at: Planes,
        k: usize,
        t: Tiles,
        lut: &[u8],
        acc: &mut [i32],
    ) {
        let (bm_big, bk) = (t.rows, t.cols);
        let k3 = super::triple_cols(k, t);
        let nib = vdupq_n_u8(0x0F);
        let (mut a_pos, mut s_pos) = (at.a, at.s);
        acc.fill(0);
        for t0 in 0..k3 / bk {
            for r0 in 0..bm_big / 32 {
                // rows[i] = rows 8i..8i+8 of the chunk.
                let mut rows = [vdupq_n_s16(0); 4];
                for g in 0..bk / 24 {
                    // SAFETY: the caller checked the planes' extents; the triples' tables lie in lut.
                    unsafe {
                        // words 0-7 cover rows 0-7 (and 16-23), words 8-15 rows 8-15 (and 24-31).
                        let words = [
                            vld1q_s16(bytes.as_ptr().add(s_pos + 32 * g) as *const i16),
                            vld1q_s16(bytes.as_ptr().add(s_pos + 32 * g + 16) as *const i16),
                        ];
                        for t2 in 0..4 {
                            for (half, [lo_rows, hi_rows]) in RUN_ROWS.into_iter().enumerate() {
                                let w = vld1q_u8(bytes.as_ptr().add(a_pos + 32 * (4 * g + t2) + 16 * half));
                                for (tt, idx) in [(2 * t2, vshrq_n_u8(w, 4)), (2 * t2 + 1, vandq_u8(w, nib))]
                                {
                                    let triple = (t0 * bk + 24 * g) / 3 + tt;
                                    let (v0, v1) = lookup(idx, lut.as_ptr().add(32 * triple));
                                    let sh = vdupq_n_s16(2 * tt as i16);
                                    let sh1 = vdupq_n_s16(2 * tt as i16 + 1);
                                    let m0 = vshrq_n_s16(vshlq_s16(words[half], sh), 15);
                                    let m1 = vshrq_n_s16(vshlq_s16(words[half], sh1), 15);
                                    let (i0, i1) = (lo_rows / 8, hi_rows / 8);
                                    rows[i0] = vaddq_s16(rows[i0], veorq_s16(vaddq_s16(v0, m0), m0));
                                    rows[i1] = vaddq_s16(rows[i1], veorq_s16(vaddq_s16(v1, m1), m1));
                                }
                            }
                        }
                    }
                }
                a_pos += 32 * bk / 6;
                s_pos += 32 * bk / 24;
                for (i, v) in rows.into_iter().enumerate() {
                    widen_add(&mut acc[r0 * 32 + 8 * i..], v);
                }
            }
        }
        let pairs = k3 / 3 * 32;
        let mut b_pos = at.b;
        for j0 in 0..(k - k3) / 32 {
            for r0 in 0..bm_big / 32 {
                let mut rows = [vdupq_n_s16(0); 4];
                for j2 in 0..8 {
                    let p = (j0 * 32 + j2 * 4) / 2;
                    for (half, [lo_rows, hi_rows]) in RUN_ROWS.into_iter().enumerate() {
                        // SAFETY: the B plane holds these 16 bytes; pairs p, p+1 lie in lut.
                        unsafe {
                            let w = vld1q_u8(bytes.as_ptr().add(b_pos + 16 * half));
                            for (p, idx) in [(p, vshrq_n_u8(w, 4)), (p + 1, vandq_u8(w, nib))] {
                                let (v0, v1) = lookup(idx, lut.as_ptr().add(pairs + 32 * p));
                                rows[lo_rows / 8] = vaddq_s16(rows[lo_rows / 8], v0);
                                rows[hi_rows / 8] = vaddq_s16(rows[hi_rows / 8], v1);
                            }
                        }
                    }
                    b_pos += 32;
                }
                for (i, v) in rows.into_iter().enumerate() {
                    widen_add(&mut acc[r0 * 32 + 8 * i..], v);
                }
            }
        }
    }
}
