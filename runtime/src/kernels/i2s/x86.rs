//! x86-64 I2_S dots. A 128-weight block is 32 bytes; shifting the block right by 6, 4, 2 and 0
//! bits (per 16-bit lane, then masking each byte to 2 bits) yields the codes of weights 0-31,
//! 32-63, 64-95 and 96-127 in byte order, so each lines up with one contiguous 32-byte load of
//! activations. Products are codes (0..2, unsigned) × activations (signed): Σ c·q − Σ q = Σ t·q.
//!
//! AVX2: `maddubs` (u8×i8 pairs → i16, at most 2·2·128 = 512 in magnitude, no saturation), the four
//! pieces of a block summed in i16 (≤ 2048), then `madd` with ones into i32.
//! AVX-512 VNNI (256-bit, through AVX-512VL): `vpdpbusd` does u8×i8 quads straight into i32, so
//! the codes need no shift at all (each masked piece keeps its scale until the end).

use std::arch::x86_64::*;

/// How far ahead the I2_S GEMV asks for weight bytes, into L2: far enough to cover the memory
/// latency of a 2 MiB-page stream, near enough to stay in L2 (docs/performance-notes.md,
/// "GEMV prefetch distance").
const GEMV_PREFETCH_AHEAD: usize = 16 << 10;

/// Whether the AVX2 GEMV asks for weight bytes [`GEMV_PREFETCH_AHEAD`] ahead of one row stream,
/// or reads four quarter streams with no prefetch ([`gemv_avx2`]), where the CPU is not one that
/// wants four prefetched streams (`cpu::weight_streams`). The prefetch pays through 2 MiB pages
/// and costs through 4 KiB pages, where it lands pages ahead and four streams beat one, so the
/// model loader turns it off when the page cache holds the weights in 4 KiB pages
/// (`super::set_weight_prefetch`; docs/performance-notes.md, "Page sizes").
pub(super) static WEIGHT_PREFETCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// How far ahead of each of its four quarter streams the VNNI GEMV (and the AVX2 one where the
/// CPU wants four streams) asks for weight bytes, into L1, once per 64-byte line: on Intel the
/// hardware prefetcher alone leaves four quarter streams well below a plain read
/// (docs/performance-notes.md, "Four quarter streams").
const QUARTERS_PREFETCH_AHEAD: usize = 2 << 10;

/// Blocks summed in i16 before widening to i32 in the GEMV: five keep the sums exact even for
/// the invalid code 3 (bounds at [`row_sums`]).
const GEMV_SPAN: usize = 5;

pub(super) fn dot_avx2(row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    debug_assert_eq!(act.len(), row.len() * 4);
    // SAFETY: dispatch only hands out this function when AVX2 was detected (`Isa::supported`);
    // the row covers row.len() / 32 blocks and act four times as many bytes.
    unsafe { dot_avx2_impl(row, act) - act_sum }
}

#[target_feature(enable = "avx2")]
unsafe fn dot_avx2_impl(row: &[u8], act: &[i8]) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { hsum256(row_sums(row.as_ptr(), row.len() / 32, act.as_ptr())) }
}

/// How the AVX2 GEMV reads its rows (every way gives the same bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Avx2Streams {
    /// Rows one after another, prefetched [`GEMV_PREFETCH_AHEAD`] ahead into L2.
    OnePrefetched,
    /// Four quarter streams, left to the hardware prefetcher.
    Quarters,
    /// Four quarter streams, each prefetched [`QUARTERS_PREFETCH_AHEAD`] ahead into L1: the
    /// fastest of the three where the CPU wants four streams (docs/performance-notes.md, "Four
    /// quarter streams").
    QuartersPrefetched,
}

/// GEMV over consecutive rows of `row_bytes`: `out[r] = Σ t·q` (codes · activations − `act_sum`),
/// streaming the weights four prefetched quarter streams on a CPU that wants them
/// (`cpu::weight_streams`), otherwise one of two ways, as the page cache's page size favours
/// ([`WEIGHT_PREFETCH`], which the model loader sets from it):
/// - 2 MiB pages: rows one after another, one forward stream with a software prefetch ahead of
///   it; four rows' lanes are reduced together;
/// - 4 KiB pages (no prefetch): four rows in lock step from the four quarters of the call (r,
///   r + n/4, r + n/2, r + 3n/4), four streams the hardware prefetcher follows across page
///   boundaries, sharing each activation load, as the VNNI GEMV does; the last `n mod 4` rows
///   one at a time. Four streams win through 4 KiB pages, the one prefetched stream through
///   2 MiB pages (docs/performance-notes.md, "Page sizes").
///
/// # Safety
/// The CPU must support AVX2; `rows.len() == out.len() * row_bytes`, `act.len() == 4 * row_bytes`,
/// `row_bytes` a multiple of 32.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemv_avx2(rows: &[u8], row_bytes: usize, act: &[i8], act_sum: i32, out: &mut [i32]) {
    let streams = if crate::cpu::weight_streams() == 4 {
        Avx2Streams::QuartersPrefetched
    } else if WEIGHT_PREFETCH.load(std::sync::atomic::Ordering::Relaxed) {
        Avx2Streams::OnePrefetched
    } else {
        Avx2Streams::Quarters
    };
    // SAFETY: forwarded from the caller.
    unsafe { gemv_avx2_streams(rows, row_bytes, act, act_sum, out, streams) }
}

