//! Measurements like llama-bench's: prompt processing (pp: N tokens in one forward from an empty
//! cache) and token generation (tg: N single-token forwards), repeated, in tokens per second;
//! and, as a server decodes, batched generation (B sequences taking one step together, N times).

use crate::Result;
use crate::model::{BatchPart, KvCache, KvType, Model, Session, Want};
use std::time::Instant;

/// A deterministic pseudo-random stream (xorshift64) for benchmark inputs: fast, and the same
/// on every run and machine.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Deterministic pseudo-random token ids below `vocab`.
pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut next = xorshift(seed);
    (0..n).map(|_| (next() % vocab as u64) as u32).collect()
}

/// Tokens per second of processing an `n`-token prompt.
pub fn prompt_rate(model: &Model, n: usize, seed: u64, kv: KvType) -> Result<f64> {
    let tokens = random_tokens(n, model.config.vocab, seed);
    let mut s = Session::with_kv_type(model, n, kv);
    let t = Instant::now();
    s.forward(&tokens, Want::Last, None)?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Tokens per second of generating `n` tokens one at a time (greedy, after one start token).
pub fn generation_rate(model: &Model, n: usize, seed: u64, kv: KvType) -> Result<f64> {
    let mut s = Session::with_kv_type(model, n + 1, kv);
    let mut logits = s.forward(&random_tokens(1, model.config.vocab, seed), Want::Last, None)?;
    let t = Instant::now();
    for _ in 0..n {
        let next = crate::parity::argmax(&logits) as u32;
        logits = s.forward(&[next], Want::Last, None)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Generated tokens per second of `b` sequences decoding `n` tokens each in lock step (one
/// `forward_batch` per step, every sequence wanting its logits), as `tern serve` decodes `b`
/// streams. Each starts from its own random token; the next token is greedy.
pub fn batch_generation_rate(model: &Model, n: usize, b: usize, seed: u64, kv: KvType) -> Result<f64> {
    batch_generation(model, n, b, seed, kv, None)
}

fn batch_generation(
    model: &Model,
    n: usize,
    b: usize,
    seed: u64,
    kv: KvType,
    profile: Option<std::sync::Arc<crate::model::Profile>>,
) -> Result<f64> {
    let mut s = Session::with_kv_type(model, 1, kv);
    let mut caches: Vec<KvCache> = (0..b).map(|_| KvCache::new(&model.config, n + 1, kv)).collect();
    let mut next: Vec<u32> = random_tokens(b, model.config.vocab, seed);
    let step = |s: &mut Session, caches: &mut [KvCache], next: &mut [u32]| -> Result<()> {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut parts: Vec<BatchPart> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, t)| BatchPart { cache, tokens: t, want: Want::Last })
            .collect();
        for (slot, logits) in next.iter_mut().zip(s.forward_batch(&mut parts)?) {
            *slot = crate::parity::argmax(&logits) as u32;
        }
        Ok(())
    };
    step(&mut s, &mut caches, &mut next)?;
    s.profile = profile;
    let t = Instant::now();
    for _ in 0..n {
        step(&mut s, &mut caches, &mut next)?;
    }
    Ok((n * b) as f64 / t.elapsed().as_secs_f64())
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
    proc_status_bytes("VmHWM:")
}

/// Peak address space of this process (VmPeak: mapped files, reserved stacks and heaps), in
/// bytes — what a `setrlimit(RLIMIT_AS)` cap is held against.
pub fn peak_virtual_bytes() -> Option<u64> {
    proc_status_bytes("VmPeak:")
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Streaming read bandwidth in bytes/s with the current rayon pool over a fresh `bytes`-sized
/// anonymous buffer (make it much larger than the caches), asking for 2 MiB pages as the model's
/// map does (`GgufFile::open`): the ceiling is what the machine can stream, not what 4 KiB pages
/// allow. See [`read_bandwidth_of`].
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    use rayon::prelude::*;
    let mut map = memmap2::MmapMut::map_anon(bytes.max(8)).expect("an anonymous map for the bandwidth test");
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    // Written once so every page is resident before timing.
    map.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| c.fill(i as u8));
    read_bandwidth_of(&map, reps)
}

/// Streaming read bandwidth in bytes/s with the current rayon pool over `bytes` (e.g. a model
/// file's own mapping, so the test reads what generation reads, through the same pages): the
/// best of `reps` passes of each of two ways of reading, each thread over its own contiguous
/// part, the way a GEMV reads its weight rows: one forward stream, and four streams in lock step
/// from the part's quarters with a prefetch a little ahead. Cores differ in which is faster (on
/// AMD one stream reads as fast as any, on Intel four read faster; docs/performance-notes.md,
/// "Four quarter streams"), so the ceiling takes the faster — a kernel can only be held to what
/// the machine can be made to stream.
pub fn read_bandwidth_of(bytes: &[u8], reps: usize) -> f64 {
    use rayon::prelude::*;
    // SAFETY: every bit pattern is a valid u64; `align_to` only hands out aligned words.
    let (_, words, _) = unsafe { bytes.align_to::<u64>() };
    let words = if words.is_empty() { &[0u64][..] } else { words };
    let chunk = words.len().div_ceil(rayon::current_num_threads());
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        for read in [sum_words as fn(&[u64]) -> u64, sum_words_four_streams] {
            let t = Instant::now();
            let sum: u64 = words.par_chunks(chunk).map(read).reduce(|| 0, u64::wrapping_add);
            std::hint::black_box(sum);
            best = best.max((words.len() * 8) as f64 / t.elapsed().as_secs_f64());
        }
    }
    best
}

