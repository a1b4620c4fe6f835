//! BitNet b1.58 quantisation maths, bit-exact with transformers (`WeightQuant`, `ActQuant` in
//! `integrations/bitnet.py`), see `../shared/docs/hf-checkpoints.md` §2.
//!
//! Weights: one scale per tensor, β = mean|W| in f32, `t = clamp(round_ties_even(W · (1/max(β,
//! 1e-5))), -1, 1)`. It is `W * inv`, not `W / β`: the two differ in the last ulp exactly at ±β/2.
//!
//! Activations: one scale per token, `s = 127 / max(max|x|, 1e-5)` (evaluated as torch does,
//! `(1/max) · 127`, see [`activation_scale`]), `q = clamp(round_ties_even(x · s), -128, 127)`.
//! Since |x·s| ≤ 127 (+ an ulp), −128 never occurs.
//!
//! Rust's `f32::round` rounds half away from zero; torch rounds half to even, hence
//! `round_ties_even` everywhere.

/// The smallest scale transformers lets β and absmax reach (its `clamp(min=1e-5)`).
pub const SCALE_FLOOR: f32 = 1e-5;

/// β = mean(|W|) as torch computes it for an f32 tensor.
///
/// Reduction order: the sum of |w| is accumulated in f64 (exact for any real checkpoint: at most
/// 2^29 terms of 24-bit mantissas lose nothing that matters) and rounded once to f32, then divided
/// by the element count *in f32*, as `torch.mean` does (sum in f32, then one f32 division).
/// torch's own f32 sum uses a cascade of partial sums, so on rare tensors its sum differs from the
/// correctly rounded one by one ulp; the tests compare against torch's β and allow exactly that.
pub fn absmean(values: &[f32]) -> f32 {
    let mut mean = AbsMean::default();
    mean.add(values);
    mean.value()
}

/// [`absmean`] over a tensor that arrives in pieces: Σ|v| in f64, element `i` into running sum
/// `i % 8` (eight independent sums, so the loop vectorises instead of waiting on one add chain),
/// the eight added in a fixed tree at the end; lanes follow the element's place in the whole
/// tensor, so any split into pieces gives the bits of one call on the whole tensor.
#[derive(Debug, Default, Clone, Copy)]
pub struct AbsMean {
    lanes: [f64; 8],
    count: usize,
}

impl AbsMean {
    pub fn add(&mut self, values: &[f32]) {
        // Up to the next multiple of 8 elements one at a time, then whole groups of 8.
        let head = ((8 - self.count % 8) % 8).min(values.len());
        for (i, v) in values[..head].iter().enumerate() {
            self.lanes[(self.count + i) % 8] += v.abs() as f64;
        }
        let mut groups = values[head..].chunks_exact(8);
        for g in &mut groups {
            for (l, v) in self.lanes.iter_mut().zip(g) {
                *l += v.abs() as f64;
            }
        }
        for (l, v) in self.lanes.iter_mut().zip(groups.remainder()) {
            *l += v.abs() as f64;
        }
        self.count += values.len();
    }

    pub fn value(&self) -> f32 {
        let l = &self.lanes;
        let sum = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        if self.count == 0 { 0.0 } else { (sum as f32) / (self.count as f32) }
    }
}

/// The multiplier transformers applies before rounding: `1 / max(β, 1e-5)` in f32.
pub fn weight_inverse_scale(beta: f32) -> f32 {
    1.0 / beta.max(SCALE_FLOOR)
}

/// Ternarises one weight: `clamp(round_ties_even(w * inv), -1, 1)`.
#[inline]
pub fn ternarise_one(w: f32, inv: f32) -> i8 {
    // round_ties_even without a libm call (so the loop vectorises): exact below 2^22, and any
    // larger |w·inv| rounds to something of the same sign ≥ 1, which the clamp maps to ±1 as
    // the exact rounding would.
    round_ties_even_small(w * inv).clamp(-1.0, 1.0) as i8
}