/// [`gemv_avx2`] with the way of streaming given.
///
/// # Safety
/// As [`gemv_avx2`].
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemv_avx2_streams(
    rows: &[u8],
    row_bytes: usize,
    act: &[i8],
    act_sum: i32,
    out: &mut [i32],
    streams: Avx2Streams,
) {
    debug_assert!(rows.len() == out.len() * row_bytes && act.len() == 4 * row_bytes);
    let (w, blocks, a) = (rows.as_ptr(), row_bytes / 32, act.as_ptr());
    if streams == Avx2Streams::OnePrefetched {
        for (quad, o) in rows.chunks(4 * row_bytes).zip(out.chunks_mut(4)) {
            let mut acc = [_mm256_setzero_si256(); 4];
            for (i, acc) in acc.iter_mut().enumerate().take(o.len()) {
                // SAFETY: row i of this group is within rows; the caller's length relation.
                *acc = unsafe { rows_sums_spans::<1, FAR>([quad.as_ptr().add(i * row_bytes)], blocks, a)[0] };
            }
            for (o, s) in o.iter_mut().zip(hsum256x4(acc)) {
                *o = s - act_sum;
            }
        }
        return;
    }
    let quarter = out.len() / 4;
    for i in 0..quarter {
        let index = [0, 1, 2, 3].map(|q| q * quarter + i);
        // SAFETY: every index is below 4·quarter ≤ out.len(), so its row is within rows.
        let acc = unsafe {
            let rows = index.map(|r| w.add(r * row_bytes));
            if streams == Avx2Streams::QuartersPrefetched {
                rows_sums_spans::<4, NEAR>(rows, blocks, a)
            } else {
                rows_sums_spans::<4, NONE>(rows, blocks, a)
            }
        };
        for (r, s) in index.into_iter().zip(hsum256x4(acc)) {
            out[r] = s - act_sum;
        }
    }
    for (r, o) in out.iter_mut().enumerate().skip(4 * quarter) {
        // SAFETY: row r < out.len() is within rows.
        *o = unsafe { hsum256(rows_sums_spans::<1, NONE>([w.add(r * row_bytes)], blocks, a)[0]) } - act_sum;
    }
}

/// `Σ c·q` of one row (`blocks` 32-byte blocks at `w`, activations at `a`) as eight i32 lanes,
/// with one shift per block: `p >> 4` brings bits 7-6 to 3-2 and 5-4 to 1-0, so masking `p >> 4`
/// and `p` with 0x03 and 0x0C gives the four 32-weight pieces, two of them as 4·c. `maddubs` of
/// the ×4 pieces is at most 2·12·128 = 3072 in magnitude even for the invalid code 3, the ×1 ones
/// 768; [`GEMV_SPAN`] blocks of each (≤ 30720 and 7680) stay exact in i16, and the ×4 sum is a
/// multiple of 4, so shifting it right by 2 before adding is exact: 13 vector operations per
/// block instead of 16.
///
/// Each whole span is one straight run of five blocks, with the prefetch decided once per call
/// and asked once per 64-byte line, which keeps the loop free of branches.
///
/// # Safety
/// The CPU must support AVX2; `w` must point to `32 · blocks` readable bytes and `a` to
/// `128 · blocks`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn row_sums(w: *const u8, blocks: usize, a: *const i8) -> __m256i {
    // SAFETY: forwarded from the caller.
    unsafe {
        if WEIGHT_PREFETCH.load(std::sync::atomic::Ordering::Relaxed) {
            rows_sums_spans::<1, FAR>([w], blocks, a)[0]
        } else {
            rows_sums_spans::<1, NONE>([w], blocks, a)[0]
        }
    }
}

/// Software prefetch of the AVX2 row sums, fixed at compile time: none, [`GEMV_PREFETCH_AHEAD`]
/// into L2 (one stream), or [`QUARTERS_PREFETCH_AHEAD`] into L1 (four streams).
const NONE: u8 = 0;
const FAR: u8 = 1;
const NEAR: u8 = 2;

/// [`row_sums`] with the prefetch fixed at compile time, for `N` rows in lock step (one stream
/// each) sharing the activation loads.
///
/// # Safety
/// As [`row_sums`], for every `w[r]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn rows_sums_spans<const N: usize, const PREFETCH: u8>(
    mut w: [*const u8; N],
    blocks: usize,
    mut a: *const i8,
) -> [__m256i; N] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); N];
    let mut left = blocks;
    while left > 0 {
        let mut sums = [(_mm256_setzero_si256(), _mm256_setzero_si256()); N];
        let n = left.min(GEMV_SPAN);
        // SAFETY: n ≤ left blocks remain at every w[r] and at a (the caller's contract).
        unsafe {
            if n == GEMV_SPAN {
                // A span is 160 bytes: prefetching at blocks 0, 2 and 4 touches every line.
                block_sums::<N, PREFETCH>(w, a, 0, &mut sums);
                block_sums::<N, NONE>(w, a, 1, &mut sums);
                block_sums::<N, PREFETCH>(w, a, 2, &mut sums);
                block_sums::<N, NONE>(w, a, 3, &mut sums);
                block_sums::<N, PREFETCH>(w, a, 4, &mut sums);
            } else {
                for i in 0..n {
                    block_sums::<N, PREFETCH>(w, a, i, &mut sums);
                }
            }
            w = w.map(|p| p.add(32 * n));
            a = a.add(128 * n);
        }
        left -= n;
        for (acc, (times4, times1)) in acc.iter_mut().zip(sums) {
            let s = _mm256_add_epi16(times1, _mm256_srai_epi16(times4, 2));
            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(s, ones));
        }
    }
    acc
}

