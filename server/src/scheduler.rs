//! The model thread: loads the model, keeps `--parallel` slots (one KV cache each) and runs
//! continuous batching. Each step is one forward pass carrying the next token of every decoding
//! sequence and, beside them, a chunk of a waiting prompt; requests join and leave between
//! steps. Every request's tokens are the ones `tern run` would give it: a batched pass computes
//! each sequence's logits bit for bit as a pass of its own would (`Session::forward_batch`).

use crate::api::ApiError;
use crate::metrics::Metrics;
use crate::stop::StopMatcher;
use crate::{Options, ServeError};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tern_runtime::model::{BatchPart, KvCache, MICRO_BATCH, Model, Session, Want};
use tern_runtime::sampler::{Sampler, SamplerConfig};
use tern_runtime::tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

/// Prompt tokens a step carries while other sequences are decoding: a long prompt joins in
/// chunks of this many, so each chunk delays the others' next token by a short pass only.
/// With nothing decoding, a prompt runs in chunks of [`MICRO_BATCH`].
pub const PREFILL_WHILE_DECODING: usize = 32;

/// A request for the model thread: token ids in, events out.
pub struct Job {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub events: UnboundedSender<Event>,
}

/// What the model thread tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// Generated text (complete UTF-8, never part of a stop string).
    Text(String),
    Done(Finish),
    Failed(ApiError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// "stop" (end of sequence or a stop string) or "length" (max_tokens or the context).
    pub reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the HTTP side needs from the loaded model.
pub struct Loaded {
    pub model_id: String,
    pub tokenizer: Tokenizer,
    /// Positions per sequence.
    pub ctx: usize,
    pub vocab: usize,
}

/// State both sides of the server see.
pub struct Shared {
    pub loaded: OnceLock<Arc<Loaded>>,
    pub metrics: Metrics,
    /// Set when SIGTERM (or Ctrl-C) arrives: queued requests are refused, running ones finish.
    pub stopping: AtomicBool,
    /// Woken when the model thread ends on its own (a load error), to stop the HTTP side.
    pub model_thread_ended: tokio::sync::Notify,
}

/// One sequence in progress.
struct Slot<'t> {
    job: Job,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The sampled token to feed next (decoding), none while the prompt is still going in.
    next: Option<u32>,
    sampler: Sampler,
    /// Prompt and generated tokens (the repetition penalty's window).
    history: Vec<u32>,
    generated: usize,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    /// Ended on a stop string: nothing after it may be sent.
    cut: bool,
    started: Instant,
}

/// Loads the model, publishes it in `shared`, and serves `jobs` until they stop coming or the
/// server stops. Runs on its own thread, on a rayon pool of `options.threads`.
pub fn run(options: &Options, shared: Arc<Shared>, jobs: Receiver<Job>) -> Result<(), ServeError> {
    let result = load_and_serve(options, &shared, jobs);
    shared.model_thread_ended.notify_one();
    result
}

