//! The HTTP side: routes, the API key check, reading bodies within a size and time limit,
//! turning a request into a [`Job`] for the model thread, and its events into an OpenAI
//! response (one JSON body, or server-sent events ending in `[DONE]`).

use crate::Options;
use crate::api::{self, ApiError, Input, Request};
use crate::scheduler::{Event, Finish, Job, Loaded, Shared};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tern_runtime::sampler::SamplerConfig;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub struct App {
    pub options: Options,
    pub shared: Arc<Shared>,
    /// The model thread's bounded queue (`--queue`); taken away at shutdown.
    pub jobs: Mutex<Option<SyncSender<Job>>>,
    pub next_id: AtomicU64,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(ApiError::invalid(None, "no such endpoint").with_status(404)) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::invalid(None, "this endpoint does not take that method").with_status(405))
        })
        .layer(middleware::from_fn_with_state(app.clone(), check_key))
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// An error as a response: its status, its OpenAI body, and Retry-After on a 503.
pub fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(e.body())).into_response();
    if e.status == 503 {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Counts every answer by endpoint and status, and logs failures.
async fn count(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    app.shared.metrics.count_request(&path, status);
    if status >= 400 && !app.options.quiet {
        eprintln!("{method} {path}: {status}");
    }
    response
}

/// With `--api-key`, every endpoint but /health wants `Authorization: Bearer KEY`.
async fn check_key(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    if let Some(key) = &app.options.api_key
        && request.uri().path() != "/health"
    {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let expected = format!("Bearer {key}");
        // Compared in full whatever the first difference, so timing does not reveal the key.
        let matches = given.is_some_and(|g| {
            g.len() == expected.len()
                && g.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        });
        if !matches {
            let mut e = ApiError::invalid(None, "a valid API key is required: Authorization: Bearer KEY")
                .with_status(401)
                .with_code("invalid_api_key");
            e.kind = "authentication_error";
            return error(e);
        }
    }
    next.run(request).await
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.shared.loaded.get() {
        Some(_) => {
            let m = &app.shared.metrics;
            let busy = m.slots_busy.load(Ordering::Relaxed);
            axum::Json(json!({
                "status": "ok",
                "slots_busy": busy,
                "slots_idle": app.options.parallel.saturating_sub(busy),
                "queue_depth": m.queue_depth.load(Ordering::Relaxed),
            }))
            .into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "loading"}))).into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.shared.metrics.render()).into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let ctx = app.shared.loaded.get().map(|l| l.ctx);
    axum::Json(json!({
        "object": "list",
        "data": [{"id": app.options.model_id, "object": "model", "created": unix_now(), "owned_by": "tern",
                  "meta": {"context_per_sequence": ctx, "parallel": app.options.parallel}}],
    }))
    .into_response()
}

async fn chat_completions(State(app): State<Arc<App>>, body: Body) -> Response {
    complete(app, body, true).await.unwrap_or_else(error)
}

async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    complete(app, body, false).await.unwrap_or_else(error)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads a body of at most `--max-body` bytes within `--body-timeout`.
async fn read_body(app: &App, body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = app.options.max_body;
    let read = async {
        let mut data = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::invalid(None, format!("could not read the body: {e}")))?;
            if data.len() + chunk.len() > limit {
                return Err(ApiError::invalid(
                    None,
                    format!("the body is larger than the limit of {limit} bytes (tern serve --max-body)"),
                )
                .with_status(413));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    };
    tokio::time::timeout(app.options.body_timeout, read).await.unwrap_or_else(|_| {
        Err(ApiError::invalid(
            None,
            format!("the body did not arrive within {} s", app.options.body_timeout.as_secs_f64()),
        )
        .with_status(408))
    })
}

async fn complete(app: Arc<App>, body: Body, chat: bool) -> Result<Response, ApiError> {
    let body = read_body(&app, body).await?;
    let request = api::parse(&body, chat)?;
    let loaded = app
        .shared
        .loaded
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    if let Some(name) = &request.model
        && name != &loaded.model_id
    {
        return Err(ApiError::invalid(
            "model".to_string(),
            format!("the model {name:?} does not exist; this server serves {:?}", loaded.model_id),
        )
        .with_status(404)
        .with_code("model_not_found"));
    }
    let prompt = prompt_tokens(&request, &loaded)?;
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let (events, rx) = unbounded_channel();
    let room = loaded.ctx - prompt.len();
    let job = Job {
        id,
        max_tokens: request.max_tokens.unwrap_or(room),
        sampling: sampling(&app.options.sampling, &request),
        stop: request.stop.clone(),
        ignore_eos: request.ignore_eos,
        prompt,
        events,
    };
    submit(&app, job)?;
    let reply = Reply {
        id: format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" }),
        chat,
        model: loaded.model_id.clone(),
        created: unix_now(),
    };
    if request.stream { Ok(stream(reply, rx, request.include_usage)) } else { collect(reply, rx).await }
}

