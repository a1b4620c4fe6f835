//! bitnet.cpp's TL1 layout (microsoft/BitNet `convert-hf-to-gguf-bitnet.py::process_tl1`,
//! kernels from `codegen_tl1.py`): pairs of weights (w0 at the lower column) become the 4-bit
//! index `3·w0 + w1 + 4` (0..8); each byte holds two pairs — four consecutive weights of one row,
//! high nibble first — and bytes are re-tiled so 16 consecutive bytes are 16 consecutive rows:
//!
//! ```text
//! for i0 < M/BM, j0 < K/BK, r0 < BM/bm, j2 < BK/by, r2 < bm/16, j4 < by/4, r3 < 16:   (by = 256/bm)
//!     row = i0·BM + r0·bm + r2·16 + r3,  k = j0·BK + j2·by + j4·4
//!     byte = pair(k, k+1) << 4 | pair(k+2, k+3)
//! ```
//!
//! M·K/4 packed bytes, then (tern) a 32-byte tail with the f32 scale where bitnet.cpp's kernels
//! read it (`data + M·K/4`); tern also writes the `<name>_scale` tensor bitnet.cpp's converter
//! writes. Byte-exact against bitnet.cpp's vectors (tests/bitnet_cpp_vectors.rs).

use crate::tiles::Tiles;

/// Calls `f(byte index, row, k)` for every packed byte, in file order.
fn for_each_byte(m: usize, k: usize, t: Tiles, mut f: impl FnMut(usize, usize, usize)) {
    for i0 in 0..m / t.rows {
        for_each_byte_of_block(k, t, i0, &mut f);
    }
}

/// The same for the bytes of row block `i0` (rows `i0·BM..`), which are contiguous: the one
/// place that spells out the order, for readers that decode a block their own way.
pub fn for_each_byte_of_block(k: usize, t: Tiles, i0: usize, f: &mut impl FnMut(usize, usize, usize)) {
    let (bm_big, bk, bm) = (t.rows, t.cols, t.sub_rows);
    let by = 256 / bm;
    let mut i = i0 * bm_big * k / 4;
    {
        for j0 in 0..k / bk {
            for r0 in 0..bm_big / bm {
                for j2 in 0..bk / by {
                    for r2 in 0..bm / 16 {
                        for j4 in 0..by / 4 {
                            for r3 in 0..16 {
                                f(i, i0 * bm_big + r0 * bm + r2 * 16 + r3, j0 * bk + j2 * by + j4 * 4);
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packed bytes without the scale tail.
pub fn payload_bytes(m: usize, k: usize) -> usize {
    m * k / 4
}

pub fn pack(codes: &[i8], m: usize, k: usize, scale: f32, t: Tiles) -> Vec<u8> {
    assert_eq!(codes.len(), m * k);
    let mut out = vec![0u8; payload_bytes(m, k) + 32];
    let pair = |r: usize, c: usize| (3 * codes[r * k + c] + codes[r * k + c + 1] + 4) as u8;
    for_each_byte(m, k, t, |i, r, c| out[i] = pair(r, c) << 4 | pair(r, c + 2));
    out[payload_bytes(m, k)..][..4].copy_from_slice(&scale.to_le_bytes());
    out
}

/// Decodes row block `i0` (BM rows) into `out` (`BM × k` codes, row-major, rows relative to the
/// block). Indices above 8 (never written by a packer) decode as some pair; `unpack` rejects them.
pub fn decode_row_block(bytes: &[u8], k: usize, t: Tiles, i0: usize, out: &mut [i8]) {
    let base = i0 * t.rows;
    for_each_byte_of_block(k, t, i0, &mut |i, r, c| {
        let row = &mut out[(r - base) * k..][..k];
        for (nibble, col) in [(bytes[i] >> 4, c), (bytes[i] & 15, c + 2)] {
            row[col] = (nibble / 3) as i8 - 1;
            row[col + 1] = (nibble % 3) as i8 - 1;
        }
    });
}

/// Checks what [`unpack`] checks — the size, and that no index is above 8 — without decoding:
/// one pass over the payload (a model load checks every TL1 tensor this way).
pub fn validate(bytes: &[u8], m: usize, k: usize, t: Tiles) -> Result<(), String> {
    let payload = bytes.get(..payload_bytes(m, k) + 4).map(|b| &b[..payload_bytes(m, k)]);
    match payload {
        Some(p) if !p.iter().any(|&b| b >> 4 > 8 || b & 15 > 8) => Ok(()),
        // The slow path names the row and column.
        _ => unpack(bytes, m, k, t).map(|_| ()),
    }
}

pub fn unpack(bytes: &[u8], m: usize, k: usize, t: Tiles) -> Result<(Vec<i8>, f32), String> {
    if bytes.len() < payload_bytes(m, k) + 4 {
        return Err(format!(
            "TL1 tensor of {m}x{k} needs {} bytes, found {}",
            payload_bytes(m, k) + 4,
            bytes.len()
        ));
    }
    let mut codes = vec![0i8; m * k];
    let mut bad = None;
    for_each_byte(m, k, t, |i, r, c| {
        for (nibble, col) in [(bytes[i] >> 4, c), (bytes[i] & 15, c + 2)] {
            if nibble > 8 {
                bad.get_or_insert(format!("invalid TL1 index {nibble} at row {r}, column {col}"));
            }
            codes[r * k + col] = (nibble / 3) as i8 - 1;
            codes[r * k + col + 1] = (nibble % 3) as i8 - 1;
        }
    });
    if let Some(e) = bad {
        return Err(e);
    }
    let s = &bytes[payload_bytes(m, k)..][..4];
    Ok((codes, f32::from_le_bytes([s[0], s[1], s[2], s[3]])))
}
