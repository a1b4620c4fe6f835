//! `tern bench`: prompt-processing and generation speed, like llama-bench.

use crate::common::{load_model, with_threads};
use anyhow::Result;
use std::path::PathBuf;
use tern_runtime::bench::{generation_rate, peak_rss_bytes, prompt_rate, summary};

/// Measure prompt processing (ppN) and token generation (tgN) speed in tokens/s.
///
/// pp: one forward pass over N random tokens from an empty cache; tg: N tokens generated one at
/// a time. Each test runs --reps times per thread count; the table shows the median and the
/// range. Random token ids, so any model works, tokenizer or not.
///
/// Example:
///   tern bench model-i2_s.gguf -p 128 -n 64 -t 1,2 -r 3
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    pub model: PathBuf,
    /// Prompt length for the pp test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 128)]
    pub prompt: usize,
    /// Tokens for the tg test (0 skips it).
    #[arg(short = 'n', long = "gen", default_value_t = 64)]
    pub generate: usize,
    /// Thread counts to test, comma-separated.
    #[arg(short, long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Repetitions per test.
    #[arg(short, long, default_value_t = 3)]
    pub reps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let (model, _) = load_model(&args.model)?;
    let isa = tern_runtime::cpu::selected();
    let size = model.file.file_size();
    let mut rows = Vec::new();
    for &t in &args.threads {
        for (test, n) in [("pp", args.prompt), ("tg", args.generate)] {
            if n == 0 {
                continue;
            }
            let samples: Vec<f64> = with_threads(Some(t), || {
                (0..args.reps.max(1))
                    .map(|r| {
                        if test == "pp" {
                            prompt_rate(&model, n, r as u64 + 1)
                        } else {
                            generation_rate(&model, n, r as u64 + 1)
                        }
                    })
                    .collect::<tern_runtime::Result<Vec<f64>>>()
            })??;
            let (median, min, max) = summary(&samples);
            if !args.json {
                eprintln!("{test}{n} threads {t}: {median:.2} t/s");
            }
            rows.push(serde_json::json!({"threads": t, "test": format!("{test}{n}"), "samples": samples, "median": median, "min": min, "max": max}));
        }
    }
    let rss = peak_rss_bytes();
    if args.json {
        let v = serde_json::json!({
            "model": args.model, "file_bytes": size, "isa": isa.name(),
            "bytes_per_token": model.bytes_per_token(), "peak_rss_bytes": rss, "results": rows,
        });
        return crate::print_stdout(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let name = args.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut text = format!(
        "| model | size | kernel | threads | test | t/s (median, min–max of {}) |\n|---|---|---|---|---|---|\n",
        args.reps.max(1)
    );
    for r in &rows {
        text += &format!(
            "| {name} | {} | {} | {} | {} | {:.2} ({:.2}–{:.2}) |\n",
            crate::inspect::human_bytes(size),
            isa.name(),
            r["threads"],
            r["test"].as_str().unwrap_or(""),
            r["median"].as_f64().unwrap_or(0.0),
            r["min"].as_f64().unwrap_or(0.0),
            r["max"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(b) = rss {
        text += &format!("\npeak RSS {}\n", crate::inspect::human_bytes(b));
    }
    crate::print_stdout(&text)
}
