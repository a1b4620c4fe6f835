//! The OpenAI request bodies `tern serve` accepts, checked field by field into a [`Request`]
//! (a bad field is a 400 naming it), and the OpenAI-style error body every failure carries.

use serde_json::{Map, Value, json};

/// An error answered to the client: HTTP status and OpenAI's `{"error": {...}}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: invalid_request_error, authentication_error, server_error…
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: a field (or the body) is wrong.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// 503: loading, the queue is full, or shutting down (the client should retry).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { status: 503, message: message.into(), kind: "server_error", param: None, code: None }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Chat messages `(role, content)`, rendered with the model's chat template.
    Chat(Vec<(String, String)>),
    /// A text prompt (BOS added as the model wants, like `tern run -p`).
    Text(String),
    /// A prompt given as token ids.
    Tokens(Vec<u32>),
}

/// A checked completion request. Sampling fields left out take the server's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (llama.cpp's field; benchmarks use it).
    pub ignore_eos: bool,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
}

/// Most stop strings a request may give (OpenAI's limit).
const MAX_STOPS: usize = 4;

/// Parses a `/v1/chat/completions` (`chat`) or `/v1/completions` body.
pub fn parse(body: &[u8], chat: bool) -> Result<Request, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(None, format!("the body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(None, "the body must be a JSON object"));
    };
    let f = Fields(&obj);
    let input = if chat { Input::Chat(messages(&obj)?) } else { prompt(&obj)? };
    let max_tokens = match f.int("max_completion_tokens")?.or(f.int("max_tokens")?) {
        Some(n) if n < 1 => {
            let name = if obj.contains_key("max_completion_tokens") {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(name.to_string(), format!("{name} must be at least 1 (got {n})")));
        }
        n => n.map(|n| n as usize),
    };
    if let Some(n) = f.int("n")?
        && n != 1
    {
        return Err(ApiError::invalid(
            "n".to_string(),
            format!("n must be 1 (got {n}): one choice per request"),
        ));
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if let Some(v) = f.number(name, -2.0..=2.0)?
            && v != 0.0
        {
            return Err(ApiError::invalid(
                name.to_string(),
                format!("{name} is not supported; use repeat_penalty (llama.cpp's) instead"),
            ));
        }
    }
    if f.bool("logprobs")? == Some(true) {
        return Err(ApiError::invalid("logprobs".to_string(), "logprobs are not supported"));
    }
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => Fields(o).bool("include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid("stream_options".to_string(), "stream_options must be an object"));
        }
    };
    Ok(Request {
        model: f.string("model")?,
        input,
        max_tokens,
        temperature: f.number("temperature", 0.0..=2.0)?,
        top_p: f.number("top_p", 0.0..=1.0)?,
        top_k: f.int("top_k")?.map(|k| k.max(0) as usize),
        min_p: f.number("min_p", 0.0..=1.0)?,
        repeat_penalty: f.number("repeat_penalty", 0.0..=10.0)?,
        seed: f.int("seed")?.map(|s| s as u64),
        stop: stops(&obj)?,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        stream: f.bool("stream")?.unwrap_or(false),
        include_usage,
    })
}

/// Typed access to optional fields; `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong_type(name, "a string", v)),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(name, "true or false", v)),
        }
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(Value::Number(n)) if n.is_u64() => Ok(Some(i64::MAX)),
            Some(v) => Err(wrong_type(name, "an integer", v)),
        }
    }

    fn number(&self, name: &str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f32>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let v = n.as_f64().unwrap_or(f64::NAN);
                if !range.contains(&v) {
                    return Err(ApiError::invalid(
                        name.to_string(),
                        format!("{name} must be between {} and {} (got {v})", range.start(), range.end()),
                    ));
                }
                Ok(Some(v as f32))
            }
            Some(v) => Err(wrong_type(name, "a number", v)),
        }
    }
}

fn wrong_type(name: &str, want: &str, got: &Value) -> ApiError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::invalid(name.to_string(), format!("{name} must be {want}, not {kind}"))
}

/// `messages`: a non-empty array of `{role, content}`, content a string or text parts.
fn messages(obj: &Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    let list = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages".to_string(), "messages is required"));
        }
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("messages".to_string(), "messages must not be empty"));
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let Value::Object(m) = m else { return Err(wrong_type(&at, "an object", m)) };
            let role = match m.get("role") {
                Some(Value::String(r)) if !r.is_empty() => r.clone(),
                Some(v) => return Err(wrong_type(&format!("{at}.role"), "a non-empty string", v)),
                None => {
                    return Err(ApiError::invalid(format!("{at}.role"), format!("{at}.role is required")));
                }
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => text_parts(parts, &format!("{at}.content"))?,
                Some(v) => {
                    return Err(wrong_type(
                        &format!("{at}.content"),
                        "a string or an array of text parts",
                        v,
                    ));
                }
            };
            Ok((role, content))
        })
        .collect()
}

