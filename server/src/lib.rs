//! `tern serve`: an OpenAI-compatible HTTP server over a GGUF model, with continuous batching.
//!
//! - [`api`]: the request bodies, checked field by field, and the OpenAI error body.
//! - [`http`]: routes, API key, body limits, responses and server-sent events (axum on tokio).
//! - [`scheduler`]: the model thread — slots, one KV cache each, one forward pass per step for
//!   every active sequence.
//! - [`stop`]: stop strings on streamed text; [`metrics`]: counters and their Prometheus form.
//!
//! The HTTP side never computes: it parses, tokenises and queues. The model thread never waits
//! on a client: it sends events into unbounded channels and notices a closed one at its next step.

pub mod api;
pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod stop;

use scheduler::Shared;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tern_runtime::model::KvType;
use tern_runtime::sampler::SamplerConfig;

/// Everything `tern serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: PathBuf,
    /// The name clients use in `model` (default: the file's stem).
    pub model_id: String,
    pub host: String,
    pub port: u16,
    /// Sequences decoded together at most (slots).
    pub parallel: usize,
    /// Positions per sequence (default: the model's, at most 4096).
    pub ctx: Option<usize>,
    pub threads: Option<usize>,
    pub kv_type: KvType,
    pub api_key: Option<String>,
    /// Requests that may wait for a slot before the next one gets a 503.
    pub queue: usize,
    pub max_body: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
    /// After SIGTERM, how long running requests may go on before they are ended.
    pub shutdown_grace: Duration,
    /// Sampling for fields a request leaves out.
    pub sampling: SamplerConfig,
    /// No per-request lines on stderr.
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the model thread panicked")]
    ModelThreadPanicked,
}

/// Binds, loads the model on its own thread (answering /health with "loading" meanwhile), and
/// serves until SIGTERM or Ctrl-C; then stops accepting, lets running requests finish (up to
/// `shutdown_grace`), and returns. `on_listening` gets the bound address (port 0 picks one).
pub fn serve(options: Options, on_listening: impl FnOnce(std::net::SocketAddr)) -> Result<(), ServeError> {
    // Two I/O threads: the HTTP side only parses, tokenises and forwards events.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", options.host, options.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        on_listening(listener.local_addr()?);
        let shared = Arc::new(Shared {
            loaded: OnceLock::new(),
            metrics: Default::default(),
            stopping: AtomicBool::new(false),
            model_thread_ended: tokio::sync::Notify::new(),
        });
        let (jobs, queue) = std::sync::mpsc::sync_channel(options.queue);
        let model_thread = {
            let (options, shared) = (options.clone(), shared.clone());
            std::thread::Builder::new()
                .name("tern-model".into())
                .spawn(move || scheduler::run(&options, shared, queue))?
        };
        let app = Arc::new(http::App {
            options: options.clone(),
            shared: shared.clone(),
            jobs: Mutex::new(Some(jobs)),
            next_id: AtomicU64::new(1),
        });
        let stop = {
            let (app, shared) = (app.clone(), shared.clone());
            async move {
                tokio::select! {
                    _ = termination() => eprintln!("stopping: finishing running requests"),
                    _ = shared.model_thread_ended.notified() => {}
                }
                shared.stopping.store(true, Ordering::Relaxed);
                // No new jobs; the model thread ends once the running ones are done.
                app.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        };
        axum::serve(listener, http::router(app)).with_graceful_shutdown(stop).await?;
        match tokio::task::spawn_blocking(move || model_thread.join()).await {
            Ok(Ok(result)) => result,
            _ => Err(ServeError::ModelThreadPanicked),
        }
    })
}

/// SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
