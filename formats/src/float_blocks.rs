//! llama.cpp's block-quantised float types for embeddings and output heads: decoding F32, F16,
//! BF16, Q8_0, Q4_0 and Q6_K rows (what other tools store: llama-quantize picks Q6_K or Q8_0 for a
//! tied embedding), and encoding Q8_0 and Q4_0 rows (`tern convert --output-type`).
//!
//! Decoders use llama.cpp's arithmetic in its order of operations (`d · scale · q` left to right),
//! so values agree bit for bit with ggml's and gguf-py's dequantisers; encoders follow ggml's
//! reference quantisers (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`).

use crate::TensorType;
use half::f16;

/// Q8_0: blocks of 32 int8 with one f16 scale (34 bytes).
pub const Q8_0_BYTES: usize = 34;
/// Q4_0: blocks of 32 4-bit values with one f16 scale: element j in the low nibble of byte j,
/// element j + 16 in its high nibble, value = d · (q − 8) (18 bytes).
pub const Q4_0_BYTES: usize = 18;
/// Q6_K: super-blocks of 256: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8
/// sub-block scales, f16 d (210 bytes).
const Q6_K_BYTES: usize = 210;

/// True for the types [`dequantize_row`] decodes.
pub fn is_supported(ty: TensorType) -> bool {
    matches!(
        ty,
        TensorType::F32
            | TensorType::F16
            | TensorType::BF16
            | TensorType::Q8_0
            | TensorType::Q4_0
            | TensorType::Q6K
    )
}

