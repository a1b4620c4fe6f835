//! llama.cpp's TQ1_0 (GGML type 34; `ggml-common.h::block_tq1_0`, `ggml-quants.c::
//! quantize_row_tq1_0_ref`): blocks of 256 weights in 54 bytes, `qs[48] | qh[4] | d: f16`, five
//! trits per byte in base 3 (1.6875 bits per weight). With codes c = t + 1 and element m + 32n
//! as digit n (n = 0 most significant):
//!
//! - `qs[m]`, m < 32: elements m + 32n, n = 0..5 (elements 0..160);
//! - `qs[32 + m]`, m < 16: elements 160 + m + 16n, n = 0..5 (160..240);
//! - `qh[j]`, j < 4: elements 240 + j + 4n, n = 0..4 as digits 81, 27, 9, 3 (the fifth digit 0);
//!
//! each base-3 value v stored as ⌈v·256/243⌉ so digit n decodes as `((b·3ⁿ mod 256)·3) >> 8`.
//! Scales as in TQ2_0 (per-block f16 `d`, 0 for all-zero blocks).

use half::f16;

pub const BLOCK: usize = 256;
pub const BLOCK_BYTES: usize = 54;

pub fn tensor_bytes(m: usize, k: usize) -> usize {
    m * k / BLOCK * BLOCK_BYTES
}

/// (byte, element of digit 0, stride between digits, digits) for the 52 trit bytes of a block:
/// the one place that spells out the order, for readers that decode a block their own way.
pub fn groups() -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..32)
        .map(|m| (m, m, 32, 5))
        .chain((0..16).map(|m| (32 + m, 160 + m, 16, 5)))
        .chain((0..4).map(|j| (48 + j, 240 + j, 4, 4)))
}

pub fn pack(codes: &[i8], m: usize, k: usize, scale: f32) -> Vec<u8> {
    assert!(codes.len() == m * k && k.is_multiple_of(BLOCK), "TQ1_0 needs rows of whole 256-weight blocks");
    let mut out = vec![0u8; tensor_bytes(m, k)];
    // Blocks are independent: packed on every thread, a run of them per task.
    let run = |(src, dst): (&[i8], &mut [u8])| {
        for (block, dst) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
            for (byte, first, stride, digits) in groups() {
                let mut v: u32 = (0..digits).fold(0, |v, n| v * 3 + (block[first + stride * n] + 1) as u32);
                v *= 3u32.pow(5 - digits as u32);
                dst[byte] = (v * 256).div_ceil(243) as u8;
            }
            let d = if block.iter().any(|&t| t != 0) { f16::from_f32(scale) } else { f16::ZERO };
            dst[52..54].copy_from_slice(&d.to_le_bytes());
        }
    };
    use rayon::prelude::*;
    const RUN: usize = 64;
    codes.par_chunks(RUN * BLOCK).zip(out.par_chunks_mut(RUN * BLOCK_BYTES)).for_each(run);
    out
}

/// Codes of one block, in natural order. Every byte decodes to some trits, so there is nothing
/// to reject; re-packing detects non-canonical bytes.
pub fn decode_block(block: &[u8], out: &mut [i8]) {
    for (byte, first, stride, digits) in groups() {
        let b = block[byte];
        let mut pow = 1u16;
        for n in 0..digits {
            let q = (b as u16 * pow) & 0xFF;
            out[first + stride * n] = ((q * 3) >> 8) as i8 - 1;
            pow *= 3;
        }
    }
}

pub fn unpack(bytes: &[u8], m: usize, k: usize) -> Result<(Vec<i8>, f32), String> {
    if !k.is_multiple_of(BLOCK) || bytes.len() != tensor_bytes(m, k) {
        return Err(format!(
            "TQ1_0 tensor of {m}x{k} needs {} bytes in whole blocks, found {}",
            tensor_bytes(m, k),
            bytes.len()
        ));
    }
    let mut codes = vec![0i8; m * k];
    let mut scale = 0f32;
    for (src, dst) in bytes.chunks_exact(BLOCK_BYTES).zip(codes.chunks_exact_mut(BLOCK)) {
        decode_block(src, dst);
        scale = scale.max(f16::from_le_bytes([src[52], src[53]]).to_f32());
    }
    Ok((codes, scale))
}
