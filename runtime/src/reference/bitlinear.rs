//! BitLinear as transformers computes it in float32: per-token int8 fake-quantisation of the
//! input (`s = 127 / max(absmax, 1e-5)`, `q = clamp(round_half_even(x·s), -128, 127)`), then a
//! float matmul with the ternary weight, scaled per the checkpoint's quantisation mode:
//!
//! | mode | transformers | here |
//! |---|---|---|
//! | online (AutoBitLinear) | `F.linear(q/s, t/inv)` | weight = t / inv |
//! | offline-multiply (AutoBitLinear) | `F.linear(q/s, t) * weight_scale` | weight = t, × ws |
//! | offline-divide (BitLinear) | `F.linear(q, t) / (weight_scale · s)` | weight = t, ÷ (ws·s) |

use crate::Result;
use candle_core::{Device, Tensor};
use tern_converters::QuantMode;
use tern_converters::weights::load_ternary;
use tern_formats::hf::HfCheckpoint;
use tern_formats::ternary;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaleMode {
    /// The scale is folded into the weight (online).
    InWeight,
    /// Output multiplied by this weight_scale.
    Multiply(f32),
    /// Output divided by this weight_scale times the activation scale.
    Divide(f32),
}

pub struct BitLinear {
    /// `[in, out]`: the transposed weight as transformers multiplies it.
    weight_t: Tensor,
    pub scale: ScaleMode,
    pub rows: usize,
    pub cols: usize,
}

impl BitLinear {
    pub fn load(
        ckpt: &HfCheckpoint,
        name: &str,
        rows: usize,
        cols: usize,
        mode: QuantMode,
    ) -> Result<BitLinear> {
        let w = load_ternary(ckpt, name, rows, cols, mode)?;
        let (values, scale): (Vec<f32>, ScaleMode) = match mode {
            QuantMode::Online => {
                let inv = ternary::weight_inverse_scale(w.beta);
                (w.codes.iter().map(|&c| c as f32 / inv).collect(), ScaleMode::InWeight)
            }
            QuantMode::OfflineMultiply => {
                (w.codes.iter().map(|&c| c as f32).collect(), ScaleMode::Multiply(w.source_scale))
            }
            QuantMode::OfflineDivide => {
                (w.codes.iter().map(|&c| c as f32).collect(), ScaleMode::Divide(w.source_scale))
            }
        };
        let weight = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
        Ok(BitLinear { weight_t: weight.t()?.contiguous()?, scale, rows, cols })
    }

    /// `[T, in]` → `[T, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, k) = x.dims2()?;
        let input: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut codes = vec![0i8; k];
        let mut fed = Vec::with_capacity(t * k);
        let mut scales = Vec::with_capacity(t);
        for row in input.chunks_exact(k) {
            let s = ternary::quantise_activations(row, &mut codes);
            match self.scale {
                // transformers feeds the dequantised q / s (a division, not q · (1/s)).
                ScaleMode::InWeight | ScaleMode::Multiply(_) => {
                    fed.extend(codes.iter().map(|&q| q as f32 / s))
                }
                ScaleMode::Divide(_) => fed.extend(codes.iter().map(|&q| q as f32)),
            }
            scales.push(s);
        }
        let fed = Tensor::from_vec(fed, (t, k), &Device::Cpu)?;
        let y = fed.matmul(&self.weight_t)?;
        Ok(match self.scale {
            ScaleMode::InWeight => y,
            ScaleMode::Multiply(ws) => y.affine(ws as f64, 0.0)?,
            ScaleMode::Divide(ws) => {
                let denom: Vec<f32> = scales.iter().map(|&s| ws * s).collect();
                y.broadcast_div(&Tensor::from_vec(denom, (t, 1), &Device::Cpu)?)?
            }
        })
    }
}
