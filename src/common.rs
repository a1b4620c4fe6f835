//! Pieces several commands share: thread pools, loading a model with its tokenizer, sampling
//! flags, the error that means "a check failed" (exit code 1).

use anyhow::{Context, Result};
use std::path::Path;
use tern_runtime::model::{KvType, Model};
use tern_runtime::sampler::SamplerConfig;
use tern_runtime::tokenizer::Tokenizer;

/// A failed check (verification): exit code 1, not 2.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Runs `f` on a rayon pool of `threads` threads (all cores when None).
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .context("cannot start threads")?;
    Ok(pool.install(f))
}

pub fn load_model(path: &Path) -> Result<(Model, Option<Tokenizer>)> {
    let model = Model::load(path)?;
    // A tokenizer tern cannot build (e.g. SentencePiece in a 1bitLLM file from bitnet.cpp) must
    // not stop the model from running on token ids (`--tokens`, bench, logits).
    let tokenizer = match Tokenizer::from_gguf(&model.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warning: {e}; running without a tokenizer (give prompts as --tokens)");
            None
        }
    };
    Ok((model, tokenizer))
}

/// How the KV cache stores keys and values (run, chat, bench).
#[derive(clap::Args, Debug, Clone)]
pub struct KvArgs {
    /// KV cache element type: f32 (the f32 reference's numbers) or f16 (half the memory, keys
    /// and values rounded to 11 significant bits; llama.cpp's default).
    #[arg(long = "kv-type", default_value = "f32", value_parser = parse_kv_type)]
    pub kv_type: KvType,
}

fn parse_kv_type(s: &str) -> Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| format!("unknown KV cache type {s:?} (supported: f32, f16)"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Greedy decoding (same as --temp 0).
    #[arg(long)]
    pub greedy: bool,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to P (1 = all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens among the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed; the same seed and settings reproduce a generation (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn config(&self) -> SamplerConfig {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        SamplerConfig {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        }
    }
}

/// Parses `1,17,923` into token ids.
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().with_context(|| format!("{s:?} is not a token id")))
        .collect()
}

/// MemAvailable from /proc/meminfo, in bytes (None where there is no such file).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
