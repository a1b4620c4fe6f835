//! `tern verify`: numeric parity of a converted GGUF against the f32 reference on its source
//! checkpoint. Exit code 1 when a threshold fails.

use crate::common::{CheckFailed, load_model, parse_ids, with_threads};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tern_runtime::parity::Thresholds;
use tern_runtime::reference::{Arithmetic, Reference};
use tern_runtime::verify::{VerifyOptions, VerifyReport, default_prompts, verify};

/// Check a converted GGUF against the f32 reference forward on its source checkpoint.
///
/// Runs a few prompts through both. The gate is module by module: every runtime piece (embedding,
/// each norm, each ternary projection, the attention core, the activation, the output head) is
/// fed the reference's own input and must reproduce the reference's output (rel-L2 ≤
/// --max-module-rel-l2). That catches any wrong code, scale, layout or shape at any model size.
/// Also reported: each whole layer fed the reference's input (teacher forced), the free-running
/// residuals, and per prompt the logits' rel-L2, max abs, top-1 agreement and KL divergence;
/// those include int8 rounding flips that compound through the network, and gate only with
/// --strict. Exits 1 when the gate fails (details: docs/reference.md).
///
/// The reference runs one decoder layer at a time over every prompt, so it holds about one
/// layer's weights in f32 (0.28 GB for 2B-4T, 0.87 GB for an 8B model) beside the mapped
/// files: any model that converts also verifies. The summary ends with the time and the peak
/// memory.
///
/// Example:
///   tern verify 2b4t-i2_s.gguf --reference bitnet-b1.58-2B-4T-bf16
#[derive(clap::Args, Clone)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The GGUF to check.
    pub model: PathBuf,
    /// The Hugging Face checkpoint folder it was converted from.
    #[arg(long)]
    pub reference: PathBuf,
    /// Prompts, one per line: text (tokenized with the model's tokenizer) or comma-separated
    /// token ids. Default: two sentences and two random-id prompts.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// One short prompt (8 tokens) instead of the default set: the check `tern convert` runs
    /// before writing its output.
    #[arg(long, conflicts_with = "prompts")]
    pub quick: bool,
    /// Largest module rel-L2 allowed (the gate).
    #[arg(long, default_value_t = VerifyOptions::default().max_module_rel_l2)]
    pub max_module_rel_l2: f64,
    /// Also fail on the teacher-forced layer and end-to-end logits thresholds below.
    #[arg(long)]
    pub strict: bool,
    /// With --strict: largest logits rel-L2 allowed for any prompt.
    #[arg(long, default_value_t = Thresholds::default().max_rel_l2)]
    pub max_rel_l2: f64,
    /// With --strict: largest median (over prompts) logits rel-L2 allowed.
    #[arg(long, default_value_t = Thresholds::default().median_rel_l2)]
    pub median_rel_l2: f64,
    /// With --strict: largest teacher-forced per-layer rel-L2 allowed.
    #[arg(long, default_value_t = VerifyOptions::default().max_layer_rel_l2)]
    pub max_layer_rel_l2: f64,
    /// With --strict: top-1 must agree where the reference's top-2 gap exceeds this.
    #[arg(long, default_value_t = Thresholds::default().min_gap)]
    pub min_gap: f32,
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub fn for_model(model: PathBuf, reference: PathBuf) -> Args {
        Args {
            model,
            reference,
            prompts: None,
            quick: false,
            max_module_rel_l2: VerifyOptions::default().max_module_rel_l2,
            strict: false,
            max_rel_l2: Thresholds::default().max_rel_l2,
            median_rel_l2: Thresholds::default().median_rel_l2,
            max_layer_rel_l2: VerifyOptions::default().max_layer_rel_l2,
            min_gap: Thresholds::default().min_gap,
            threads: None,
            json: false,
        }
    }
}

fn read_prompts(path: &Path, tk: Option<&tern_runtime::tokenizer::Tokenizer>) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut prompts = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ') {
            prompts.push(parse_ids(line)?);
        } else {
            match tk {
                Some(tk) => prompts.push(tk.encode(line, true)?),
                None => bail!("{}: text prompts need a model with a tokenizer", path.display()),
            }
        }
    }
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

