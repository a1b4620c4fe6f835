//! bitnet.cpp's TL2 layout (microsoft/BitNet `convert-hf-to-gguf-bitnet.py::
//! preprocess_three_weights_tl2` / `preprocess_two_weights_tl2`, kernels from `codegen_tl2.py`).
//! The first K3 = K − K % BK columns are grouped in triples `c = 9·w0 + 3·w1 + w2` (−13..13): a
//! 4-bit index |c| and a sign bit; the last K2 = K % BK columns use TL1's pair code. The stream is
//! three planes over the whole tensor, then zero padding:
//!
//! ```text
//! PERM = [0, 2, 1, 3]; within 32-row chunks, byte p is row PERM[p/8]·8 + p%8
//! A (M·K3/6):  i0 < M/BM, t0 < K3/BK, r0 < BM/32, t2 < BK/6, p < 32:
//!              row = i0·BM + r0·32 + perm(p), k = t0·BK + t2·6;  byte = |c(k)| << 4 | |c(k+3)|
//! S (M·K3/24): i0, t0, r0, g < BK/24: 16 little-endian u16 words; word u, bit b:
//!              s = 15 − b, row = i0·BM + r0·32 + (s%2)·16 + u, k = t0·BK + g·24 + 3·(s/2);
//!              bit = 1 iff c(k) < 0
//! B (M·K2/4):  i0, j0 < K2/32, r0 < BM/32, j2 < 8, p < 32:
//!              row as in A, k = K3 + j0·32 + j2·4;  byte = pair(k) << 4 | pair(k+2)
//! total = (K−256)·M/3·5/8 + 256·M/2·4/8 (integer division left to right), rest zero
//! ```
//!
//! After the payload: padding to 32 bytes, then (tern) a 32-byte tail holding the f32 scale where
//! bitnet.cpp's kernels read it; tern also writes the `<name>_scale` tensor.

use crate::tiles::Tiles;

const PERM: [usize; 4] = [0, 2, 1, 3];

/// bitnet.cpp's payload size (the padding formula; requires K ≥ 256).
pub fn payload_bytes(m: usize, k: usize) -> usize {
    (k - 256) * m / 3 * 5 / 8 + 256 * m / 2 * 4 / 8
}

/// Offset of the scale: the payload rounded up to 32 bytes.
pub fn scale_offset(m: usize, k: usize) -> usize {
    payload_bytes(m, k).next_multiple_of(32)
}

/// The three planes' byte positions for row blocks `blocks`, as callbacks: `a(i, row, k)` for
/// index bytes, `s(i, bit, row, k)` for sign bits (byte i of the stream, bit 0..8), `b(i, row, k)`
/// for pair bytes. Each plane spans the whole tensor; row block i0 starts at A: i0·BM·K3/6,
/// S: M·K3/6 + i0·BM·K3/24, B: 5·M·K3/24 + i0·BM·K2/4.
pub(crate) fn walk(
    m: usize,
    k: usize,
    t: Tiles,
    blocks: std::ops::Range<usize>,
    mut a: impl FnMut(usize, usize, usize),
    mut s: impl FnMut(usize, u32, usize, usize),
    mut b: impl FnMut(usize, usize, usize),
) {
    let bm_big = t.rows;
    let bk = t.cols;
    let k3 = k - k % bk;
    let k2 = k % bk;
    let perm = |p: usize| PERM[p / 8] * 8 + p % 8;
    for i0 in blocks {
        let mut i = i0 * bm_big * k3 / 6;
        for t0 in 0..k3 / bk {
            for r0 in 0..bm_big / 32 {
                for t2 in 0..bk / 6 {
                    for p in 0..32 {
                        a(i, i0 * bm_big + r0 * 32 + perm(p), t0 * bk + t2 * 6);
                        i += 1;
                    }
                }
            }
        }
        let mut i = m * k3 / 6 + i0 * bm_big * k3 / 24;
        for t0 in 0..k3 / bk {
            for r0 in 0..bm_big / 32 {
                for g in 0..bk / 24 {
                    for u in 0..16 {
                        for bit in 0..16u32 {
                            let sidx = 15 - bit as usize;
                            let row = i0 * bm_big + r0 * 32 + (sidx % 2) * 16 + u;
                            let col = t0 * bk + g * 24 + 3 * (sidx / 2);
                            // Word u is little endian: bits 0-7 in byte 2u, 8-15 in byte 2u+1.
                            s(i + 2 * u + bit as usize / 8, bit % 8, row, col);
                        }
                    }
                    i += 32;
                }
            }
        }
        let mut i = m * k3 / 6 + m * k3 / 24 + i0 * bm_big * k2 / 4;
        for j0 in 0..k2 / 32 {
            for r0 in 0..bm_big / 32 {
                for j2 in 0..8 {
                    for p in 0..32 {
                        b(i, i0 * bm_big + r0 * 32 + perm(p), k3 + j0 * 32 + j2 * 4);
                        i += 1;
                    }
                }
            }
        }
    }
}

