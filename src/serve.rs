//! `tern serve`: the OpenAI-compatible HTTP server (tern-server) with its command-line options.

use crate::common::{KvArgs, SamplingArgs};
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Duration;

/// Serve a GGUF model over an OpenAI-compatible HTTP API, with continuous batching.
///
/// Up to --parallel requests are decoded together: each step is one pass over the weights for
/// every active sequence, so the total rate grows with the number of streams. Further requests
/// wait in a queue of --queue; beyond it they get 503 with Retry-After. Each sequence has its
/// own KV cache of --ctx positions; the memory this takes is printed at start.
///
/// Endpoints: POST /v1/chat/completions, POST /v1/completions (both with "stream": true as
/// server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus).
/// A request's sampling fields (temperature, top_p, top_k, min_p, repeat_penalty, seed, stop,
/// max_tokens) override the defaults below; temperature 0 gives `tern run --greedy`'s tokens.
///
/// SIGTERM or Ctrl-C: stop accepting, finish running requests (at most --shutdown-grace), exit 0.
///
/// Examples:
///   tern serve model-i2_s.gguf --parallel 8
///   curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
///     -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A GGUF model with a tokenizer.
    pub model: PathBuf,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together at most (slots).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Positions per sequence, prompt and reply together (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "TERN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Name clients give as "model" (default: the file name without .gguf).
    #[arg(long)]
    pub alias: Option<String>,
    /// Requests that may wait for a slot; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 512 * 1024)]
    pub max_body: usize,
    /// Seconds a client may take to send its request body (slower: 408).
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Seconds running requests may go on after SIGTERM before they are ended.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// No per-request lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if !(args.body_timeout > 0.0 && args.shutdown_grace >= 0.0) {
        bail!("--body-timeout must be positive and --shutdown-grace not negative");
    }
    if !args.model.is_file() {
        bail!("{}: no such file", args.model.display());
    }
    let model_id = args.alias.clone().unwrap_or_else(|| {
        args.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    });
    let options = tern_server::Options {
        model: args.model.clone(),
        model_id,
        host: args.host.clone(),
        port: args.port,
        parallel: args.parallel,
        ctx: args.ctx,
        threads: args.threads,
        kv_type: args.kv.kv_type,
        api_key: args.api_key.clone(),
        queue: args.queue,
        max_body: args.max_body,
        body_timeout: Duration::from_secs_f64(args.body_timeout),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        sampling: args.sampling.config(),
        quiet: args.quiet,
    };
    tern_server::serve(options, |addr| {
        eprintln!("listening on http://{addr} (loading {})", args.model.display());
    })?;
    eprintln!("stopped");
    Ok(())
}