/// Block `i` of `N` rows of [`rows_sums_spans`] into their (×4, ×1) i16 sums, each activation
/// load shared by the rows. Always inlined into the AVX2 caller (a `target_feature` function
/// cannot be `inline(always)`, and a call per block would cost more than the block).
///
/// # Safety
/// The CPU must support AVX2; 32 readable bytes at `w[r] + 32·i`, 128 at `a + 128·i`.
#[inline(always)]
unsafe fn block_sums<const N: usize, const PREFETCH: u8>(
    w: [*const u8; N],
    a: *const i8,
    i: usize,
    sums: &mut [(__m256i, __m256i); N],
) {
    // SAFETY: the caller's contract; the prefetch is a hint, harmless past the end of the matrix.
    unsafe {
        let (low2, high2) = (_mm256_set1_epi8(0x03), _mm256_set1_epi8(0x0c));
        let packed: [__m256i; N] =
            std::array::from_fn(|r| _mm256_loadu_si256(w[r].add(32 * i) as *const __m256i));
        for p in w {
            match PREFETCH {
                FAR => _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(32 * i + GEMV_PREFETCH_AHEAD) as *const i8),
                NEAR => {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(32 * i + QUARTERS_PREFETCH_AHEAD) as *const i8)
                }
                _ => {}
            }
        }
        let high = packed.map(|p| _mm256_srli_epi16(p, 4));
        let q = |j: usize| _mm256_loadu_si256(a.add(128 * i + 32 * j) as *const __m256i);
        // I2_S: weights 0-31 in bits 7-6, 32-63 in 5-4, 64-95 in 3-2, 96-127 in 1-0.
        let (q0, q1, q2, q3) = (q(0), q(1), q(2), q(3));
        for r in 0..N {
            let w0 = _mm256_maddubs_epi16(_mm256_and_si256(high[r], high2), q0);
            let w1 = _mm256_maddubs_epi16(_mm256_and_si256(high[r], low2), q1);
            let w2 = _mm256_maddubs_epi16(_mm256_and_si256(packed[r], high2), q2);
            let w3 = _mm256_maddubs_epi16(_mm256_and_si256(packed[r], low2), q3);
            sums[r].0 = _mm256_add_epi16(sums[r].0, _mm256_add_epi16(w0, w2));
            sums[r].1 = _mm256_add_epi16(sums[r].1, _mm256_add_epi16(w1, w3));
        }
    }
}

/// The lane sums of four vectors, `[Σ v0, Σ v1, Σ v2, Σ v3]`.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum256x4(v: [__m256i; 4]) -> [i32; 4] {
    let t = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    let mut sums = [0i32; 4];
    // SAFETY: 16 bytes into a [i32; 4].
    unsafe { _mm_storeu_si128(sums.as_mut_ptr() as *mut __m128i, s) };
    sums
}

/// `acc + Σ codes[i]·q[32i..32i+32]` for four vectors of 32 unsigned codes (0..2) against the
/// 128 activations at `q`: `maddubs` pairs (≤ 512 in magnitude), the four summed in i16
/// (≤ 2048), then `madd` with ones into the i32 lanes. Shared by the I2_S and TQ2_0 kernels.
///
/// # Safety
/// `q` must point to 128 readable bytes; the CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn madd_codes4(acc: __m256i, codes: [__m256i; 4], q: *const i8) -> __m256i {
    // SAFETY: the caller guarantees q[0..128] is readable.
    let p = |i: usize| unsafe {
        _mm256_maddubs_epi16(codes[i], _mm256_loadu_si256(q.add(32 * i) as *const __m256i))
    };
    let s = _mm256_add_epi16(_mm256_add_epi16(p(0), p(1)), _mm256_add_epi16(p(2), p(3)));
    _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)))
}