fn load_and_serve(options: &Options, shared: &Arc<Shared>, jobs: Receiver<Job>) -> Result<(), ServeError> {
    let started = Instant::now();
    let path = &options.model;
    let model = Model::load(path).map_err(|e| ServeError::Load(e.to_string()))?;
    let tokenizer = Tokenizer::from_gguf(&model.file)
        .map_err(|e| ServeError::Load(format!("{}: {e}", path.display())))?
        .ok_or_else(|| {
            ServeError::Load(format!("{} has no tokenizer; tern serve needs one", path.display()))
        })?;
    let c = &model.config;
    let ctx = options.ctx.unwrap_or(c.context.min(4096)).clamp(1, c.context.max(1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads.unwrap_or(0))
        .thread_name(|i| format!("tern-compute-{i}"))
        .build()
        .map_err(|e| ServeError::Load(format!("cannot start threads: {e}")))?;
    pool.install(move || {
        let mut session = Session::with_kv_type(&model, 1, options.kv_type);
        let caches: Vec<KvCache> =
            (0..options.parallel).map(|_| KvCache::new(&model.config, ctx, options.kv_type)).collect();
        let kv_bytes = KvCache::bytes_for(&model.config, ctx, options.kv_type) * options.parallel;
        let loaded = Arc::new(Loaded {
            model_id: options.model_id.clone(),
            tokenizer,
            ctx,
            vocab: model.config.vocab,
        });
        shared.metrics.slots_total.store(options.parallel, Ordering::Relaxed);
        eprintln!(
            "ready in {:.1} s: {} ({}), {} slots × {} positions, KV cache at most {} ({}), {} threads, {}",
            started.elapsed().as_secs_f64(),
            options.model_id,
            human_bytes(std::fs::metadata(path).map_or(0, |m| m.len())),
            options.parallel,
            ctx,
            human_bytes(kv_bytes as u64),
            options.kv_type.name(),
            rayon::current_num_threads(),
            session.isa.name(),
        );
        let _ = shared.loaded.set(loaded.clone());
        serve_jobs(&mut session, caches, &loaded, shared, &jobs, options);
    });
    Ok(())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

/// The scheduling loop.
fn serve_jobs(
    session: &mut Session,
    mut free: Vec<KvCache>,
    loaded: &Loaded,
    shared: &Shared,
    jobs: &Receiver<Job>,
    options: &Options,
) {
    let metrics = &shared.metrics;
    let tokenizer = &loaded.tokenizer;
    let mut slots: VecDeque<Slot> = VecDeque::new();
    let mut stopping_since: Option<Instant> = None;
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            stopping_since.get_or_insert_with(Instant::now);
            while let Ok(job) = jobs.try_recv() {
                metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Failed(ApiError::unavailable("the server is shutting down")));
            }
        }
        // Admit waiting requests into free slots; sleep on the queue only when idle.
        while stopping_since.is_none() && !free.is_empty() {
            let job = if slots.is_empty() {
                match jobs.recv_timeout(Duration::from_millis(100)) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut cache = free.pop().expect("a free cache was checked for");
            cache.reset();
            let history = job.prompt.clone();
            slots.push_back(Slot {
                sampler: Sampler::new(job.sampling),
                stops: StopMatcher::new(job.stop.clone()),
                job,
                cache,
                fed: 0,
                next: None,
                history,
                generated: 0,
                decoder: StreamDecoder::new(tokenizer),
                cut: false,
                started: Instant::now(),
            });
        }
        // A client that went away frees its slot now.
        slots.retain_mut(|s| {
            let gone = s.job.events.is_closed();
            if gone {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                free.push(std::mem::take(&mut s.cache));
            }
            !gone
        });
        if let Some(since) = stopping_since
            && since.elapsed() >= options.shutdown_grace
        {
            // Out of time: what each sequence has so far is its answer.
            for mut s in slots.drain(..) {
                finish(&mut s, "length", options.quiet);
            }
        }
        metrics.slots_busy.store(slots.len(), Ordering::Relaxed);
        if slots.is_empty() {
            if stopping_since.is_some() {
                return;
            }
            continue;
        }
        step(session, &mut slots, &mut free, loaded, metrics, options);
    }
}