/// Ternarises a whole tensor with its per-tensor β; returns the codes in {-1, 0, 1}.
pub fn ternarise(values: &[f32], beta: f32) -> Vec<i8> {
    use rayon::prelude::*;
    let inv = weight_inverse_scale(beta);
    let mut codes = vec![0i8; values.len()];
    // Spans per task on every thread: each weight alone, so any split gives the same codes.
    codes.par_chunks_mut(1 << 14).zip(values.par_chunks(1 << 14)).for_each(|(c, v)| {
        for (c, &w) in c.iter_mut().zip(v) {
            *c = ternarise_one(w, inv);
        }
    });
    codes
}

/// Per-token activation scale `s = 127 / max(absmax, 1e-5)`, computed as torch computes it:
/// transformers writes `127 / t` with a tensor `t`, which torch evaluates as
/// `t.reciprocal() * 127` — two roundings, sometimes one ulp away from a true division. The
/// difference decides exact rounding ties (x·s = k + ½), which are common when the input is an
/// integer multiple of one factor, e.g. o_proj's input for the first token of a family without
/// sub-norms (attention context = v). Matching it keeps tern's codes equal to transformers'.
pub fn activation_scale(row: &[f32]) -> f32 {
    // Eight running maxima, so the loop vectorises; max is order-independent here (NaN is
    // skipped by f32::max whatever the order), so this equals the sequential fold.
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let absmax = lanes.iter().fold(tail, |m, &l| m.max(l));
    scale_from_absmax(absmax)
}

/// `s` from a token's largest |x|, with torch's two roundings ([`activation_scale`]).
#[inline]
pub fn scale_from_absmax(absmax: f32) -> f32 {
    (1.0 / absmax.max(SCALE_FLOOR)) * 127.0
}

/// `v.round_ties_even()` for |v| < 2^22 (and NaN) without a libm call, so loops vectorise:
/// adding and removing 1.5·2^23 leaves exactly the integer the IEEE default rounding (to
/// nearest, ties to even) picks. Activations need |x·s| ≤ 127.
#[inline]
fn round_ties_even_small(v: f32) -> f32 {
    (v + ROUND_MAGIC) - ROUND_MAGIC
}

/// 1.5·2^23: `(v + ROUND_MAGIC) − ROUND_MAGIC` rounds |v| < 2^22 to an integer, ties to even.
pub const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantises one token's activations to int8 codes; returns the scale s (x ≈ q / s).
pub fn quantise_activations(row: &[f32], out: &mut [i8]) -> f32 {
    debug_assert_eq!(row.len(), out.len());
    let s = activation_scale(row);
    for (q, &x) in out.iter_mut().zip(row) {
        *q = quantise_activation(x, s);
    }
    s
}