/// Sum of the eight i32 lanes.
#[target_feature(enable = "avx2")]
pub(crate) fn hsum256(v: __m256i) -> i32 {
    let lo = _mm256_castsi256_si128(v);
    let hi = _mm256_extracti128_si256(v, 1);
    let s = _mm_add_epi32(lo, hi);
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

pub(super) fn dot_avx512vnni(row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    debug_assert_eq!(act.len(), row.len() * 4);
    // SAFETY: only dispatched when AVX-512F/BW/VL and VNNI were detected; the row covers
    // row.len() / 32 blocks and act four times as many bytes.
    unsafe { hsum256(rows_sums_vnni([row.as_ptr()], row.len() / 32, act.as_ptr())[0]) - act_sum }
}

/// GEMV with 256-bit `vpdpbusd` (AVX-512 VNNI + VL): `out[r] = Σ t·q`, four rows per pass
/// through [`rows_sums_vnni`], so each activation load serves four rows.
///
/// The four rows of a pass come from the four quarters of the call's rows (r, r + n/4, r + n/2,
/// r + 3n/4), so the weight bytes arrive as four forward streams, each long and in its own pages,
/// which the hardware prefetcher follows: on a 2B-4T-shaped file, rows one after another in one
/// stream can't keep up, and four adjacent rows per pass (four interleaved strands) defeat the
/// prefetcher; four quarters need no software prefetch on AMD, while Intel wants one on each
/// quarter as well ([`QUARTERS_PREFETCH_AHEAD`]; docs/performance-notes.md, "Four quarter
/// streams"). The last `n mod 4` rows go one at a time.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; `rows.len() == out.len() * row_bytes`,
/// `act.len() == 4 * row_bytes`, `row_bytes` a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn gemv_vnni(rows: &[u8], row_bytes: usize, act: &[i8], act_sum: i32, out: &mut [i32]) {
    debug_assert!(rows.len() == out.len() * row_bytes && act.len() == 4 * row_bytes);
    let quarter = out.len() / 4;
    let (quarters, rest) = super::split_quarters(out, quarter);
    let band = super::QuarterBand { rows, row_bytes, quarter, first: 0, act, act_sum };
    // SAFETY: rows 0..4·quarter are within rows; the caller's sizes.
    unsafe { gemv_vnni_quarters(band, quarters) };
    let (w, blocks, a) = (rows.as_ptr(), row_bytes / 32, act.as_ptr());
    for (r, o) in rest.iter_mut().enumerate() {
        // SAFETY: row 4·quarter + r < out.len() is within rows; the caller's sizes.
        *o = unsafe { hsum256(rows_sums_vnni([w.add((4 * quarter + r) * row_bytes)], blocks, a)[0]) }
            - act_sum;
    }
}

/// One band of a quarter-stream GEMV (`i2s::gemv_quarters`): for i in `0..out[0].len()`, rows
/// `first + i`, `quarter + first + i`, `2·quarter + first + i` and `3·quarter + first + i` in
/// lock step, their sums into `out[0..4][i]`. Threads splitting a matrix into consecutive bands
/// each keep four unbroken forward streams, where row chunks restarted them at every chunk.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; the four outputs equally long, `3·quarter +
/// first + out[0].len()` rows within `rows`, `act.len() == 4 * row_bytes`, `row_bytes` a
/// multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn gemv_vnni_quarters(band: super::QuarterBand, out: [&mut [i32]; 4]) {
    let super::QuarterBand { rows, row_bytes, quarter, first, act, act_sum } = band;
    let n = out[0].len();
    debug_assert!(out.iter().all(|o| o.len() == n) && (3 * quarter + first + n) * row_bytes <= rows.len());
    debug_assert!(act.len() == 4 * row_bytes);
    let (blocks, w, a) = (row_bytes / 32, rows.as_ptr(), act.as_ptr());
    let [o0, o1, o2, o3] = out;
    for i in 0..n {
        let index = [0, 1, 2, 3].map(|q| q * quarter + first + i);
        // SAFETY: every index is within rows (the caller's bound).
        let acc = unsafe { rows_sums_vnni(index.map(|r| w.add(r * row_bytes)), blocks, a) };
        let [s0, s1, s2, s3] = hsum256x4(acc);
        (o0[i], o1[i], o2[i], o3[i]) = (s0 - act_sum, s1 - act_sum, s2 - act_sum, s3 - act_sum);
    }
}

