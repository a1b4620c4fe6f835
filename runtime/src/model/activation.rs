//! The MLP's activation product `act(gate) · up`: relu² (BitNet b1.58) or SiLU (the LLaMA-style
//! families), elementwise, a prompt's rows across threads.

use super::forward::Session;
use super::norm::for_each_row;
use tern_converters::model::Activation;

impl Session<'_> {
    /// `act(gate) · up` elementwise (relu² or SiLU).
    pub fn activate(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = gate.to_vec();
        self.activate_in_place(&mut out, up);
        out
    }

    /// [`Session::activate`] written over `gate`.
    pub(super) fn activate_in_place(&self, gate: &mut [f32], up: &[f32]) {
        let (activation, width) = (self.model.config.activation, self.model.config.intermediate);
        for_each_row(gate, width, |i, gate| {
            let up = &up[i * width..];
            match activation {
                Activation::Relu2 => {
                    gate.iter_mut().zip(up).for_each(|(g, &u)| *g = g.max(0.0) * g.max(0.0) * u)
                }
                Activation::Silu => {
                    gate.iter_mut().zip(up).for_each(|(g, &u)| *g = *g / (1.0 + (-*g).exp()) * u)
                }
            }
        });
    }
}
