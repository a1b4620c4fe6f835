//! `tern serve` end to end on the demo model: requests over real sockets against the real binary.
//! Greedy answers are checked against `tern run --greedy` for the same tokens, alone and with
//! other requests in the batch; the official `openai` Python client drives it once.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo model as I2_S, converted once per test run.
fn demo_model() -> PathBuf {
    static DONE: Mutex<bool> = Mutex::new(false);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve");
    let out = dir.join("demo-i2_s.gguf");
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        std::fs::create_dir_all(&dir).unwrap();
        convert(&fixtures().join("demo/packed"), &out, &["--force"]);
        *done = true;
    }
    out
}

struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `tern serve MODEL --port 0 EXTRA…` and waits until /health says ok.
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", model.to_str().unwrap(), "--port", "0", "--threads", "2"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("tern serve prints its address");
        let server = Server { child, addr, log };
        let t0 = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(60), "not ready: {:?}", server.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), b"");
        (r.status, r.body)
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with(path, &[], body.as_bytes())
    }

    fn post_with(&self, path: &str, headers: &[&str], body: &[u8]) -> Reply {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            head += h;
            head += "\r\n";
        }
        head += "\r\n";
        self.send(&head, body)
    }

    fn send(&self, head: &str, body: &[u8]) -> Reply {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        Reply::parse(&raw)
    }

    /// Opens a streaming request and returns the reader positioned after the headers.
    fn open_stream(&self, path: &str, body: &str) -> BufReader<TcpStream> {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        (&s).write_all(head.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        while line != "\r\n" {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        r
    }

    /// One Prometheus sample's value.
    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next `data:` payload of a server-sent event stream (None at the end of the stream).
fn next_data(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            return Some(d.trim_end().to_string());
        }
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        Reply {
            status,
            headers: head.to_string(),
            body: if chunked { dechunk(body) } else { body.to_string() },
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out += &rest[..n];
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// What `tern run --greedy` generates after a text prompt.
fn tern_run_text(model: &Path, prompt: &str, n: usize) -> String {
    let out = tern_ok(&["run", model.to_str().unwrap(), "-p", prompt, "-n", &n.to_string(), "--greedy"]);
    out.strip_prefix(prompt).expect("tern run echoes the prompt").strip_suffix('\n').unwrap().to_string()
}

/// What `tern run --greedy` generates after these token ids.
fn tern_run_tokens(model: &Path, ids: &[u32], n: usize) -> String {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = tern_ok(&[
        "run",
        model.to_str().unwrap(),
        "--tokens",
        &ids.join(","),
        "-n",
        &n.to_string(),
        "--greedy",
    ]);
    out.strip_suffix('\n').unwrap().to_string()
}

/// The chat's token ids as the server renders them (the model's template, BOS and EOS text).
fn chat_ids(model: &Path, messages: &[(&str, &str)]) -> Vec<u32> {
    let m = tern_runtime::model::Model::load(model).unwrap();
    let tk = tern_runtime::tokenizer::Tokenizer::from_gguf(&m.file).unwrap().unwrap();
    let msgs: Vec<(String, String)> = messages.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect();
    tk.encode_chat(&msgs).unwrap()
}

const PROMPTS: [&str; 8] = [
    "It is a truth universally acknowledged, that",
    "Call me Ishmael.",
    "Emma Woodhouse, handsome, clever, and rich,",
    "The whale",
    "Mr. Darcy walked into the room and said",
    "She had never been so",
    "Upon the deck of the Pequod, the captain stood silent while the crew",
    "My dear",
];

/// Sends every prompt at once (greedy, `n` tokens each) and returns the texts in order.
fn concurrent_completions(server: &Server, n: usize) -> Vec<String> {
    let barrier = Arc::new(std::sync::Barrier::new(PROMPTS.len()));
    std::thread::scope(|scope| {
        let handles: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    let body =
                        serde_json::json!({"prompt": p, "max_tokens": n, "temperature": 0}).to_string();
                    barrier.wait();
                    let r = server.post("/v1/completions", &body);
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["choices"][0]["text"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// 8 different greedy prompts sent at once get exactly `tern run --greedy`'s text each: all in
/// one batch (8 slots), and queued through 3 slots, where prompts join while others decode.
#[test]
fn concurrent_greedy_requests_get_their_tern_run_tokens() {
    let model = demo_model();
    let n = 40;
    let expected: Vec<String> = PROMPTS.iter().map(|p| tern_run_text(&model, p, n)).collect();
    for parallel in ["8", "3"] {
        let server = Server::start(&model, &["--parallel", parallel]);
        let got = concurrent_completions(&server, n);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "--parallel {parallel}, prompt {i} {:?}", PROMPTS[i]);
        }
        // The passes carried several sequences at once: batching happened.
        let per_step = server.metric("tern_step_sequences_total") / server.metric("tern_steps_total");
        println!("--parallel {parallel}: {per_step:.2} sequences per pass");
        assert!(per_step > 1.5, "--parallel {parallel}: {per_step:.2} sequences per pass");
        assert_eq!(server.metric("tern_generated_tokens_total"), (n * PROMPTS.len()) as f64);
    }
}

/// Bad requests get a 4xx with OpenAI's error body naming the field; the server keeps serving.
#[test]
fn bad_requests_get_named_errors_and_the_server_keeps_serving() {
    let model = demo_model();
    let server = Server::start(&model, &["--api-key", "sekret", "--max-body", "4096", "--body-timeout", "1"]);
    let key = "Authorization: Bearer sekret";
    let ok_body = r#"{"prompt": "The whale", "max_tokens": 4, "temperature": 0}"#;
    let long = "word ".repeat(400);
    // (endpoint, body, status, the field named, part of the message)
    type Case<'a> = (&'a str, Vec<u8>, u16, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("/v1/chat/completions", br#"{"messages": [{"role": "user""#.to_vec(), 400, None, "not valid JSON"),
        (
            "/v1/chat/completions",
            br#"{"messages": "hi"}"#.to_vec(),
            400,
            Some("messages"),
            "must be an array",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "max_tokens": 0}"#.to_vec(),
            400,
            Some("max_tokens"),
            "at least 1",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "temperature": "hot"}"#.to_vec(),
            400,
            Some("temperature"),
            "a number",
        ),
        (
            "/v1/completions",
            br#"{"prompt": "x", "model": "gpt-4"}"#.to_vec(),
            404,
            Some("model"),
            "does not exist",
        ),
        (
            "/v1/completions",
            br#"{"prompt": [1, 99999]}"#.to_vec(),
            400,
            Some("prompt"),
            "outside the vocabulary",
        ),
        ("/v1/completions", b"{\"prompt\": \"\xc3\x28\"}".to_vec(), 400, None, "not valid UTF-8"),
        (
            "/v1/completions",
            format!(r#"{{"prompt": "{long}"}}"#).into_bytes(),
            400,
            Some("prompt"),
            "the context holds 256",
        ),
        ("/v1/completions", vec![b' '; 5000], 413, None, "larger than the limit of 4096"),
    ];
    for (path, body, status, param, message) in cases {
        let r = server.post_with(path, &[key], &body);
        assert_eq!(
            r.status,
            status,
            "{path} {}: {}",
            String::from_utf8_lossy(&body[..body.len().min(60)]),
            r.body
        );
        let e = &r.json()["error"];
        assert_eq!(e["param"].as_str(), param, "{}", r.body);
        assert!(e["message"].as_str().unwrap().contains(message), "{}", r.body);
        assert!(e["type"].is_string(), "{}", r.body);
    }
    // No key, a wrong key: 401; /health needs none.
    for headers in [vec![], vec!["Authorization: Bearer wrong"]] {
        let r = server.post_with("/v1/completions", &headers, ok_body.as_bytes());
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    assert_eq!(server.get("/health").0, 200);
    // A body that stops arriving: 408 after --body-timeout.
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: t\r\n{key}\r\nContent-Length: 100\r\n\r\n{{\"prompt\"")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(Reply::parse(&raw).status, 408, "{}", String::from_utf8_lossy(&raw));
    // And everyone is still served.
    let r = server.post_with("/v1/completions", &[key], ok_body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
}

/// A stream ends with a finish reason and `[DONE]`; a client that leaves mid-stream frees its
/// slot, so the next request on a one-slot server is served at once.
#[test]
fn a_client_leaving_mid_stream_frees_its_slot() {
    let model = demo_model();
    let server = Server::start(&model, &["--parallel", "1"]);
    let body = r#"{"prompt": "Call me Ishmael.", "max_tokens": 200, "temperature": 0, "stream": true}"#;
    let mut stream = server.open_stream("/v1/completions", body);
    for _ in 0..3 {
        let chunk: serde_json::Value = serde_json::from_str(&next_data(&mut stream).unwrap()).unwrap();
        assert_eq!(chunk["object"], "text_completion");
    }
    drop(stream);
    let t0 = Instant::now();
    let r = server.post("/v1/completions", r#"{"prompt": "The whale", "max_tokens": 5, "temperature": 0}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(server.metric("tern_cancelled_total"), 1.0);
    println!("served {:.2} s after the disconnect", t0.elapsed().as_secs_f64());
    // A whole stream: chunks, a finish reason, [DONE].
    let body = r#"{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 0, "stream": true}"#;
    let mut stream = server.open_stream("/v1/chat/completions", body);
    let mut events = Vec::new();
    while let Some(d) = next_data(&mut stream) {
        events.push(d);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
}

/// With every slot busy and the queue full, a request gets 503 with Retry-After; the queued one
/// is served once the slot frees.
#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let model = demo_model();
    let server = Server::start(&model, &["--parallel", "1", "--queue", "1"]);
    let long = r#"{"prompt": "Call me Ishmael.", "max_tokens": 240, "temperature": 0, "stream": true}"#;
    let mut busy = server.open_stream("/v1/completions", long);
    next_data(&mut busy).unwrap();
    std::thread::scope(|scope| {
        let queued =
            scope.spawn(|| server.post("/v1/completions", r#"{"prompt": "The whale", "max_tokens": 3}"#));
        let t0 = Instant::now();
        while server.metric("tern_queue_depth") < 1.0 {
            assert!(t0.elapsed() < Duration::from_secs(30), "the second request never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = server.post("/v1/completions", r#"{"prompt": "My dear", "max_tokens": 3}"#);
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.headers.to_ascii_lowercase().contains("retry-after: 1"), "{}", r.headers);
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("every slot is busy"));
        drop(busy);
        assert_eq!(queued.join().unwrap().status, 200);
    });
    assert_eq!(server.metric("tern_rejected_total"), 1.0);
}

/// SIGTERM: the running stream finishes cleanly (finish reason, [DONE]), new connections are
/// refused, and the server exits 0.
#[cfg(unix)]
#[test]
fn sigterm_finishes_running_streams_and_exits_0() {
    let model = demo_model();
    let mut server = Server::start(&model, &["--parallel", "2"]);
    let body = r#"{"prompt": "It is a truth", "max_tokens": 60, "temperature": 0, "stream": true}"#;
    let mut stream = server.open_stream("/v1/completions", body);
    next_data(&mut stream).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) }, 0);
    let mut events = vec![];
    while let Some(d) = next_data(&mut stream) {
        events.push(d);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {:?}", server.log.lock().unwrap());
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting after SIGTERM");
}

/// The official `openai` Python client, streaming and not, chat and completion: the text is
/// `tern run --greedy`'s for the same tokens.
#[test]
fn the_openai_python_client_gets_tern_run_s_text() {
    let Ok(version) = Command::new("python3").arg("--version").output() else {
        println!("NOTICE: python3 is absent; the openai client test is skipped");
        return;
    };
    assert!(version.status.success());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3").args(["-m", "venv", venv.to_str().unwrap()]).status().unwrap();
        assert!(ok.success(), "python3 -m venv failed");
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "openai"])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install openai failed");
    }
    let model = demo_model();
    let server = Server::start(&model, &["--parallel", "4", "--api-key", "k"]);
    let n = 24;
    let chat = [("user", "Tell me about the whale.")];
    let spec = serde_json::json!({
        "base_url": format!("http://{}/v1", server.addr),
        "api_key": "k",
        "model": "demo-i2_s",
        "cases": [
            {"kind": "completion", "prompt": PROMPTS[0], "max_tokens": n, "expected": tern_run_text(&model, PROMPTS[0], n)},
            {"kind": "completion", "prompt": PROMPTS[6], "max_tokens": n, "expected": tern_run_text(&model, PROMPTS[6], n)},
            {"kind": "chat", "messages": [{"role": "user", "content": chat[0].1}], "max_tokens": n,
             "expected": tern_run_tokens(&model, &chat_ids(&model, &chat), n)},
        ],
    });
    let spec_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve/openai-spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = fixtures().join("../serve_openai.py");
    let out = Command::new(&python).arg(script).arg(&spec_path).output().unwrap();
    println!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client's answers differ from tern run");
}

/// A stop string ends generation: the text is `tern run`'s up to where the stop string begins,
/// and the finish reason is "stop"; streamed, the stop string is never sent either.
#[test]
fn stop_strings_cut_the_text_and_end_with_stop() {
    let model = demo_model();
    let expected = tern_run_text(&model, PROMPTS[1], 40);
    // A stop string from the middle of what the model is going to say.
    let stop = expected.split_whitespace().nth(3).unwrap().to_string();
    let want = &expected[..expected.find(&stop).unwrap()];
    let server = Server::start(&model, &[]);
    let body = serde_json::json!({"prompt": PROMPTS[1], "max_tokens": 40, "temperature": 0, "stop": [stop]});
    let r = server.post("/v1/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], want, "stop {stop:?}");
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    let mut body = body;
    body["stream"] = serde_json::json!(true);
    let mut stream = server.open_stream("/v1/completions", &body.to_string());
    let mut text = String::new();
    while let Some(d) = next_data(&mut stream).filter(|d| d != "[DONE]") {
        text +=
            serde_json::from_str::<serde_json::Value>(&d).unwrap()["choices"][0]["text"].as_str().unwrap();
    }
    assert_eq!(text, want);
}
