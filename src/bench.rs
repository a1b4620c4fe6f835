//! `tern bench`: prompt-processing and generation speed, like llama-bench.

use crate::common::{KvArgs, load_model, with_threads};
use anyhow::Result;
use std::path::PathBuf;
use tern_runtime::bench::{
    OpProfile, Roofline, batch_generation_profile, batch_generation_rate, generation_profile,
    generation_rate, peak_rss_bytes, prompt_profile, prompt_rate, read_bandwidth, read_bandwidth_of, summary,
};
use tern_runtime::model::Op;
use tern_runtime::pages::mapped_file_pages;

/// Measure prompt processing (ppN) and token generation (tgN) speed in tokens/s.
///
/// pp: N random tokens run as a prompt from an empty cache (in micro-batches of 128); tg: N
/// tokens generated one at a time. Each test runs --reps times per thread count; the table
/// shows the median and the range. Random token ids, so any model works, tokenizer or not.
///
/// --batch B1,B2,… adds "tgN bB": B sequences generating N tokens each in lock step, one
/// forward pass per step for all of them (every weight read once per step), each wanting its
/// logits — what `tern serve --parallel B` does with B busy streams. Its rate counts every
/// sequence's tokens.
///
/// --roofline also measures this machine's streaming read bandwidth with each thread count and
/// compares generation with the ceiling it sets: every generated token reads every ternary
/// weight and the whole output head once (the file's bytes per token), so tg ≤ bandwidth /
/// bytes per token. The test streams through the model file's own mapped bytes (the best of
/// three passes each of one stream and of four streams per thread: cores differ in which reads
/// faster) right before and right after every tg run, so each run is compared with what the
/// machine could read in its own seconds, through the same pages, under the same load from
/// other processes; "of ceiling" is the median of the runs' own fractions. A file under 256 MiB
/// could sit in the caches, so then the test streams through a fresh --roofline-mib buffer
/// after the runs instead.
///
/// --profile runs one prompt (unless -p 0), one generation and one of each --batch per thread
/// count with timers on every operation and prints where a token's time goes in each; for
/// generation also the rate at which the ternary matmuls and the output head stream their
/// weights, and with --roofline the read bandwidth measured around that run to set them
/// against. --kv-type f16 halves the KV cache (and changes the logits).
///
/// Environment, to compare paths on one machine (the results are the same bits either way):
/// TERN_KERNEL=scalar|avx2|avx512vnni|neon forces an instruction set; TERN_AMX=off runs prompts
/// on the VNNI GEMM where AMX-INT8 tiles would run them; TERN_LUT_GEMM=off runs AVX2 prompts on
/// the maddubs GEMM instead of lookup tables; TERN_STREAMS=1|4 sets how many weight streams
/// each generating thread reads (default: 4 on Intel, 1 elsewhere); TERN_TRIT_TILES=off runs
/// TL1, TL2 and TQ1_0 from the file's bytes where AVX-512 VNNI would repack them into trit tiles;
/// TERN_TRIT_SUMS=off generates from trit tiles by decoding their codes rather than by looking
/// up triple sums (AVX-512 VBMI); TERN_I2S_TILES=off runs I2_S and TQ2_0 from the file's bytes
/// where AVX-512 VNNI (without AMX) would repack them into tiles of 16 rows.
///
/// Examples:
///   tern bench model-i2_s.gguf -p 128 -n 64 -t 1,2 -r 3
///   tern bench model-i2_s.gguf -p 0 -n 64 --roofline --profile
///   tern bench model-i2_s.gguf -p 0 -n 32 -b 1,4,8,16 -t 2
///   TERN_AMX=off tern bench model-i2_s.gguf -p 128 -n 0
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
    /// Batch sizes for the batched generation test (tgN bB), comma-separated; none by default.
    #[arg(short, long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Repetitions per test.
    #[arg(short, long, default_value_t = 3)]
    pub reps: usize,
    /// Do not run each test once, untimed, before its repetitions. The warm-up keeps one-off
    /// costs out of the first sample (mapping the model's pages into this process, first use of
    /// the AMX tiles, thread start): on the Intel host the first 128-token prompt after loading
    /// ran at a third to half the speed of the next ones in about half of the runs.
    #[arg(long)]
    pub no_warmup: bool,
    /// Measure the read bandwidth and show tg as a share of the bandwidth ceiling.
    #[arg(long)]
    pub roofline: bool,
    /// Size of the buffer the bandwidth test streams through when the model file is under 256
    /// MiB, in MiB (well above the caches).
    #[arg(long, default_value_t = 1024)]
    pub roofline_mib: usize,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Time every operation of generation and print the breakdown per token.
    #[arg(long)]
    pub profile: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Files at least this large are streamed for the bandwidth test: far beyond any CPU cache.
