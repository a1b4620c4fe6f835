//! Text ↔ token ids for a GGUF model, with the Hugging Face `tokenizers` crate.
//!
//! The tokenizer comes from `tokenizer.huggingface.json` when the file embeds it (tern does), or
//! is rebuilt from llama.cpp's `tokenizer.ggml.*` arrays (byte-level BPE: tokens, merges, token
//! types; the pre-tokenizer from `tokenizer.ggml.pre`). BOS is prepended per
//! `tokenizer.ggml.add_bos_token`, never by the tokenizer's own post-processor, so both sources
//! behave the same. [`StreamDecoder`] turns generated ids into text without ever emitting half a
//! UTF-8 character.

use crate::{Result, RuntimeError};
use tern_formats::gguf::{GgufFile, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// LLaMA-3's pre-tokenizer split (llama.cpp's "llama-bpe").
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token type of control (special) tokens.
const CONTROL: i64 = 3;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    /// Ids that end generation (eos, eot).
    pub stop: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    /// Where it came from: "tokenizer.huggingface.json" or "tokenizer.ggml.*".
    pub source: &'static str,
}

fn tok_err(f: &GgufFile, msg: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Model { path: f.path.clone(), msg: format!("tokenizer: {msg}") }
}

impl Tokenizer {
    /// The model's tokenizer, or None when the file carries none.
    pub fn from_gguf(f: &GgufFile) -> Result<Option<Tokenizer>> {
        Self::load(f, true)
    }

