//! `tern perplexity`: perplexity of a model over a text file, and optionally the KL divergence of
//! its next-token distributions against a reference model's.

use crate::common::{load_model, with_threads};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use tern_runtime::model::Model;
use tern_runtime::perplexity::{
    LogitSource, PerplexityReport, ReferenceSource, RuntimeSource, WindowScore, perplexity, window_count,
};
use tern_runtime::reference::Reference;
use tern_runtime::tokenizer::Tokenizer;

/// Perplexity of a model over a text, windowed as llama.cpp's perplexity tool.
///
/// The text is tokenised (BOS first) and cut into non-overlapping windows of --ctx tokens; each
/// window's first token becomes BOS, and the tokens in its second half are scored, so every
/// scored token sees at least ctx/2 tokens of context. Lower is better; numbers are comparable
/// only between runs with the same tokenizer, text and --ctx.
///
/// MODEL and REF are each a GGUF file (run by tern's runtime) or a Hugging Face checkpoint
/// folder (run by tern's f32 reference forward, transformers' semantics). With
/// --kl-divergence REF, both run every window and the report adds the mean and maximum
/// KL(REF ‖ MODEL) in nats and how often their most likely tokens agree: what a conversion or
/// a quantised head costs, position by position.
///
/// Examples:
///   tern perplexity demo-i2_s.gguf --file tests/fixtures/demo/heldout.txt
///   tern perplexity demo-i2_s.gguf --file heldout.txt --kl-divergence tests/fixtures/demo/packed
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A GGUF file or a checkpoint folder.
    pub model: PathBuf,
    /// The text to score (UTF-8).
    #[arg(short, long)]
    pub file: PathBuf,
    /// Window length in tokens (default: 512, or the model's context if smaller).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    /// Score at most this many windows (default: all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Also run REF (a GGUF file or a checkpoint folder) on every window and report the KL
    /// divergence of MODEL's distributions from REF's, and top-1 agreement.
    #[arg(long, value_name = "REF")]
    pub kl_divergence: Option<PathBuf>,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Print the report as JSON (per-window values included).
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The f32 reference on a checkpoint folder: every layer loaded at once when that fits in the
/// available memory (each window then runs at full speed), else streamed a layer at a time (any
/// size fits; each window decodes the layers again).
fn load_reference(path: &Path) -> Result<Reference> {
    use tern_runtime::reference::Arithmetic;
    let streamed = Reference::streamed(path, Arithmetic::Transformers)?;
    let whole = streamed.layer_bytes() * streamed.spec.layers as u64
        + 8 * (streamed.spec.vocab * streamed.spec.hidden) as u64;
    match crate::common::available_memory() {
        Some(available) if whole > available / 10 * 8 => {
            eprintln!(
                "note: the f32 reference of {} needs {:.1} GiB whole, {:.1} GiB are available: running it a layer at a time (slower)",
                path.display(),
                whole as f64 / (1u64 << 30) as f64,
                available as f64 / (1u64 << 30) as f64
            );
            Ok(streamed)
        }
        _ => Ok(Reference::load(path)?),
    }
}

/// A loaded engine: the runtime on a GGUF, or the f32 reference on a checkpoint folder.
enum Engine {
    Gguf(Box<Model>),
    Checkpoint(Box<Reference>),
}

impl Engine {
    fn load(path: &Path) -> Result<(Engine, Option<Tokenizer>)> {
        if path.is_dir() {
            let reference = load_reference(path)?;
            let tokenizer = Tokenizer::from_hf_dir(path)?;
            Ok((Engine::Checkpoint(Box::new(reference)), tokenizer))
        } else {
            let (model, tokenizer) = load_model(path)?;
            Ok((Engine::Gguf(Box::new(model)), tokenizer))
        }
    }

    fn context(&self) -> usize {
        match self {
            Engine::Gguf(m) => m.config.context,
            Engine::Checkpoint(r) => r.spec.context,
        }
    }

    fn source(&self, ctx: usize) -> Box<dyn LogitSource + '_> {
        match self {
            Engine::Gguf(m) => Box::new(RuntimeSource::new(m, ctx)),
            Engine::Checkpoint(r) => Box::new(ReferenceSource(r)),
        }
    }
}

/// Loads the models, tokenises the text and scores it; `bar` counts the windows.
pub fn compute(args: &Args, bar: &ProgressBar) -> Result<PerplexityReport> {
    let text = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", args.file.display()))?;
    let (model, tokenizer) = Engine::load(&args.model)?;
    let (reference, ref_tokenizer) = match args.kl_divergence.as_deref().map(Engine::load).transpose()? {
        Some((engine, tokenizer)) => (Some(engine), tokenizer),
        None => (None, None),
    };
    // MODEL's tokenizer, else REF's: both run the same token ids.
    let Some(tokenizer) = tokenizer.or(ref_tokenizer) else {
        bail!("{} has no tokenizer; perplexity needs one to read text", args.model.display());
    };
    let limit = model.context().min(reference.as_ref().map_or(usize::MAX, Engine::context));
    let ctx = args.ctx.unwrap_or(512.min(limit));
    if ctx > limit {
        bail!("--ctx {ctx} is longer than the model's context of {limit} tokens");
    }
    let mut ids = tokenizer.encode(&text, true)?;
    if let Some(chunks) = args.chunks {
        ids.truncate(chunks.saturating_mul(ctx).min(ids.len()));
    }
    bar.set_length(window_count(ids.len(), ctx) as u64);
    let report = with_threads(args.threads, || -> Result<PerplexityReport> {
        let mut source = model.source(ctx);
        let mut ref_source = reference.as_ref().map(|r| r.source(ctx));
        let on_window = |w: &WindowScore| {
            bar.inc(1);
            bar.set_message(format!("perplexity {:.4}", w.running_perplexity));
        };
        Ok(perplexity(&ids, ctx, tokenizer.bos, source.as_mut(), ref_source.as_deref_mut(), on_window)?)
    })??;
    Ok(report)
}

fn render(args: &Args, r: &PerplexityReport) -> String {
    let mut s = format!(
        "perplexity of {} over {}: {} tokens, {} windows of {}, {} tokens scored\n\n",
        args.model.display(),
        args.file.display(),
        r.tokens,
        r.windows,
        r.ctx,
        r.scored_tokens
    );
    s += &format!(
        "perplexity  {:.4} ± {:.4}   (mean NLL {:.5} nats)\n",
        r.perplexity, r.perplexity_stderr, r.nll
    );
    if let (Some(kl), Some(reference)) = (&r.kl, &args.kl_divergence) {
        s += &format!("reference   {:.4}   ({})\n", kl.reference_perplexity, reference.display());
        s += &format!(
            "KL(reference ‖ model)  mean {:.3e}  max {:.3e} nats over {} positions\ntop-1 agreement        {:.2} %\n",
            kl.mean_kl,
            kl.max_kl,
            kl.positions,
            100.0 * kl.top1_agreement
        );
    }
    s
}

pub fn run(args: Args) -> Result<()> {
    let bar = if args.quiet || args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} windows  {msg}")
            .expect("static template is valid"),
    );
    let report = compute(&args, &bar);
    bar.finish_and_clear();
    let report = report?;
    let text = if args.json { serde_json::to_string_pretty(&report)? + "\n" } else { render(&args, &report) };
    crate::print_stdout(&text)
}
