//! Integer row dots for a block-quantised output head (Q8_0, Q4_0; `tern convert --output-type`):
//! the final normed hidden state is quantised once per position to int8 in blocks of 32 with an
//! f32 scale each ([`HeadActs`]), then each weight row is dotted block by block.
//!
//! The arithmetic is fixed so that every variant gives the same bits: per block, eight exact
//! integer sums of four consecutive products (lane k: elements 4k..4k+3, what AVX2's
//! maddubs + madd produce), each accumulated into its own f32 lane with one fused multiply-add
//! by `d_w · d_x` — even and odd blocks into separate lane sets, added lane by lane at the end —
//! and the eight lanes are then added as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
//! The scalar twin spells that out; AVX2 and NEON compute it with vectors (tested bit for bit).

use crate::cpu::Isa;
use half::f16;
use tern_formats::TensorType;
use tern_formats::float_blocks::{Q4_0_BYTES, Q8_0_BYTES};

/// One position's hidden state as int8 blocks of 32: `x ≈ q · d` per block, q in [-127, 127].
pub struct HeadActs {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    /// 8 · Σ q over each 4-element quad (8 per block): Q4_0 stores q + 8, and AVX2 multiplies the
    /// unsigned q + 8 directly, then takes the offset out with these.
    pub offset_quads: Vec<i32>,
}

impl HeadActs {
    /// `x.len()` must be a multiple of 32 (the loader checks the head's row length).
    pub fn quantise(x: &[f32]) -> HeadActs {
        let blocks = x.len() / 32;
        let mut acts = HeadActs {
            q: Vec::with_capacity(x.len()),
            d: Vec::with_capacity(blocks),
            offset_quads: Vec::new(),
        };
        for b in x.chunks_exact(32) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            acts.q.extend(b.iter().map(|v| (v * id).round_ties_even().clamp(-127.0, 127.0) as i8));
            acts.d.push(d);
        }
        acts.offset_quads =
            acts.q.chunks_exact(4).map(|q| 8 * q.iter().map(|&v| v as i32).sum::<i32>()).collect();
        acts
    }
}

/// Bytes per 32-weight block of a head type this module runs.
pub fn block_bytes(ty: TensorType) -> Option<usize> {
    match ty {
        TensorType::Q8_0 => Some(Q8_0_BYTES),
        TensorType::Q4_0 => Some(Q4_0_BYTES),
        _ => None,
    }
}

/// Whether a head type this module runs is Q4_0 (else Q8_0); `None` for other types.
fn is_q4(ty: TensorType) -> Option<bool> {
    match ty {
        TensorType::Q8_0 => Some(false),
        TensorType::Q4_0 => Some(true),
        _ => None,
    }
}

/// A row dot of one head type on one instruction set: `Σ w·x` of a row's bytes against `acts`.
pub type HeadDot = fn(&[u8], &HeadActs) -> f32;