/// Decodes row block `i0` (BM rows) into `out` (`BM × k` codes, rows relative to the block).
pub fn decode_row_block(bytes: &[u8], m: usize, k: usize, t: Tiles, i0: usize, out: &mut [i8]) {
    let base = i0 * t.rows;
    let cell = std::cell::RefCell::new(out);
    let set = |r: usize, c: usize, codes: &[i8]| {
        let mut o = cell.borrow_mut();
        o[(r - base) * k + c..][..codes.len()].copy_from_slice(codes);
    };
    walk(
        m,
        k,
        t,
        i0..i0 + 1,
        |i, r, c| {
            set(r, c, &triple_digits(bytes[i] >> 4));
            set(r, c + 3, &triple_digits(bytes[i] & 15));
        },
        |_, _, _, _| {},
        |i, r, c| {
            let (hi, lo) = (bytes[i] >> 4, bytes[i] & 15);
            set(r, c, &[(hi / 3) as i8 - 1, (hi % 3) as i8 - 1, (lo / 3) as i8 - 1, (lo % 3) as i8 - 1]);
        },
    );
    walk(
        m,
        k,
        t,
        i0..i0 + 1,
        |_, _, _| {},
        |i, bit, r, c| {
            if bytes[i] >> bit & 1 == 1 {
                let mut o = cell.borrow_mut();
                o[(r - base) * k + c..][..3].iter_mut().for_each(|v| *v = -*v);
            }
        },
        |_, _, _| {},
    );
}

/// Balanced-ternary digits (w0, w1, w2) of 9·w0 + 3·w1 + w2 = v, for v in 0..=13.
fn triple_digits(v: u8) -> [i8; 3] {
    let mut rest = v as i32;
    let mut d = [0i8; 3];
    for j in (0..3).rev() {
        let digit = ((rest % 3) + 4) % 3 - 1;
        d[j] = digit as i8;
        rest = (rest - digit) / 3;
    }
    d
}

