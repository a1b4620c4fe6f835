//! Float row dots for the unquantised matrices (lm_head, F16/F32): `Σ w·x` with f32 accumulation.
//! The AVX2 variant converts 8 halves at a time with F16C and uses FMA; its sums are reordered,
//! so it agrees with the scalar twin to float rounding, not bit for bit (tested with a bound).

use crate::cpu::Isa;
use half::f16;

/// `Σ w[i]·x[i]` for an F16 row given as little-endian bytes.
pub fn dot_f16(isa: Isa, row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(row.len(), x.len() * 2);
    if f16_simd(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2, FMA (Isa::supported) and F16C were detected.
        return unsafe { dot_f16_avx2(row, x) };
    }
    dot_f16_scalar(row, x)
}

/// Whether the AVX2 + FMA + F16C kernels run for `isa` (these dots, and the attention core's
/// f16 rows).
pub(crate) fn f16_simd(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        return isa.supported() && is_x86_feature_detected!("f16c");
    }
    let _ = isa;
    false
}

/// `out[r] = Σ w[r][i]·x[i]` for consecutive F16 rows, each as [`dot_f16`] computes it (the same
/// bits), in one call: the lm_head has 128256 rows of 2560, and a call, a dispatch and a feature
/// check per row add up over that many rows (docs/performance-notes.md, "F16 head").
pub fn dot_f16_rows(isa: Isa, rows: &[u8], x: &[f32], out: &mut [f32]) {
    assert_eq!(rows.len(), out.len() * x.len() * 2);
    if f16_simd(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2, FMA (Isa::supported) and F16C were detected.
        return unsafe { dot_f16_rows_avx2(rows, x, out) };
    }
    for (row, o) in rows.chunks_exact(x.len() * 2).zip(out) {
        *o = dot_f16_scalar(row, x);
    }
}

/// [`dot_f16_rows`] with the rows read as four streams: rows `i`, `i + q`, `i + 2q` and `i + 3q`
/// (`q` = a quarter of the rows) go through the core together, each asking for its bytes 2 KiB
/// ahead, and any rows past the four quarters follow one at a time. Each row gets the same bits
/// as [`dot_f16`]; what changes is how many places memory is read from at once (see
/// `cpu::weight_streams`: an Intel core streams one F16 row much more slowly than four).
pub fn dot_f16_rows_four_streams(isa: Isa, rows: &[u8], x: &[f32], out: &mut [f32]) {
    assert_eq!(rows.len(), out.len() * x.len() * 2);
    #[cfg(target_arch = "x86_64")]
    if f16_simd(isa) && x.len() >= 32 {
        let row_bytes = x.len() * 2;
        let quarter = out.len() / 4;
        let (quarters, rest) = out.split_at_mut(4 * quarter);
        let (q01, q23) = quarters.split_at_mut(2 * quarter);
        let (q0, q1) = q01.split_at_mut(quarter);
        let (q2, q3) = q23.split_at_mut(quarter);
        for (i, (((o0, o1), o2), o3)) in q0.iter_mut().zip(q1).zip(q2).zip(q3).enumerate() {
            let row = |q: usize| &rows[(q * quarter + i) * row_bytes..(q * quarter + i + 1) * row_bytes];
            // SAFETY: AVX2, FMA (Isa::supported) and F16C were detected.
            let d = unsafe { dot_f16_four_rows_avx2([row(0), row(1), row(2), row(3)], x) };
            (*o0, *o1, *o2, *o3) = (d[0], d[1], d[2], d[3]);
        }
        return dot_f16_rows(isa, &rows[4 * quarter * row_bytes..], x, rest);
    }
    dot_f16_rows(isa, rows, x, out)
}