const MODEL_STREAM_MIN_BYTES: u64 = 256 << 20;

pub fn run(args: Args) -> Result<()> {
    let (model, _) = load_model(&args.model)?;
    let kv = args.kv.kv_type;
    let isa = tern_runtime::cpu::selected();
    let size = model.file.file_size();
    let mut rows = Vec::new();
    // Large files are their own bandwidth test, measured next to each thread count's runs.
    let stream_model = size >= MODEL_STREAM_MIN_BYTES;
    // Per thread count: each tg run with the bandwidth measured around it (a large file with tg
    // runs), or one bandwidth through the file after the runs (a large file, prompts only);
    // a small file's buffer is streamed after all runs, below.
    let mut paired: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut bandwidths: Vec<Option<f64>> = Vec::new();
    let file_bandwidth = || read_bandwidth_of(model.file.as_bytes(), 3);
    // Runs `f`, and with `measure` also the read bandwidth right before and after it (their mean).
    let bracketed = |measure: bool, f: &mut dyn FnMut()| {
        let before = measure.then(file_bandwidth);
        f();
        before.map(|b| (b + file_bandwidth()) / 2.0)
    };
    for &t in &args.threads {
        let mut runs = Vec::new();
        for (test, n) in [("pp", args.prompt), ("tg", args.generate)] {
            if n == 0 {
                continue;
            }
            let bracket = test == "tg" && args.roofline && stream_model;
            let samples: Vec<f64> = with_threads(Some(t), || {
                if !args.no_warmup {
                    // A few generated tokens read every weight as often as a long run needs to.
                    if test == "pp" {
                        prompt_rate(&model, n, 0, kv)?;
                    } else {
                        generation_rate(&model, n.min(4), 0, kv)?;
                    }
                }
                (0..args.reps.max(1))
                    .map(|r| {
                        if test == "pp" {
                            return prompt_rate(&model, n, r as u64 + 1, kv);
                        }
                        let mut rate = Ok(0.0);
                        let around =
                            bracketed(bracket, &mut || rate = generation_rate(&model, n, r as u64 + 1, kv));
                        let rate = rate?;
                        if let Some(bandwidth) = around {
                            runs.push((rate, bandwidth));
                        }
                        Ok(rate)
                    })
                    .collect::<tern_runtime::Result<Vec<f64>>>()
            })??;
            let (median, min, max) = summary(&samples);
            if !args.json {
                eprintln!("{test}{n} threads {t}: {median:.2} t/s");
            }
            rows.push(serde_json::json!({"threads": t, "test": format!("{test}{n}"), "samples": samples, "median": median, "min": min, "max": max}));
        }
        for &b in args.batch.iter().filter(|&&b| b > 0 && args.generate > 0) {
            let n = args.generate;
            let samples: Vec<f64> = with_threads(Some(t), || {
                if !args.no_warmup {
                    batch_generation_rate(&model, n.min(2), b, 0, kv)?;
                }
                (0..args.reps.max(1))
                    .map(|r| batch_generation_rate(&model, n, b, r as u64 + 1, kv))
                    .collect::<tern_runtime::Result<Vec<f64>>>()
            })??;
            let (median, min, max) = summary(&samples);
            if !args.json {
                eprintln!("tg{n} b{b} threads {t}: {median:.2} t/s");
            }
            rows.push(serde_json::json!({"threads": t, "test": format!("tg{n} b{b}"), "batch": b, "samples": samples, "median": median, "min": min, "max": max}));
        }
        let after = args.roofline && stream_model && runs.is_empty();
        bandwidths.push(if after {
            Some(with_threads(Some(t), || read_bandwidth_of(model.file.as_bytes(), 5))?)
        } else {
            None
        });
        paired.push(runs);
    }
    // Before any bandwidth buffer, so the RSS is the model's.
    let rss = peak_rss_bytes();
    let pages = mapped_file_pages(&args.model);
    let bytes_per_token = model.bytes_per_token();
    let mut roofs = Vec::new();
    if args.roofline {
        for ((&t, runs), bandwidth) in args.threads.iter().zip(paired).zip(bandwidths) {
            if !runs.is_empty() {
                roofs.push((t, Roofline::paired(&runs, bytes_per_token), runs));
                continue;
            }
            let bandwidth = match bandwidth {
                Some(b) => b,
                None => with_threads(Some(t), || read_bandwidth(args.roofline_mib << 20, 5))?,
            };
            let tg = rows
                .iter()
                .find(|r| {
                    r["threads"] == t
                        && r["test"].as_str().is_some_and(|s| s.starts_with("tg") && r["batch"].is_null())
                })
                .and_then(|r| r["median"].as_f64());
            roofs.push((t, Roofline::new(bandwidth, bytes_per_token, tg.unwrap_or(f64::NAN)), Vec::new()));
        }
    }
    let mut profiles = Vec::new();
    if args.profile {
        for &t in &args.threads {
            if args.prompt > 0 {
                let p = with_threads(Some(t), || prompt_profile(&model, args.prompt, 1, kv))??;
                profiles.push((t, format!("pp{}", args.prompt), p, None));
            }
            let n = if args.generate == 0 && args.prompt == 0 { 32 } else { args.generate };
            if n > 0 {
                // With --roofline, the read bandwidth around this run too, so the matmuls' and
                // the head's streaming rates can be set against it.
                let bracket = args.roofline && stream_model;
                let (p, bandwidth) = with_threads(Some(t), || {
                    let mut p = None;
                    let bandwidth =
                        bracketed(bracket, &mut || p = Some(generation_profile(&model, n, 1, kv)));
                    (p.expect("the run ran"), bandwidth)
                })?;
                profiles.push((t, format!("tg{n}"), p?, bandwidth));
            }
            for &b in args.batch.iter().filter(|&&b| b > 0 && n > 0) {
                let p = with_threads(Some(t), || batch_generation_profile(&model, n, b, 1, kv))??;
                profiles.push((t, format!("tg{n} b{b}"), p, None));
            }
        }
    }
    // A generated token streams every ternary matrix and the head once: their rates per op.
    let (ternary_bytes, head_bytes) = (model.ternary_bytes() as f64, model.head_bytes() as f64);
    let streamed = |test: &str, p: &OpProfile| -> Vec<(Op, f64)> {
        // A batch of B reads the weights once per B tokens: no one-token streaming rate.
        if !test.starts_with("tg") || test.contains(" b") {
            return Vec::new();
        }
        p.per_op
            .iter()
            .filter_map(|&(op, secs)| match op {
                Op::Ternary if secs > 0.0 => Some((op, ternary_bytes / secs)),
                Op::LmHead if secs > 0.0 => Some((op, head_bytes / secs)),
                _ => None,
            })
            .collect()
    };
    if args.json {
        let roofline: Vec<_> = roofs
            .iter()
            .map(|(t, r, runs)| {
                let runs: Vec<_> = runs
                    .iter()
                    .map(|&(tg, b)| {
                        let fraction = Roofline::new(b, bytes_per_token, tg).fraction;
                        serde_json::json!({"tg_tokens_per_s": tg, "read_bytes_per_s": b, "fraction_of_ceiling": fraction})
                    })
                    .collect();
                serde_json::json!({"threads": t, "read_bytes_per_s": r.bandwidth_bytes_per_s,
                    "bytes_per_token": r.bytes_per_token, "ceiling_tokens_per_s": r.ceiling_tokens_per_s,
                    "tg_tokens_per_s": r.measured_tokens_per_s, "fraction_of_ceiling": r.fraction,
                    "runs": runs})
            })
            .collect();
        let profile: Vec<_> = profiles
            .iter()
            .map(|(t, test, p, bandwidth)| {
                let (rate, per_token) = (p.tokens_per_s, p.seconds_per_token);
                let ops: serde_json::Map<String, serde_json::Value> = p
                    .per_op
                    .iter()
                    .map(|(op, secs)| (op.name().to_string(), serde_json::json!(secs)))
                    .collect();
                let streamed: serde_json::Map<String, serde_json::Value> = streamed(test, p)
                    .into_iter()
                    .map(|(op, rate)| (op.name().to_string(), serde_json::json!(rate)))
                    .collect();
                serde_json::json!({"threads": t, "test": test, "tokens_per_s": rate,
                    "seconds_per_token": per_token, "seconds_per_token_by_op": ops,
                    "read_bytes_per_s": bandwidth, "weight_bytes_per_s_by_op": streamed})
            })
            .collect();
        let v = serde_json::json!({
            "model": args.model, "file_bytes": size, "isa": isa.name(), "kv_type": kv.name(),
            "bytes_per_token": bytes_per_token, "peak_rss_bytes": rss,
            "bandwidth_source": if !args.roofline { "none" } else if stream_model { "model file" } else { "buffer" },
            "mapped_bytes": pages.map(|p| p.0), "mapped_in_2mib_pages_bytes": pages.map(|p| p.1),
            "results": rows,
            "roofline": roofline, "profile": profile,
        });
        return crate::print_stdout(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let name = args.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut text = String::new();
    if !rows.is_empty() {
        text += &format!(
            "| model | size | kernel | threads | test | t/s (median, min–max of {}) |\n|---|---|---|---|---|---|\n",
            args.reps.max(1)
        );
    }
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
    if let Some((mapped, huge)) = pages.filter(|p| p.0 > 0) {
        text += &format!(
            "model file mapped: {}, {:.0} % of it in 2 MiB pages{}\n",
            crate::inspect::human_bytes(mapped),
            100.0 * huge as f64 / mapped as f64,
            if huge * 2 < mapped {
                format!(
                    " (the page cache holds it in 4 KiB pages; drop it with `dd if={} iflag=nocache count=0` and the next run reads it back in 2 MiB pages, which can stream faster)",
                    args.model.display()
                )
            } else {
                String::new()
            }
        );
    }
    if !roofs.is_empty() {
        let around = roofs.iter().any(|r| !r.2.is_empty());
        text += &format!(
            "\nroofline: {} read per generated token; bandwidth streamed through {}{}\n| threads | read bandwidth | ceiling | tg | of ceiling |\n|---|---|---|---|---|\n",
            crate::inspect::human_bytes(bytes_per_token),
            if stream_model { "the model file" } else { "a buffer" },
            if around {
                " around each tg run (medians; of ceiling = the median of each run's tg over its own ceiling, listed per run)"
            } else {
                ""
            }
        );
        for (t, r, runs) in &roofs {
            let each: Vec<String> = runs
                .iter()
                .map(|&(tg, b)| format!("{:.0} %", Roofline::new(b, bytes_per_token, tg).fraction * 100.0))
                .collect();
            let range = |v: Vec<f64>| {
                let (_, lo, hi) = summary(&v);
                if v.len() > 1 { format!(" ({lo:.1}–{hi:.1})") } else { String::new() }
            };
            text += &format!(
                "| {t} | {:.1} GB/s{} | {:.2} t/s | {:.2} t/s | {:.0} %{} |\n",
                r.bandwidth_bytes_per_s / 1e9,
                range(runs.iter().map(|r| r.1 / 1e9).collect()),
                r.ceiling_tokens_per_s,
                r.measured_tokens_per_s,
                r.fraction * 100.0,
                if each.len() > 1 { format!(" ({})", each.join(", ")) } else { String::new() }
            );
        }
    }
    for (t, test, p, bandwidth) in &profiles {
        let (rate, per_token, ops) = (p.tokens_per_s, &p.seconds_per_token, &p.per_op);
        let read =
            bandwidth.map(|b| format!("; read bandwidth around it {:.1} GB/s", b / 1e9)).unwrap_or_default();
        let streamed = streamed(test, p);
        text += &format!(
            "\nprofile: {test}, {t} thread(s), {rate:.2} t/s, {:.2} ms per token{read}\n| operation | ms/token | share | weights streamed |\n|---|---|---|---|\n",
            per_token * 1e3
        );
        let mut rest = *per_token;
        for (op, secs) in ops {
            rest -= secs;
            let rate = match streamed.iter().find(|s| s.0 == *op) {
                Some((_, r)) => match bandwidth {
                    Some(b) => format!("{:.1} GB/s, {:.0} % of the read", r / 1e9, r / b * 100.0),
                    None => format!("{:.1} GB/s", r / 1e9),
                },
                None => String::new(),
            };
            text += &format!(
                "| {} | {:.3} | {:.1} % | {rate} |\n",
                op.name(),
                secs * 1e3,
                secs / per_token * 100.0
            );
        }
        text += &format!(
            "| other (residual adds, argmax, allocation) | {:.3} | {:.1} % | |\n",
            rest * 1e3,
            rest / per_token * 100.0
        );
    }
    crate::print_stdout(&text)
}
