//! llama.cpp's TQ2_0 (GGML type 35; `ggml-common.h::block_tq2_0`, `ggml-quants.c::
//! quantize_row_tq2_0_ref`): blocks of 256 weights in 66 bytes, `qs[64]` then an f16 scale `d`.
//! Byte `qs[32h + m]` (h ∈ {0,1}, m < 32) holds weights 128h + m + 32l in bits 2l..2l+1
//! (l = 0 in the low bits), code `t + 1`. Rows must be whole blocks (K % 256 == 0).
//!
//! Scales: llama.cpp's quantiser stores `d = f16(max |x|)` per block, i.e. f16(β) for a ternary
//! tensor's non-zero blocks and 0 for all-zero blocks; tern does the same (byte-identical with
//! llama.cpp's and gguf-py's quantisers on β·t) and keeps the exact f32 β in its own metadata.

use half::f16;

pub const BLOCK: usize = 256;
pub const BLOCK_BYTES: usize = 66;

pub fn tensor_bytes(m: usize, k: usize) -> usize {
    m * k / BLOCK * BLOCK_BYTES
}

/// Packs ternary codes with per-tensor scale β (see module docs for `d`).
pub fn pack(codes: &[i8], m: usize, k: usize, scale: f32) -> Vec<u8> {
    assert!(codes.len() == m * k && k.is_multiple_of(BLOCK), "TQ2_0 needs rows of whole 256-weight blocks");
    let mut out = vec![0u8; tensor_bytes(m, k)];
    // Blocks are independent: packed on every thread, a run of them per task.
    let run = |(src, dst): (&[i8], &mut [u8])| {
        for (block, dst) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
            for h in 0..2 {
                for mm in 0..32 {
                    dst[32 * h + mm] =
                        (0..4).map(|l| ((block[128 * h + mm + 32 * l] + 1) as u8) << (2 * l)).sum();
                }
            }
            let d = if block.iter().any(|&t| t != 0) { f16::from_f32(scale) } else { f16::ZERO };
            dst[64..66].copy_from_slice(&d.to_le_bytes());
        }
    };
    use rayon::prelude::*;
    const RUN: usize = 64;
    codes.par_chunks(RUN * BLOCK).zip(out.par_chunks_mut(RUN * BLOCK_BYTES)).for_each(run);
    out
}

/// Codes of one block, in natural order.
pub fn decode_block(block: &[u8], out: &mut [i8]) -> Result<(), String> {
    for h in 0..2 {
        for mm in 0..32 {
            let byte = block[32 * h + mm];
            for l in 0..4 {
                let c = (byte >> (2 * l)) & 3;
                if c == 3 {
                    return Err(format!("invalid TQ2_0 code 3 for weight {}", 128 * h + mm + 32 * l));
                }
                out[128 * h + mm + 32 * l] = c as i8 - 1;
            }
        }
    }
    Ok(())
}

/// Codes and the largest block scale (β for tern's files).
pub fn unpack(bytes: &[u8], m: usize, k: usize) -> Result<(Vec<i8>, f32), String> {
    if !k.is_multiple_of(BLOCK) || bytes.len() != tensor_bytes(m, k) {
        return Err(format!(
            "TQ2_0 tensor of {m}x{k} needs {} bytes in whole blocks, found {}",
            tensor_bytes(m, k),
            bytes.len()
        ));
    }
    let mut codes = vec![0i8; m * k];
    let mut scale = 0f32;
    for (i, (src, dst)) in bytes.chunks_exact(BLOCK_BYTES).zip(codes.chunks_exact_mut(BLOCK)).enumerate() {
        decode_block(src, dst).map_err(|e| format!("block {i}: {e}"))?;
        scale = scale.max(f16::from_le_bytes([src[64], src[65]]).to_f32());
    }
    Ok((codes, scale))
}