/// `Σ c·q` of `N` rows (`blocks` 32-byte blocks at each `w[r]`, activations at `a`) as eight i32
/// lanes each, with no shifts: masking a block with 0xC0, 0x30, 0x0C and 0x03 gives the codes of
/// weights 0-31, 32-63, 64-95 and 96-127 as 64·c, 16·c, 4·c and c, and `vpdpbusd` adds each
/// (u8, at most 192 even for the invalid code 3) × activation quads straight into i32, one
/// accumulator per scale and row (|lane| grows by at most 4 · 192 · 128 per block: i32 holds
/// 21 000 blocks, 2.7 M weights per row). Each scaled sum is a multiple of its scale, so the final
/// shifts are exact. Per block and row: 4 `and` + 4 `vpdpbusd`, and the four activation loads are
/// shared by the rows (AVX2 needs 13 operations and its own loads per row). Each stream is
/// prefetched [`QUARTERS_PREFETCH_AHEAD`] ahead. (512-bit vectors, on activations re-ordered so one
/// load covers two blocks' pieces, computed cached rows barely faster and streamed none faster;
/// docs/performance-notes.md, "Four quarter streams".)
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; each `w[r]` must point to `32 · blocks`
/// readable bytes and `a` to `128 · blocks`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn rows_sums_vnni<const N: usize>(w: [*const u8; N], blocks: usize, a: *const i8) -> [__m256i; N] {
    // I2_S: weights 0-31 in bits 7-6, 32-63 in 5-4, 64-95 in 3-2, 96-127 in 1-0.
    let masks = [0xc0u8, 0x30, 0x0c, 0x03].map(|m| _mm256_set1_epi8(m as i8));
    let mut acc = [[_mm256_setzero_si256(); 4]; N];
    for b in 0..blocks {
        // SAFETY: block b < blocks is in bounds of every row and of a (the caller's contract);
        // the prefetch is a hint, harmless past the end of the matrix.
        unsafe {
            if b % 2 == 0 {
                for p in w {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(32 * b + QUARTERS_PREFETCH_AHEAD) as *const i8);
                }
            }
            let packed: [__m256i; N] =
                std::array::from_fn(|r| _mm256_loadu_si256(w[r].add(32 * b) as *const __m256i));
            for (piece, mask) in masks.iter().enumerate() {
                let q = _mm256_loadu_si256(a.add(128 * b + 32 * piece) as *const __m256i);
                for (acc, p) in acc.iter_mut().zip(&packed) {
                    acc[piece] = _mm256_dpbusd_epi32(acc[piece], _mm256_and_si256(*p, *mask), q);
                }
            }
        }
    }
    acc.map(|[c64, c16, c4, c1]| {
        let high = _mm256_add_epi32(_mm256_srai_epi32(c64, 6), _mm256_srai_epi32(c16, 4));
        _mm256_add_epi32(high, _mm256_add_epi32(_mm256_srai_epi32(c4, 2), c1))
    })
}

/// Unpacks a row's unsigned codes (0..2) into `out` (`row.len() * 4` bytes) in activation
/// order, so a GEMM decodes each row once for all its tokens.
///
/// # Safety
/// The CPU must support AVX2; `out.len() == row.len() * 4`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn unpack_codes_avx2(row: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), row.len() * 4);
    let mask = _mm256_set1_epi8(3);
    for b in 0..row.len() / 32 {
        // SAFETY: 32 bytes of row and 128 of out for block b, in bounds.
        unsafe {
            let p = _mm256_loadu_si256(row.as_ptr().add(32 * b) as *const __m256i);
            for (i, shift) in [6, 4, 2, 0].into_iter().enumerate() {
                let c = _mm256_and_si256(_mm256_srl_epi16(p, _mm_cvtsi32_si128(shift)), mask);
                _mm256_storeu_si256(out.as_mut_ptr().add(128 * b + 32 * i) as *mut __m256i, c);
            }
        }
    }
}

/// Σ c·q of two unpacked code rows against one token (no decoding: loads and `maddubs` only;
/// the i16 sums are widened every 32 vectors: 32 `maddubs` ≤ 32·512 = 16384 in magnitude for
/// any i8 activations, so exact).
///
/// # Safety
/// The CPU must support AVX2; `c0`, `c1` and `act` have the same length, a multiple of 128.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot2_codes_avx2(c0: &[u8], c1: &[u8], act: &[i8]) -> [i32; 2] {
    debug_assert!(c0.len() == act.len() && c1.len() == act.len());
    let ones = _mm256_set1_epi16(1);
    let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let vecs = act.len() / 32;
    let mut v = 0;
    while v < vecs {
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for v in v..(v + 32).min(vecs) {
            // SAFETY: 32 bytes at 32v of each slice, in bounds.
            unsafe {
                let x = _mm256_loadu_si256(act.as_ptr().add(32 * v) as *const __m256i);
                let w0 = _mm256_loadu_si256(c0.as_ptr().add(32 * v) as *const __m256i);
                let w1 = _mm256_loadu_si256(c1.as_ptr().add(32 * v) as *const __m256i);
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(w0, x));
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(w1, x));
            }
        }
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(s0, ones));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(s1, ones));
        v += 32;
    }
    [hsum256(acc0), hsum256(acc1)]
}

/// Σ c·q of four unpacked code rows against two tokens: each code load serves both tokens and
/// each activation load four rows (8 `maddubs` per 6 loads). i16 sums widened every 32 vectors,
/// exact as in [`dot2_codes_avx2`]. Returns `[row][token]`.
///
/// # Safety
/// The CPU must support AVX2; every code row and both activation rows hold `k` bytes, `k` a
/// multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn dot4x2_codes_avx2(c: [&[u8]; 4], a0: &[i8], a1: &[i8], k: usize) -> [[i32; 2]; 4] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
    let vecs = k / 32;
    let mut v = 0;
    while v < vecs {
        let mut s = [[_mm256_setzero_si256(); 2]; 4];
        for v in v..(v + 32).min(vecs) {
            // SAFETY: 32 bytes at 32v of each slice, in bounds (k bytes each).
            unsafe {
                let x0 = _mm256_loadu_si256(a0.as_ptr().add(32 * v) as *const __m256i);
                let x1 = _mm256_loadu_si256(a1.as_ptr().add(32 * v) as *const __m256i);
                for r in 0..4 {
                    let w = _mm256_loadu_si256(c[r].as_ptr().add(32 * v) as *const __m256i);
                    s[r][0] = _mm256_add_epi16(s[r][0], _mm256_maddubs_epi16(w, x0));
                    s[r][1] = _mm256_add_epi16(s[r][1], _mm256_maddubs_epi16(w, x1));
                }
            }
        }
        for r in 0..4 {
            for t in 0..2 {
                acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(s[r][t], ones));
            }
        }
        v += 32;
    }
    let mut sums = [[0i32; 2]; 4];
    for (s, a) in sums.iter_mut().zip(&acc) {
        *s = [hsum256(a[0]), hsum256(a[1])];
    }
    sums
}

