//! The attention of one query head over its KV head's cached rows: scaled dot products, softmax,
//! weighted sum of values. One arithmetic, in one order, on every instruction set (the AVX2 path
//! only widens the vectors and uses no FMA), so a prompt and token-by-token decoding give the
//! same bits everywhere, and the scalar path is the AVX2 path's exact twin (tested).

use super::kv::{LayerRows, f16_to_f32};
use crate::cpu::Isa;
use half::f16;

/// One KV head's cached rows: position `j`'s vector is `stride·j + offset ..+ d` of the layer.
pub(super) struct HeadRows<'a> {
    pub keys: &'a LayerRows<'a>,
    pub values: &'a LayerRows<'a>,
    pub stride: usize,
    pub offset: usize,
}

/// What one attention task computes: the query heads `qs` of one KV group (each `d` long)
/// over the first `len` cached positions, scores scaled by `scale`.
#[derive(Clone, Copy)]
pub(super) struct Queries<'a> {
    pub qs: &'a [f32],
    pub d: usize,
    pub len: usize,
    pub scale: f32,
}

/// Softmax attention of `q`'s heads over their KV head's cached rows `head`, added into `o` (as
/// long as `q.qs`, zeroed by the caller). The heads of a group go together so each cached row is
/// read once for all of them; each head's arithmetic is the same as alone, so the same bits
/// (tested).
pub(super) fn attend_heads(isa: Isa, q: Queries, head: &HeadRows, o: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a session's instruction set is supported here, and both of these imply AVX2.
        Isa::Avx2 | Isa::Avx512Vnni if crate::kernels::float::f16_simd(isa) => unsafe {
            attend_heads_avx2(q, head, o)
        },
        _ => attend_heads_with(|q, k| k.map(|k| dot_f32(q, k)), f16_to_f32, q, head, o),
    }
}

/// The core compiled for AVX2, with [`dot4_f32_avx2`]: built for SSE2 (the binary's baseline),
/// attention was a large share of a prompt (docs/performance-notes.md, "Attention and the KV cache").
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn attend_heads_avx2(q: Queries, head: &HeadRows, o: &mut [f32]) {
    // SAFETY: this function only runs where AVX2 and F16C are available.
    attend_heads_with(
        |q, k| unsafe { dot4_f32_avx2(q, k) },
        |h, f| unsafe { f16_to_f32_f16c(h, f) },
        q,
        head,
        o,
    )
}

/// f16 → f32 eight at a time with F16C, inline in the core: the `half` crate's slice conversion
/// (a call and two copies per eight elements) made an f16 cache's attention far slower than an
/// f32 cache's (docs/performance-notes.md, "Attention and the KV cache"). f16 → f32 is exact, so
/// the bits are the same either way.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= full <= both lengths.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for (d, s) in dst[full..n].iter_mut().zip(&src[full..n]) {
        *d = s.to_f32();
    }
}

