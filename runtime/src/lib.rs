//! tern's CPU runtime: kernels per packed layout, the forward pass, KV cache, sampler, tokenizer,
//! and the f32 reference forward that `tern verify` measures packed files against.
//!
//! Empty until the reference-forward and runtime issues land; the crate exists now so the
//! workspace has its final shape and the binary can depend on it.
