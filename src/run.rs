//! `tern run`: generate text from a prompt, streamed, with speed figures at the end.

use crate::common::{KvArgs, SamplingArgs, load_model, parse_ids, with_threads};
use anyhow::{Result, bail};
use std::io::Write;
use std::path::PathBuf;
use tern_runtime::generate::generate;
use tern_runtime::model::Session;
use tern_runtime::sampler::Sampler;
use tern_runtime::tokenizer::StreamDecoder;

/// Generate text from a prompt with a GGUF model, streaming tokens as they come.
///
/// Prints prompt-processing and generation speed (tokens/s) on stderr at the end.
///
/// Examples:
///   tern run model-i2_s.gguf -p "The capital of France is" -n 64
///   tern run model-i2_s.gguf -p "Once upon a time" --temp 0.7 --seed 1 -t 2
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A GGUF model (tern convert output, I2_S).
    pub model: PathBuf,
    /// The prompt text.
    #[arg(short, long, conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// The prompt as comma-separated token ids instead of text.
    #[arg(long)]
    pub tokens: Option<String>,
    /// Number of tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    /// Context length to allocate (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: Args) -> Result<()> {
    let (model, tokenizer) = load_model(&args.model)?;
    let prompt = match (&args.prompt, &args.tokens, &tokenizer) {
        (_, Some(ids), _) => parse_ids(ids)?,
        (Some(text), None, Some(tk)) => tk.encode(text, true)?,
        (Some(_), None, None) => {
            bail!("{} has no tokenizer; give the prompt as --tokens", args.model.display())
        }
        (None, None, _) => bail!("give a prompt with -p TEXT (or --tokens IDS)"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let ctx = args.ctx.unwrap_or(model.config.context.min(4096)).max(prompt.len() + args.n_predict);
    let stop =
        if args.ignore_eos { vec![] } else { tokenizer.as_ref().map(|t| t.stop.clone()).unwrap_or_default() };
    let config = args.sampling.config();
    let stats = with_threads(args.threads, || -> Result<_> {
        let mut session = Session::with_kv_type(&model, ctx, args.kv.kv_type);
        let mut sampler = Sampler::new(config);
        let mut stream = tokenizer.as_ref().map(StreamDecoder::new);
        let mut out = std::io::stdout().lock();
        if let Some(text) = &args.prompt {
            let _ = write!(out, "{text}");
            let _ = out.flush();
        }
        let mut history = Vec::new();
        let stats =
            generate(&mut session, &mut sampler, &prompt, args.n_predict, &stop, &mut history, &mut |id| {
                if stop.contains(&id) {
                    return;
                }
                let piece = match stream.as_mut() {
                    Some(s) => s.push(id),
                    None => Some(format!("{id} ")),
                };
                if let Some(p) = piece {
                    let _ = write!(out, "{p}");
                    let _ = out.flush();
                }
            })?;
        if let Some(rest) = stream.as_mut().and_then(|s| s.finish()) {
            let _ = write!(out, "{rest}");
        }
        let _ = writeln!(out);
        Ok(stats)
    })??;
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} t/s) | generation: {} tokens in {:.2} s ({:.1} t/s) | {} threads, {}, seed {}",
        stats.prompt_tokens,
        stats.prompt_secs,
        stats.prompt_rate(),
        stats.generated,
        stats.gen_secs,
        stats.gen_rate(),
        args.threads.unwrap_or_else(rayon::current_num_threads),
        tern_runtime::cpu::selected().name(),
        config.seed
    );
    Ok(())
}
