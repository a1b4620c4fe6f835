//! `tokenizer.json` (Hugging Face tokenizers, byte-level BPE) → GGUF tokenizer metadata, the way
//! llama.cpp's converter writes it (`tokenizer.ggml.*`), plus the raw JSON under
//! `tokenizer.huggingface.json` so tern's runtime can rebuild the exact tokenizer.
//!
//! Vocabulary slots the tokenizer does not fill (checkpoints pad vocab_size) become `[PAD<id>]`
//! with token type UNUSED, as llama.cpp does.

use crate::{ConvertError, Result};
use serde_json::Value as Json;
use std::path::Path;
use tern_formats::gguf::{Metadata, Value};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// LLaMA-3's pre-tokenizer split regex, which selects llama.cpp's "llama-bpe" pre-tokenizer.
const LLAMA3_PATTERN_START: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+";

/// Whether a pre-tokenizer (or a `Sequence` holding one) splits on LLaMA-3's regex. Reads the parsed
/// JSON: in the file's text every backslash of the pattern is escaped.
fn splits_like_llama3(pre: &Json) -> bool {
    let own = pre
        .get("pattern")
        .and_then(|p| p.get("Regex"))
        .and_then(Json::as_str)
        .is_some_and(|r| r.starts_with(LLAMA3_PATTERN_START));
    own || pre.get("pretokenizers").and_then(Json::as_array).is_some_and(|v| v.iter().any(splits_like_llama3))
}

/// Adds tokenizer metadata when `dir` has a `tokenizer.json`; returns whether it did.
pub fn add_tokenizer(
    dir: &Path,
    vocab_size: usize,
    bos: Option<u32>,
    eos: &[u32],
    md: &mut Metadata,
) -> Result<bool> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(false);
    }
    let err = |msg: String| ConvertError::model(&path, msg);
    let text =
        std::fs::read_to_string(&path).map_err(|e| ConvertError::Io { path: path.clone(), source: e })?;
    let json: Json = serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let model = json.get("model").ok_or_else(|| err("no 'model' section".into()))?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("BPE");
    if kind != "BPE" {
        return Err(err(format!("tokenizer model {kind:?} is not supported (byte-level BPE only)")));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| err("BPE model has no 'vocab' map".into()))?;

    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut place = |id: u64, tok: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            err(format!("token {tok:?} has id {id}, beyond the model's vocab_size {vocab_size}"))
        })?;
        *slot = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| err(format!("vocab entry {tok:?} has no integer id")))?;
        place(id, tok, NORMAL)?;
    }
    for added in json.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let id = added.get("id").and_then(Json::as_u64);
        let content = added.get("content").and_then(Json::as_str);
        let (Some(id), Some(content)) = (id, content) else {
            return Err(err("an added_tokens entry lacks id or content".into()));
        };
        let special = added.get("special").and_then(Json::as_bool).unwrap_or(false);
        place(id, content, if special { CONTROL } else { USER_DEFINED })?;
    }
    let (names, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED)))
        .unzip();

    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        None => vec![],
        Some(list) => list
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(err("a merge pair is not two strings".into())),
                },
                _ => Err(err(format!("unexpected merge entry {m}"))),
            })
            .collect::<Result<_>>()?,
    };

    let pre = if splits_like_llama3(&json["pre_tokenizer"]) { "llama-bpe" } else { "gpt-2" };
    let tok_config = read_tokenizer_config(dir);
    let lookup = |key: &str| -> Option<u32> {
        let tok = tok_config.as_ref()?.get(key)?;
        let content = tok.as_str().or_else(|| tok.get("content")?.as_str())?;
        names.iter().position(|n| n == content).map(|i| i as u32)
    };
    let bos = bos.or_else(|| lookup("bos_token"));
    let eos = eos.first().copied().or_else(|| lookup("eos_token"));
    let add_bos = tok_config
        .as_ref()
        .and_then(|c| c.get("add_bos_token")?.as_bool())
        .unwrap_or_else(|| bos.is_some_and(|b| post_processor_adds(&json, &names[b as usize])));

    md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    md.set("tokenizer.ggml.pre", Value::String(pre.into()));
    md.set("tokenizer.ggml.tokens", Value::string_array(names.iter().cloned()));
    md.set("tokenizer.ggml.token_type", Value::i32_array(types));
    md.set("tokenizer.ggml.merges", Value::string_array(merges));
    if let Some(b) = bos {
        md.set("tokenizer.ggml.bos_token_id", Value::U32(b));
    }
    if let Some(e) = eos {
        md.set("tokenizer.ggml.eos_token_id", Value::U32(e));
    }
    if let Some(eot) = names.iter().position(|n| n == "<|eot_id|>") {
        md.set("tokenizer.ggml.eot_token_id", Value::U32(eot as u32));
    }
    md.set("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    if let Some(t) = tok_config.as_ref().and_then(|c| c.get("chat_template")?.as_str()) {
        md.set("tokenizer.chat_template", Value::String(t.to_string()));
    }
    md.set("tokenizer.huggingface.json", Value::String(text));
    Ok(true)
}

fn read_tokenizer_config(dir: &Path) -> Option<Json> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether the post-processor's single-sequence template starts with the given special token.
fn post_processor_adds(json: &Json, bos: &str) -> bool {
    let pp = json.get("post_processor");
    let single = pp
        .and_then(|p| p.get("single"))
        .or_else(|| pp?.get("processors")?.as_array()?.iter().find_map(|p| p.get("single")));
    single
        .and_then(|s| s.as_array()?.first()?.get("SpecialToken")?.get("id")?.as_str().map(|id| id == bos))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_split_is_found_inside_a_sequence() {
        // As tokenizer.json stores it: JSON-escaped backslashes, the Split first in a Sequence.
        let text = r#"{"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}"#;
        let pre: Json = serde_json::from_str(text).unwrap();
        assert!(splits_like_llama3(&pre));
        assert!(splits_like_llama3(&pre["pretokenizers"][0]));
        assert!(!splits_like_llama3(&pre["pretokenizers"][1]));
        let gpt2: Json = serde_json::from_str(r#"{"type": "ByteLevel", "use_regex": true}"#).unwrap();
        assert!(!splits_like_llama3(&gpt2));
    }
}