/// Prompt GEMM over blocks of rows, shared by every 2-bit layout: each block of four rows (then
/// a last pair) is unpacked once with `unpack` (a row's unsigned codes in activation order, `k`
/// per row) into an L1-resident buffer, then tokens run two at a time through
/// [`dot4x2_codes_avx2`] (an odd last token, and a last pair of rows, through
/// [`dot2_codes_avx2`]). `out[r·tokens + t]` as in `i2s::gemm`. Handles the first 2·⌊rows/2⌋
/// rows and returns how many that is; the caller does the last. `vnni` runs every row instead
/// through [`gemm_codes_few_vnni`].
///
/// # Safety
/// The CPU must support AVX2, and AVX-512F/BW/VL and VNNI if `vnni`; `unpack(row, codes)` must
/// fill `k` codes from a `row_bytes` row; `acts` holds `sums.len()` tokens of `k` activations and
/// `out` one slot per row and token.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn gemm_unpacked_rows(
    rows: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[i8],
    sums: &[i32],
    out: &mut [i32],
    unpack: super::Unpack,
    vnni: bool,
) -> usize {
    if vnni {
        // SAFETY: forwarded from the caller, who granted VNNI with `vnni`.
        unsafe { gemm_codes_few_vnni(rows, row_bytes, k, acts, sums, out, unpack) };
        return rows.len() / row_bytes;
    }
    let tokens = sums.len();
    let mut done = 0;
    let mut quad = vec![0u8; 4 * k];
    for (block, o) in rows.chunks_exact(4 * row_bytes).zip(out.chunks_exact_mut(4 * tokens)) {
        // SAFETY: forwarded from the caller; each row is row_bytes, each code row k bytes, each
        // token k activations.
        unsafe {
            for (row, c) in block.chunks_exact(row_bytes).zip(quad.chunks_exact_mut(k)) {
                unpack(row, c);
            }
            // Ask for the next block's rows now: the token loop below leaves the hardware
            // prefetcher idle, and the next unpack would otherwise wait on memory.
            let next = block.as_ptr().wrapping_add(block.len());
            for line in (0..block.len()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(line) as *const i8);
            }
            let c: Vec<&[u8]> = quad.chunks_exact(k).collect();
            let c = [c[0], c[1], c[2], c[3]];
            let mut t = 0;
            while t + 2 <= tokens {
                let (a0, a1) = (&acts[t * k..(t + 1) * k], &acts[(t + 1) * k..(t + 2) * k]);
                let got = dot4x2_codes_avx2(c, a0, a1, k);
                for (r, pair) in got.iter().enumerate() {
                    o[r * tokens + t] = pair[0] - sums[t];
                    o[r * tokens + t + 1] = pair[1] - sums[t + 1];
                }
                t += 2;
            }
            if t < tokens {
                let act = &acts[t * k..(t + 1) * k];
                for r in [0, 2] {
                    let [a, b] = dot2_codes_avx2(c[r], c[r + 1], act);
                    o[r * tokens + t] = a - sums[t];
                    o[(r + 1) * tokens + t] = b - sums[t];
                }
            }
        }
        done += 4;
    }
    let mut codes = vec![0u8; 2 * k];
    let rows = &rows[done * row_bytes..];
    let out = &mut out[done * tokens..];
    for (pair, o) in rows.chunks_exact(2 * row_bytes).zip(out.chunks_exact_mut(2 * tokens)) {
        let (c0, c1) = codes.split_at_mut(k);
        let (o0, o1) = o.split_at_mut(tokens);
        // SAFETY: forwarded from the caller; each row is row_bytes, each code buffer k bytes,
        // each token k activations.
        unsafe {
            unpack(&pair[..row_bytes], c0);
            unpack(&pair[row_bytes..], c1);
            for (t, (act, &sum)) in acts.chunks_exact(k).zip(sums).enumerate() {
                let [a, b] = dot2_codes_avx2(c0, c1, act);
                o0[t] = a - sum;
                o1[t] = b - sum;
            }
        }
        done += 2;
    }
    done
}

/// Tokens per pass of [`gemm_few_vnni`]: with two rows, 16 accumulators and 8 code vectors live
/// in AVX-512's 32 vector registers beside one activation vector.
pub(super) const FEW_TOKENS_PER_PASS: usize = 8;