/// Sum with four independent accumulators, so loads, not the add chain, set the pace.
fn sum_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let mut quads = c.chunks_exact(4);
    for q in &mut quads {
        for (a, &x) in acc.iter_mut().zip(q) {
            *a = a.wrapping_add(x);
        }
    }
    let tail: u64 = quads.remainder().iter().fold(0, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// The same sum read as four streams, one from each quarter of `c`, a 64-byte line of each in
/// turn, each asking for the line 1 KiB ahead of it (the distance that read fastest;
/// docs/performance-notes.md, "Four quarter streams").
fn sum_words_four_streams(c: &[u64]) -> u64 {
    const LINE: usize = 8;
    #[cfg(target_arch = "x86_64")]
    const AHEAD: usize = 1024 / 8;
    let quarter = c.len() / 4 / LINE * LINE;
    let mut acc = [0u64; LINE];
    for line in (0..quarter).step_by(LINE) {
        for q in 0..4 {
            let at = q * quarter + line;
            #[cfg(target_arch = "x86_64")]
            if at + AHEAD < c.len() {
                // SAFETY: a prefetch of an address inside `c`; SSE is part of x86-64.
                unsafe {
                    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                    _mm_prefetch::<_MM_HINT_T0>(c.as_ptr().add(at + AHEAD) as *const i8);
                }
            }
            for (a, &x) in acc.iter_mut().zip(&c[at..at + LINE]) {
                *a = a.wrapping_add(x);
            }
        }
    }
    let tail = sum_words(&c[4 * quarter..]);
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// Generation speed against the memory-bandwidth ceiling: every generated token reads
/// `bytes_per_token` of weights, so at `bandwidth` bytes/s no engine exceeds the ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Roofline {
    pub bandwidth_bytes_per_s: f64,
    pub bytes_per_token: u64,
    pub ceiling_tokens_per_s: f64,
    pub measured_tokens_per_s: f64,
    /// measured / ceiling.
    pub fraction: f64,
}

impl Roofline {
    pub fn new(bandwidth: f64, bytes_per_token: u64, measured: f64) -> Roofline {
        let ceiling = bandwidth / bytes_per_token.max(1) as f64;
        Roofline {
            bandwidth_bytes_per_s: bandwidth,
            bytes_per_token,
            ceiling_tokens_per_s: ceiling,
            measured_tokens_per_s: measured,
            fraction: measured / ceiling,
        }
    }

    /// Several generation runs, each with the bandwidth measured around it: `(tg, bandwidth)`
    /// pairs. The fraction is the median of the runs' own fractions, so each run is held to the
    /// ceiling of its own minute (on a shared host the bandwidth moves by a factor of two within
    /// seconds, and a single sample after all runs can sit in a different phase from them); the
    /// bandwidth and tg are the medians, the ceiling the median bandwidth's.
    pub fn paired(runs: &[(f64, f64)], bytes_per_token: u64) -> Roofline {
        let tg: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let bandwidth: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let fractions: Vec<f64> =
            runs.iter().map(|&(t, b)| Roofline::new(b, bytes_per_token, t).fraction).collect();
        let median = Roofline::new(summary(&bandwidth).0, bytes_per_token, summary(&tg).0);
        Roofline { fraction: summary(&fractions).0, ..median }
    }
}

/// Where a token's time went, in generation or in a prompt.
pub struct OpProfile {
    pub tokens_per_s: f64,
    pub seconds_per_token: f64,
    /// Seconds per token in each operation (the rest is residual adds, argmax, allocation).
    pub per_op: Vec<(crate::model::Op, f64)>,
}

impl OpProfile {
    /// `n` tokens that took `total` seconds, with `profile`'s times per operation.
    fn per_token(profile: &crate::model::Profile, n: usize, total: f64) -> OpProfile {
        OpProfile {
            tokens_per_s: n as f64 / total,
            seconds_per_token: total / n as f64,
            per_op: profile.totals().into_iter().map(|(op, secs)| (op, secs / n as f64)).collect(),
        }
    }
}

/// One prompt of `n` random tokens from an empty cache with a profile attached (as the pp test
/// runs it: micro-batches, logits of the last position only).
pub fn prompt_profile(model: &Model, n: usize, seed: u64, kv: KvType) -> Result<OpProfile> {
    let profile = std::sync::Arc::new(crate::model::Profile::default());
    let tokens = random_tokens(n, model.config.vocab, seed);
    let mut s = Session::with_kv_type(model, n, kv);
    s.profile = Some(profile.clone());
    let t = Instant::now();
    s.forward(&tokens, Want::Last, None)?;
    Ok(OpProfile::per_token(&profile, n, t.elapsed().as_secs_f64()))
}

/// One generation run of `n` tokens with a profile attached.
pub fn generation_profile(model: &Model, n: usize, seed: u64, kv: KvType) -> Result<OpProfile> {
    let profile = std::sync::Arc::new(crate::model::Profile::default());
    let mut s = Session::with_kv_type(model, n + 1, kv);
    let mut logits = s.forward(&random_tokens(1, model.config.vocab, seed), Want::Last, None)?;
    s.profile = Some(profile.clone());
    let t = Instant::now();
    for _ in 0..n {
        let next = crate::parity::argmax(&logits) as u32;
        logits = s.forward(&[next], Want::Last, None)?;
    }
    Ok(OpProfile::per_token(&profile, n, t.elapsed().as_secs_f64()))
}

/// One batched generation run (`b` sequences, `n` steps) with a profile attached; per generated
/// token, as for one sequence.
pub fn batch_generation_profile(
    model: &Model,
    n: usize,
    b: usize,
    seed: u64,
    kv: KvType,
) -> Result<OpProfile> {
    let profile = std::sync::Arc::new(crate::model::Profile::default());
    let rate = batch_generation(model, n, b, seed, kv, Some(profile.clone()))?;
    let tokens = n * b;
    Ok(OpProfile::per_token(&profile, tokens, tokens as f64 / rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_sum_and_roofline_arithmetic() {
        let v: Vec<u64> = (1..=11).collect();
        assert_eq!(sum_words(&v), 66);
        // The four-stream read visits every word once, whatever the length's remainder.
        for n in [0usize, 1, 31, 32, 33, 1000, 4099] {
            let v: Vec<u64> = (1..=n as u64).collect();
            assert_eq!(sum_words_four_streams(&v), (n * (n + 1) / 2) as u64, "{n} words");
        }
        let r = Roofline::new(20e9, 1_000_000_000, 17.0);
        assert_eq!(r.ceiling_tokens_per_s, 20.0);
        assert_eq!(r.fraction, 0.85);
        // Three runs reading 20e9, 40e9 and 30e9 bytes/s and making 18, 30 and 21 tokens/s: 90, 75
        // and 70 % of their own ceilings. The medians (30e9 and 21) are 70 % of each other, but
        // the fraction is the runs' median, 75 %.
        let r = Roofline::paired(&[(18.0, 20e9), (30.0, 40e9), (21.0, 30e9)], 1_000_000_000);
        assert_eq!(
            (r.bandwidth_bytes_per_s, r.measured_tokens_per_s, r.ceiling_tokens_per_s),
            (30e9, 21.0, 30.0)
        );
        assert!((r.fraction - 0.75).abs() < 1e-12, "{}", r.fraction);
        assert!(read_bandwidth(1 << 20, 1) > 0.0);
        assert!(read_bandwidth_of(&[1, 2, 3], 1) > 0.0);
    }
}
