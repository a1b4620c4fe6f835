//! Where a forward pass's time goes (`tern bench --profile`): wall time per kind of operation,
//! accumulated by a [`Session`](super::Session) that has a profile attached. Parallel operations
//! are timed from the calling thread, so their share includes the fork-join cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Embedding rows → f32.
    Embed,
    /// RMSNorm (input norms and sub-norms).
    Norm,
    /// Per-token int8 activation quantisation.
    Quantise,
    /// Lookup-table building (TL1/TL2).
    Tables,
    /// Ternary GEMV/GEMM and the β/s scaling.
    Ternary,
    /// RoPE, KV-cache write, attention scores, softmax and the weighted sum.
    Attention,
    /// act(gate)·up.
    Activation,
    /// The output head (final norm excluded).
    LmHead,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Embed,
        Op::Norm,
        Op::Quantise,
        Op::Tables,
        Op::Ternary,
        Op::Attention,
        Op::Activation,
        Op::LmHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Embed => "embedding",
            Op::Norm => "rms norms",
            Op::Quantise => "activation quantisation",
            Op::Tables => "activation layout (TL tables, panels)",
            Op::Ternary => "ternary matmuls",
            Op::Attention => "attention (rope, cache, softmax)",
            Op::Activation => "activation",
            Op::LmHead => "output head",
        }
    }
}

/// Nanoseconds per [`Op`].
#[derive(Default)]
pub struct Profile {
    nanos: [AtomicU64; 8],
}

impl Profile {
    pub fn add(&self, op: Op, d: Duration) {
        self.nanos[op as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs `f`, adding its wall time to `op`.
    pub fn time<T>(&self, op: Op, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(op, t.elapsed());
        out
    }

    /// (op, seconds) for every op.
    pub fn totals(&self) -> Vec<(Op, f64)> {
        Op::ALL
            .iter()
            .map(|&op| (op, self.nanos[op as usize].load(Ordering::Relaxed) as f64 * 1e-9))
            .collect()
    }
}
