//! Row-wise float operations of the forward pass: RMSNorm (the same bits for a row alone or in
//! a batch, portable and 256-bit compilations alike), residual adds, and the rule for when a
//! batch's rows go across threads.

#[cfg(target_arch = "x86_64")]
use crate::cpu::{self, Isa};
use rayon::prelude::*;

/// RMSNorm of each `weight.len()`-wide row: `w · x / sqrt(mean(x²) + eps)`, in f32. A prompt's
/// rows go across threads (each row's bits are the same either way: rows are independent).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let n = weight.len();
    let mut out = vec![0f32; x.len()];
    #[cfg(target_arch = "x86_64")]
    let simd = matches!(cpu::selected(), Isa::Avx2 | Isa::Avx512Vnni);
    for_each_row(&mut out, n, |i, out| {
        let x = &x[i * n..(i + 1) * n];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the selected instruction set was detected (`cpu::selected`).
            return unsafe { rms_norm_avx2(x, weight, eps, out) };
        }
        rms_norm_portable(x, weight, eps, out)
    });
    out
}

/// Rows from which a prompt's per-token elementwise work (norms, RoPE, activation, residual
/// adds) is split across threads; one generated token's is too small for a fork-join.
const PARALLEL_ROWS: usize = 2;

/// `f(i, row)` for each `width`-wide row of `x`: a prompt's rows across threads, one token's on
/// this thread.
pub(super) fn for_each_row(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let width = width.max(1);
    if x.len() / width >= PARALLEL_ROWS {
        x.par_chunks_mut(width).enumerate().for_each(|(i, row)| f(i, row));
    } else {
        x.chunks_mut(width).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// [`rms_norm_portable`] compiled with 256-bit vectors: the same operations lane for lane (no
/// reassociation, no fused multiply-add), so the same bits in half the instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rms_norm_avx2(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_portable(x, weight, eps, out)
}

#[inline(always)]
fn rms_norm_portable(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (row, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let inv = 1.0 / (sum_of_squares(row) / n as f32 + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

/// `x += y` elementwise (a residual add), a prompt's rows across threads.
pub(super) fn add_in_place(x: &mut [f32], y: &[f32], width: usize) {
    for_each_row(x, width, |i, x| x.iter_mut().zip(&y[i * width..]).for_each(|(a, b)| *a += b));
}

/// `Σ v²` in 32 interleaved partial sums, folded in halves in a fixed order: the same bits for a
/// row whether it comes alone (generation) or with others (a prompt). One running sum is a chain
/// of 2560-6912 dependent adds, each waiting for the last; 32 lanes are eight independent SSE
/// chains, enough to hide the add latency (docs/performance-notes.md, "Norms and elementwise work").
#[inline(always)]
fn sum_of_squares(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 32];
    let blocks = row.chunks_exact(32);
    let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
    for c in blocks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mut width = 16;
    while width > 0 {
        let (low, high) = lanes.split_at_mut(width);
        for (l, h) in low.iter_mut().zip(&high[..width]) {
            *l += h;
        }
        width /= 2;
    }
    lanes[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values in [−span/2, span/2] in steps of 1/1000 (xorshift32).
    fn random_values(seed: u32, span: u32) -> impl FnMut() -> f32 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % (span * 1000 + 1)) as f32 / 1000.0 - span as f32 / 2.0
        }
    }

    /// RMSNorm against one written here in f64, on 19 rows of 37 (a block of 32 and a tail of
    /// five per row); and a row normed alone is the same bits as within a batch.
    #[test]
    fn rms_norm_matches_f64_and_is_the_same_alone_or_batched() {
        let n = 37;
        let mut random = random_values(0x1234_5678, 40);
        let rows: Vec<f32> = (0..19 * n).map(|_| random()).collect();
        let weight: Vec<f32> = (0..n).map(|_| random()).collect();
        let got = rms_norm(&rows, &weight, 1e-5);
        for (r, row) in rows.chunks_exact(n).enumerate() {
            let mean = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let inv = 1.0 / (mean + 1e-5).sqrt();
            for (i, (&v, &w)) in row.iter().zip(&weight).enumerate() {
                let want = w as f64 * v as f64 * inv;
                let g = got[r * n + i] as f64;
                assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "row {r} col {i}: {g} vs {want}");
            }
            let alone = rms_norm(row, &weight, 1e-5);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone), bits(&got[r * n..(r + 1) * n]), "row {r}");
        }
    }

    /// The 256-bit compilation gives the portable code's bits, at widths with and without a
    /// tail after the 32-lane blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rms_norm_avx2_is_the_portable_one_bit_for_bit() {
        if !Isa::Avx2.supported() {
            return;
        }
        let mut random = random_values(0x0bad_cafe, 60);
        for n in [1usize, 31, 32, 45, 2560, 6913] {
            let rows: Vec<f32> = (0..3 * n).map(|_| random()).collect();
            let weight: Vec<f32> = (0..n).map(|_| random()).collect();
            let (mut want, mut got) = (vec![0f32; 3 * n], vec![1f32; 3 * n]);
            rms_norm_portable(&rows, &weight, 1e-6, &mut want);
            let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            // SAFETY: AVX2 was detected above.
            unsafe { rms_norm_avx2(&rows, &weight, 1e-6, &mut got) };
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want, "width {n}");
        }
    }
}
