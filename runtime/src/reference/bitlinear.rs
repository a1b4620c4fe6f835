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
use tern_converters::weights::load_ternary_with;
use tern_formats::hf::HfCheckpoint;
use tern_formats::ternary;

/// Which float arithmetic the reference uses for BitLinear (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arithmetic {
    #[default]
    Transformers,
    Exact,
}

/// A projection's ternary weight in the form its arithmetic multiplies.
#[derive(Clone)]
enum Codes {
    /// `[out, in]` row-major codes: the exact arithmetic's integer products (1 byte per
    /// weight, where an f32 matrix would take 4 and a transposed copy of it 4 more while built).
    Integer(Vec<i8>),
    /// `[out, in]` codes as f32, multiplied as its transposed view (no copy).
    Float(Tensor),
}

#[derive(Clone)]
pub struct BitLinear {
    codes: Codes,
    pub mode: QuantMode,
    /// The checkpoint's scale: β for master weights, weight_scale for packed ones.
    pub source_scale: f32,
    /// β as the converter writes it (`converters::weights::load_ternary`): the exact
    /// arithmetic uses this very value, so it matches a GGUF's scale bit for bit.
    pub beta: f32,
    pub rows: usize,
    pub cols: usize,
}

impl BitLinear {
    /// Reads and ternarises projection `name`; `scratch` is reused for master weights' f32
    /// values from one projection to the next.
    pub fn load(
        ckpt: &HfCheckpoint,
        name: &str,
        rows: usize,
        cols: usize,
        mode: QuantMode,
        arithmetic: Arithmetic,
        scratch: &mut Vec<f32>,
    ) -> Result<BitLinear> {
        let w = load_ternary_with(ckpt, name, rows, cols, mode, scratch)?;
        let codes = match arithmetic {
            Arithmetic::Exact => Codes::Integer(w.codes),
            Arithmetic::Transformers => Codes::Float(Tensor::from_vec(
                w.codes.iter().map(|&c| c as f32).collect::<Vec<f32>>(),
                (rows, cols),
                &Device::Cpu,
            )?),
        };
        Ok(BitLinear { codes, mode, source_scale: w.source_scale, beta: w.beta, rows, cols })
    }

    /// `Σ_k q[t][k] · codes[r][k]` as `[T, out]` f32 — exact integers, the same values an f32
    /// matmul of the same integers gives (|Σ| ≤ 128 · K < 2^24), one row's codes read once for
    /// every token.
    fn integer_product(codes: &[i8], q: &[i8], t: usize, k: usize, rows: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let mut by_row = vec![0f32; rows * t];
        by_row.par_chunks_mut(t * 64).zip(codes.par_chunks(k * 64)).for_each(|(out, rows)| {
            for (o, row) in out.chunks_exact_mut(t).zip(rows.chunks_exact(k)) {
                for (slot, x) in o.iter_mut().zip(q.chunks_exact(k)) {
                    *slot = row.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() as f32;
                }
            }
        });
        let mut out = vec![0f32; rows * t];
        for (r, sums) in by_row.chunks_exact(t).enumerate() {
            for (token, &v) in sums.iter().enumerate() {
                out[token * rows + r] = v;
            }
        }
        out
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
            q.extend_from_slice(&codes);
        }
        let per_token = |values: Vec<f32>| Tensor::from_vec(values, (t, 1), &Device::Cpu);
        let weights = match &self.codes {
            Codes::Integer(w) => {
                let beta = self.beta;
                let sums = Self::integer_product(w, &q, t, k, self.rows);
                let sums = Tensor::from_vec(sums, (t, self.rows), &Device::Cpu)?;
                return Ok(sums.broadcast_mul(&per_token(scales.iter().map(|s| beta / s).collect())?)?);
            }
            Codes::Float(w) => w.t()?,
        };
        let q = Tensor::from_vec(q.iter().map(|&c| c as f32).collect::<Vec<f32>>(), (t, k), &Device::Cpu)?;
        // transformers feeds q / s (a division, not q · (1/s)).
        let dequantised = || q.broadcast_div(&per_token(scales.clone())?);
        Ok(match self.mode {
            QuantMode::Online => {
                // t / inv for t ∈ {-1, 0, 1} is exactly t · (1/inv).
                let w = 1.0 / ternary::weight_inverse_scale(self.source_scale);
                dequantised()?.matmul(&weights.affine(w as f64, 0.0)?)?
            }
            QuantMode::OfflineMultiply => {
                dequantised()?.matmul(&weights)?.affine(self.source_scale as f64, 0.0)?
            }
            QuantMode::OfflineDivide => {
                let denom = scales.iter().map(|s| self.source_scale * s).collect();
                q.matmul(&weights)?.broadcast_div(&per_token(denom)?)?
            }
        })
    }
}
