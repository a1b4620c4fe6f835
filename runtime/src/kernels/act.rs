//! Per-token activation quantisation for the integer kernels: int8 codes exactly as transformers
//! computes them (`formats::ternary::quantise_activations`), zero-padded to whole 128-weight
//! blocks, plus the scale s and the sum of the codes (which the unsigned-code SIMD kernels
//! subtract once per row instead of per weight).

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
pub fn quantise(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let (head, tail) = out.split_at_mut(x.len());
    let s = ternary::quantise_activations(x, head);
    tail.fill(0);
    (s, head.iter().map(|&q| q as i32).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_with_zeros_and_sums() {
        let mut out = [9i8; 6];
        let (s, sum) = quantise(&[1.0, -0.5, 0.25], &mut out);
        assert_eq!(s, 127.0);
        assert_eq!(out, [127, -64, 32, 0, 0, 0]); // -63.5 → -64 (half to even)
        assert_eq!(sum, 95);
    }
}