/// The prompt's token ids, checked against the vocabulary and the context.
fn prompt_tokens(request: &Request, loaded: &Loaded) -> Result<Vec<u32>, ApiError> {
    let tk = &loaded.tokenizer;
    let (param, ids) = match &request.input {
        Input::Chat(messages) => ("messages", tk.encode_chat(messages)),
        Input::Text(text) => ("prompt", tk.encode(text, true)),
        Input::Tokens(ids) => ("prompt", Ok(ids.clone())),
    };
    let ids = ids.map_err(|e| ApiError::invalid(param.to_string(), e.to_string()))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(param.to_string(), "the prompt is empty"));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= loaded.vocab) {
        return Err(ApiError::invalid(
            param.to_string(),
            format!("token id {bad} is outside the vocabulary (size {})", loaded.vocab),
        ));
    }
    if ids.len() >= loaded.ctx {
        return Err(ApiError::invalid(
            param.to_string(),
            format!(
                "the prompt is {} tokens; the context holds {} per sequence, and at least one must be left to generate (tern serve --ctx)",
                ids.len(),
                loaded.ctx
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(ids)
}

/// The server's sampling defaults with the request's fields over them; temperature 0 is greedy.
fn sampling(defaults: &SamplerConfig, r: &Request) -> SamplerConfig {
    let seed = r
        .seed
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    SamplerConfig {
        temperature: r.temperature.unwrap_or(defaults.temperature),
        top_k: r.top_k.unwrap_or(defaults.top_k),
        top_p: r.top_p.unwrap_or(defaults.top_p),
        min_p: r.min_p.unwrap_or(defaults.min_p),
        repeat_penalty: r.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        repeat_last_n: defaults.repeat_last_n,
        seed,
    }
}

/// Queues a job, or 503 when the queue is full or the server is stopping.
fn submit(app: &App, job: Job) -> Result<(), ApiError> {
    let jobs = app.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let Some(jobs) = jobs.as_ref() else {
        return Err(ApiError::unavailable("the server is shutting down"));
    };
    let metrics = &app.shared.metrics;
    metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    match jobs.try_send(job) {
        Ok(()) => Ok(()),
        Err(e) => {
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            Err(match e {
                TrySendError::Full(_) => {
                    metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    ApiError::unavailable(format!(
                        "every slot is busy and {} requests are waiting (tern serve --queue); retry shortly",
                        app.options.queue
                    ))
                }
                TrySendError::Disconnected(_) => ApiError::unavailable("the model thread has stopped"),
            })
        }
    }
}

/// What every response object of one request shares.
struct Reply {
    id: String,
    chat: bool,
    model: String,
    created: u64,
}

impl Reply {
    fn usage(f: &Finish) -> Value {
        json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
               "total_tokens": f.prompt_tokens + f.completion_tokens})
    }

    /// The whole answer.
    fn full(&self, text: String, f: &Finish) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                   "finish_reason": f.reason})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": f.reason})
        };
        let object = if self.chat { "chat.completion" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [choice], "usage": Reply::usage(f)})
    }

    /// One streamed chunk: new text (or the role, first, in a chat), or the finish reason.
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }

    fn usage_chunk(&self, f: &Finish) -> Value {
        let object = if self.chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [],
               "usage": Reply::usage(f)})
    }
}

async fn collect(reply: Reply, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text += &t,
            Event::Done(f) => return Ok(axum::Json(reply.full(text, &f)).into_response()),
            Event::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::unavailable("the model thread stopped before the answer was complete").with_status(500))
}

/// Server-sent events: the chunks as they come, then `[DONE]`. Dropping the stream (the
/// client went away) closes the channel, and the model thread frees the slot at its next step.
fn stream(reply: Reply, rx: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let first: VecDeque<SseEvent> =
        if reply.chat { VecDeque::from([data(&reply.chunk(None, true, None))]) } else { VecDeque::new() };
    let state = (reply, rx, first, false);
    let events = futures_util::stream::unfold(state, move |(reply, mut rx, mut pending, ended)| async move {
        loop {
            if let Some(e) = pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), (reply, rx, pending, ended)));
            }
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(Event::Text(t)) => pending.push_back(data(&reply.chunk(Some(&t), false, None))),
                Some(Event::Done(f)) => {
                    pending.push_back(data(&reply.chunk(None, false, Some(f.reason))));
                    if include_usage {
                        pending.push_back(data(&reply.usage_chunk(&f)));
                    }
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    return Some((Ok(pending.pop_front().expect("just pushed")), (reply, rx, pending, true)));
                }
                Some(Event::Failed(e)) => {
                    pending.push_back(data(&e.body()));
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    return Some((Ok(pending.pop_front().expect("just pushed")), (reply, rx, pending, true)));
                }
                None => return None,
            }
        }
    });
    Sse::new(events).into_response()
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}
