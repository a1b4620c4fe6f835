//! Compute kernels, one module per weight format, each with a scalar reference and SIMD variants
//! that must agree with it bit for bit on integer results (tests in each module).
//!
//! - [`act`]: per-token int8 activation quantisation (identical to the reference forward).
//! - [`i2s`]: I2_S ternary × int8 dot products (GEMV for decode, GEMM for prompts).
//! - [`layouts`]: the same exact dot for every ternary layout (I2_S, TL1, TL2, TQ1_0, TQ2_0).
//! - [`float`]: f16/f32 row dots for the lm_head and embeddings.
//! - [`head`]: a Q8_0 / Q4_0 output head, repacked at load into tiles of 16 rows.
//! - [`i2s_tiles`]: I2_S repacked at load into tiles of 16 rows for the AVX-512 VNNI kernels.
//! - [`i2s_rows`]: TL1, TL2, TQ1_0 and TQ2_0 rewritten at load as I2_S rows for the AVX2 kernels.
//! - [`trit_tiles`]: TL1, TL2 and TQ1_0 repacked at load for the AVX-512 VNNI kernels.

/// Rows `r0..r1` of a product read from tiles of 16 rows (one 32-bit lane per row) against
/// `sums.len()` tokens: `pass(tile, first_token, n)` gives each of n ≤ `most` tokens' 16 lanes
/// Σ c·q (codes c = w + 1), and `out[(r − r0)·tokens + t]` gets lane r − Σq of token t. The
/// loop the SIMD kernels of `i2s_tiles` and `trit_tiles` share.
#[cfg(target_arch = "x86_64")]
pub(crate) fn tile_products(
    r0: usize,
    r1: usize,
    sums: &[i32],
    most: usize,
    out: &mut [i32],
    mut pass: impl FnMut(usize, usize, usize) -> [[i32; 16]; 8],
) {
    let tokens = sums.len();
    if tokens == 0 {
        return;
    }
    for (i, o) in (r0 / 16..r1.div_ceil(16)).zip(out.chunks_mut(16 * tokens)) {
        let rows = o.len() / tokens;
        let mut tok = 0;
        while tok < tokens {
            let n = (tokens - tok).min(most);
            let got = pass(i, tok, n);
            for (j, lanes) in got[..n].iter().enumerate() {
                for (r, &v) in lanes[..rows].iter().enumerate() {
                    o[r * tokens + tok + j] = v - sums[tok + j];
                }
            }
            tok += n;
        }
    }
}

/// Evaluates `$body` with `$t` a constant equal to `$n` (1..=8; 8 for anything larger): the
/// small-batch kernels have one instantiation per pass length, so their accumulators are arrays
/// of known size that live in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! with_pass_len {
    ($n:expr, $t:ident => $body:expr) => {
        match $n {
            1 => {
                const $t: usize = 1;
                $body
            }
            2 => {
                const $t: usize = 2;
                $body
            }
            3 => {
                const $t: usize = 3;
                $body
            }
            4 => {
                const $t: usize = 4;
                $body
            }
            5 => {
                const $t: usize = 5;
                $body
            }
            6 => {
                const $t: usize = 6;
                $body
            }
            7 => {
                const $t: usize = 7;
                $body
            }
            _ => {
                const $t: usize = 8;
                $body
            }
        }
    };
}

pub mod act;
pub mod float;
pub mod head;
pub mod i2s;
pub mod i2s_rows;
pub mod i2s_tiles;
pub mod layouts;
pub mod tl1;
pub mod tl2;
pub mod tq1_0;
pub mod tq2_0;
pub mod trit_tiles;