/// Plain loops throughout: an iterator adapter here is instantiated as its own function, outside
/// the AVX2 one, and loses the wide vectors. Keys go four at a time through `dot4` (four
/// independent sums, so the adds' latency overlaps) for every head before the next four; values
/// two at a time into each head's `o`, which adds them in the same order as one at a time.
#[inline(always)]
fn attend_heads_with(
    dot4: impl Fn(&[f32], [&[f32]; 4]) -> [f32; 4],
    convert: impl Fn(&[f16], &mut [f32]) + Copy,
    q: Queries,
    head: &HeadRows,
    o: &mut [f32],
) {
    let Queries { qs, d, len, scale } = q;
    let n = qs.len() / d;
    let at = |j: usize| j * head.stride + head.offset;
    let mut bufs: [Vec<f32>; 4] = Default::default();
    let mut scores = vec![0f32; n * len];
    let mut j = 0;
    while j < len {
        let [b0, b1, b2, b3] = &mut bufs;
        // Past the end, repeat the last key: its duplicate sums are computed and dropped.
        let key = |i: usize, b| head.keys.row(at((j + i).min(len - 1)), d, b, convert);
        let keys = [key(0, b0), key(1, b1), key(2, b2), key(3, b3)];
        for (q, scores) in qs.chunks_exact(d).zip(scores.chunks_exact_mut(len)) {
            let sums = dot4(q, keys);
            for (s, sum) in scores[j..].iter_mut().zip(sums) {
                *s = sum * scale;
            }
        }
        j += 4;
    }
    let mut totals = vec![0f32; n];
    for (scores, total) in scores.chunks_exact_mut(len).zip(&mut totals) {
        let mut max = f32::NEG_INFINITY;
        for &s in scores.iter() {
            max = max.max(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = exp_or_zero(*s - max);
            sum += *s;
        }
        *total = sum;
    }
    let mut j = 0;
    while j + 2 <= len {
        let [b0, b1, ..] = &mut bufs;
        let (v0, v1) = (head.values.row(at(j), d, b0, convert), head.values.row(at(j + 1), d, b1, convert));
        for ((o, scores), &sum) in o.chunks_exact_mut(d).zip(scores.chunks_exact(len)).zip(&totals) {
            let (p0, p1) = (scores[j] / sum, scores[j + 1] / sum);
            for ((a, &x), &y) in o.iter_mut().zip(v0).zip(v1) {
                *a = (*a + p0 * x) + p1 * y;
            }
        }
        j += 2;
    }
    if j < len {
        let v = head.values.row(at(j), d, &mut bufs[0], convert);
        for ((o, scores), &sum) in o.chunks_exact_mut(d).zip(scores.chunks_exact(len)).zip(&totals) {
            let p = scores[j] / sum;
            for (a, &x) in o.iter_mut().zip(v) {
                *a += p * x;
            }
        }
    }
}

/// `x.exp()`, with the arguments whose exponential rounds to +0 answered without libm: glibc's
/// `expf` sends them through its errno-setting underflow path, far slower than its common one
/// (docs/performance-notes.md, "Attention and the KV cache"). Below −104 the f32 result is +0
/// either way (e^x is under half the smallest subnormal, e^−103.28), so the bits are the same.
#[inline(always)]
fn exp_or_zero(x: f32) -> f32 {
    if x < -104.0 { 0.0 } else { x.exp() }
}

/// `Σ a·b` in eight interleaved partial sums, added in a fixed order at the end.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])) + tail
}