/// `out[r·n + p] = Σ w[r][i]·x_p[i]` for consecutive F16 rows and the `n` vectors of `xs` (one
/// after another), each as [`dot_f16`] computes it (the same bits). Each row is converted to f32
/// once and then dotted with every vector from L1: the lm_head of several sequences decoding
/// together, which otherwise converts every half once per sequence.
pub fn dot_f16_rows_positions(isa: Isa, rows: &[u8], xs: &[f32], cols: usize, out: &mut [f32]) {
    let n = xs.len() / cols.max(1);
    assert!(cols > 0 && xs.len() == n * cols && rows.len() * n == out.len() * cols * 2);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && f16_simd(isa) && n > 1 {
        // SAFETY: AVX-512F (part of Isa::Avx512Vnni, supported), FMA and F16C were detected;
        // sizes as asserted.
        unsafe { dot_f16_rows_positions_avx512(rows, xs, cols, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if f16_simd(isa) {
        let mut buf = vec![0f32; cols];
        for (row, o) in rows.chunks_exact(cols * 2).zip(out.chunks_exact_mut(n.max(1))) {
            // SAFETY: AVX2, FMA (Isa::supported) and F16C were detected; sizes as asserted.
            unsafe {
                widen_f16_avx2(row, &mut buf);
                for (slot, x) in o.iter_mut().zip(xs.chunks_exact(cols)) {
                    *slot = dot_widened_avx2(&buf, x);
                }
            }
        }
        return;
    }
    for (row, o) in rows.chunks_exact(cols * 2).zip(out.chunks_exact_mut(n.max(1))) {
        for (slot, x) in o.iter_mut().zip(xs.chunks_exact(cols)) {
            *slot = dot_f16(isa, row, x);
        }
    }
}

/// Rows per block of [`dot_f16_rows_positions_avx512`].
#[cfg(target_arch = "x86_64")]
const POSITION_BLOCK_ROWS: usize = 4;
/// Positions per pass of [`dot_f16_rows_positions_avx512`].
#[cfg(target_arch = "x86_64")]
const POSITION_PASS: usize = 4;

/// [`dot_f16_rows_positions`] with 512-bit FMAs, register-blocked: four rows against up to four
/// positions per pass, so each converted weight vector serves four positions and each
/// activation load four rows (the widening kernel does two loads per FMA and is bound by them).
///
/// The same bits as [`dot_f16_avx2`]: that function's chains 0 and 1 (elements 32m..32m+8 and
/// 32m+8..32m+16) are the low and high halves of one 512-bit chain over 32m..32m+16, lane for
/// lane the same FMAs, as are chains 2 and 3 over 32m+16..32m+32. Each pass runs one 512-bit
/// chain over the whole row (sixteen accumulators live at once), the second pass the other;
/// the 8-wide tail, the scalar tail and the final sum then run on the four 256-bit halves.
///
/// # Safety
/// The CPU must support AVX-512F, FMA and F16C; `xs` holds n ≥ 1 vectors of `cols` floats,
/// `rows` whole rows of `cols` halves and `out` n floats per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_f16_rows_positions_avx512(rows: &[u8], xs: &[f32], cols: usize, out: &mut [f32]) {
    let n = xs.len() / cols;
    let row_count = rows.len() / (2 * cols);
    let mut r = 0;
    while r < row_count {
        // Blocks of four rows, then any rows left one at a time.
        let block = if row_count - r >= POSITION_BLOCK_ROWS { POSITION_BLOCK_ROWS } else { 1 };
        let w = &rows[2 * r * cols..2 * (r + block) * cols];
        let mut p = 0;
        while p < n {
            let pass = (n - p).min(POSITION_PASS);
            let x = &xs[p * cols..(p + pass) * cols];
            // SAFETY: the caller's features and sizes; `block` rows and `pass` vectors in bounds.
            let got = unsafe {
                match (block, pass) {
                    (POSITION_BLOCK_ROWS, 4) => f16_block::<POSITION_BLOCK_ROWS, 4>(w, x, cols),
                    (POSITION_BLOCK_ROWS, 3) => f16_block::<POSITION_BLOCK_ROWS, 3>(w, x, cols),
                    (POSITION_BLOCK_ROWS, 2) => f16_block::<POSITION_BLOCK_ROWS, 2>(w, x, cols),
                    (POSITION_BLOCK_ROWS, _) => f16_block::<POSITION_BLOCK_ROWS, 1>(w, x, cols),
                    (_, 4) => f16_block::<1, 4>(w, x, cols),
                    (_, 3) => f16_block::<1, 3>(w, x, cols),
                    (_, 2) => f16_block::<1, 2>(w, x, cols),
                    _ => f16_block::<1, 1>(w, x, cols),
                }
            };
            for (i, row) in got.chunks_exact(pass).enumerate() {
                out[(r + i) * n + p..(r + i) * n + p + pass].copy_from_slice(row);
            }
            p += pass;
        }
        r += block;
    }
}

/// `R` F16 rows (consecutive in `w`) against the `P` vectors of `x`: `[row][position]`, each
/// with [`dot_f16_avx2`]'s bits (see [`dot_f16_rows_positions_avx512`]).
///
/// # Safety
/// The CPU must support AVX-512F, FMA and F16C; `w` holds `R` rows of `cols` halves, `x` `P`
/// vectors of `cols` floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn f16_block<const R: usize, const P: usize>(w: &[u8], x: &[f32], cols: usize) -> Vec<f32> {
    use std::arch::x86_64::*;
    let main = cols / 32 * 32;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    // chains[half][r][p]: the 512-bit chain over elements 32m + 16·half .. + 16.
    let mut chains = [[[_mm512_setzero_ps(); P]; R]; 2];
    for (half, chain) in chains.iter_mut().enumerate() {
        let mut i = 16 * half;
        while i < main {
            // SAFETY: elements i..i+16 < main ≤ cols of every row and vector; the prefetch is
            // only a hint (wrapping_add: never dereferenced).
            unsafe {
                if half == 0 {
                    // The next block's rows (the next R after these), asked for while this
                    // block computes: the hardware prefetcher runs too little ahead of
                    // arithmetic this dense.
                    for r in 0..R {
                        _mm_prefetch::<_MM_HINT_T1>(
                            wp.wrapping_add(2 * ((4 * R + r) * cols + i)) as *const i8
                        );
                    }
                }
                let wv: [__m512; R] = std::array::from_fn(|r| {
                    _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * (r * cols + i)) as *const __m256i))
                });
                for p in 0..P {
                    let xv = _mm512_loadu_ps(xp.add(p * cols + i));
                    for (acc, wv) in chain.iter_mut().zip(&wv) {
                        acc[p] = _mm512_fmadd_ps(*wv, xv, acc[p]);
                    }
                }
            }
            i += 32;
        }
    }
    let mut out = vec![0f32; R * P];
    for r in 0..R {
        let row = &w[2 * r * cols..2 * (r + 1) * cols];
        for p in 0..P {
            let xv = &x[p * cols..(p + 1) * cols];
            let (c01, c23) = (chains[0][r][p], chains[1][r][p]);
            // SAFETY: the caller's features; the tails read elements main..cols, in bounds.
            unsafe {
                let mut acc = [
                    _mm512_castps512_ps256(c01),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(c01))),
                    _mm512_castps512_ps256(c23),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(c23))),
                ];
                let mut k = main;
                while k + 8 <= cols {
                    let h = _mm_loadu_si128(row.as_ptr().add(2 * k) as *const __m128i);
                    acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xv.as_ptr().add(k)), acc[0]);
                    k += 8;
                }
                let tail = if k < cols { dot_f16_scalar(&row[2 * k..], &xv[k..]) } else { 0.0 };
                out[r * P + p] = sum_lanes_avx2(acc) + tail;
            }
        }
    }
    out
}

