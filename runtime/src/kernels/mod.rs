//! Compute kernels, one module per weight format, each with a scalar reference and SIMD variants
//! that must agree with it bit for bit on integer results (tests in each module).
//!
//! - [`act`]: per-token int8 activation quantisation (identical to the reference forward).
//! - [`i2s`]: I2_S ternary × int8 dot products (GEMV for decode, GEMM for prompts).
//! - [`layouts`]: the same exact dot for every ternary layout (I2_S, TL1, TL2, TQ1_0, TQ2_0).
//! - [`float`]: f16/f32 row dots for the lm_head and embeddings.
//! - [`head`]: integer row dots for a Q8_0 / Q4_0 output head.

pub mod act;
pub mod float;
pub mod head;
pub mod i2s;
pub mod layouts;
pub mod tl1;
pub mod tl2;
pub mod tq1_0;
pub mod tq2_0;