/// Decodes one row of `out.len()` elements from `bytes` (exactly that row's bytes).
pub fn dequantize_row(ty: TensorType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let expected = ty.byte_size(&[out.len() as u64])?;
    if bytes.len() as u64 != expected {
        return Err(format!(
            "a {ty} row of {} elements takes {expected} bytes, got {}",
            out.len(),
            bytes.len()
        ));
    }
    match ty {
        TensorType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        TensorType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        TensorType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        TensorType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(Q8_0_BYTES)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for (v, &q) in o.iter_mut().zip(&b[2..]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        TensorType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(Q4_0_BYTES)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..16 {
                    o[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
                    o[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        TensorType::Q6K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(Q6_K_BYTES)) {
                q6_k_block(b, o);
            }
        }
        other => return Err(format!("tern cannot decode {other} tensors")),
    }
    Ok(())
}

/// The types [`quantize_row`] writes.
pub fn is_writable(ty: TensorType) -> bool {
    matches!(ty, TensorType::F32 | TensorType::F16 | TensorType::Q8_0 | TensorType::Q4_0)
}

/// Why [`quantize_row`] refused its input: one value (its index in the row) or the row's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeError {
    pub index: Option<usize>,
    /// What is wrong, worded to follow "value #index" when there is an index.
    pub message: String,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "value #{i} {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Encodes one row (a multiple of 32 elements for Q8_0/Q4_0); appends to `out`. F16 refuses
/// values it cannot hold; non-finite values are refused for every type.
pub fn quantize_row(ty: TensorType, values: &[f32], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let bad = |i: usize, message: String| EncodeError { index: Some(i), message };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(i, format!("is {}", values[i])));
    }
    match ty {
        TensorType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        TensorType::F16 => {
            if let Some(i) = values.iter().position(|v| v.abs() > f16::MAX.to_f32()) {
                return Err(bad(i, format!("= {} does not fit in f16", values[i])));
            }
            out.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
        }
        TensorType::Q8_0 | TensorType::Q4_0 if !values.len().is_multiple_of(32) => {
            let message = format!("{ty} needs rows of whole 32-element blocks, got {}", values.len());
            return Err(EncodeError { index: None, message });
        }
        TensorType::Q8_0 => {
            for x in values.chunks_exact(32) {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                // C's roundf: half away from zero.
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        TensorType::Q4_0 => {
            for x in values.chunks_exact(32) {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
        }
        other => {
            return Err(EncodeError { index: None, message: format!("tern cannot write {other} tensors") });
        }
    }
    Ok(())
}

/// One Q6_K super-block: two halves of 128; in each, 32 lanes l give four 6-bit values
/// (low nibbles of ql[l], ql[l+32], high nibbles of both; 2-bit highs from qh[l]) minus 32,
/// each scaled by its 16-element sub-block's int8 scale and d.
fn q6_k_block(b: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut out[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (sc[is + k] as i8) as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q6_K block built by hand: every 6-bit value and scale chosen so each output element is
    /// predictable from its index.
    #[test]
    fn q6_k_hand_built_block() {
        let mut b = vec![0u8; Q6_K_BYTES];
        // Element e of the block gets the 6-bit value (e % 64); sub-block s (16 elements) scale s+1.
        let mut want = vec![0f32; 256];
        for (e, w) in want.iter_mut().enumerate() {
            let (half, r) = (e / 128, e % 128);
            let (quarter, l) = (r / 32, r % 32);
            let q = (e % 64) as u8;
            let ql = half * 64 + l + if quarter % 2 == 1 { 32 } else { 0 };
            b[ql] |= if quarter >= 2 { (q & 0xF) << 4 } else { q & 0xF };
            b[128 + half * 32 + l] |= (q >> 4) << (2 * quarter);
            *w = 0.5 * ((e / 16) as f32 + 1.0) * (q as f32 - 32.0);
        }
        for s in 0..16 {
            b[192 + s] = (s + 1) as u8;
        }
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let mut out = vec![0f32; 256];
        dequantize_row(TensorType::Q6K, &b, &mut out).unwrap();
        assert_eq!(out, want);
    }

    #[test]
    fn q8_0_and_q4_0_round_trip_within_a_step() {
        let values: Vec<f32> = (0..96).map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.173).collect();
        // Q8_0 rounds to nearest; Q4_0 maps the largest magnitude to -8, so values of the other
        // sign reach only +7 and may lose a whole step (as ggml's quantiser).
        for (ty, levels, steps) in [(TensorType::Q8_0, 127.0, 0.5), (TensorType::Q4_0, 8.0, 1.0)] {
            let mut bytes = Vec::new();
            quantize_row(ty, &values, &mut bytes).unwrap();
            assert_eq!(bytes.len() as u64, ty.byte_size(&[96]).unwrap());
            let mut back = vec![0f32; 96];
            dequantize_row(ty, &bytes, &mut back).unwrap();
            for (block, (x, y)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a step (Q4_0: a step), plus the f16 rounding of d.
                let step = amax / levels;
                for (a, b) in x.iter().zip(y) {
                    assert!(
                        (a - b).abs() <= steps * step * 1.01 + amax * 1e-3,
                        "{ty} block {block}: {a} vs {b}"
                    );
                }
            }
        }
        // Hand-computed Q4_0 block: max -8 → d = 1, every value exact.
        let x: Vec<f32> = (0..32).map(|i| (i % 16) as f32 - 8.0).collect();
        let mut bytes = Vec::new();
        quantize_row(TensorType::Q4_0, &x, &mut bytes).unwrap();
        assert_eq!(&bytes[..2], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(bytes[2], 0x00);
        assert_eq!(bytes[17], 0xFF);
        assert!(quantize_row(TensorType::Q8_0, &[f32::NAN; 32], &mut bytes).is_err());
        assert!(quantize_row(TensorType::Q4_0, &[1.0; 20], &mut bytes).is_err());
    }

    #[test]
    fn q8_0_and_wrong_sizes() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        for i in 0..32 {
            b[2 + i] = (i as i8 - 16) as u8;
        }
        let mut out = vec![0f32; 32];
        dequantize_row(TensorType::Q8_0, &b, &mut out).unwrap();
        assert_eq!(out, (0..32).map(|i| 0.25 * (i as f32 - 16.0)).collect::<Vec<_>>());
        assert!(dequantize_row(TensorType::Q8_0, &b[..33], &mut out).is_err());
        assert!(dequantize_row(TensorType::Q6K, &b, &mut out).is_err());
        assert!(dequantize_row(TensorType::Q4K, &[0; 144], &mut [0.0; 256]).is_err());
    }
}
