//! `tern chat`: an interactive conversation using the model's chat template.

use crate::common::{KvArgs, SamplingArgs, load_model, with_threads};
use anyhow::{Result, bail};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use tern_runtime::generate::generate;
use tern_runtime::model::Session;
use tern_runtime::sampler::Sampler;
use tern_runtime::tokenizer::StreamDecoder;

/// Chat with a GGUF model. Type a message and press Enter; `/reset` starts over, `/quit` (or
/// end of input) leaves.
///
/// The conversation is formatted with the model's chat template (tokenizer.chat_template), or
/// bitnet-b1.58-2B-4T's template when the file has none. The KV cache is kept between turns, so
/// only new text is processed.
#[derive(clap::Args)]
pub struct Args {
    /// A GGUF model with a tokenizer.
    pub model: PathBuf,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub n_predict: usize,
    /// Context length to allocate (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    #[arg(short, long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: Args) -> Result<()> {
    let (model, tokenizer) = load_model(&args.model)?;
    let Some(tk) = tokenizer else { bail!("{} has no tokenizer; tern chat needs one", args.model.display()) };
    let ctx = args.ctx.unwrap_or(model.config.context.min(4096));
    let config = args.sampling.config();
    with_threads(args.threads, || -> Result<()> {
        let mut session = Session::with_kv_type(&model, ctx, args.kv.kv_type);
        let mut sampler = Sampler::new(config);
        let mut messages: Vec<(String, String)> =
            args.system.iter().map(|s| ("system".to_string(), s.clone())).collect();
        // Tokens whose keys and values are in the cache, in order.
        let mut cached: Vec<u32> = Vec::new();
        let stdin = std::io::stdin();
        let mut out = std::io::stdout().lock();
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim();
            match line {
                "" => continue,
                "/quit" | "/exit" => break,
                "/reset" => {
                    messages.retain(|(r, _)| r == "system");
                    session.reset();
                    cached.clear();
                    eprintln!("(conversation reset)");
                    continue;
                }
                _ => {}
            }
            messages.push(("user".into(), line.to_string()));
            let prompt = tk.encode_chat(&messages)?;
            // Reuse the cache for the shared prefix; process only what is new.
            let common = cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
            session.rewind(common);
            cached.truncate(common);
            if prompt.len() + args.n_predict > session.context() {
                bail!(
                    "the conversation no longer fits the context of {} tokens; /reset or use --ctx",
                    session.context()
                );
            }
            let mut stream = StreamDecoder::new(&tk);
            let mut reply = String::new();
            let mut history = cached.clone();
            let stats = generate(
                &mut session,
                &mut sampler,
                &prompt[common..],
                args.n_predict,
                &tk.stop,
                &mut history,
                &mut |id| {
                    if tk.stop.contains(&id) {
                        return;
                    }
                    if let Some(p) = stream.push(id) {
                        reply += &p;
                        let _ = write!(out, "{p}");
                        let _ = out.flush();
                    }
                },
            )?;
            if let Some(rest) = stream.finish() {
                reply += &rest;
                let _ = write!(out, "{rest}");
            }
            let _ = writeln!(out);
            // The last sampled token is never fed back, so it is not in the cache.
            history.pop();
            cached = history;
            messages.push(("assistant".into(), reply.trim().to_string()));
            eprintln!("[{} tokens, {:.1} t/s]", stats.generated, stats.gen_rate());
        }
        Ok(())
    })?
}
