//! bitnet.cpp's I2_S layout, x86 `ACT_PARALLEL` build (microsoft/BitNet
//! `utils/convert-hf-to-gguf-bitnet.py::quantize_to_i2_s`, `src/ggml-bitnet-mad.cpp`).
//!
//! - Codes: 0 → −1, 1 → 0, 2 → +1 (3 never occurs and is rejected when reading).
//! - The row-major tensor is cut into 128-weight blocks of 32 bytes; byte p of a block holds
//!   weight p in bits 7-6, weight 32+p in bits 5-4, weight 64+p in bits 3-2, weight 96+p in
//!   bits 1-0.
//! - After the packed bytes, a 32-byte tail: the f32 scale β (little endian), then 28 zeros.
//!
//! **Rows whose length K is not a multiple of 128** (tern's rule, docs/formats.md): every row is
//! padded to whole blocks with zero weights, so blocks never straddle rows and the kernels need
//! no special case. For K % 128 == 0 — every real BitNet model — this is byte-identical to
//! bitnet.cpp; for other K bitnet.cpp has no kernel anyway, and tern warns at conversion.

pub const BLOCK: usize = 128;
pub const BLOCK_BYTES: usize = 32;
pub const TAIL_BYTES: usize = 32;

/// Bytes per packed row (padded to whole blocks).
pub fn row_bytes(cols: usize) -> usize {
    cols.div_ceil(BLOCK) * BLOCK_BYTES
}

/// Total tensor bytes including the scale tail.
pub fn tensor_bytes(rows: usize, cols: usize) -> usize {
    rows * row_bytes(cols) + TAIL_BYTES
}

/// Packs ternary `codes` (row-major `[rows, cols]`, values in {-1,0,1}) with scale β.
pub fn pack(codes: &[i8], rows: usize, cols: usize, scale: f32) -> Vec<u8> {
    let mut out = vec![0u8; tensor_bytes(rows, cols)];
    pack_into(codes, rows, cols, scale, &mut out);
    out
}

/// [`pack`] into `out`, which holds `tensor_bytes(rows, cols)` bytes (a buffer the caller owns,
/// e.g. one of a model's arena), every row on its own thread task.
pub fn pack_into(codes: &[i8], rows: usize, cols: usize, scale: f32, out: &mut [u8]) {
    use rayon::prelude::*;
    assert_eq!(codes.len(), rows * cols, "codes do not match the shape");
    assert_eq!(out.len(), tensor_bytes(rows, cols), "the output does not match the shape");
    let rb = row_bytes(cols);
    let (body, tail) = out.split_at_mut(rows * rb);
    body.par_chunks_mut(rb.max(1))
        .zip(codes.par_chunks(cols.max(1)))
        .for_each(|(dst, row)| pack_row(row, dst));
    tail.fill(0);
    tail[..4].copy_from_slice(&scale.to_le_bytes());
}

/// One row's codes (values in {-1,0,1}) into its `row_bytes(row.len())` bytes, padding weights 0.
pub fn pack_row(row: &[i8], dst: &mut [u8]) {
    // Whole blocks straight from the row (loops the compiler vectorises; a bounds check per
    // weight made this most of a model's load), then the last, partial block from a copy padded
    // with weights 0.
    let mut blocks = row.chunks_exact(BLOCK);
    let mut out = dst.chunks_exact_mut(BLOCK_BYTES);
    for (block, out) in (&mut blocks).zip(&mut out) {
        pack_block(block, out);
    }
    let rest = blocks.remainder();
    if let (false, Some(out)) = (rest.is_empty(), out.next()) {
        let mut block = [0i8; BLOCK];
        block[..rest.len()].copy_from_slice(rest);
        pack_block(&block, out);
    }
    // Any whole blocks of padding beyond: weights 0, code 1 in every field.
    out.for_each(|b| b.fill(0b0101_0101));
}