/// The row dot for `ty` on `isa`, resolved once per head rather than per row (the head has
/// 128k rows per token on 2B-4T).
pub fn dot_fn(isa: Isa, ty: TensorType) -> HeadDot {
    let q4 = match ty {
        TensorType::Q8_0 => false,
        TensorType::Q4_0 => true,
        other => panic!("no integer head kernel for {other}"),
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.supported() && is_x86_feature_detected!("f16c") => {
            if q4 {
                x86::dot_vnni::<true>
            } else {
                x86::dot_vnni::<false>
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.supported() && is_x86_feature_detected!("f16c") => {
            if q4 {
                x86::dot_avx2::<true>
            } else {
                x86::dot_avx2::<false>
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.supported() => {
            if q4 {
                arm::dot_q4_0
            } else {
                arm::dot_q8_0
            }
        }
        _ => {
            if q4 {
                |row, acts| dot_scalar(row, acts, true)
            } else {
                |row, acts| dot_scalar(row, acts, false)
            }
        }
    }
}

/// Four rows' dots at once: the rows' bytes, each result the bits [`HeadDot`] gives that row.
pub type HeadDot4 = fn([&[u8]; 4], &HeadActs) -> [f32; 4];

/// The four-row dot for `ty` on `isa` where one exists (x86-64 with AVX2: `vpdpbusd` on AVX-512
/// VNNI, `maddubs` + `madd` on AVX2). Four rows share each block's activation load, offsets and
/// scale, and read four streams at once with a prefetch each: a one-row Q4_0 dot computes more
/// slowly than an Intel core can stream (docs/performance-notes.md, "Quantised heads").
pub fn dot4_fn(isa: Isa, ty: TensorType) -> Option<HeadDot4> {
    let q4 = is_q4(ty)?;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.supported() && is_x86_feature_detected!("f16c") => {
            Some(if q4 { x86::dot4_vnni::<true> } else { x86::dot4_vnni::<false> })
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.supported() && is_x86_feature_detected!("f16c") => {
            Some(if q4 { x86::dot4::<true> } else { x86::dot4::<false> })
        }
        _ => {
            let _ = q4;
            None
        }
    }
}

/// Several positions' dots of consecutive rows: `(rows' bytes, one HeadActs per position, out)`
/// with `out[r·n + p]` = row r against position p, each the bits [`HeadDot`] gives.
pub type HeadDotPositions = fn(&[u8], &[HeadActs], &mut [f32]);

/// The several-position dot for `ty` on `isa` where one exists (AVX-512 VNNI): each block of
/// each row is decoded once for all positions (sequences decoding together), where the one-row
/// dots decode it again per position.
pub fn dot_positions_fn(isa: Isa, ty: TensorType) -> Option<HeadDotPositions> {
    let q4 = is_q4(ty)?;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.supported() && is_x86_feature_detected!("f16c") => {
            Some(if q4 { x86::dot_positions_vnni::<true> } else { x86::dot_positions_vnni::<false> })
        }
        _ => {
            let _ = q4;
            None
        }
    }
}

/// `Σ w·x` of one row of the head (`row`: that row's bytes) against `acts`.
pub fn dot(isa: Isa, ty: TensorType, row: &[u8], acts: &HeadActs) -> f32 {
    dot_fn(isa, ty)(row, acts)
}

/// Rows and activations must describe the same number of blocks (every variant checks).
fn check_len(row: &[u8], acts: &HeadActs, block_bytes: usize) {
    assert_eq!(row.len(), block_bytes * acts.d.len(), "row and activations differ in length");
}

fn scale(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The 32 signed weights of one block, in element order.
fn weights(block: &[u8], q4: bool) -> [i8; 32] {
    let mut w = [0i8; 32];
    if q4 {
        for j in 0..16 {
            w[j] = (block[2 + j] & 0xF) as i8 - 8;
            w[j + 16] = (block[2 + j] >> 4) as i8 - 8;
        }
    } else {
        for (o, &b) in w.iter_mut().zip(&block[2..34]) {
            *o = b as i8;
        }
    }
    w
}

/// The lanes' final sum, in the order the SIMD variants add them.
fn sum_lanes(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

pub fn dot_scalar(row: &[u8], acts: &HeadActs, q4: bool) -> f32 {
    let bytes = if q4 { Q4_0_BYTES } else { Q8_0_BYTES };
    check_len(row, acts, bytes);
    // Even and odd blocks accumulate separately (two independent FMA chains in the SIMD code).
    let mut lanes = [[0f32; 8]; 2];
    for (i, block) in row.chunks_exact(bytes).enumerate() {
        let w = weights(block, q4);
        let x = &acts.q[i * 32..i * 32 + 32];
        let d = scale(block) * acts.d[i];
        for (k, lane) in lanes[i % 2].iter_mut().enumerate() {
            let s: i32 = (4 * k..4 * k + 4).map(|j| w[j] as i32 * x[j] as i32).sum();
            *lane = (s as f32).mul_add(d, *lane);
        }
    }
    sum_lanes(std::array::from_fn(|k| lanes[0][k] + lanes[1][k]))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `d_w · d_x` for the block at `b` in all eight lanes: its f16 scale converted with F16C
    /// (exact, like `half`'s conversion) and multiplied lane by lane (the same f32 product as a
    /// scalar multiply). Broadcasting the scale bytes first matters: a scalar insert of them
    /// merged into whatever register the compiler picked — once the FMA accumulator, which made
    /// every block wait for the previous block's FMA (docs/performance-notes.md, "Quantised heads").
    /// The scales `d_w · d_x` of eight consecutive blocks (the first at `b`, `bytes` apart;
    /// their activations' scales at `dx`), each lane [`block_scale`]'s product: the eight f16
    /// words gathered in general registers, then one conversion and one multiply for all.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn block_scales8(b: *const u8, bytes: usize, dx: *const f32) -> __m256 {
        // SAFETY: the caller points at eight whole blocks and their eight activation scales.
        unsafe {
            let word = |j: usize| (b.add(j * bytes) as *const u16).read_unaligned() as i64;
            let lo = word(0) | word(1) << 16 | word(2) << 32 | word(3) << 48;
            let hi = word(4) | word(5) << 16 | word(6) << 32 | word(7) << 48;
            _mm256_mul_ps(_mm256_cvtph_ps(_mm_set_epi64x(hi, lo)), _mm256_loadu_ps(dx))
        }
    }

    /// Lane `j` of `v` in every lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lane(v: __m256, j: usize) -> __m256 {
        _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j as i32))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn block_scale(b: *const u8, dx: f32) -> __m256 {
        // SAFETY: the caller points at a block's two scale bytes.
        let h = unsafe { (b as *const i16).read_unaligned() };
        _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16(h)), _mm256_set1_ps(dx))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn sum_lanes(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Lane k of `acc` += quad sum k · d, one FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn accumulate(quads: __m256i, d: __m256, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(quads), d, acc)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q8_weights(b: *const u8) -> __m256i {
        // SAFETY: the caller points at a whole Q8_0 block.
        unsafe { _mm256_loadu_si256(b.add(2) as *const __m256i) }
    }

    /// Q4_0's stored codes q + 8 (0..15) in element order: the 16 bytes in both halves, the
    /// upper half shifted down a nibble, both masked: two operations after a broadcast load
    /// instead of four (docs/performance-notes.md, "Quantised heads").
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_codes(b: *const u8) -> __m256i {
        // SAFETY: the caller points at a whole Q4_0 block.
        let packed = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(b.add(2) as *const __m128i)) };
        let shifted = _mm256_srlv_epi64(packed, _mm256_set_epi64x(4, 4, 0, 0));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_blocks<const Q4: bool>(row: &[u8], acts: &HeadActs) -> f32 {
        // SAFETY: the caller's row and activations; AVX2, FMA and F16C enabled here.
        unsafe { one_row::<Q4, false>(row, acts) }
    }

    /// The one-row loop of [`dot_blocks`] (`VNNI`: with [`quads_vnni_loaded`], asking for the row's
    /// bytes ahead, only inside [`dot_blocks_vnni`]).
    #[inline(always)]
    unsafe fn one_row<const Q4: bool, const VNNI: bool>(row: &[u8], acts: &HeadActs) -> f32 {
        let bytes = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        // SAFETY (whole body): the caller enabled the features; blocks i and i + 1 (when < n)
        // lie inside `row`, their activations and offsets inside `acts`; a prefetch is only a
        // hint (wrapping_add: never dereferenced).
        unsafe {
            let quads = |b, x: *const i8, o| {
                let x = _mm256_loadu_si256(x as *const __m256i);
                if VNNI { quads_vnni_loaded::<Q4>(b, x, o) } else { quads_loaded::<Q4>(b, x, o) }
            };
            let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let n = acts.d.len();
            let (w, x, o) = (row.as_ptr(), acts.q.as_ptr(), acts.offset_quads.as_ptr());
            let mut i = 0;
            while i + 8 <= n {
                let scales = block_scales8(w.add(i * bytes), bytes, acts.d.as_ptr().add(i));
                for j in (0..8).step_by(2) {
                    let b = w.add((i + j) * bytes);
                    if VNNI {
                        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(AHEAD_ONE_ROW) as *const i8);
                    }
                    let q = quads(b, x.add((i + j) * 32), o.add((i + j) * 8));
                    even = accumulate(q, lane(scales, j), even);
                    let b = w.add((i + j + 1) * bytes);
                    let q = quads(b, x.add((i + j + 1) * 32), o.add((i + j + 1) * 8));
                    odd = accumulate(q, lane(scales, j + 1), odd);
                }
                i += 8;
            }
            while i < n {
                let b = w.add(i * bytes);
                if VNNI {
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(AHEAD_ONE_ROW) as *const i8);
                }
                even = accumulate(quads(b, x.add(i * 32), o.add(i * 8)), block_scale(b, acts.d[i]), even);
                if i + 1 < n {
                    let b = w.add((i + 1) * bytes);
                    let q = quads(b, x.add((i + 1) * 32), o.add((i + 1) * 8));
                    odd = accumulate(q, block_scale(b, acts.d[i + 1]), odd);
                }
                i += 2;
            }
            sum_lanes(_mm256_add_ps(even, odd))
        }
    }

    /// [`quads_loaded`] with `vpdpbusd` in place of `maddubs` + `madd`: the same exact sums (no
    /// pair sum saturates in `maddubs`: |w| ≤ 128 or codes ≤ 15, against |x| ≤ 127).
    #[inline(always)]
    unsafe fn quads_vnni_loaded<const Q4: bool>(b: *const u8, x: __m256i, offsets: *const i32) -> __m256i {
        // SAFETY: the caller passes a whole block and its 8 offsets, and has enabled VNNI.
        unsafe {
            let zero = _mm256_setzero_si256();
            if Q4 {
                let sums = _mm256_dpbusd_epi32(zero, q4_codes(b), x);
                _mm256_sub_epi32(sums, _mm256_loadu_si256(offsets as *const __m256i))
            } else {
                let w = q8_weights(b);
                _mm256_dpbusd_epi32(zero, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
            }
        }
    }

    /// How far ahead the one-row VNNI dot asks for bytes, once per two blocks (36 or 68 bytes):
    /// the hardware prefetcher alone left a streamed row's loads waiting
    /// (docs/performance-notes.md, "Quantised heads").
    const AHEAD_ONE_ROW: usize = 2048;

    /// [`dot_blocks`] with [`quads_vnni_loaded`], asking for the row's bytes ahead.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn dot_blocks_vnni<const Q4: bool>(row: &[u8], acts: &HeadActs) -> f32 {
        // SAFETY: the caller's row and activations; the features are enabled here.
        unsafe { one_row::<Q4, true>(row, acts) }
    }

    /// How far ahead of each of the four rows the four-row dots ask for bytes, every line of
    /// them: about 1900 weights either way. Asking once per four blocks instead skipped half of
    /// Q8_0's lines (docs/performance-notes.md, "Quantised heads").
    const AHEAD_Q4_0: usize = 1024;
    const AHEAD_Q8_0: usize = 2048;

    /// Four rows of [`dot_blocks`] in lock step, each with its own even and odd accumulators, so
    /// each result has that function's bits; the activation load, the offsets and `d_x` are
    /// shared. `$quads` is [`quads_loaded`] (AVX2) or [`quads_vnni_loaded`] (then `$features`
    /// name VNNI).
    macro_rules! dot_blocks4 {
        ($name:ident, $features:literal, $quads:expr) => {
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn $name<const Q4: bool>(rows: [&[u8]; 4], acts: &HeadActs) -> [f32; 4] {
                let bytes = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
                // Even and odd blocks in separately named accumulators: indexed by i % 2 they
                // would live in memory.
                let (mut even, mut odd) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
                let n = acts.d.len();
                let (x, o) = (acts.q.as_ptr(), acts.offset_quads.as_ptr());
                let w = rows.map(|r| r.as_ptr());
                let mut i = 0;
                while i < n {
                    // SAFETY: blocks i and i + 1 (when < n) lie inside every row, their
                    // activations and offsets inside `acts`; a prefetch is only a hint
                    // (wrapping_add: never dereferenced).
                    unsafe {
                        let xi = _mm256_loadu_si256(x.add(i * 32) as *const __m256i);
                        for r in 0..4 {
                            let b = w[r].add(i * bytes);
                            // Two blocks are 36 (Q4_0) or 68 (Q8_0) bytes: one line ahead,
                            // or two, touch every line.
                            let ahead = if Q4 { AHEAD_Q4_0 } else { AHEAD_Q8_0 };
                            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead) as *const i8);
                            if !Q4 {
                                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead + 64) as *const i8);
                            }
                            let q = $quads(b, xi, o.add(i * 8));
                            even[r] = accumulate(q, block_scale(b, acts.d[i]), even[r]);
                        }
                        if i + 1 < n {
                            let xi = _mm256_loadu_si256(x.add((i + 1) * 32) as *const __m256i);
                            for r in 0..4 {
                                let b = w[r].add((i + 1) * bytes);
                                let q = $quads(b, xi, o.add((i + 1) * 8));
                                odd[r] = accumulate(q, block_scale(b, acts.d[i + 1]), odd[r]);
                            }
                        }
                    }
                    i += 2;
                }
                std::array::from_fn(|r| sum_lanes(_mm256_add_ps(even[r], odd[r])))
            }
        };
    }

    /// Block i's eight quad sums Σ w·x, exact, against its 32 activations `x`. Q8_0: signed ×
    /// signed as |w| · sign(x, w) (|w| ≤ 128, |x| ≤ 127: maddubs' pair sums stay below 2^15).
    /// Q4_0: the unsigned codes times x, minus 8 · Σ x per quad.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quads_loaded<const Q4: bool>(b: *const u8, x: __m256i, offsets: *const i32) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        // SAFETY: the caller passes a whole block and its 8 offsets.
        unsafe {
            if Q4 {
                let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q4_codes(b), x), ones);
                _mm256_sub_epi32(sums, _mm256_loadu_si256(offsets as *const __m256i))
            } else {
                let w = q8_weights(b);
                _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)), ones)
            }
        }
    }

    dot_blocks4!(dot_blocks4_avx2, "avx2,fma,f16c", quads_loaded::<Q4>);
    dot_blocks4!(
        dot_blocks4_vnni,
        "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
        quads_vnni_loaded::<Q4>
    );

    fn check4(rows: &[&[u8]; 4], acts: &HeadActs, bytes: usize) {
        rows.iter().for_each(|r| check_len(r, acts, bytes));
    }

    /// Only handed out by `dot4_fn` once AVX2, FMA and F16C were detected.
    pub(super) fn dot4<const Q4: bool>(rows: [&[u8]; 4], acts: &HeadActs) -> [f32; 4] {
        check4(&rows, acts, if Q4 { Q4_0_BYTES } else { Q8_0_BYTES });
        // SAFETY: the features were detected (see above); lengths checked.
        unsafe { dot_blocks4_avx2::<Q4>(rows, acts) }
    }

    /// Only handed out by `dot4_fn` once AVX-512 VNNI (with AVX2, FMA) and F16C were detected.
    pub(super) fn dot4_vnni<const Q4: bool>(rows: [&[u8]; 4], acts: &HeadActs) -> [f32; 4] {
        check4(&rows, acts, if Q4 { Q4_0_BYTES } else { Q8_0_BYTES });
        // SAFETY: the features were detected (see above); lengths checked.
        unsafe { dot_blocks4_vnni::<Q4>(rows, acts) }
    }

    /// Rows per block and positions per pass of [`dot_positions_vnni`]: 16 accumulators (even
    /// and odd per row and position) beside the rows' codes and scales.
    const POSITION_ROWS: usize = 2;
    const POSITION_PASS: usize = 4;

    /// Only handed out by `dot_positions_fn` once AVX-512 VNNI (with AVX2, FMA) and F16C were
    /// detected.
    pub(super) fn dot_positions_vnni<const Q4: bool>(rows: &[u8], acts: &[HeadActs], out: &mut [f32]) {
        let bytes = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        let n = acts.len();
        let row_bytes = bytes * acts.first().map_or(0, |a| a.d.len());
        assert!(n > 0 && row_bytes > 0 && rows.len().is_multiple_of(row_bytes));
        assert!(acts.iter().all(|a| a.d.len() * bytes == row_bytes), "rows and activations differ in length");
        let count = rows.len() / row_bytes;
        assert_eq!(out.len(), count * n);
        let mut r = 0;
        while r < count {
            let block = (count - r).min(POSITION_ROWS);
            let mut p = 0;
            while p < n {
                let pass = (n - p).min(POSITION_PASS);
                let w = &rows[r * row_bytes..(r + block) * row_bytes];
                let a = &acts[p..p + pass];
                // SAFETY: the features were detected (see above); lengths checked.
                let got: [[f32; POSITION_PASS]; POSITION_ROWS] = unsafe {
                    macro_rules! run {
                        ($r:literal, $p:literal) => {{
                            let g = positions_block::<Q4, $r, $p>(w, a, row_bytes);
                            std::array::from_fn(|i| {
                                std::array::from_fn(|j| if i < $r && j < $p { g[i][j] } else { 0.0 })
                            })
                        }};
                    }
                    match (block, pass) {
                        (2, 4) => run!(2, 4),
                        (2, 3) => run!(2, 3),
                        (2, 2) => run!(2, 2),
                        (2, _) => run!(2, 1),
                        (_, 4) => run!(1, 4),
                        (_, 3) => run!(1, 3),
                        (_, 2) => run!(1, 2),
                        _ => run!(1, 1),
                    }
                };
                for (i, row) in got.iter().enumerate().take(block) {
                    out[(r + i) * n + p..(r + i) * n + p + pass].copy_from_slice(&row[..pass]);
                }
                p += pass;
            }
            r += block;
        }
    }

    /// `R` rows (consecutive, `row_bytes` each) against the `P` positions of `acts`: per block,
    /// each row's codes and `d_w` decoded once, then per position the quads, the scale and the
    /// FMA of [`dot_blocks`] (even and odd blocks apart, summed as it sums), so each result has
    /// its bits. Q8_0's signed weights go in as w + 128 (u8) with 128 · Σ x per quad taken out,
    /// the same exact quad sums as its |w| · sign(x, w).
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL, VNNI, FMA and F16C; `w` holds `R` rows of
    /// `row_bytes`, matching every `acts[p]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn positions_block<const Q4: bool, const R: usize, const P: usize>(
        w: &[u8],
        acts: &[HeadActs],
        row_bytes: usize,
    ) -> [[f32; P]; R] {
        let bytes = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        let n = row_bytes / bytes;
        let (mut even, mut odd) = ([[_mm256_setzero_ps(); P]; R], [[_mm256_setzero_ps(); P]; R]);
        let wp = w.as_ptr();
        let mut i = 0;
        while i < n {
            // SAFETY: blocks i and i + 1 (when < n) lie inside every row, their activations and
            // offsets inside every acts[p] (the caller's sizes).
            unsafe {
                even = positions_step::<Q4, R, P>(wp, row_bytes, i, acts, even);
                if i + 1 < n {
                    odd = positions_step::<Q4, R, P>(wp, row_bytes, i + 1, acts, odd);
                }
            }
            i += 2;
        }
        std::array::from_fn(|r| std::array::from_fn(|p| sum_lanes(_mm256_add_ps(even[r][p], odd[r][p]))))
    }

    /// Block `i` of `R` rows at `w` (`row_bytes` apart) against `P` positions, added to `acc`
    /// (taken and returned by value so the accumulators stay in registers).
    ///
    /// # Safety
    /// As [`positions_block`], with block i inside every row.
    #[inline(always)]
    unsafe fn positions_step<const Q4: bool, const R: usize, const P: usize>(
        w: *const u8,
        row_bytes: usize,
        i: usize,
        acts: &[HeadActs],
        mut acc: [[__m256; P]; R],
    ) -> [[__m256; P]; R] {
        let bytes = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        // SAFETY: the caller's sizes.
        unsafe {
            let b: [*const u8; R] = std::array::from_fn(|r| w.add(r * row_bytes + i * bytes));
            let codes: [__m256i; R] = std::array::from_fn(|r| {
                if Q4 { q4_codes(b[r]) } else { _mm256_xor_si256(q8_weights(b[r]), _mm256_set1_epi8(-128)) }
            });
            let wscale: [__m256; R] = std::array::from_fn(|r| {
                _mm256_cvtph_ps(_mm_set1_epi16((b[r] as *const i16).read_unaligned()))
            });
            for p in 0..P {
                let a = &acts[p];
                let x = _mm256_loadu_si256(a.q.as_ptr().add(i * 32) as *const __m256i);
                let offsets = _mm256_loadu_si256(a.offset_quads.as_ptr().add(i * 8) as *const __m256i);
                // Q4_0 stores q + 8 (offset 8 · Σx); Q8_0 goes in as w + 128 (16 times that).
                let offsets = if Q4 { offsets } else { _mm256_slli_epi32::<4>(offsets) };
                let dx = _mm256_set1_ps(*a.d.get_unchecked(i));
                for r in 0..R {
                    let q =
                        _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), codes[r], x), offsets);
                    acc[r][p] = accumulate(q, _mm256_mul_ps(wscale[r], dx), acc[r][p]);
                }
            }
        }
        acc
    }

    /// Only handed out by `dot_fn` once AVX-512 VNNI (with AVX2, FMA) and F16C were detected.
    pub(super) fn dot_vnni<const Q4: bool>(row: &[u8], acts: &HeadActs) -> f32 {
        check_len(row, acts, if Q4 { Q4_0_BYTES } else { Q8_0_BYTES });
        // SAFETY: the features were detected (see above); length checked.
        unsafe { dot_blocks_vnni::<Q4>(row, acts) }
    }

    /// Only handed out by `dot_fn` once AVX2, FMA and F16C were detected.
    pub(super) fn dot_avx2<const Q4: bool>(row: &[u8], acts: &HeadActs) -> f32 {
        check_len(row, acts, if Q4 { Q4_0_BYTES } else { Q8_0_BYTES });
        // SAFETY: the features were detected (see above); length checked.
        unsafe { dot_blocks::<Q4>(row, acts) }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    /// Sums of four consecutive products: lanes for elements 0..15 of `w` and `x`.
    #[inline]
    #[target_feature(enable = "neon")]
    fn quads(w: int8x16_t, x: int8x16_t) -> int32x4_t {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x)));
        let hi = vpaddlq_s16(vmull_s8(vget_high_s8(w), vget_high_s8(x)));
        vpaddq_s32(lo, hi)
    }

    pub(super) fn dot_q8_0(row: &[u8], acts: &HeadActs) -> f32 {
        // SAFETY: NEON is part of aarch64.
        unsafe { dot(row, acts, false) }
    }

    pub(super) fn dot_q4_0(row: &[u8], acts: &HeadActs) -> f32 {
        // SAFETY: NEON is part of aarch64.
        unsafe { dot(row, acts, true) }
    }

    #[target_feature(enable = "neon")]
    unsafe fn dot(row: &[u8], acts: &HeadActs, q4: bool) -> f32 {
        let bytes = if q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        check_len(row, acts, bytes);
        // [even lanes 0-3, even 4-7, odd 0-3, odd 4-7], as the scalar twin.
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (i, block) in row.chunks_exact(bytes).enumerate() {
            // SAFETY: a block holds 16 (Q4_0) or 32 (Q8_0) weight bytes after its 2-byte scale;
            // acts hold 32 values per block.
            let (w0, w1, x0, x1) = unsafe {
                let p = block.as_ptr().add(2);
                let (w0, w1) = if q4 {
                    let packed = vld1q_u8(p);
                    let eight = vdupq_n_s8(8);
                    (
                        vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0F))), eight),
                        vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed)), eight),
                    )
                } else {
                    (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8))
                };
                let x = acts.q.as_ptr().add(i * 32);
                (w0, w1, vld1q_s8(x), vld1q_s8(x.add(16)))
            };
            let d = vdupq_n_f32(scale(block) * acts.d[i]);
            let set = 2 * (i % 2);
            acc[set] = vfmaq_f32(acc[set], vcvtq_f32_s32(quads(w0, x0)), d);
            acc[set + 1] = vfmaq_f32(acc[set + 1], vcvtq_f32_s32(quads(w1, x1)), d);
        }
        let (lo, hi) = (vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
        let s = vaddq_f32(lo, hi);
        (vgetq_lane_f32::<0>(s) + vgetq_lane_f32::<2>(s)) + (vgetq_lane_f32::<1>(s) + vgetq_lane_f32::<3>(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_formats::float_blocks::quantize_row;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The several-position dots give each row and position the one-row dot's bits: rows in
    /// blocks and left over, positions in passes and left over, rows of odd and even block counts,
    /// extreme Q8_0 codes (-128, -127) included.
    #[test]
    fn position_dots_equal_row_dots() {
        let mut seed = 11;
        for (rows, blocks, positions) in [(1, 1, 2), (3, 5, 4), (4, 8, 9), (5, 3, 1), (2, 80, 16)] {
            let n = blocks * 32;
            let acts: Vec<HeadActs> = (0..positions)
                .map(|_| HeadActs::quantise(&(0..n).map(|_| lcg(&mut seed)).collect::<Vec<_>>()))
                .collect();
            for ty in [TensorType::Q8_0, TensorType::Q4_0] {
                let mut w = Vec::new();
                for r in 0..rows {
                    let mut row = Vec::new();
                    let v: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 2.0).collect();
                    quantize_row(ty, &v, &mut row).unwrap();
                    if ty == TensorType::Q8_0 {
                        row[2 + r % 32] = 0x80; // -128
                        row[3 + r % 29] = 0x81; // -127
                    }
                    w.extend(row);
                }
                let row_bytes = w.len() / rows;
                for isa in crate::cpu::available() {
                    let Some(f) = dot_positions_fn(isa, ty) else { continue };
                    let mut got = vec![0f32; rows * positions];
                    f(&w, &acts, &mut got);
                    for r in 0..rows {
                        for (p, a) in acts.iter().enumerate() {
                            let want = dot(isa, ty, &w[r * row_bytes..(r + 1) * row_bytes], a);
                            assert_eq!(
                                got[r * positions + p].to_bits(),
                                want.to_bits(),
                                "{ty} {} row {r} position {p} of {rows}x{blocks}x{positions}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every ISA gives the scalar result bit for bit, on rows of 1 to 13 blocks, extreme codes
    /// included (-127 activations, -127 and -128 weights), and the scalar result is the exact dot
    /// of the decoded values up to float rounding.
    #[test]
    fn every_isa_matches_scalar_bit_for_bit() {
        let mut seed = 7;
        for blocks in 1..=13 {
            let n = blocks * 32;
            let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 3.0).collect();
            let mut x: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            x[0] = -1.5; // a block whose amax is negative: code -127
            let acts = HeadActs::quantise(&x);
            assert!(acts.q.iter().all(|&q| q >= -127));
            assert!(acts.q.contains(&-127));
            for ty in [TensorType::Q8_0, TensorType::Q4_0] {
                let mut row = Vec::new();
                quantize_row(ty, &w, &mut row).unwrap();
                if ty == TensorType::Q8_0 {
                    row[2] = 0x81; // -127, the most negative code the quantiser writes
                }
                if ty == TensorType::Q8_0 && blocks > 1 {
                    row[2 + Q8_0_BYTES] = 0x80; // -128: a foreign file may hold it
                }
                let scalar = dot_scalar(&row, &acts, ty == TensorType::Q4_0);
                // Independent: decode both sides and sum per block in f64.
                let mut decoded = vec![0f32; n];
                tern_formats::float_blocks::dequantize_row(ty, &row, &mut decoded).unwrap();
                let exact: f64 = decoded
                    .iter()
                    .zip(acts.q.iter().enumerate())
                    .map(|(&w, (i, &q))| w as f64 * q as f64 * acts.d[i / 32] as f64)
                    .sum();
                assert!(
                    (scalar as f64 - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                    "{ty}: {scalar} vs {exact}"
                );
                for isa in crate::cpu::available() {
                    let got = dot(isa, ty, &row, &acts);
                    assert_eq!(got.to_bits(), scalar.to_bits(), "{ty} {} blocks on {}", blocks, isa.name());
                }
                // Four rows at once: this row among three others (one its negation, one zero
                // scales), each result the one-row bits.
                let mut negated = row.clone();
                let block_bytes = block_bytes(ty).unwrap();
                for b in negated.chunks_exact_mut(block_bytes) {
                    let d = -f16::from_le_bytes([b[0], b[1]]);
                    b[..2].copy_from_slice(&d.to_le_bytes());
                }
                let mut zero_scales = row.clone();
                for b in zero_scales.chunks_exact_mut(block_bytes) {
                    b[..2].copy_from_slice(&[0, 0]);
                }
                let four = [&negated[..], &row[..], &zero_scales[..], &row[..]];
                for isa in crate::cpu::available() {
                    if let Some(dot4) = dot4_fn(isa, ty) {
                        let got = dot4(four, &acts);
                        for (j, r) in four.iter().enumerate() {
                            let want = dot_scalar(r, &acts, ty == TensorType::Q4_0);
                            assert_eq!(
                                got[j].to_bits(),
                                want.to_bits(),
                                "{ty} {blocks} blocks, row {j} of four on {}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