/// One forward pass over every slot that has work, then one sampled token per finished prompt
/// or decoding sequence.
fn step(
    session: &mut Session,
    slots: &mut VecDeque<Slot>,
    free: &mut Vec<KvCache>,
    loaded: &Loaded,
    metrics: &Metrics,
    options: &Options,
) {
    let decoding = slots.iter().filter(|s| s.next.is_some()).count();
    let mut budget = if decoding > 0 { PREFILL_WHILE_DECODING } else { MICRO_BATCH };
    // (slot index, prompt tokens fed by this pass) for each part, decoding sequences first.
    let mut plan: Vec<(usize, usize)> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        if s.next.is_some() {
            plan.push((i, 0));
        }
    }
    for (i, s) in slots.iter().enumerate() {
        if s.next.is_none() && budget > 0 {
            let n = (s.job.prompt.len() - s.fed).min(budget);
            budget -= n;
            plan.push((i, n));
        }
    }
    let tokens: usize = plan.iter().map(|&(_, n)| n.max(1)).sum();
    let outcome = {
        let mut chosen: Vec<Option<&mut Slot>> = slots.iter_mut().map(Some).collect();
        let mut parts: Vec<BatchPart> = plan
            .iter()
            .map(|&(i, n)| {
                let s = chosen[i].take().expect("each slot is planned once");
                let Slot { cache, job, fed, next, .. } = s;
                match next {
                    Some(t) => BatchPart { cache, tokens: std::slice::from_ref(t), want: Want::Last },
                    None => {
                        let last = *fed + n == job.prompt.len();
                        let want = if last { Want::Last } else { Want::None };
                        BatchPart { cache, tokens: &job.prompt[*fed..*fed + n], want }
                    }
                }
            })
            .collect();
        catch_unwind(AssertUnwindSafe(|| session.forward_batch(&mut parts)))
    };
    metrics.steps.fetch_add(1, Ordering::Relaxed);
    metrics.step_sequences.fetch_add(plan.len() as u64, Ordering::Relaxed);
    metrics.step_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    let logits = match outcome {
        Ok(Ok(logits)) => logits,
        failed => {
            let message = match failed {
                Ok(Err(e)) => format!("the forward pass failed: {e}"),
                _ => "the forward pass panicked".to_string(),
            };
            eprintln!("error: {message}");
            // These sequences' caches are in an unknown state: end them, keep serving the rest.
            let planned: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
            let mut index = 0;
            slots.retain_mut(|s| {
                let failed = planned.contains(&index);
                index += 1;
                if failed {
                    let mut e = ApiError::unavailable(message.clone()).with_status(500);
                    e.kind = "server_error";
                    let _ = s.job.events.send(Event::Failed(e));
                    free.push(std::mem::take(&mut s.cache));
                }
                !failed
            });
            return;
        }
    };
    let mut done = Vec::new();
    for (&(i, n), logits) in plan.iter().zip(logits) {
        let s = &mut slots[i];
        s.fed += n;
        metrics.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
        if logits.is_empty() {
            continue;
        }
        let id = s.sampler.sample(&logits, &s.history);
        if let Some(reason) = accept(s, id, loaded, metrics) {
            finish(s, reason, options.quiet);
            done.push(i);
        }
    }
    for i in done.into_iter().rev() {
        let mut s = slots.remove(i).expect("a planned slot exists");
        free.push(std::mem::take(&mut s.cache));
    }
    metrics.slots_busy.store(slots.len(), Ordering::Relaxed);
}

/// Takes the sampled token `id` into the sequence; returns the finish reason if it ends here.
fn accept(s: &mut Slot, id: u32, loaded: &Loaded, metrics: &Metrics) -> Option<&'static str> {
    s.history.push(id);
    s.generated += 1;
    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
    if !s.job.ignore_eos && loaded.tokenizer.stop.contains(&id) {
        return Some("stop");
    }
    // One event per token, its text possibly empty (a character still incomplete, or text held
    // back for a stop string): a stream shows every token as it comes, as llama-server's does.
    let piece = s.decoder.push(id).unwrap_or_default();
    let m = s.stops.push(&piece);
    if m.stopped {
        if !m.text.is_empty() {
            let _ = s.job.events.send(Event::Text(m.text));
        }
        s.cut = true;
        return Some("stop");
    }
    let _ = s.job.events.send(Event::Text(m.text));
    if s.generated >= s.job.max_tokens || s.cache.position() >= s.cache.context() {
        return Some("length");
    }
    s.next = Some(id);
    None
}

/// Sends what is still held back and the final event.
fn finish(s: &mut Slot, reason: &'static str, quiet: bool) {
    if !s.cut {
        let mut rest = String::new();
        let mut cut = false;
        if let Some(piece) = s.decoder.finish() {
            let m = s.stops.push(&piece);
            rest += &m.text;
            cut = m.stopped;
        }
        if !cut {
            rest += &s.stops.finish();
        }
        if !rest.is_empty() {
            let _ = s.job.events.send(Event::Text(rest));
        }
    }
    let finish = Finish { reason, prompt_tokens: s.job.prompt.len(), completion_tokens: s.generated };
    let _ = s.job.events.send(Event::Done(finish));
    if !quiet {
        eprintln!(
            "request {}: {} prompt + {} generated tokens in {:.3} s ({reason})",
            s.job.id,
            finish.prompt_tokens,
            finish.completion_tokens,
            s.started.elapsed().as_secs_f64()
        );
    }
}
