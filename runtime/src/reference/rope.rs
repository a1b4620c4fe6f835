//! Rotary position embedding, transformers' default type with the half-split (`rotate_half`)
//! pairing: element j rotates with j + d/2. `inv_freq[i] = 1 / theta^(2i/d)` in f32, angle =
//! position · inv_freq, cos/sin of `cat(freqs, freqs)`.

use crate::Result;
use candle_core::{Device, Tensor};

pub struct Rope {
    /// `[max_positions, d]`.
    cos: Tensor,
    sin: Tensor,
    half: usize,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32, max_positions: usize) -> Result<Rope> {
        let half = head_dim / 2;
        let (cos, sin) = crate::rope::tables(head_dim, theta, max_positions);
        let dev = Device::Cpu;
        Ok(Rope {
            cos: Tensor::from_vec(cos, (max_positions, head_dim), &dev)?,
            sin: Tensor::from_vec(sin, (max_positions, head_dim), &dev)?,
            half,
        })
    }

    /// `x` `[heads, T, d]` at positions `start..start+T`: `x·cos + rotate_half(x)·sin`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let t = x.dims()[1];
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let x1 = x.narrow(2, 0, self.half)?;
        let x2 = x.narrow(2, self.half, self.half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }
}