/// An F16 row as f32 (exact: every half is an f32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_f16_avx2(row: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: elements i..i+8 are in bounds of the row (2 bytes each) and of out.
        unsafe {
            let h = _mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for (o, b) in out[i..].iter_mut().zip(row[2 * i..].chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// [`dot_f16_avx2`] on a row already widened to f32: the same chains, the same order, the same
/// tail, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_widened_avx2(w: &[f32], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: elements i..i+32 are in bounds of both slices.
            unsafe {
                *a = _mm256_fmadd_ps(
                    _mm256_loadu_ps(wp.add(i + 8 * j)),
                    _mm256_loadu_ps(xp.add(i + 8 * j)),
                    *a,
                );
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: elements i..i+8 are in bounds of both slices.
        unsafe { acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]) };
        i += 8;
    }
    let tail: f32 = w[i..].iter().zip(&x[i..]).map(|(a, b)| a * b).sum();
    // SAFETY: this function's features are sum_lanes_avx2's.
    unsafe { sum_lanes_avx2(acc) + tail }
}

/// Four rows of [`dot_f16_avx2`] at once, in lock step: each row's four FMA chains and their sum
/// are that function's, so each result has its bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_four_rows_avx2(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    /// How far ahead each stream asks for its bytes: chosen by timing the whole generation, not
    /// an isolated probe of this loop, which favoured a shorter distance on another host
    /// (docs/performance-notes.md, "F16 head").
    const AHEAD: usize = 2048;
    let n = x.len();
    let xp = x.as_ptr();
    let w = rows.map(|r| r.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    let mut i = 0;
    while i + 32 <= n {
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: elements i..i+32 are in bounds of every row and of x; a prefetch past a
            // row's end is only a hint (wrapping_add: the address is never dereferenced).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(w[r].wrapping_add(2 * i + AHEAD) as *const i8);
                for (j, a) in acc.iter_mut().enumerate() {
                    let h = _mm_loadu_si128(w[r].add(2 * (i + 8 * j)) as *const __m128i);
                    *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
                }
            }
        }
        i += 32;
    }
    let mut out = [0f32; 4];
    for (r, (acc, o)) in acc.iter_mut().zip(&mut out).enumerate() {
        let mut k = i;
        while k + 8 <= n {
            // SAFETY: elements k..k+8 are in bounds of the row and of x.
            unsafe {
                let h = _mm_loadu_si128(w[r].add(2 * k) as *const __m128i);
                acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(k)), acc[0]);
            }
            k += 8;
        }
        let tail = if k < n { dot_f16_scalar(&rows[r][2 * k..], &x[k..]) } else { 0.0 };
        // SAFETY: this function's features are sum_lanes_avx2's.
        *o = unsafe { sum_lanes_avx2(*acc) } + tail;
    }
    out
}

