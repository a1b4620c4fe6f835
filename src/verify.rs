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
/// Runs a few prompts through both and reports, per layer, the residual error when the runtime
/// layer is fed the reference's input (teacher forced) and when it runs on its own (free
/// running), and per prompt the logits' rel-L2, max abs difference, top-1 agreement and KL
/// divergence. Exits 1 when a threshold fails (defaults: docs/reference.md).
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
    /// Largest logits rel-L2 allowed for any prompt.
    #[arg(long, default_value_t = Thresholds::default().max_rel_l2)]
    pub max_rel_l2: f64,
    /// Largest median (over prompts) logits rel-L2 allowed.
    #[arg(long, default_value_t = Thresholds::default().median_rel_l2)]
    pub median_rel_l2: f64,
    /// Largest teacher-forced per-layer rel-L2 allowed.
    #[arg(long, default_value_t = VerifyOptions::default().max_layer_rel_l2)]
    pub max_layer_rel_l2: f64,
    /// Top-1 must agree where the reference's top-2 gap exceeds this.
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
    // The exact-integer form: what a correct kernel computes (runtime/src/reference/bitlinear.rs).
    let reference = Reference::load_with(&args.reference, Arithmetic::Exact)?;
    let prompts = match &args.prompts {
        Some(p) => read_prompts(p, tokenizer.as_ref())?,
        None => default_prompts(model.config.vocab, tokenizer.as_ref())?,
    };
    let opts = VerifyOptions {
        thresholds: Thresholds {
            median_rel_l2: args.median_rel_l2,
            max_rel_l2: args.max_rel_l2,
            min_gap: args.min_gap,
        },
        max_layer_rel_l2: args.max_layer_rel_l2,
    };
    Ok(with_threads(args.threads, || verify(&model, &reference, &prompts, &opts))??)
}

pub fn render(args: &Args, r: &VerifyReport) -> String {
    let mut s =
        format!("verify {} against {} (f32 reference)\n\n", args.model.display(), args.reference.display());
    s += "layer  teacher-forced rel-L2  free-running rel-L2\n";
    for l in &r.layers {
        s += &format!("{:>5}  {:>21.3e}  {:>19.3e}\n", l.layer, l.teacher_forced, l.free_running);
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
    match &r.failure {
        None => s += "\nPASS\n",
        Some(why) => s += &format!("\nFAIL: {why}\n"),
    }
    s
}

pub fn json(r: &VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "pass": r.failure.is_none(),
        "failure": r.failure,
        "layers": r.layers.iter().map(|l| serde_json::json!({"layer": l.layer, "teacher_forced_rel_l2": l.teacher_forced, "free_running_rel_l2": l.free_running})).collect::<Vec<_>>(),
        "prompts": r.prompts.iter().zip(&r.logits).map(|(p, l)| serde_json::json!({
            "tokens": p.len(), "rel_l2": l.rel_l2, "max_abs": l.max_abs,
            "top1_agree": l.top1_agree, "top1_considered": l.top1_considered, "mean_kl": l.mean_kl,
        })).collect::<Vec<_>>(),
    })
}

pub fn run(args: Args) -> Result<()> {
    let report = check(&args)?;
    let text =
        if args.json { serde_json::to_string_pretty(&json(&report))? + "\n" } else { render(&args, &report) };
    crate::print_stdout(&text)?;
    match report.failure {
        None => Ok(()),
        Some(why) => Err(CheckFailed(format!("verification failed: {why}")).into()),
    }
}