/// [`dot_f32`] of `a` with four rows at once, each row's eight partial sums in one AVX register
/// (multiply, then add: no FMA, so the same roundings) and added in the same final order. The
/// compiler's own vectorisation of the scalar twin used 64-bit pieces, and one row at a time
/// waits on the add latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot4_f32_avx2(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = b.iter().fold(a.len(), |n, r| n.min(r.len()));
    let full = n / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= full <= every length.
        unsafe {
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            for (acc, r) in acc.iter_mut().zip(b) {
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, _mm256_loadu_ps(r.as_ptr().add(i))));
            }
        }
    }
    let mut out = [0f32; 4];
    for ((o, acc), r) in out.iter_mut().zip(acc).zip(b) {
        let tail: f32 = a[full..n].iter().zip(&r[full..n]).map(|(x, y)| x * y).sum();
        // (l0+l4, l1+l5, l2+l6, l3+l7), then ((l0+l4)+(l2+l6), (l1+l5)+(l3+l7)), then their sum.
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        *o = _mm_cvtss_f32(s) + _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1)) + tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Isa;
    use std::borrow::Cow;

    fn random(n: usize, seed: &mut u32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                (*seed % 20001) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    /// Every available core against the scalar twin, bit for bit, on awkward widths (tails of every
    /// length) and lengths, with scores spread wide enough that some exponentials underflow.
    #[test]
    fn every_attention_core_is_the_scalar_one_bit_for_bit() {
        let mut seed = 0x9e37_79b9;
        for d in [1, 7, 8, 13, 64, 100, 128] {
            for len in [1, 2, 5, 33] {
                let heads = 3;
                let keys = random(len * heads * d, &mut seed);
                let values = random(len * heads * d, &mut seed);
                let half = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
                let (keys16, values16) = (half(&keys), half(&values));
                let (keys, values) =
                    (LayerRows::F32(Cow::Borrowed(&keys)), LayerRows::F32(Cow::Borrowed(&values)));
                let q = random(d, &mut seed);
                let one = |qs| Queries { qs, d, len, scale: 3.0 };
                let head = HeadRows { keys: &keys, values: &values, stride: heads * d, offset: d };
                let mut scalar = vec![0f32; d];
                attend_heads(Isa::Scalar, one(&q), &head, &mut scalar);
                // The same rows stored as f16 (an f16 cache): converted by each core its own way.
                let (keys16, values16) = (LayerRows::F16(&keys16), LayerRows::F16(&values16));
                let head16 = HeadRows { keys: &keys16, values: &values16, ..head };
                let mut scalar16 = vec![0f32; d];
                attend_heads(Isa::Scalar, one(&q), &head16, &mut scalar16);
                // Every other instruction set here (on x86 AVX2 and AVX-512 take the AVX2 core).
                for isa in crate::cpu::available() {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    for (rows, want) in [(&head, &scalar), (&head16, &scalar16)] {
                        let mut got = vec![0f32; d];
                        attend_heads(isa, one(&q), rows, &mut got);
                        assert_eq!(bits(want), bits(&got), "{} d {d}, len {len}", isa.name());
                    }
                }
                // Independent check of the scalar twin: a naive softmax-weighted sum.
                let row = |v: &LayerRows, j: usize| match v {
                    LayerRows::F32(x) => x[j * heads * d + d..][..d].to_vec(),
                    LayerRows::F16(_) => unreachable!(),
                };
                let s: Vec<f64> = (0..len)
                    .map(|j| row(&keys, j).iter().zip(&q).map(|(a, b)| (a * b) as f64).sum::<f64>() * 3.0)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for (i, &got) in scalar.iter().enumerate() {
                    let want: f64 = (0..len).map(|j| e[j] / total * row(&values, j)[i] as f64).sum();
                    assert!((got as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()), "d {d}, len {len}");
                }
            }
        }
    }

    /// A group of query heads read together gives each head the bits it gets alone, on every
    /// core, f32 and f16 rows, lengths with and without a tail of keys and values.
    #[test]
    fn heads_together_are_each_head_alone() {
        let mut seed = 0x1234_5679;
        let (d, n) = (24, 4);
        for len in [1, 3, 4, 7, 12] {
            let keys = random(len * d, &mut seed);
            let values = random(len * d, &mut seed);
            let half = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
            let (keys16, values16) = (half(&keys), half(&values));
            let (keys, values) =
                (LayerRows::F32(Cow::Borrowed(&keys)), LayerRows::F32(Cow::Borrowed(&values)));
            let (keys16, values16) = (LayerRows::F16(&keys16), LayerRows::F16(&values16));
            let qs = random(n * d, &mut seed);
            for (k, v) in [(&keys, &values), (&keys16, &values16)] {
                let head = HeadRows { keys: k, values: v, stride: d, offset: 0 };
                for isa in crate::cpu::available() {
                    let mut together = vec![0f32; n * d];
                    attend_heads(isa, Queries { qs: &qs, d, len, scale: 0.7 }, &head, &mut together);
                    for h in 0..n {
                        let mut alone = vec![0f32; d];
                        attend_heads(
                            isa,
                            Queries { qs: &qs[h * d..(h + 1) * d], d, len, scale: 0.7 },
                            &head,
                            &mut alone,
                        );
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&alone),
                            bits(&together[h * d..(h + 1) * d]),
                            "{} len {len}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_or_zero_is_exp() {
        for x in [-200.0f32, -104.5, -104.0, -103.9, -103.3, -90.0, -87.0, -1.0, 0.0] {
            assert_eq!(exp_or_zero(x).to_bits(), x.exp().to_bits(), "{x}");
        }
    }
}