/// One block of 128 codes into its 32 bytes: four 32-code pieces zipped, so no index is checked.
#[inline]
fn pack_block(block: &[i8], out: &mut [u8]) {
    let code = |w: i8| (w + 1) as u8;
    let (q0, rest) = block.split_at(32);
    let (q1, rest) = rest.split_at(32);
    let (q2, q3) = rest.split_at(32);
    for ((((byte, &a), &b), &c), &d) in out.iter_mut().zip(q0).zip(q1).zip(q2).zip(q3) {
        *byte = code(a) << 6 | code(b) << 4 | code(c) << 2 | code(d);
    }
}

/// Unpacks an I2_S tensor into codes and its scale; rejects wrong sizes, code 3 and non-zero
/// padding weights.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, f32), String> {
    let rb = row_bytes(cols);
    if bytes.len() != tensor_bytes(rows, cols) {
        return Err(format!(
            "I2_S tensor of {rows}x{cols} needs {} bytes, found {}",
            tensor_bytes(rows, cols),
            bytes.len()
        ));
    }
    let mut codes = vec![0i8; rows * cols];
    for r in 0..rows {
        let src = &bytes[r * rb..(r + 1) * rb];
        for (i, slot) in (0..rb * 4).map(|i| (i, code_at(src, i))) {
            match (slot, i < cols) {
                (3, _) => return Err(format!("invalid code 3 at row {r}, column {i}")),
                (c, true) => codes[r * cols + i] = c as i8 - 1,
                (1, false) => {}
                (_, false) => return Err(format!("non-zero padding weight at row {r}, column {i}")),
            }
        }
    }
    let tail = &bytes[rows * rb..];
    let scale = f32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    Ok((codes, scale))
}

/// The 2-bit code of weight `i` of a packed row.
#[inline]
pub fn code_at(row: &[u8], i: usize) -> u8 {
    let block = i / BLOCK;
    let within = i % BLOCK;
    let byte = row[block * BLOCK_BYTES + within % 32];
    (byte >> (6 - 2 * (within / 32))) & 3
}

/// Reads only the scale of a packed tensor.
pub fn scale(bytes: &[u8], rows: usize, cols: usize) -> Option<f32> {
    let start = rows.checked_mul(row_bytes(cols))?;
    let s = bytes.get(start..start + 4)?;
    Some(f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ternary::tests_support::random_codes;

    #[test]
    fn hand_packed_block() {
        // Weight 0 = +1 (code 2), weight 32 = -1 (code 0), weight 64 = 0, weight 96 = +1.
        let mut codes = vec![0i8; 128];
        codes[0] = 1;
        codes[32] = -1;
        codes[96] = 1;
        let bytes = pack(&codes, 1, 128, 2.0);
        assert_eq!(bytes.len(), 64);
        assert_eq!(bytes[0], 0b10_00_01_10);
        assert_eq!(bytes[1], 0b01_01_01_01);
        assert_eq!(&bytes[32..36], &2.0f32.to_le_bytes());
        assert!(bytes[36..].iter().all(|&b| b == 0));
    }

    #[test]
    fn unpack_inverts_pack_on_awkward_shapes() {
        for (rows, cols, seed) in [(1, 1, 1), (3, 96, 2), (5, 128, 3), (7, 320, 4), (4, 864, 5), (2, 257, 6)]
        {
            let codes = random_codes(rows * cols, seed);
            let bytes = pack(&codes, rows, cols, 0.75);
            assert_eq!(bytes.len(), tensor_bytes(rows, cols));
            let (back, scale) = unpack(&bytes, rows, cols).unwrap();
            assert_eq!(back, codes, "{rows}x{cols}");
            assert_eq!(scale, 0.75);
        }
    }

    #[test]
    fn unpack_rejects_code_3_and_bad_padding() {
        let codes = random_codes(2 * 96, 9);
        let mut bytes = pack(&codes, 2, 96, 1.0);
        let mut bad = bytes.clone();
        bad[5] |= 0b11 << 6;
        assert!(unpack(&bad, 2, 96).unwrap_err().contains("code 3"));
        // Weight 100 of row 0 is padding (K = 96): code 2 there must be refused.
        bytes[100 % 32] = (bytes[100 % 32] & !0b11) | 0b10;
        assert!(unpack(&bytes, 2, 96).unwrap_err().contains("padding"));
        assert!(unpack(&bytes[1..], 2, 96).is_err());
    }
}