    /// The tokenizer of a Hugging Face checkpoint folder (`tokenizer.json`, with BOS, add_bos and
    /// the chat template from `tokenizer_config.json` and the stop ids from `config.json`), or
    /// None when the folder has no `tokenizer.json`.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Option<Tokenizer>> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Ok(None);
        }
        let err = |p: &std::path::Path, msg: String| RuntimeError::Model { path: p.to_path_buf(), msg };
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| err(&path, format!("tokenizer: {e}")))?;
        let read_json = |name: &str| -> Result<serde_json::Value> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(text) => serde_json::from_str(&text).map_err(|e| err(&p, format!("not valid JSON: {e}"))),
                Err(_) => Ok(serde_json::Value::Null),
            }
        };
        let cfg = read_json("tokenizer_config.json")?;
        // bos_token is a string or an AddedToken object {"content": ...}.
        let token_id = |v: &serde_json::Value| {
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text)
        };
        let bos = token_id(&cfg["bos_token"]);
        let add_bos = cfg["add_bos_token"].as_bool().unwrap_or(bos.is_some());
        let model_cfg = read_json("config.json")?;
        let mut stop: Vec<u32> = match &model_cfg["eos_token_id"] {
            serde_json::Value::Array(ids) => {
                ids.iter().filter_map(|v| v.as_u64().map(|i| i as u32)).collect()
            }
            v => v.as_u64().map(|i| i as u32).into_iter().collect(),
        };
        stop.extend(token_id(&cfg["eos_token"]).filter(|id| !stop.contains(id)));
        let chat_template = cfg["chat_template"].as_str().map(String::from);
        Ok(Some(Tokenizer { inner, bos, stop, add_bos, chat_template, source: "tokenizer.json" }))
    }

    /// As [`from_gguf`](Self::from_gguf), but `prefer_json = false` ignores the embedded JSON
    /// and rebuilds from the `tokenizer.ggml.*` arrays (tests compare the two).
    pub fn load(f: &GgufFile, prefer_json: bool) -> Result<Option<Tokenizer>> {
        let md = f.metadata();
        let json = md.get_str("tokenizer.huggingface.json").filter(|_| prefer_json);
        let (inner, source) = match json {
            Some(text) => (
                tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| tok_err(f, e))?,
                "tokenizer.huggingface.json",
            ),
            None => match md.get_str("tokenizer.ggml.model") {
                None => return Ok(None),
                Some("gpt2") => (from_ggml_bpe(f)?, "tokenizer.ggml.*"),
                Some(other) => {
                    return Err(tok_err(
                        f,
                        format!("tokenizer.ggml.model {other:?} is not supported (gpt2 byte-level BPE is)"),
                    ));
                }
            },
        };
        let id = |key: &str| md.get_u64(key).map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let stop: Vec<u32> = [id("tokenizer.ggml.eos_token_id"), id("tokenizer.ggml.eot_token_id")]
            .into_iter()
            .flatten()
            .collect();
        let add_bos =
            md.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(bos.is_some());
        let chat_template = md.get_str("tokenizer.chat_template").map(String::from);
        Ok(Some(Tokenizer { inner, bos, stop, add_bos, chat_template, source }))
    }

    /// Token ids of `text`, with BOS first when the model wants it and `with_bos` is set.
    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| RuntimeError::Input(format!("cannot tokenize: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if with_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`; ids the tokenizer does not know (padded vocab slots) are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    /// The token ids of a chat `(role, content)` rendered with the model's template
    /// ([`render_chat`]), BOS and end-of-turn as this tokenizer spells them.
    pub fn encode_chat(&self, messages: &[(String, String)]) -> Result<Vec<u32>> {
        let text_of = |id: Option<u32>| id.map(|i| self.decode(&[i], false)).unwrap_or_default();
        let (bos, eos) = (text_of(self.bos), text_of(self.stop.first().copied()));
        self.encode(&render_chat(self.chat_template.as_deref(), messages, &bos, &eos)?, false)
    }

    pub fn token_count(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// A byte-level BPE tokenizer rebuilt from llama.cpp's metadata arrays.
fn from_ggml_bpe(f: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let md = f.metadata();
    let strings = |key: &str| -> Result<Vec<&str>> {
        let items =
            md.get(key).and_then(Value::as_array).ok_or_else(|| tok_err(f, format!("no {key} array")))?;
        items.strings().ok_or_else(|| tok_err(f, format!("{key} holds a non-string")))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) => t.iter().map(|v| v.as_f64().unwrap_or(1.0) as i64).collect(),
        None => vec![1; tokens.len()],
    };
    let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(f, format!("merge {m:?} is not 'a b'")))
        })
        .collect::<Result<_>>()?;
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tok_err(f, e))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("gpt-2");
    match pre {
        // bitnet.cpp names Falcon-E's pre-tokenizer `falcon_e` and maps it to LLaMA-3's split.
        "llama-bpe" | "llama3" | "falcon_e" => {
            let split =
                Split::new(SplitPattern::Regex(LLAMA3_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| tok_err(f, e))?;
            tk.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        "gpt-2" | "gpt2" | "default" => {
            tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        other => {
            return Err(tok_err(f, format!("pre-tokenizer {other:?} is not supported (llama-bpe, gpt-2)")));
        }
    }
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(_, &t)| t == CONTROL)
        .map(|(tok, _)| AddedToken::from(tok.to_string(), true))
        .collect();
    tk.add_special_tokens(special).map_err(|e| tok_err(f, e))?;
    Ok(tk)
}

/// Incremental detokenisation that emits text only once it is complete UTF-8.
///
/// It decodes a short window of recent ids and emits what the newest ids added to it (the
/// approach of text-generation-inference), so decoders whose output depends on context — e.g.
/// SentencePiece ones that strip a leading space at the start of a text — stay correct.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    /// Start of the context window, and the first id not yet emitted.
    prefix: usize,
    read: usize,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> StreamDecoder<'t> {
        StreamDecoder { tokenizer, ids: Vec::new(), prefix: 0, read: 0 }
    }

    /// Adds a token; returns the new complete text, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read], true);
        let now = self.tokenizer.decode(&self.ids[self.prefix..], true);
        // A trailing U+FFFD means a multi-byte character is still incomplete: wait for more.
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.is_char_boundary(before.len()) {
            return None;
        }
        let new = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Some(new)
    }

    /// Whatever is still held back at the end of generation (an incomplete character is shown
    /// as U+FFFD, the replacement character).
    pub fn finish(&mut self) -> Option<String> {
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read], true);
        let now = self.tokenizer.decode(&self.ids[self.prefix..], true);
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        now.get(before.len()..).filter(|rest| !rest.is_empty()).map(String::from)
    }
}

/// Renders a chat with the model's Jinja template (`tokenizer.chat_template`), or bitnet-b1.58-2B-4T's
/// template when the file has none.
pub fn render_chat(
    template: Option<&str>,
    messages: &[(String, String)],
    bos: &str,
    eos: &str,
) -> Result<String> {
    /// microsoft/bitnet-b1.58-2B-4T's chat template (its tokenizer_config.json).
    const DEFAULT: &str = "{% for message in messages %}{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template.unwrap_or(DEFAULT))
        .map_err(|e| RuntimeError::Input(format!("chat template: {e}")))?;
    let msgs: Vec<serde_json::Value> = messages
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let ctx = serde_json::json!({"messages": msgs, "add_generation_prompt": true, "bos_token": bos, "eos_token": eos});
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| RuntimeError::Input(format!("chat template: {e}")))
}