/// Runs the check; `Ok(report)` whether or not it passed.
pub fn check(args: &Args) -> Result<VerifyReport> {
    let (model, tokenizer) = load_model(&args.model)?;
    // The exact-integer form: what a correct kernel computes (runtime/src/reference/bitlinear.rs),
    // streamed: one layer's f32 weights at a time, whatever the model's size.
    let reference = Reference::streamed(&args.reference, Arithmetic::Exact)?;
    if let Some(available) = crate::common::available_memory()
        && reference.layer_bytes() > available
    {
        bail!(
            "the f32 reference needs {:.2} GiB for one layer of {}, and only {:.2} GiB are available",
            reference.layer_bytes() as f64 / (1u64 << 30) as f64,
            args.reference.display(),
            available as f64 / (1u64 << 30) as f64
        );
    }
    let prompts = match &args.prompts {
        Some(p) => read_prompts(p, tokenizer.as_ref())?,
        None => {
            let mut prompts = default_prompts(model.config.vocab, tokenizer.as_ref())?;
            if args.quick {
                prompts.truncate(1);
                prompts[0].truncate(8);
            }
            prompts
        }
    };
    let opts = VerifyOptions {
        thresholds: Thresholds {
            median_rel_l2: args.median_rel_l2,
            max_rel_l2: args.max_rel_l2,
            min_gap: args.min_gap,
        },
        max_layer_rel_l2: args.max_layer_rel_l2,
        max_module_rel_l2: args.max_module_rel_l2,
        strict: args.strict,
    };
    Ok(with_threads(args.threads, || verify(&model, &reference, &prompts, &opts))??)
}

pub fn render(args: &Args, r: &VerifyReport) -> String {
    let mut s = format!(
        "verify {} against {} (f32 reference, exact arithmetic)\n\n",
        args.model.display(),
        args.reference.display()
    );
    s += &format!(
        "embedding lookup rel-L2 {:.3e}, output head rel-L2 {:.3e} (bound {:.0e}), head KL {:.2e} nats\n\n",
        r.embedding, r.output_head, r.output_head_bound, r.output_head_kl
    );
    s += "layer  modules (worst)              layer teacher-forced  free-running\n";
    for l in &r.layers {
        s += &format!(
            "{:>5}  {:>9.3e} {:<18}  {:>20.3e}  {:>12.3e}\n",
            l.layer, l.modules, l.worst_module, l.teacher_forced, l.free_running
        );
    }
    s += "\nprompt  tokens  logits rel-L2   max abs  top-1     mean KL\n";
    for (i, (p, l)) in r.prompts.iter().zip(&r.logits).enumerate() {
        s += &format!(
            "{i:>6}  {:>6}  {:>13.3e}  {:>8.2e}  {:>3}/{:<3}  {:>9.2e}\n",
            p.len(),
            l.rel_l2,
            l.max_abs,
            l.top1_agree,
            l.top1_considered,
            l.mean_kl
        );
    }
    s += &match (&r.end_to_end, args.strict) {
        (None, _) => "\nend to end: within the --strict thresholds\n".to_string(),
        (Some(why), true) => format!("\nend to end: {why}\n"),
        (Some(why), false) => format!(
            "\nend to end (informational; int8 rounding flips compound, see docs/reference.md): {why}\n"
        ),
    };
    match &r.failure {
        None => s += &format!("PASS: every module within {:.0e}\n", args.max_module_rel_l2),
        Some(why) => s += &format!("FAIL: {why}\n"),
    }
    s
}

pub fn json(r: &VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "pass": r.failure.is_none(),
        "failure": r.failure,
        "end_to_end": r.end_to_end,
        "embedding_rel_l2": r.embedding,
        "output_head_rel_l2": r.output_head,
        "output_head_kl": r.output_head_kl,
        "output_head_bound": r.output_head_bound,
        "layers": r.layers.iter().map(|l| serde_json::json!({
            "layer": l.layer, "modules_rel_l2": l.modules, "worst_module": l.worst_module,
            "teacher_forced_rel_l2": l.teacher_forced, "free_running_rel_l2": l.free_running,
        })).collect::<Vec<_>>(),
        "prompts": r.prompts.iter().zip(&r.logits).map(|(p, l)| serde_json::json!({
            "tokens": p.len(), "rel_l2": l.rel_l2, "max_abs": l.max_abs,
            "top1_agree": l.top1_agree, "top1_considered": l.top1_considered, "mean_kl": l.mean_kl,
        })).collect::<Vec<_>>(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let started = std::time::Instant::now();
    let report = check(&args)?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = tern_runtime::bench::peak_rss_bytes();
    let text = if args.json {
        let mut j = json(&report);
        j["seconds"] = serde_json::json!(seconds);
        j["peak_rss_bytes"] = serde_json::json!(peak);
        j["peak_virtual_bytes"] = serde_json::json!(tern_runtime::bench::peak_virtual_bytes());
        serde_json::to_string_pretty(&j)? + "\n"
    } else {
        let cost = match peak {
            Some(b) => format!("{seconds:.1} s, peak memory {:.2} GiB", b as f64 / (1u64 << 30) as f64),
            None => format!("{seconds:.1} s"),
        };
        render(&args, &report) + &format!("({cost})\n")
    };
    crate::print_stdout(&text)?;
    match report.failure {
        None => Ok(()),
        Some(why) => Err(CheckFailed(format!("verification failed: {why}")).into()),
    }
}
