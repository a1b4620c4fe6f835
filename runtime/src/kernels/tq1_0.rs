//! TQ1_0 row dots (llama.cpp's base-3 layout, `formats::tq1_0`): Σ t·q over one packed row.
//!
//! A 256-weight block is `qs[48] | qh[4] | d`; digit n of a byte b decodes as
//! `((b·3ⁿ mod 256)·3) >> 8`, i.e. with x = b·3ⁿ mod 256 the unsigned code c = t + 1 is
//! `(x ≥ 86) + (x ≥ 171)`. The SIMD variants get b·3ⁿ mod 256 for the next digit by multiplying
//! by 3 in wrapping byte arithmetic, compare, and multiply the codes by the activations like the
//! 2-bit kernels (Σ c·q − Σq). `qs[0..32]` gives elements m + 32n, `qs[32..48]` 160 + m + 16n
//! (128-bit operations) and `qh` 240 + j + 4n (one 128-bit vector of its four bytes at the four
//! powers), each already in activation order.
//!
//! Variants: scalar (decodes each block), AVX2, AVX-512 VNNI, NEON; all exact, tested against
//! each other.

use crate::cpu::Isa;
use tern_formats::tq1_0::{BLOCK, BLOCK_BYTES};

/// Σ t·q over a TQ1_0 row (`act_sum` = Σq, used by the unsigned-code SIMD paths).
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
pub fn dot(isa: Isa, row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    assert_eq!(row.len() / BLOCK_BYTES * BLOCK, act.len(), "activations must cover the row");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.supported() && row.len() / BLOCK_BYTES <= x86::VNNI_MAX_BLOCKS => {
            // SAFETY: AVX-512 VNNI was detected (Isa::supported); lengths checked above.
            unsafe { x86::dot_vnni(row, act) - act_sum }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if isa.supported() => {
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
            tern_formats::tq1_0::decode_block(block, &mut codes);
            codes.iter().zip(a).map(|(&t, &q)| t as i32 * q as i32).sum::<i32>()
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// Unsigned codes of bytes x = b·3ⁿ mod 256: (x ≥ 86) + (x ≥ 171), via signed compares of
    /// x − 128 (> −43, > 42).
    #[target_feature(enable = "avx2")]
    fn codes256(x: __m256i) -> __m256i {
        let s = _mm256_xor_si256(x, _mm256_set1_epi8(-128));
        let c1 = _mm256_cmpgt_epi8(s, _mm256_set1_epi8(-43));
        let c2 = _mm256_cmpgt_epi8(s, _mm256_set1_epi8(42));
        _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(c1, c2))
    }

    #[target_feature(enable = "avx2")]
    fn codes128(x: __m128i) -> __m128i {
        let s = _mm_xor_si128(x, _mm_set1_epi8(-128));
        let c1 = _mm_cmpgt_epi8(s, _mm_set1_epi8(-43));
        let c2 = _mm_cmpgt_epi8(s, _mm_set1_epi8(42));
        _mm_sub_epi8(_mm_setzero_si128(), _mm_add_epi8(c1, c2))
    }

    /// x·3 mod 256 per byte.
    #[target_feature(enable = "avx2")]
    fn times3_256(x: __m256i) -> __m256i {
        _mm256_add_epi8(x, _mm256_add_epi8(x, x))
    }

    #[target_feature(enable = "avx2")]
    fn times3_128(x: __m128i) -> __m128i {
        _mm_add_epi8(x, _mm_add_epi8(x, x))
    }

    /// The `qh` bytes of a block at powers 1, 3, 9, 27: digits for elements 240..256 in order.
    #[target_feature(enable = "avx2")]
    fn qh_digits(block: &[u8]) -> __m128i {
        let x0 = _mm_set1_epi32(i32::from_le_bytes([block[48], block[49], block[50], block[51]]));
        let x1 = times3_128(x0);
        let x2 = times3_128(x1);
        let x3 = times3_128(x2);
        _mm_unpacklo_epi64(_mm_unpacklo_epi32(x0, x1), _mm_unpacklo_epi32(x2, x3))
    }

    /// A row's unsigned codes c = t + 1 in activation order (`codes.len()` = the row's weights):
    /// the same digit walk as [`dot_avx2`], stored instead of multiplied.
    ///
    /// # Safety
    /// AVX2; `codes` holds 256 bytes per 54-byte block of `row`.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn unpack_codes_avx2(row: &[u8], codes: &mut [u8]) {
        for (block, out) in row.chunks_exact(BLOCK_BYTES).zip(codes.chunks_exact_mut(BLOCK)) {
            // SAFETY: the loads read block[0..48]; the stores write out[0..256] (a whole block).
            unsafe {
                let o = out.as_mut_ptr();
                let mut x = _mm256_loadu_si256(block.as_ptr() as *const __m256i);
                for n in 0..5 {
                    _mm256_storeu_si256(o.add(32 * n) as *mut __m256i, codes256(x));
                    x = times3_256(x);
                }
                let mut x = _mm_loadu_si128(block.as_ptr().add(32) as *const __m128i);
                for n in 0..5 {
                    _mm_storeu_si128(o.add(160 + 16 * n) as *mut __m128i, codes128(x));
                    x = times3_128(x);
                }
                _mm_storeu_si128(o.add(240) as *mut __m128i, codes128(qh_digits(block)));
            }
        }
    }

    /// Rows [`dot_vnni`] takes: its i32 lanes hold 255 · Σ c·q, at most 255 · 2 · 128 per weight.
    pub(super) const VNNI_MAX_BLOCKS: usize = 128;

    /// Σ c·q with unsigned codes c = t + 1 (the caller subtracts Σq), without forming the codes:
    /// c = (x ≥ 86) + (x ≥ 171), so Σ c·q = Σ_{x≥86} q + Σ_{x≥171} q, and each compare's 0xFF
    /// bytes go straight into `vpdpbusd` as 255 — the two sums are 255 · Σ c·q, divided exactly
    /// at the end. Digits are walked on s = x − 128 (3s ≡ 3x − 128 mod 256, so the next digit is
    /// s + s + s and the compares are signed). Per 32 weights: 2 compares, 2 `vpdpbusd`, 2 adds,
    /// against AVX2's 9 operations.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI; `act` covers the row's blocks, at most [`VNNI_MAX_BLOCKS`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
    pub(super) unsafe fn dot_vnni(row: &[u8], act: &[i8]) -> i32 {
        let flip = _mm256_set1_epi8(-128);
        let (lo, hi) = (_mm256_set1_epi8(-43), _mm256_set1_epi8(42));
        let (lo128, hi128) = (_mm_set1_epi8(-43), _mm_set1_epi8(42));
        // Four accumulators each, by digit parity and threshold: one chain of 11 dependent
        // `vpdpbusd` per block would make its latency the bound.
        let (mut acc, mut acc128) = ([_mm256_setzero_si256(); 4], [_mm_setzero_si128(); 4]);
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            // SAFETY: the loads below read block[0..52] (54-byte block) and act[256b..256b+256]
            // (the caller checked act covers every block).
            unsafe {
                let q = act.as_ptr().add(BLOCK * b);
                // qs[0..32]: digit n → elements 32n..32n+32.
                let mut s = _mm256_xor_si256(_mm256_loadu_si256(block.as_ptr() as *const __m256i), flip);
                for n in 0..5 {
                    let a = _mm256_loadu_si256(q.add(32 * n) as *const __m256i);
                    let j = 2 * (n & 1);
                    acc[j] = _mm256_dpbusd_epi32(acc[j], _mm256_cmpgt_epi8(s, lo), a);
                    acc[j + 1] = _mm256_dpbusd_epi32(acc[j + 1], _mm256_cmpgt_epi8(s, hi), a);
                    s = _mm256_add_epi8(s, _mm256_add_epi8(s, s));
                }
                // qs[32..48]: digit n → elements 160 + 16n..; then qh → 240..256.
                let flip128 = _mm256_castsi256_si128(flip);
                let mut s = _mm_xor_si128(_mm_loadu_si128(block.as_ptr().add(32) as *const __m128i), flip128);
                for n in 0..6 {
                    if n == 5 {
                        s = _mm_xor_si128(qh_digits(block), flip128);
                    }
                    let a = _mm_loadu_si128(q.add(160 + 16 * n) as *const __m128i);
                    let j = 2 * (n & 1);
                    acc128[j] = _mm_dpbusd_epi32(acc128[j], _mm_cmpgt_epi8(s, lo128), a);
                    acc128[j + 1] = _mm_dpbusd_epi32(acc128[j + 1], _mm_cmpgt_epi8(s, hi128), a);
                    s = _mm_add_epi8(s, _mm_add_epi8(s, s));
                }
            }
        }
        let wide = _mm256_add_epi32(_mm256_add_epi32(acc[0], acc[1]), _mm256_add_epi32(acc[2], acc[3]));
        let narrow = _mm_add_epi32(_mm_add_epi32(acc128[0], acc128[1]), _mm_add_epi32(acc128[2], acc128[3]));
        let sum = crate::kernels::i2s::x86::hsum256(_mm256_add_epi32(wide, _mm256_zextsi128_si256(narrow)));
        sum / 255
    }

    /// Σ c·q with unsigned codes c = t + 1 (the caller subtracts Σq).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_avx2(row: &[u8], act: &[i8]) -> i32 {
        let ones256 = _mm256_set1_epi16(1);
        let ones128 = _mm_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut acc128 = _mm_setzero_si128();
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            // SAFETY: the loads below read block[0..52] (54-byte block) and act[256b..256b+256]
            // (the caller checked act covers every block).
            unsafe {
                let q = act.as_ptr().add(BLOCK * b);
                // qs[0..32]: digit n → elements 32n..32n+32.
                let mut x = _mm256_loadu_si256(block.as_ptr() as *const __m256i);
                let mut s = _mm256_setzero_si256();
                for n in 0..5 {
                    let a = _mm256_loadu_si256(q.add(32 * n) as *const __m256i);
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(codes256(x), a));
                    x = times3_256(x);
                }
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones256));
                // qs[32..48]: digit n → elements 160 + 16n..
                let mut x = _mm_loadu_si128(block.as_ptr().add(32) as *const __m128i);
                let mut s = _mm_setzero_si128();
                for n in 0..5 {
                    let a = _mm_loadu_si128(q.add(160 + 16 * n) as *const __m128i);
                    s = _mm_add_epi16(s, _mm_maddubs_epi16(codes128(x), a));
                    x = times3_128(x);
                }
                let a = _mm_loadu_si128(q.add(240) as *const __m128i);
                s = _mm_add_epi16(s, _mm_maddubs_epi16(codes128(qh_digits(block)), a));
                acc128 = _mm_add_epi32(acc128, _mm_madd_epi16(s, ones128));
            }
        }
        let acc = _mm256_add_epi32(acc, _mm256_zextsi128_si256(acc128));
        crate::kernels::i2s::x86::hsum256(acc)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{BLOCK, BLOCK_BYTES};
    use crate::kernels::i2s::arm::madd16;
    use std::arch::aarch64::*;

    /// Unsigned codes of bytes x = b·3ⁿ mod 256: (x ≥ 86) + (x ≥ 171).
    #[target_feature(enable = "neon")]
    fn codes(x: uint8x16_t) -> int8x16_t {
        let c1 = vcgtq_u8(x, vdupq_n_u8(85));
        let c2 = vcgtq_u8(x, vdupq_n_u8(170));
        vreinterpretq_s8_u8(vsubq_u8(vsubq_u8(vdupq_n_u8(0), c1), c2))
    }

    /// Σ c·q with unsigned codes c = t + 1 (the caller subtracts Σq).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot_neon(row: &[u8], act: &[i8]) -> i32 {
        let three = vdupq_n_u8(3);
        let mut acc = vdupq_n_s32(0);
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            // SAFETY: loads read block[0..48] and act[256b..256b+256] (lengths checked by the caller).
            unsafe {
                let q = act.as_ptr().add(BLOCK * b);
                for m0 in [0, 16] {
                    let mut x = vld1q_u8(block.as_ptr().add(m0));
                    for n in 0..5 {
                        acc = madd16(acc, codes(x), q.add(32 * n + m0));
                        x = vmulq_u8(x, three);
                    }
                }
                let mut x = vld1q_u8(block.as_ptr().add(32));
                for n in 0..5 {
                    acc = madd16(acc, codes(x), q.add(160 + 16 * n));
                    x = vmulq_u8(x, three);
                }
                let pows: [u8; 16] = [1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27];
                let qh = u32::from_le_bytes([block[48], block[49], block[50], block[51]]);
                let x = vmulq_u8(vreinterpretq_u8_u32(vdupq_n_u32(qh)), vld1q_u8(pows.as_ptr()));
                acc = madd16(acc, codes(x), q.add(240));
            }
        }
        vaddvq_s32(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At the widest row the VNNI dot takes, its sums at their largest magnitude (every weight +1
    /// or −1 against every activation −128, where 255 · Σ c·q is closest to overflowing i32)
    /// equal the scalar dot and the hand-computed value on every instruction set; one block more
    /// goes to the other paths with the same result.
    #[test]
    fn widest_rows_at_the_extremes() {
        #[cfg(target_arch = "x86_64")]
        let max_blocks = x86::VNNI_MAX_BLOCKS;
        #[cfg(not(target_arch = "x86_64"))]
        let max_blocks = 128;
        for blocks in [max_blocks, max_blocks + 1] {
            let k = blocks * BLOCK;
            let act = vec![-128i8; k];
            let act_sum = -128 * k as i32;
            for t in [1i8, -1] {
                let row = tern_formats::tq1_0::pack(&vec![t; k], 1, k, 1.0);
                let row = &row[..blocks * BLOCK_BYTES];
                let want = -128 * t as i32 * k as i32;
                assert_eq!(dot_scalar(row, &act), want);
                for isa in crate::cpu::available() {
                    assert_eq!(
                        dot(isa, row, &act, act_sum),
                        want,
                        "{blocks} blocks of {t} on {}",
                        isa.name()
                    );
                }
            }
        }
    }
}
