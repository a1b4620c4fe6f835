//! Per-token activation quantisation for the integer kernels: int8 codes exactly as transformers
//! computes them (`formats::ternary::quantise_activations`), zero-padded to whole 128-weight
//! blocks, plus the scale s and the sum of the codes (which the unsigned-code SIMD kernels
//! subtract once per row instead of per weight). The AVX2 twin gives the same codes, scale and
//! sum bit for bit (tested on random rows with awkward lengths, ties, NaN and infinities).

use crate::cpu::Isa;
use tern_formats::ternary;

/// One token's quantised activations.
pub struct QuantRow<'a> {
    /// `padded_len` codes; the tail beyond the real length is zero.
    pub codes: &'a [i8],
    /// x ≈ q / s.
    pub scale: f32,
    /// Σ codes.
    pub sum: i32,
}

/// Quantises `x` into `out` (length ≥ x.len(), tail zeroed); returns (s, Σq).
pub fn quantise(isa: Isa, x: &[f32], out: &mut [i8]) -> (f32, i32) {
    assert!(out.len() >= x.len());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) && isa.supported() {
        // SAFETY: AVX2 was detected; out holds at least x.len() codes.
        return unsafe { quantise_avx2(x, out) };
    }
    let _ = isa;
    quantise_scalar(x, out)
}

/// The reference: formats' quantiser, then the zero tail and the sum.
pub fn quantise_scalar(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let (head, tail) = out.split_at_mut(x.len());
    let s = ternary::quantise_activations(x, head);
    tail.fill(0);
    (s, head.iter().map(|&q| q as i32).sum())
}

/// Two passes of 32 values: the largest |x| (`max` with the new value first skips NaN, as
/// `f32::max` does), then x·s rounded with the same magic-number add and subtract, NaN masked
/// to 0 (the saturating cast's answer), clamped, converted and packed; the i32 codes are summed
/// on the way. The SSE2 loop the scalar code compiles to leaves the saturating float→int cast
/// scalar (docs/performance-notes.md, "Activation quantisation").
///
/// # Safety
/// The CPU must support AVX2; `out.len() >= x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantise_avx2(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let n = x.len();
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let whole = n / 32 * 32;
    let sign = _mm256_set1_ps(-0.0);
    let mut m = [_mm256_setzero_ps(); 4];
    for i in (0..whole).step_by(32) {
        for (j, m) in m.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 <= whole <= n.
            let v = unsafe { _mm256_loadu_ps(xp.add(i + 8 * j)) };
            *m = _mm256_max_ps(_mm256_andnot_ps(sign, v), *m);
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: eight f32 into [f32; 8].
    unsafe {
        let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    }
    let absmax = x[whole..].iter().chain(&lanes).fold(0.0f32, |a, v| a.max(v.abs()));
    let s = ternary::scale_from_absmax(absmax);

    let (scale, magic) = (_mm256_set1_ps(s), _mm256_set1_ps(ternary::ROUND_MAGIC));
    let (low, high) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut sums = _mm256_setzero_si256();
    for i in (0..whole).step_by(32) {
        let code = |j: usize| {
            // SAFETY: i + 8j + 8 <= whole <= n.
            let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(xp.add(i + 8 * j)) }, scale);
            let r = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, low), high))
        };
        let (a, b, c, d) = (code(0), code(1), code(2), code(3));
        sums = _mm256_add_epi32(sums, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
        // packs work within 128-bit halves: the permutation puts the 4-code groups back in order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        // SAFETY: i + 32 <= n <= out.len().
        unsafe { _mm256_storeu_si256(op.add(i) as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order)) };
    }
    let mut sum = crate::kernels::i2s::x86::hsum256(sums);
    for (q, &v) in out[whole..n].iter_mut().zip(&x[whole..]) {
        *q = ternary::quantise_activation(v, s);
        sum += *q as i32;
    }
    out[n..].fill(0);
    (s, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_with_zeros_and_sums() {
        let mut out = [9i8; 6];
        let (s, sum) = quantise_scalar(&[1.0, -0.5, 0.25], &mut out);
        assert_eq!(s, 127.0);
        assert_eq!(out, [127, -64, 32, 0, 0, 0]); // -63.5 → -64 (half to even)
        assert_eq!(sum, 95);
    }

    /// Every instruction set's quantiser against the scalar reference, bit for bit: random rows
    /// of awkward lengths, rows whose values sit on rounding ties (integer multiples of the
    /// absmax / 254), and rows holding NaN or infinities.
    #[test]
    fn simd_quantisers_equal_the_scalar_one() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for len in [0usize, 1, 7, 31, 32, 33, 63, 64, 100, 2560, 6912, 6913] {
            rows.push((0..len).map(|_| (random() % 20001) as f32 / 1000.0 - 10.0).collect());
            // Ties: k / 2 in [-127, 127] with absmax 127 gives s = 1 and x·s = k + ½ for odd k.
            let mut ties: Vec<f32> = (0..len).map(|_| ((random() % 509) as f32 - 254.0) / 2.0).collect();
            if let Some(first) = ties.first_mut() {
                *first = 127.0;
            }
            rows.push(ties);
        }
        let mut special: Vec<f32> = (0..70).map(|i| i as f32 - 35.0).collect();
        special[3] = f32::NAN;
        special[40] = -f32::NAN;
        special[68] = f32::NAN;
        rows.push(special.clone());
        special[10] = f32::INFINITY;
        special[50] = f32::NEG_INFINITY;
        rows.push(special);
        rows.push(vec![1e-7; 45]); // below the scale floor
        for isa in crate::cpu::available() {
            for row in &rows {
                let padded = row.len().next_multiple_of(128) + 128;
                let (mut want, mut got) = (vec![5i8; padded], vec![5i8; padded]);
                let expected = quantise_scalar(row, &mut want);
                let actual = quantise(isa, row, &mut got);
                assert_eq!(actual.0.to_bits(), expected.0.to_bits(), "{isa:?} scale, length {}", row.len());
                assert_eq!(actual.1, expected.1, "{isa:?} sum, length {}", row.len());
                assert_eq!(got, want, "{isa:?} codes, length {}", row.len());
            }
        }
    }
}