/// Small-batch GEMM with 256-bit `vpdpbusd` (AVX-512 VNNI + VL), for a few tokens at once (a
/// server's sequences decoding together): `out[r·tokens + t] = Σ t·q`. Rows go two at a time
/// and tokens up to [`FEW_TOKENS_PER_PASS`] at a time; each 32-byte block of the two rows is
/// decoded into its four code vectors in registers and used for every token of the pass, each
/// activation load serving both rows. The prompt GEMM ([`gemm_unpacked_rows`]) writes codes to
/// memory and reads them back per token pair, which a few tokens do not amortise.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; `rows` whole rows of `row_bytes` (a multiple
/// of 32), `acts` `sums.len()` tokens of `4 · row_bytes` activations, `out` one slot per row
/// and token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn gemm_few_vnni(
    rows: &[u8],
    row_bytes: usize,
    acts: &[i8],
    sums: &[i32],
    out: &mut [i32],
) {
    let (tokens, k, blocks) = (sums.len(), row_bytes * 4, row_bytes / 32);
    let n_rows = rows.len() / row_bytes;
    debug_assert!(row_bytes.is_multiple_of(32) && acts.len() == tokens * k && out.len() == n_rows * tokens);
    let mut r = 0;
    while r < n_rows {
        let pair = n_rows - r >= 2;
        let mut t = 0;
        while t < tokens {
            let group = (tokens - t).min(FEW_TOKENS_PER_PASS);
            // SAFETY: rows r (and r + 1 for a pair) are within rows; tokens t..t + group within
            // acts; the caller's sizes.
            unsafe {
                let w = rows.as_ptr().add(r * row_bytes);
                let a = acts.as_ptr().add(t * k);
                let mut got = [[0i32; FEW_TOKENS_PER_PASS]; 2];
                // The first pass over these rows asks for the rows FEW_PREFETCH_ROWS on.
                let ahead = if t == 0 { FEW_PREFETCH_ROWS * row_bytes } else { 0 };
                if pair {
                    few_pass_dispatch::<2>([w, w.add(row_bytes)], (blocks, ahead), a, k, group, &mut got);
                } else {
                    let mut one = [[0i32; FEW_TOKENS_PER_PASS]; 1];
                    few_pass_dispatch::<1>([w], (blocks, ahead), a, k, group, &mut one);
                    got[0] = one[0];
                }
                store_pass(out, sums, (r, if pair { 2 } else { 1 }), (t, group), &got);
            }
            t += group;
        }
        r += if pair { 2 } else { 1 };
    }
}

/// One pass's sums Σ c·q of rows `r..r + rows` and tokens `t..t + group` into `out` (row-major,
/// `sums.len()` tokens a row) as Σ t·q = Σ c·q − Σ q.
fn store_pass(
    out: &mut [i32],
    sums: &[i32],
    (r, rows): (usize, usize),
    (t, group): (usize, usize),
    got: &[[i32; FEW_TOKENS_PER_PASS]; 2],
) {
    let tokens = sums.len();
    for (i, sums_of_row) in got.iter().enumerate().take(rows) {
        let o = &mut out[(r + i) * tokens + t..(r + i) * tokens + t + group];
        for ((slot, &s), &sum) in o.iter_mut().zip(sums_of_row).zip(&sums[t..t + group]) {
            *slot = s - sum;
        }
    }
}

/// How many rows ahead [`gemm_few_vnni`] asks for weights: its arithmetic is dense enough that
/// the hardware prefetcher alone left a batch of 8 waiting on memory (docs/performance-notes.md,
/// "Small-batch GEMM").
const FEW_PREFETCH_ROWS: usize = 8;

/// [`few_pass`] for a run-time token count (1..=[`FEW_TOKENS_PER_PASS`]).
///
/// # Safety
/// As [`few_pass`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn few_pass_dispatch<const R: usize>(
    w: [*const u8; R],
    (blocks, ahead): (usize, usize),
    a: *const i8,
    k: usize,
    tokens: usize,
    out: &mut [[i32; FEW_TOKENS_PER_PASS]; R],
) {
    with_pass_len!(tokens, T => {
        // SAFETY: forwarded from the caller.
        let got = unsafe { few_pass::<R, T>(w, (blocks, ahead), a, k) };
        for (o, g) in out.iter_mut().zip(got) {
            o[..T].copy_from_slice(&g);
        }
    })
}

