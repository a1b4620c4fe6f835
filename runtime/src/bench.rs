//! Measurements like llama-bench's: prompt processing (pp: N tokens in one forward from an empty
//! cache) and token generation (tg: N single-token forwards), repeated, in tokens per second.

use crate::Result;
use crate::model::{Model, Session, Want};
use std::time::Instant;

/// Deterministic pseudo-random token ids below `vocab`.
pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

/// Tokens per second of processing an `n`-token prompt.
pub fn prompt_rate(model: &Model, n: usize, seed: u64) -> Result<f64> {
    let tokens = random_tokens(n, model.config.vocab, seed);
    let mut s = Session::new(model, n);
    let t = Instant::now();
    s.forward(&tokens, Want::Last, None)?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Tokens per second of generating `n` tokens one at a time (greedy, after one start token).
pub fn generation_rate(model: &Model, n: usize, seed: u64) -> Result<f64> {
    let mut s = Session::new(model, n + 1);
    let mut logits = s.forward(&random_tokens(1, model.config.vocab, seed), Want::Last, None)?;
    let t = Instant::now();
    for _ in 0..n {
        let next = crate::parity::argmax(&logits) as u32;
        logits = s.forward(&[next], Want::Last, None)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Median, min and max of samples.
pub fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v.first().copied().unwrap_or(0.0), v.last().copied().unwrap_or(0.0))
}

/// Peak resident memory of this process (VmHWM), in bytes, where /proc tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