/// The four chains of [`dot_f16_avx2`] summed to one float, in its order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_lanes_avx2(acc: [std::arch::x86_64::__m256; 4]) -> f32 {
    use std::arch::x86_64::*;
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let lo = _mm256_castps256_ps128(acc);
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_rows_avx2(rows: &[u8], x: &[f32], out: &mut [f32]) {
    for (row, o) in rows.chunks_exact(x.len() * 2).zip(out) {
        // SAFETY: this function's features are dot_f16_avx2's.
        *o = unsafe { dot_f16_avx2(row, x) };
    }
}

pub fn dot_f16_scalar(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2).zip(x).map(|(b, &v)| f16::from_le_bytes([b[0], b[1]]).to_f32() * v).sum()
}

/// `Σ w[i]·x[i]` for an F32 row (little-endian bytes).
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(row.len(), x.len() * 4);
    row.chunks_exact(4).zip(x).map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v).sum()
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    // Four independent FMA chains: with one or two, the 4-cycle FMA latency, not memory, bounded
    // the lm_head (22 GiB/s with the row in cache).
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: elements i..i+32 are in bounds of both slices.
            unsafe {
                let h = _mm_loadu_si128(w.add(2 * (i + 8 * j)) as *const __m128i);
                *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: elements i..i+8 are in bounds of both slices.
        unsafe {
            let h = _mm_loadu_si128(w.add(2 * i) as *const __m128i);
            acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)), acc[0]);
        }
        i += 8;
    }
    let tail = if i < n { dot_f16_scalar(&row[2 * i..], &x[i..]) } else { 0.0 };
    // SAFETY: this function's features are sum_lanes_avx2's.
    unsafe { sum_lanes_avx2(acc) + tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_f16_dot_agrees_with_scalar() {
        for n in [1, 7, 16, 33, 2560] {
            let w: Vec<u8> = (0..n)
                .flat_map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 17.0).to_le_bytes())
                .collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 13.0).collect();
            let want = dot_f16_scalar(&w, &x);
            let scale: f32 = w
                .chunks_exact(2)
                .zip(&x)
                .map(|(b, v)| (f16::from_le_bytes([b[0], b[1]]).to_f32() * v).abs())
                .sum();
            for isa in crate::cpu::available() {
                let got = dot_f16(isa, &w, &x);
                assert!((got - want).abs() <= 1e-5 * scale.max(1.0), "{} n={n}: {got} vs {want}", isa.name());
            }
        }
    }

    /// Several vectors against the same rows: each result is the single-row dot's bits.
    #[test]
    fn position_batched_f16_dots_equal_single_dots() {
        // Row blocks of four and rows left over, position passes of four and fewer, and rows
        // with 8-wide and scalar tails after the 32-wide chains.
        let cases =
            [(1, 8, 2), (5, 33, 3), (7, 40, 8), (9, 71, 5), (64, 2560, 16), (6, 104, 7), (11, 100, 9)];
        for (rows, n, positions) in cases {
            let w: Vec<u8> = (0..rows * n)
                .flat_map(|i| f16::from_f32(((i * 29 % 103) as f32 - 51.0) / 19.0).to_le_bytes())
                .collect();
            let xs: Vec<f32> = (0..positions * n).map(|i| ((i * 61 % 89) as f32 - 44.0) / 11.0).collect();
            for isa in crate::cpu::available() {
                let mut got = vec![0f32; rows * positions];
                dot_f16_rows_positions(isa, &w, &xs, n, &mut got);
                for r in 0..rows {
                    for p in 0..positions {
                        let want = dot_f16(isa, &w[r * 2 * n..(r + 1) * 2 * n], &xs[p * n..(p + 1) * n]);
                        assert_eq!(
                            got[r * positions + p].to_bits(),
                            want.to_bits(),
                            "{} row {r} position {p}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    /// The batched form gives each row exactly what the single-row dot gives.
    #[test]
    fn row_batched_f16_dots_equal_single_row_dots() {
        for (rows, n) in [(1, 8), (5, 33), (7, 40), (9, 72), (64, 2560), (67, 2568)] {
            let w: Vec<u8> = (0..rows * n)
                .flat_map(|i| f16::from_f32(((i * 29 % 103) as f32 - 51.0) / 19.0).to_le_bytes())
                .collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 61 % 89) as f32 - 44.0) / 11.0).collect();
            for isa in crate::cpu::available() {
                let mut got = vec![0f32; rows];
                let mut four = vec![0f32; rows];
                dot_f16_rows(isa, &w, &x, &mut got);
                dot_f16_rows_four_streams(isa, &w, &x, &mut four);
                for (r, (g, f)) in got.iter().zip(&four).enumerate() {
                    let want = dot_f16(isa, &w[r * 2 * n..(r + 1) * 2 * n], &x);
                    assert_eq!(g.to_bits(), want.to_bits(), "{} row {r} of {rows}x{n}", isa.name());
                    assert_eq!(
                        f.to_bits(),
                        want.to_bits(),
                        "{} four streams, row {r} of {rows}x{n}",
                        isa.name()
                    );
                }
            }
        }
    }
}