/// `Σ c·q` of `R` rows against `T` tokens: per block, each row's four code vectors (shift and
/// mask, in registers), then for each piece and token one activation load and `R` `vpdpbusd`.
/// Codes ≤ 2 (3 only in an invalid file) times |q| ≤ 128, four per lane and block: i32 holds
/// millions of blocks. With `ahead` > 0, the bytes that far past each row's are prefetched.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; each `w[r]` points to `32 · blocks` readable
/// bytes and `a` to `T` tokens of `k = 128 · blocks` activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn few_pass<const R: usize, const T: usize>(
    w: [*const u8; R],
    (blocks, ahead): (usize, usize),
    a: *const i8,
    k: usize,
) -> [[i32; T]; R] {
    let mask = _mm256_set1_epi8(3);
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    for b in 0..blocks {
        // SAFETY: block b < blocks of every row, and of every token's activations; a prefetch
        // is only a hint (wrapping_add: never dereferenced).
        unsafe {
            if ahead > 0 && b % 2 == 0 {
                for p in w {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(32 * b + ahead) as *const i8);
                }
            }
            // I2_S: weights 0-31 in bits 7-6, 32-63 in 5-4, 64-95 in 3-2, 96-127 in 1-0.
            let codes: [[__m256i; 4]; R] = std::array::from_fn(|r| {
                let p = _mm256_loadu_si256(w[r].add(32 * b) as *const __m256i);
                [
                    _mm256_and_si256(_mm256_srli_epi16::<6>(p), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(p), mask),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(p), mask),
                    _mm256_and_si256(p, mask),
                ]
            });
            for piece in 0..4 {
                for t in 0..T {
                    let q = _mm256_loadu_si256(a.add(t * k + 128 * b + 32 * piece) as *const __m256i);
                    for (acc, codes) in acc.iter_mut().zip(&codes) {
                        acc[t] = _mm256_dpbusd_epi32(acc[t], codes[piece], q);
                    }
                }
            }
        }
    }
    acc.map(|row| row.map(|v| hsum256(v)))
}

/// The VNNI GEMM over rows of another layout, unpacked to codes: each pair of rows is unpacked
/// once into an L1-resident buffer (by `unpack`, `k` codes a row), then runs against the tokens
/// up to [`FEW_TOKENS_PER_PASS`] at a time as [`gemm_few_vnni`] runs I2_S rows, the codes loaded
/// rather than decoded. `out[r·tokens + t]`, every row.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; `unpack(row, codes)` must fill `k` codes (a
/// multiple of 32) from a `row_bytes` row; `acts` holds `sums.len()` tokens of `k` activations
/// and `out` one slot per row and token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn gemm_codes_few_vnni(
    rows: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[i8],
    sums: &[i32],
    out: &mut [i32],
    unpack: super::Unpack,
) {
    let tokens = sums.len();
    let n_rows = rows.len() / row_bytes;
    let mut codes = vec![0u8; 2 * k];
    let mut r = 0;
    while r < n_rows {
        let count = (n_rows - r).min(2);
        for (i, c) in codes.chunks_exact_mut(k).take(count).enumerate() {
            // SAFETY: the caller's unpacker and sizes; row r + i < n_rows.
            unsafe { unpack(&rows[(r + i) * row_bytes..(r + i + 1) * row_bytes], c) };
        }
        let mut t = 0;
        while t < tokens {
            let group = (tokens - t).min(FEW_TOKENS_PER_PASS);
            let mut got = [[0i32; FEW_TOKENS_PER_PASS]; 2];
            let (c, a) = (codes.as_ptr(), acts[t * k..].as_ptr());
            // SAFETY: `count` code rows of k bytes, tokens t..t + group of k activations.
            unsafe {
                if count == 2 {
                    few_codes_dispatch::<2>([c, c.add(k)], a, k, group, &mut got);
                } else {
                    let mut one = [[0i32; FEW_TOKENS_PER_PASS]; 1];
                    few_codes_dispatch::<1>([c], a, k, group, &mut one);
                    got[0] = one[0];
                }
            }
            store_pass(out, sums, (r, count), (t, group), &got);
            t += group;
        }
        r += count;
    }
}

/// [`few_codes_pass`] for a run-time token count (1..=[`FEW_TOKENS_PER_PASS`]).
///
/// # Safety
/// As [`few_codes_pass`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn few_codes_dispatch<const R: usize>(
    c: [*const u8; R],
    a: *const i8,
    k: usize,
    tokens: usize,
    out: &mut [[i32; FEW_TOKENS_PER_PASS]; R],
) {
    with_pass_len!(tokens, T => {
        // SAFETY: forwarded from the caller.
        let got = unsafe { few_codes_pass::<R, T>(c, a, k) };
        for (o, g) in out.iter_mut().zip(got) {
            o[..T].copy_from_slice(&g);
        }
    })
}

/// `Σ c·q` of `R` unpacked code rows against `T` tokens: per 32 codes, one load per row, then per
/// token one activation load and `R` `vpdpbusd` (exact, as in [`few_pass`]).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; each `c[r]` points to `k` codes and `a` to `T`
/// tokens of `k` activations, `k` a multiple of 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn few_codes_pass<const R: usize, const T: usize>(
    c: [*const u8; R],
    a: *const i8,
    k: usize,
) -> [[i32; T]; R] {
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    for v in 0..k / 32 {
        // SAFETY: 32 bytes at 32v of every code row and token, in bounds.
        unsafe {
            let codes: [__m256i; R] =
                std::array::from_fn(|r| _mm256_loadu_si256(c[r].add(32 * v) as *const __m256i));
            for t in 0..T {
                let q = _mm256_loadu_si256(a.add(t * k + 32 * v) as *const __m256i);
                for (acc, codes) in acc.iter_mut().zip(&codes) {
                    acc[t] = _mm256_dpbusd_epi32(acc[t], *codes, q);
                }
            }
        }
    }
    acc.map(|row| row.map(|v| hsum256(v)))
}