/// Content parts `[{"type": "text", "text": …}]`, joined; other part types are refused.
fn text_parts(parts: &[Value], at: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let name = format!("{at}[{j}]");
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => text.push_str(t),
            (Some("text"), _) => {
                return Err(ApiError::invalid(name.clone(), format!("{name}.text must be a string")));
            }
            (Some(other), _) => {
                return Err(ApiError::invalid(
                    name,
                    format!("content parts of type {other:?} are not supported (text only)"),
                ));
            }
            (None, _) => return Err(ApiError::invalid(name.clone(), format!("{name} needs a \"type\""))),
        }
    }
    Ok(text)
}

/// `prompt`: a string, an array of one string, or an array of token ids.
fn prompt(obj: &Map<String, Value>) -> Result<Input, ApiError> {
    let name = || "prompt".to_string();
    match obj.get("prompt") {
        None | Some(Value::Null) => Err(ApiError::invalid(name(), "prompt is required")),
        Some(Value::String(s)) => Ok(Input::Text(s.clone())),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Ok(Input::Text(s.clone())),
            [] => Err(ApiError::invalid(name(), "prompt must not be empty")),
            ids if ids.iter().all(|v| v.as_u64().is_some_and(|n| n <= u32::MAX as u64)) => {
                Ok(Input::Tokens(ids.iter().map(|v| v.as_u64().unwrap_or(0) as u32).collect()))
            }
            _ => Err(ApiError::invalid(
                name(),
                "prompt must be a string, one string in an array, or token ids",
            )),
        },
        Some(v) => Err(wrong_type("prompt", "a string or an array", v)),
    }
}

/// `stop`: a string or up to four strings.
fn stops(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let name = || "stop".to_string();
    match obj.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() > MAX_STOPS => {
            Err(ApiError::invalid(name(), format!("at most {MAX_STOPS} stop strings (got {})", a.len())))
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(|| wrong_type("stop[]", "a string", v)))
            .collect(),
        Some(v) => Err(wrong_type("stop", "a string or an array of strings", v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Request, ApiError> {
        parse(body.as_bytes(), true)
    }

    fn param_of(r: Result<Request, ApiError>) -> (u16, Option<String>, String) {
        let e = r.unwrap_err();
        (e.status, e.param, e.message)
    }

    #[test]
    fn a_full_chat_request_is_read_field_by_field() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
                "max_tokens":12,"temperature":0,"top_p":0.5,"top_k":7,"seed":3,"stop":["\n","END"],
                "stream":true,"stream_options":{"include_usage":true},"user":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            r.input,
            Input::Chat(vec![("system".into(), "Be brief.".into()), ("user".into(), "Hi there".into())])
        );
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_p, r.top_k, r.seed),
            (Some(12), Some(0.0), Some(0.5), Some(7), Some(3))
        );
        assert_eq!(r.stop, ["\n", "END"]);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn completion_prompts_come_as_text_or_token_ids() {
        let p = |b: &str| parse(b.as_bytes(), false).map(|r| r.input);
        assert_eq!(p(r#"{"prompt":"Once"}"#), Ok(Input::Text("Once".into())));
        assert_eq!(p(r#"{"prompt":["Once"]}"#), Ok(Input::Text("Once".into())));
        assert_eq!(p(r#"{"prompt":[1,2,3]}"#), Ok(Input::Tokens(vec![1, 2, 3])));
        assert_eq!(p(r#"{"prompt":[1,"a"]}"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(p(r#"{"max_tokens":3}"#).unwrap_err().message, "prompt is required");
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"{"messages":"hi"}"#, "messages", "messages must be an array, not a string"),
            (r#"{"messages":[]}"#, "messages", "messages must not be empty"),
            (r#"{"messages":[{"content":"x"}]}"#, "messages[0].role", "messages[0].role is required"),
            (r#"{"messages":[{"role":"user","content":5}]}"#, "messages[0].content", "must be a string or"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0]",
                "not supported",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
                "at least 1 (got 0)",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-5}"#, "max_tokens", "at least 1"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"9"}"#,
                "max_tokens",
                "an integer, not a string",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
                "between 0 and 2",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
                "a number",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "stream", "true or false"),
            (r#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#, "stop[]", "a string"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                "stop",
                "at most 4",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n", "n must be 1"),
            (r#"{"messages":[{"role":"user","content":"x"}],"model":7}"#, "model", "a string"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"frequency_penalty":0.5}"#,
                "frequency_penalty",
                "not supported",
            ),
        ];
        for (body, param, message) in cases {
            let (status, got_param, got_message) = param_of(chat(body));
            assert_eq!(status, 400, "{body}");
            assert_eq!(got_param.as_deref(), Some(param), "{body}");
            assert!(got_message.contains(message), "{body}: {got_message}");
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        let (status, param, message) = param_of(parse(b"{\"messages\": [", true));
        assert_eq!((status, param), (400, None));
        assert!(message.starts_with("the body is not valid JSON"), "{message}");
        assert!(param_of(parse(b"[1,2]", true)).2.contains("must be a JSON object"));
        let (_, _, message) = param_of(parse(b"{\"prompt\":\"\xff\xfe\"}", false));
        assert_eq!(message, "the body is not valid UTF-8 (at byte 11)");
    }

    #[test]
    fn the_error_body_has_openai_s_shape() {
        let e = ApiError::invalid("max_tokens".to_string(), "bad").with_code("c");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "max_tokens", "code": "c"}})
        );
    }
}