/// One activation code: `clamp(round_ties_even(x·s), −128, 127)`, NaN → 0 (Rust's saturating
/// cast; a SIMD twin must answer the same).
#[inline]
pub fn quantise_activation(x: f32, s: f32) -> i8 {
    round_ties_even_small(x * s).clamp(-128.0, 127.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even_like_torch() {
        // β = 1, so w * inv = w: 0.5 → 0 and 1.5 → 2 → clamped 1; -0.5 → -0 → 0.
        let codes = ternarise(&[0.5, -0.5, 1.5, -1.5, 0.49, 0.51, 3.0, -7.0], 1.0);
        assert_eq!(codes, vec![0, 0, 1, -1, 0, 1, 1, -1]);
    }

    #[test]
    fn fast_ternarisation_equals_the_exact_formula() {
        let inv = weight_inverse_scale(0.37);
        let mut ws: Vec<f32> = (-2000..=2000).map(|k| k as f32 * 0.37 / 1000.0).collect();
        ws.extend([0.185, -0.185, 0.5 / inv, -0.5 / inv, 1.5 / inv, 1e30, -1e30, 5e6, -5e6, 0.0, -0.0]);
        for w in ws {
            let exact = (w * inv).round_ties_even().clamp(-1.0, 1.0) as i8;
            assert_eq!(ternarise_one(w, inv), exact, "{w}");
        }
    }

    #[test]
    fn small_rounding_equals_round_ties_even() {
        let mut vals: Vec<f32> = (-300..=300).map(|k| k as f32 * 0.5).collect();
        vals.extend((-300..=300).map(|k| k as f32 * 0.5 + f32::EPSILON * 64.0));
        vals.extend((0..100_000).map(|i| (i as f32 * 0.001_27).sin() * 130.0));
        vals.extend([0.0, -0.0, 0.499_999_97, -0.499_999_97, 126.5, -127.5, 1e-30, f32::MIN_POSITIVE]);
        for v in vals {
            assert_eq!(round_ties_even_small(v), v.round_ties_even(), "{v}");
        }
        assert!(round_ties_even_small(f32::NAN).is_nan());
    }

    #[test]
    fn vectorised_absmax_equals_the_fold() {
        let row: Vec<f32> = (0..1001).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        let fold = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(activation_scale(&row), (1.0 / fold) * 127.0);
        let mut with_nan = row.clone();
        with_nan[17] = f32::NAN;
        assert_eq!(activation_scale(&with_nan), (1.0 / fold) * 127.0);
    }

    #[test]
    fn absmean_in_pieces_is_absmean_whole() {
        // Magnitudes over twelve orders, so the f64 sum rounds and its order would show.
        let mut x = 0x9e37_79b9u32;
        let values: Vec<f32> = (0..100_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let m = (x % 10_000) as f32 / 1e4 - 0.5;
                m * 10f32.powi((x >> 20) as i32 % 12 - 6)
            })
            .collect();
        let whole = absmean(&values);
        let mut pieces = AbsMean::default();
        for piece in values.chunks(7919).chain(std::iter::once(&[][..])) {
            pieces.add(piece);
        }
        assert_eq!(pieces.value().to_bits(), whole.to_bits());
        let sequential = values.iter().fold(0f64, |s, v| s + v.abs() as f64) as f32 / values.len() as f32;
        assert_eq!(whole.to_bits(), sequential.to_bits());
        assert_eq!(AbsMean::default().value(), 0.0);
    }

    #[test]
    fn absmean_hand_computed() {
        assert_eq!(absmean(&[1.0, -2.0, 3.0, -4.0]), 2.5);
        assert_eq!(absmean(&[]), 0.0);
    }

    #[test]
    fn tiny_beta_is_floored() {
        // β below the floor: inv = 1e5 (as transformers), so 1e-6 → round(0.1) = 0.
        assert_eq!(weight_inverse_scale(1e-9), 1.0 / 1e-5);
        assert_eq!(ternarise(&[1e-6, 2e-5, -2e-5], 1e-9), vec![0, 1, -1]);
    }

    #[test]
    fn activation_quantisation_hand_computed() {
        let mut q = [0i8; 4];
        let s = quantise_activations(&[0.5, -1.0, 0.25, -0.1], &mut q);
        assert_eq!(s, 127.0);
        // 63.5 rounds to even 64; -127; 31.75 → 32; -12.7 → -13.
        assert_eq!(q, [64, -127, 32, -13]);
        let s0 = quantise_activations(&[0.0, 0.0, 0.0, 0.0], &mut q);
        assert_eq!(s0, (1.0 / 1e-5f32) * 127.0);
        assert_eq!(q, [0, 0, 0, 0]);
    }
}

/// Deterministic test data shared by the formats crate's tests.
#[cfg(test)]
pub(crate) mod tests_support {
    /// Ternary codes from a SplitMix64 stream, so tests need no rand crate.
    pub fn random_codes(n: usize, seed: u64) -> Vec<i8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z % 3) as i8 - 1
            })
            .collect()
    }
}