pub fn pack(codes: &[i8], m: usize, k: usize, scale: f32, t: Tiles) -> Vec<u8> {
    use rayon::prelude::*;
    assert_eq!(codes.len(), m * k);
    let off = scale_offset(m, k);
    let w = |r: usize, c: usize| codes[r * k + c] as i32;
    let triple = |r: usize, c: usize| 9 * w(r, c) + 3 * w(r, c + 1) + w(r, c + 2);
    let pair = |r: usize, c: usize| (3 * w(r, c) + w(r, c + 1) + 4) as u8;
    // Row block i0 owns one run of each plane (see `walk`), so the blocks pack on every thread,
    // each into its own three runs, copied into place after.
    let (k3, k2) = (k - k % t.cols, k % t.cols);
    let lens = [t.rows * k3 / 6, t.rows * k3 / 24, t.rows * k2 / 4];
    let plane_starts = [0, m * k3 / 6, m * k3 / 6 + m * k3 / 24];
    let start = |i0: usize, plane: usize| plane_starts[plane] + i0 * lens[plane];
    let runs: Vec<[Vec<u8>; 3]> = (0..m / t.rows)
        .into_par_iter()
        .map(|i0| {
            let runs = std::cell::RefCell::new(lens.map(|n| vec![0u8; n]));
            walk(
                m,
                k,
                t,
                i0..i0 + 1,
                |i, r, c| {
                    runs.borrow_mut()[0][i - start(i0, 0)] =
                        (triple(r, c).unsigned_abs() as u8) << 4 | triple(r, c + 3).unsigned_abs() as u8
                },
                |i, bit, r, c| {
                    if triple(r, c) < 0 {
                        runs.borrow_mut()[1][i - start(i0, 1)] |= 1 << bit;
                    }
                },
                |i, r, c| runs.borrow_mut()[2][i - start(i0, 2)] = pair(r, c) << 4 | pair(r, c + 2),
            );
            runs.into_inner()
        })
        .collect();
    let mut bytes = vec![0u8; off + 32];
    for (i0, block) in runs.iter().enumerate() {
        for (plane, run) in block.iter().enumerate() {
            bytes[start(i0, plane)..][..run.len()].copy_from_slice(run);
        }
    }
    bytes[off..off + 4].copy_from_slice(&scale.to_le_bytes());
    bytes
}

/// Checks what [`unpack`] checks — the size, index bytes above 13 in plane A, pair bytes above
/// 8 in plane B — without decoding: the planes are contiguous, so one pass over each (a model
/// load checks every TL2 tensor this way).
pub fn validate(bytes: &[u8], m: usize, k: usize, t: Tiles) -> Result<(), String> {
    let (k3, k2) = (k - k % t.cols, k % t.cols);
    let (a_end, b_start) = (m * k3 / 6, 5 * m * k3 / 24);
    let fits = bytes.len() >= scale_offset(m, k) + 4 && b_start + m * k2 / 4 <= bytes.len();
    let above = |plane: &[u8], max: u8| plane.iter().any(|&b| b >> 4 > max || b & 15 > max);
    if fits && !above(&bytes[..a_end], 13) && !above(&bytes[b_start..b_start + m * k2 / 4], 8) {
        return Ok(());
    }
    // The slow path names the row and column.
    unpack(bytes, m, k, t).map(|_| ())
}

pub fn unpack(bytes: &[u8], m: usize, k: usize, t: Tiles) -> Result<(Vec<i8>, f32), String> {
    let off = scale_offset(m, k);
    if bytes.len() < off + 4 {
        return Err(format!("TL2 tensor of {m}x{k} needs {} bytes, found {}", off + 4, bytes.len()));
    }
    // Indices a packer never writes: above 13 in the index plane, above 8 in the pair tail.
    let bad = std::cell::RefCell::new(None);
    let flag = |msg: String| {
        bad.borrow_mut().get_or_insert(msg);
    };
    walk(
        m,
        k,
        t,
        0..m / t.rows,
        |i, r, c| {
            if bytes[i] >> 4 > 13 || bytes[i] & 15 > 13 {
                flag(format!("invalid TL2 index byte {:#04x} at row {r}, column {c}", bytes[i]));
            }
        },
        |_, _, _, _| {},
        |i, r, c| {
            if bytes[i] >> 4 > 8 || bytes[i] & 15 > 8 {
                flag(format!("invalid TL2 pair byte {:#04x} at row {r}, column {c}", bytes[i]));
            }
        },
    );
    let mut codes = vec![0i8; m * k];
    for (i0, block) in codes.chunks_exact_mut(t.rows * k).enumerate() {
        decode_row_block(bytes, m, k, t, i0, block);
    }
    if let Some(e) = bad.into_inner() {
        return Err(e);
    }
    let s = &bytes[off..off + 4];
    Ok((codes, f32::from_le_bytes([s[0], s[1], s[2], s[3]])))
}
