//! The ternary codes and per-tensor scale β of one projection, whatever the checkpoint form:
//! float master weights are ternarised exactly as transformers does (absmean), packed U8 weights
//! are unpacked and validated, and `weight_scale` is turned into β per the quantisation mode.
//! Used by the converter and by the reference forward pass, so both see the same weights.

use crate::Result;
use crate::model::QuantMode;
use tern_formats::hf::HfCheckpoint;
use tern_formats::safetensors_file::Dtype;
use tern_formats::{hf_packed, ternary};

#[derive(Debug, Clone)]
pub struct TernaryWeight {
    /// Row-major `[rows, cols]`, values in {-1, 0, 1}.
    pub codes: Vec<i8>,
    /// W ≈ β · codes.
    pub beta: f32,
    /// The scale as the checkpoint states it: β for master weights, the raw `weight_scale` for
    /// packed ones (= β when multiplied, 1/β when divided). The reference forward uses it in
    /// exactly the arithmetic transformers does.
    pub source_scale: f32,
    pub rows: usize,
    pub cols: usize,
}

/// β of projection `name` without ternarising it: absmean of the master weights, or from
/// `weight_scale` (the same values [`load_ternary`] returns).
pub fn beta(ckpt: &HfCheckpoint, name: &str, mode: QuantMode) -> Result<f32> {
    if mode == QuantMode::Online {
        // Piece by piece, and the pages let go after: β of every projection is needed before the
        // header, and holding the whole checkpoint resident (or one tensor as f32) is not.
        let t = ckpt.require(name)?;
        let mut mean = ternary::AbsMean::default();
        t.for_each_f32_chunk(1 << 20, |piece| {
            mean.add(piece);
            Ok(())
        })?;
        #[cfg(unix)]
        t.release();
        return Ok(mean.value());
    }
    let (ws, _) = weight_scale(ckpt, name)?;
    Ok(if mode == QuantMode::OfflineMultiply { ws } else { 1.0 / ws })
}

/// A packed projection's `weight_scale`, validated, and the tensor it came from.
fn weight_scale(ckpt: &HfCheckpoint, name: &str) -> Result<(f32, String)> {
    let scale_name = format!("{name}_scale");
    let s = ckpt.require(&scale_name)?;
    if s.info.elements() != 1 || s.info.shape.len() > 1 {
        return Err(s.error(format!("shape {:?}, expected a single value ([] or [1])", s.info.shape)).into());
    }
    let ws = s.to_f32()?[0];
    if ws <= 0.0 {
        return Err(s.error(format!("weight_scale is {ws}; it must be positive")).into());
    }
    Ok((ws, scale_name))
}

/// Loads projection `name` (shape already checked by `ModelSpec`) as ternary codes + β.
pub fn load_ternary(
    ckpt: &HfCheckpoint,
    name: &str,
    rows: usize,
    cols: usize,
    mode: QuantMode,
) -> Result<TernaryWeight> {
    load_ternary_with(ckpt, name, rows, cols, mode, &mut Vec::new())
}

/// [`load_ternary`] with a reused f32 buffer for master weights (conversion streams tensor after
/// tensor; a fresh 70 MB buffer per projection costs a page fault per 4 KB).
pub fn load_ternary_with(
    ckpt: &HfCheckpoint,
    name: &str,
    rows: usize,
    cols: usize,
    mode: QuantMode,
    scratch: &mut Vec<f32>,
) -> Result<TernaryWeight> {
    let t = ckpt.require(name)?;
    if mode == QuantMode::Online {
        t.to_f32_into(scratch)?;
        let values = &scratch[..];
        let beta = ternary::absmean(values);
        let codes = ternary::ternarise(values, beta);
        return Ok(TernaryWeight { codes, beta, source_scale: beta, rows, cols });
    }
    if t.info.dtype != Dtype::U8 {
        return Err(t.error(format!("dtype {:?} in a packed checkpoint, expected U8", t.info.dtype)).into());
    }
    let codes = hf_packed::unpack(t.data(), rows / 4, cols).map_err(|(r, c)| {
        t.error(format!("packed code 3 (not a ternary value) for weight row {r}, column {c}"))
    })?;
    let (ws, _) = weight_scale(ckpt, name)?;
    let beta = match mode {
        QuantMode::OfflineMultiply => ws,
        _ => 1.0 / ws,
    };
    Ok(TernaryWeight { codes, beta, source_scale: ws, rows, cols })
}
