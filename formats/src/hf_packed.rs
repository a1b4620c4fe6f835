//! transformers' uint8 packing of ternary weights (`integrations/bitnet.py::pack_weights` /
//! `unpack_weights`), used by the packed Hugging Face repos (2B-4T, Llama3-8B-1.58, Falcon3).
//!
//! A `[out, in]` ternary matrix with R = out/4 is stored as U8 `[R, in]`: byte `P[r, c]` holds
//! rows r, R+r, 2R+r, 3R+r of column c, two bits each, first row block in bits 0-1, codes `t+1`.
//! The packing axis is the *output* axis; unrelated to bitnet.cpp's layouts.

/// Unpacks `[packed_rows, cols]` bytes to `[4*packed_rows, cols]` codes in {-1,0,1}.
/// Fails with the (row, column) of the first code 3, which no ternary weight produces.
pub fn unpack(packed: &[u8], packed_rows: usize, cols: usize) -> Result<Vec<i8>, (usize, usize)> {
    assert_eq!(packed.len(), packed_rows * cols, "packed bytes do not match the shape");
    let mut out = vec![0i8; 4 * packed_rows * cols];
    for (idx, &byte) in packed.iter().enumerate() {
        let (r, c) = (idx / cols, idx % cols);
        for i in 0..4 {
            let code = (byte >> (2 * i)) & 3;
            let row = i * packed_rows + r;
            if code == 3 {
                return Err((row, c));
            }
            out[row * cols + c] = code as i8 - 1;
        }
    }
    Ok(out)
}

/// Packs `[out, cols]` codes (out divisible by 4) the way transformers does.
pub fn pack(codes: &[i8], out_rows: usize, cols: usize) -> Vec<u8> {
    assert!(out_rows.is_multiple_of(4) && codes.len() == out_rows * cols);
    let r_count = out_rows / 4;
    let mut packed = vec![0u8; r_count * cols];
    for (idx, byte) in packed.iter_mut().enumerate() {
        let (r, c) = (idx / cols, idx % cols);
        for i in 0..4 {
            *byte |= ((codes[(i * r_count + r) * cols + c] + 1) as u8) << (2 * i);
        }
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ternary::tests_support::random_codes;

    #[test]
    fn hand_computed_byte() {
        // out = 4, in = 1: rows (+1, 0, -1, +1) → codes 2,1,0,2 → 0b10_00_01_10.
        assert_eq!(pack(&[1, 0, -1, 1], 4, 1), vec![0b1000_0110]);
        assert_eq!(unpack(&[0b1000_0110], 1, 1).unwrap(), vec![1, 0, -1, 1]);
    }

    #[test]
    fn round_trip_and_code_3() {
        let codes = random_codes(12 * 7, 3);
        assert_eq!(unpack(&pack(&codes, 12, 7), 3, 7).unwrap(), codes);
        // Code 3 in bits 4-5 of byte (1, 2): row 2R + 1 = 7, column 2.
        let mut p = pack(&codes, 12, 7);
        p[7 + 2] |= 0b11 << 4;
        assert_eq!(unpack(&p, 3, 7), Err((7, 2)));
    }
}
