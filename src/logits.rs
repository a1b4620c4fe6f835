//! `tern logits`: the logits of a token sequence, as a .npy file or top-5 per position.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use tern_runtime::model::{Session, Want};
use tern_runtime::reference::Reference;

/// Compute the logits of a token sequence (all positions, one pass).
///
/// MODEL is a GGUF file (run by tern's runtime) or a Hugging Face checkpoint folder (run by
/// tern's f32 reference forward, transformers' semantics), so two engines' outputs can be
/// compared position by position. Writes the f32 logits [T, vocab] as a little-endian NumPy
/// .npy file (format 1.0) with --out, prints the top 5 per position as JSON with --json, or as
/// text otherwise.
///
/// Example:
///   tern logits bitnet-b1.58-2B-4T-bf16 --tokens 128000,791,6864 --out logits.npy
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A GGUF file or a checkpoint folder.
    pub model: PathBuf,
    /// Comma-separated token ids, e.g. 1,17,923.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<u32>,
    /// Write the logits here as .npy (refuses to overwrite without --force).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Print the top 5 tokens per position as JSON.
    #[arg(long)]
    pub json: bool,
    /// Overwrite --out if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(out) = args.out.as_ref().filter(|o| o.exists() && !args.force) {
        bail!("{} already exists; pass --force to overwrite it", out.display());
    }
    if args.tokens.is_empty() {
        bail!("give at least one token id with --tokens");
    }
    let (vocab, logits) = crate::common::with_threads(args.threads, || -> Result<(usize, Vec<f32>)> {
        if args.model.is_dir() {
            // One forward pass decodes each layer once either way: streamed, it holds one at a time.
            let model = Reference::streamed(&args.model, tern_runtime::reference::Arithmetic::Transformers)?;
            Ok((model.spec.vocab, model.prompt_logits(&args.tokens)?))
        } else {
            let model = tern_runtime::model::Model::load(&args.model)?;
            let mut session = Session::new(&model, args.tokens.len());
            Ok((model.config.vocab, session.forward(&args.tokens, Want::All, None)?))
        }
    })??;
    if let Some(out) = &args.out {
        let mut file = tern_converters::output::AtomicFile::create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        tern_formats::npy::write_f32(&mut file, &[args.tokens.len(), vocab], &logits)?;
        file.commit().with_context(|| format!("cannot write {}", out.display()))?;
    }
    let top: Vec<serde_json::Value> = logits
        .chunks_exact(vocab)
        .zip(&args.tokens)
        .enumerate()
        .map(|(pos, (row, &token))| {
            let mut idx: Vec<usize> = (0..vocab).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let top: Vec<_> =
                idx[..5.min(vocab)].iter().map(|&i| serde_json::json!({"id": i, "logit": row[i]})).collect();
            serde_json::json!({"position": pos, "token": token, "top": top})
        })
        .collect();
    if args.json {
        return crate::print_stdout(&(serde_json::to_string_pretty(&top)? + "\n"));
    }
    if args.out.is_none() {
        let mut text = String::new();
        for p in &top {
            let items: Vec<String> = p["top"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{}:{:.3}", t["id"], t["logit"].as_f64().unwrap_or(0.0)))
                .collect();
            text += &format!("pos {:>4} token {:>7} → {}\n", p["position"], p["token"], items.join("  "));
        }
        return crate::print_stdout(&text);
    }
    Ok(())
}
