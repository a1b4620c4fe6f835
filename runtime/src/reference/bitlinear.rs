//! BitLinear: per-token int8 fake-quantisation of the input exactly as transformers does it
//! (`s = 127 / max(absmax, 1e-5)`, `q = clamp(round_half_even(x·s), -128, 127)`), then the
//! product with the ternary weight, in one of two arithmetics ([`Arithmetic`]):
//!
//! - **Transformers** (default): the float operations in transformers' order,
//!
//!   | mode | transformers |
//!   |---|---|
//!   | online (AutoBitLinear) | `F.linear(q/s, t/inv)`, inv = 1/max(β, 1e-5) (≈ β) |
//!   | offline-multiply (AutoBitLinear) | `F.linear(q/s, t) * weight_scale` |
//!   | offline-divide (BitLinear) | `F.linear(q, t) / (weight_scale · s)` |
//!
//! - **Exact**: `Σ q·t` in integers (exact in f32 while |Σ| < 2^24, i.e. K < 132 000) times one
//!   per-token factor β / s — what a correct integer kernel computes. `tern verify` compares the
//!   runtime against this form, so only genuine differences (not rounding-order noise that flips
//!   an int8 code downstream) show up.
//!
//! The two agree to float rounding (both are tested against transformers' module outputs).

use crate::Result;
use candle_core::{Device, Tensor};
use tern_converters::QuantMode;
use tern_converters::weights::load_ternary;
use tern_formats::hf::HfCheckpoint;
use tern_formats::ternary;

/// Which float arithmetic the reference uses for BitLinear (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arithmetic {
    #[default]
    Transformers,
    Exact,
}

#[derive(Clone)]
pub struct BitLinear {
    /// `[in, out]`: the transposed ternary codes as f32.
    codes_t: Tensor,
    pub mode: QuantMode,
    /// The checkpoint's scale: β for master weights, weight_scale for packed ones.
    pub source_scale: f32,
    /// β as the converter writes it (`converters::weights::load_ternary`): the exact
    /// arithmetic uses this very value, so it matches a GGUF's scale bit for bit.
    pub beta: f32,
    pub arithmetic: Arithmetic,
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
        arithmetic: Arithmetic,
    ) -> Result<BitLinear> {
        let w = load_ternary(ckpt, name, rows, cols, mode)?;
        let codes = Tensor::from_vec(
            w.codes.iter().map(|&c| c as f32).collect::<Vec<f32>>(),
            (rows, cols),
            &Device::Cpu,
        )?;
        Ok(BitLinear {
            codes_t: codes.t()?.contiguous()?,
            mode,
            source_scale: w.source_scale,
            beta: w.beta,
            arithmetic,
            rows,
            cols,
        })
    }

    /// `[T, in]` → `[T, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, k) = x.dims2()?;
        let input: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut codes = vec![0i8; k];
        let mut q = Vec::with_capacity(t * k);
        let mut scales = Vec::with_capacity(t);
        for row in input.chunks_exact(k) {
            scales.push(ternary::quantise_activations(row, &mut codes));
            q.extend(codes.iter().map(|&c| c as f32));
        }
        let per_token = |values: Vec<f32>| Tensor::from_vec(values, (t, 1), &Device::Cpu);
        let q = Tensor::from_vec(q, (t, k), &Device::Cpu)?;
        // transformers feeds q / s (a division, not q · (1/s)).
        let dequantised = || q.broadcast_div(&per_token(scales.clone())?);
        Ok(match (self.arithmetic, self.mode) {
            (Arithmetic::Exact, _) => {
                let beta = self.beta;
                q.matmul(&self.codes_t)?
                    .broadcast_mul(&per_token(scales.iter().map(|s| beta / s).collect())?)?
            }
            (Arithmetic::Transformers, QuantMode::Online) => {
                // t / inv for t ∈ {-1, 0, 1} is exactly t · (1/inv).
                let w = 1.0 / ternary::weight_inverse_scale(self.source_scale);
                dequantised()?.matmul(&self.codes_t.affine(w as f64, 0.0)?)?
            }
            (Arithmetic::Transformers, QuantMode::OfflineMultiply) => {
                dequantised()?.matmul(&self.codes_t)?.affine(self.source_scale as f64, 0.0)?
            }
            (Arithmetic::Transformers, QuantMode::OfflineDivide) => {
                let denom = scales.iter().map(|s| self.source_scale * s).collect();
                q.matmul(&self.codes_t)?.broadcast_div(&per_token(denom)?)?
            }
        })
    }
}
