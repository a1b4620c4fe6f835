//! TQ2_0 row dots (llama.cpp's 2-bit layout, `formats::tq2_0`): Σ t·q over one packed row.
//!
//! Each 256-weight block holds `qs[64]` then an f16 `d` the kernels ignore (tern's TQ files carry
//! one exact per-tensor β). Byte `qs[32h + m]` holds weights 128h + m + 32l in bits 2l..2l+1 as
//! the unsigned code t + 1 — I2_S's codes with the shift order reversed — so the SIMD variants
//! multiply unsigned codes by the activations (`maddubs` / `smull`) and subtract Σq once.
//!
//! Variants: scalar (decodes each block), AVX2, AVX-512 VNNI, NEON; all exact, tested against
//! each other.

use crate::cpu::Isa;
use tern_formats::tq2_0::{BLOCK, BLOCK_BYTES};

/// Σ t·q over a TQ2_0 row (`act_sum` = Σq, used by the unsigned-code SIMD paths).
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
pub fn dot(isa: Isa, row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    assert_eq!(row.len() / BLOCK_BYTES * BLOCK, act.len(), "activations must cover the row");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.supported() => {
            // SAFETY: AVX-512 VNNI was detected (Isa::supported); lengths checked above.
            unsafe { x86::rows_vnni([row], act)[0] - act_sum }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.supported() => {
            // SAFETY: AVX2 was detected (Isa::supported); lengths checked above.
            unsafe { x86::dot_avx2(row, act) - act_sum }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.supported() => {
            // SAFETY: NEON was detected; lengths checked above.
            unsafe { arm::dot_neon(row, act) - act_sum }
        }
        _ => dot_scalar(row, act),
    }
}

/// Σ t·q of four rows at once, each exactly [`dot`]'s. With AVX2 or AVX-512 VNNI the rows go in
/// lock step, each a weight stream prefetched ahead: `i2s::gemm_decoded` hands it rows from the
/// four quarters of a one-token GEMV where the CPU wants four streams (`cpu::weight_streams`) or
/// runs VNNI, as the I2_S GEMV reads its rows.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn dot4(isa: Isa, rows: [&[u8]; 4], act: &[i8], act_sum: i32) -> [i32; 4] {
    for row in rows {
        assert_eq!(row.len() / BLOCK_BYTES * BLOCK, act.len(), "activations must cover the row");
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.supported() {
        // SAFETY: AVX-512 VNNI was detected (Isa::supported); lengths checked above.
        return unsafe { x86::rows_vnni(rows, act) }.map(|d| d - act_sum);
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && isa.supported() {
        // SAFETY: AVX2 was detected (Isa::supported); lengths checked above.
        return unsafe { x86::dot4_avx2(rows, act) }.map(|d| d - act_sum);
    }
    rows.map(|row| dot(isa, row, act, act_sum))
}

/// The row unpacker of the prompt GEMM (`i2s::gemm_decoded`): codes in activation order, once
/// per block of rows.
#[cfg(target_arch = "x86_64")]
pub(crate) const UNPACK: Option<crate::kernels::i2s::Unpack> = Some(x86::unpack_codes_avx2);
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const UNPACK: Option<crate::kernels::i2s::Unpack> = None;

pub fn dot_scalar(row: &[u8], act: &[i8]) -> i32 {
    let mut codes = [0i8; BLOCK];
    row.chunks_exact(BLOCK_BYTES)
        .zip(act.chunks_exact(BLOCK))
        .map(|(block, a)| {
            // Code 3 never reaches a kernel: the loader rejects it.
            tern_formats::tq2_0::decode_block(block, &mut codes).expect("validated at load");
            codes.iter().zip(a).map(|(&t, &q)| t as i32 * q as i32).sum::<i32>()
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// How far ahead of the block being multiplied the GEMV asks for weight bytes (into L1):
    /// rows are a separate call each, too short for the hardware prefetcher alone
    /// (docs/performance-notes.md, "GEMV prefetch distance").
    const PREFETCH_AHEAD: usize = 2048;

    /// Σ c·q with unsigned codes c = t + 1 (the caller subtracts Σq).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_avx2(row: &[u8], act: &[i8]) -> i32 {
        let mut acc = _mm256_setzero_si256();
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            // A hint: past the row it reaches the next one, or nothing.
            _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(PREFETCH_AHEAD) as *const i8);
            // SAFETY: the 66-byte block, and its 256 activations at act[256b..] (the caller
            // checked the lengths).
            acc = unsafe { block_sums(acc, block.as_ptr(), act.as_ptr().add(BLOCK * b)) };
        }
        crate::kernels::i2s::x86::hsum256(acc)
    }

    /// `acc` plus Σ c·q of one block (`qs` at `block`) against its 256 activations at `q`.
    ///
    /// # Safety
    /// The CPU must support AVX2; 64 readable bytes at `block`, 256 at `q`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_sums(mut acc: __m256i, block: *const u8, q: *const i8) -> __m256i {
        let mask = _mm256_set1_epi8(3);
        for h in 0..2 {
            // SAFETY: 32 bytes at block + 32h and 128 activations at q + 128h, as promised.
            unsafe {
                let packed = _mm256_loadu_si256(block.add(32 * h) as *const __m256i);
                let codes = [0, 2, 4, 6]
                    .map(|shift| _mm256_and_si256(_mm256_srl_epi16(packed, _mm_cvtsi32_si128(shift)), mask));
                acc = crate::kernels::i2s::x86::madd_codes4(acc, codes, q.add(128 * h));
            }
        }
        acc
    }

    /// [`dot_avx2`] of four rows in lock step, each row's sums in its own accumulator (so each
    /// result is that function's), every line of each row asked for [`PREFETCH_AHEAD`] ahead.
    ///
    /// # Safety
    /// The CPU must support AVX2; every row covers `act.len() / 256` blocks.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot4_avx2(rows: [&[u8]; 4], act: &[i8]) -> [i32; 4] {
        let mut acc = [_mm256_setzero_si256(); 4];
        for b in 0..act.len() / BLOCK {
            for (acc, row) in acc.iter_mut().zip(rows) {
                // SAFETY: block b lies within every row (the caller's contract) and its
                // activations within act; a 66-byte block spans at most two lines past the
                // prefetch point, and a prefetch is only a hint.
                unsafe {
                    let block = row.as_ptr().add(BLOCK_BYTES * b);
                    _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD + 64) as *const i8);
                    *acc = block_sums(*acc, block, act.as_ptr().add(BLOCK * b));
                }
            }
        }
        acc.map(|a| crate::kernels::i2s::x86::hsum256(a))
    }

    /// Σ c·q of `N` rows in lock step (each covering `act.len() / 256` blocks), as I2_S's VNNI
    /// GEMV computes it (`i2s::x86::rows_sums_vnni`): masking a 32-byte half-block with 0x03,
    /// 0x0C, 0x30 and 0xC0 gives its four 32-weight pieces as c, 4·c, 16·c and 64·c, and
    /// `vpdpbusd` adds each (u8, at most 192 even for the invalid code 3) × activation quads
    /// straight into i32, one accumulator per scale and row: no shifts, and each activation load
    /// serves every row. |lane| grows by at most 2 · 4 · 192 · 128 per block, so i32 holds 10 000
    /// blocks (2.7 M weights) per row; each scaled sum is a multiple of its scale, so the final
    /// shifts are exact. Every line of every row is asked for [`PREFETCH_AHEAD`] ahead.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL and VNNI; every row covers `act.len() / 256` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    pub(super) unsafe fn rows_vnni<const N: usize>(rows: [&[u8]; N], act: &[i8]) -> [i32; N] {
        let masks = [0x03u8, 0x0c, 0x30, 0xc0].map(|m| _mm256_set1_epi8(m as i8));
        let mut acc = [[_mm256_setzero_si256(); 4]; N];
        let (w, a) = (rows.map(|r| r.as_ptr()), act.as_ptr());
        for b in 0..act.len() / BLOCK {
            // SAFETY: block b lies within every row (the caller's contract) and its 256
            // activations within act; a 66-byte block spans at most two lines past the prefetch
            // point, and a prefetch is only a hint.
            unsafe {
                for p in w {
                    let block = p.add(BLOCK_BYTES * b);
                    _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD + 64) as *const i8);
                }
                for h in 0..2 {
                    let packed: [__m256i; N] = std::array::from_fn(|r| {
                        _mm256_loadu_si256(w[r].add(BLOCK_BYTES * b + 32 * h) as *const __m256i)
                    });
                    for (piece, mask) in masks.iter().enumerate() {
                        let q = _mm256_loadu_si256(a.add(BLOCK * b + 128 * h + 32 * piece) as *const __m256i);
                        for (acc, p) in acc.iter_mut().zip(&packed) {
                            acc[piece] = _mm256_dpbusd_epi32(acc[piece], _mm256_and_si256(*p, *mask), q);
                        }
                    }
                }
            }
        }
        acc.map(|[c1, c4, c16, c64]| {
            let high = _mm256_add_epi32(_mm256_srai_epi32(c64, 6), _mm256_srai_epi32(c16, 4));
            crate::kernels::i2s::x86::hsum256(_mm256_add_epi32(
                high,
                _mm256_add_epi32(_mm256_srai_epi32(c4, 2), c1),
            ))
        })
    }

    /// A row's unsigned codes (0..2) in activation order: byte `qs[32h + m]` bits 2l give
    /// weight 128h + 32l + m of each block.
    ///
    /// # Safety
    /// The CPU must support AVX2; `out.len() == row.len() / 66 · 256`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpack_codes_avx2(row: &[u8], out: &mut [u8]) {
        let mask = _mm256_set1_epi8(3);
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            for h in 0..2 {
                // SAFETY: 32 bytes at block[32h] lie in the block; 128 codes at out[256b + 128h].
                unsafe {
                    let p = _mm256_loadu_si256(block.as_ptr().add(32 * h) as *const __m256i);
                    for l in 0..4 {
                        let c = _mm256_and_si256(_mm256_srl_epi16(p, _mm_cvtsi32_si128(2 * l)), mask);
                        let dst = out.as_mut_ptr().add(BLOCK * b + 128 * h + 32 * l as usize);
                        _mm256_storeu_si256(dst as *mut __m256i, c);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{BLOCK, BLOCK_BYTES};
    use std::arch::aarch64::*;

    /// Σ c·q with unsigned codes c = t + 1 (the caller subtracts Σq).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot_neon(row: &[u8], act: &[i8]) -> i32 {
        let mask = vdupq_n_u8(3);
        let mut acc = vdupq_n_s32(0);
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            for h in 0..2 {
                for m0 in [0, 16] {
                    // SAFETY: 16 bytes at block[32h + m0] lie within the block; activations
                    // 256b + 128h + 32l + m0 .. +16 lie within act.
                    unsafe {
                        let packed = vld1q_u8(block.as_ptr().add(32 * h + m0));
                        let q = act.as_ptr().add(BLOCK * b + 128 * h + m0);
                        let codes = [
                            vandq_u8(packed, mask),
                            vandq_u8(vshrq_n_u8(packed, 2), mask),
                            vandq_u8(vshrq_n_u8(packed, 4), mask),
                            vshrq_n_u8(packed, 6),
                        ];
                        for (l, c) in codes.into_iter().enumerate() {
                            acc =
                                crate::kernels::i2s::arm::madd16(acc, vreinterpretq_s8_u8(c), q.add(32 * l));
                        }
                    }
                }
            }
        }
        vaddvq_s32(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four rows at once equal four single-row dots and the decoded product, on every
    /// instruction set this CPU has, with the int8 extremes among the activations.
    #[test]
    fn dot4_is_four_dots() {
        let mut x = 0x2545_f491u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for k in [256usize, 512, 2560, 6912] {
            let codes: Vec<i8> = (0..4 * k).map(|_| (next() % 3) as i8 - 1).collect();
            let packed = tern_formats::tq2_0::pack(&codes, 4, k, 1.0);
            let rb = k / BLOCK * BLOCK_BYTES;
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &packed[r * rb..(r + 1) * rb]);
            let act: Vec<i8> = (0..k)
                .map(|i| {
                    if i % 13 == 0 {
                        -128
                    } else if i % 7 == 0 {
                        127
                    } else {
                        next() as i8
                    }
                })
                .collect();
            let sum: i32 = act.iter().map(|&a| a as i32).sum();
            let want: [i32; 4] = std::array::from_fn(|r| {
                codes[r * k..(r + 1) * k].iter().zip(&act).map(|(&t, &q)| t as i32 * q as i32).sum()
            });
            for isa in crate::cpu::available() {
                assert_eq!(dot4(isa, rows, &act, sum), want, "{} k={k}", isa.name());
                assert_eq!(rows.map(|r| dot(isa, r, &act, sum)), want, "{} k={k}", isa.name());
            }
        }
    }

    /// Rows of every weight +1, then every weight −1, against activations all −128 (the largest
    /// |c·q| a valid row reaches): four rows at once and one at a time equal the hand-computed
    /// ±128·k on every instruction set, over a row 40 blocks long.
    #[test]
    fn rows_at_the_extremes() {
        let k = 40 * BLOCK;
        let act = vec![-128i8; k];
        let sum = -128 * k as i32;
        for sign in [1i8, -1] {
            let packed = tern_formats::tq2_0::pack(&vec![sign; 4 * k], 4, k, 1.0);
            let rb = k / BLOCK * BLOCK_BYTES;
            let rows: [&[u8]; 4] = std::array::from_fn(|r| &packed[r * rb..(r + 1) * rb]);
            let want = -128 * k as i32 * sign as i32;
            for isa in crate::cpu::available() {
                assert_eq!(dot4(isa, rows, &act, sum), [want; 4], "{}", isa.name());
                assert_eq!(dot(isa, rows[0], &act, sum), want, "{}", isa.name());
            }
        }
    }
}
