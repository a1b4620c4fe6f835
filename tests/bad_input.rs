//! Bad input: each case must end with exit code 2, a message naming the file (and tensor where
//! there is one), and no output file — not even a temporary one.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use tern_formats::safetensors_file::SafetensorsFile;

struct Case {
    _tmp: tempfile::TempDir,
    input: PathBuf,
    out_dir: PathBuf,
}

fn case(form: &str) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let input = copy_fixture(&fixtures().join(form), tmp.path());
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    Case { _tmp: tmp, input, out_dir }
}

/// Runs convert and checks the failure contract; returns stderr.
fn fails(c: &Case, needles: &[&str]) -> String {
    let out = c.out_dir.join("model.gguf");
    let res = tern(&["convert", c.input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(res.status.code(), Some(2), "expected exit 2, stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&c.out_dir).unwrap().collect();
    assert!(left.is_empty(), "output folder not empty: {left:?}");
    err
}

fn edit_config(c: &Case, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = c.input.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Absolute byte range of a tensor in model.safetensors.
fn tensor_range(dir: &Path, name: &str) -> (usize, usize) {
    let f = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let t = f.get(name).unwrap();
    (t.start, t.end)
}

fn patch(dir: &Path, offset: usize, bytes: &[u8]) {
    let p = dir.join("model.safetensors");
    let mut data = std::fs::read(&p).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(&p, data).unwrap();
}

#[test]
fn missing_config() {
    let c = case("tiny/bf16");
    std::fs::remove_file(c.input.join("config.json")).unwrap();
    fails(&c, &["no config.json", "bf16"]);
}

#[test]
fn config_not_json() {
    let c = case("tiny/bf16");
    std::fs::write(c.input.join("config.json"), "{\"hidden_size\": 12,").unwrap();
    fails(&c, &["config.json", "not valid JSON"]);
}

#[test]
fn config_missing_a_required_key() {
    let c = case("tiny/bf16");
    edit_config(&c, |v| {
        v.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    fails(&c, &["config.json", "missing required key 'num_hidden_layers'"]);
}

#[test]
fn unknown_architecture() {
    let c = case("tiny/bf16");
    edit_config(&c, |v| {
        v["model_type"] = "gpt2".into();
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    });
    fails(&c, &["config.json", "unknown architecture", "gpt2", "supported: bitnet-b1.58"]);
}

#[test]
fn shape_mismatch_between_config_and_tensors() {
    let c = case("tiny/bf16");
    edit_config(&c, |v| v["intermediate_size"] = 256.into());
    fails(&c, &["model.safetensors", "ffn_sub_norm.weight", "shape [384]", "implies [256]"]);
}

#[test]
fn truncated_safetensors() {
    let c = case("tiny/bf16");
    let p = c.input.join("model.safetensors");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() / 2]).unwrap();
    fails(&c, &["model.safetensors", "truncated"]);
}

#[test]
fn header_length_past_end_of_file() {
    let c = case("tiny/bf16");
    patch(&c.input, 0, &5_000_000u64.to_le_bytes());
    fails(&c, &["model.safetensors", "header length field says 5000000 bytes"]);
}

#[test]
fn header_length_of_2_pow_62() {
    let c = case("tiny/bf16");
    patch(&c.input, 0, &(1u64 << 62).to_le_bytes());
    fails(&c, &["model.safetensors", "not a safetensors file, or corrupt"]);
}

#[test]
fn empty_safetensors() {
    let c = case("tiny/bf16");
    std::fs::write(c.input.join("model.safetensors"), b"").unwrap();
    fails(&c, &["model.safetensors", "too short"]);
}

#[test]
fn packed_code_3() {
    let c = case("tiny/packed");
    let name = "model.layers.1.mlp.up_proj.weight";
    let (start, _) = tensor_range(&c.input, name);
    // Byte (0, 5): bits 4-5 hold row 2R = 192 of column 5.
    patch(&c.input, start + 5, &[0b0011_0101]);
    fails(&c, &[name, "packed code 3", "row 192, column 5"]);
}

#[test]
fn nan_in_a_master_weight() {
    let c = case("tiny/bf16");
    let name = "model.layers.2.self_attn.v_proj.weight";
    let (start, _) = tensor_range(&c.input, name);
    patch(&c.input, start + 2 * 10, &0x7FC0u16.to_le_bytes()); // bf16 NaN at element 10
    fails(&c, &[name, "model.safetensors", "value #10 is NaN"]);
}

#[test]
fn inf_in_a_weight_scale() {
    let c = case("tiny/packed");
    let name = "model.layers.0.self_attn.o_proj.weight_scale";
    let (start, _) = tensor_range(&c.input, name);
    patch(&c.input, start, &0x7F80u16.to_le_bytes()); // bf16 +Inf
    fails(&c, &[name, "inf"]);
}

#[test]
fn existing_output_needs_force() {
    let c = case("tiny/bf16");
    let out = c.out_dir.join("model.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let res = tern(&["convert", c.input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quiet"]);
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("already exists; pass --force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    convert(&c.input, &out, &["--force"]);
    assert_ne!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn output_inside_the_input_folder_is_refused() {
    let c = case("tiny/bf16");
    let before = std::fs::read_dir(&c.input).unwrap().count();
    for (target, needle) in
        [("model.gguf", "inside the input folder"), ("model.safetensors", "never overwrites its input")]
    {
        let out = c.input.join(target);
        let res = tern(&["convert", c.input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--force"]);
        assert_eq!(res.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&res.stderr).contains(needle), "{target}");
    }
    assert_eq!(std::fs::read_dir(&c.input).unwrap().count(), before);
}

#[test]
fn missing_output_folder() {
    let c = case("tiny/bf16");
    let out = c.out_dir.join("no/such/dir/model.gguf");
    let res = tern(&["convert", c.input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("does not exist"));
}

#[test]
fn shard_listed_in_index_but_missing() {
    let c = case("tiny/bf16");
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(c.input.join("model.safetensors.index.json"), index.to_string()).unwrap();
    fails(&c, &["model.safetensors.index.json", "does not exist"]);
}

#[test]
fn inspect_reports_corrupt_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("a.gguf");
    convert(&fixtures().join("tiny/bf16"), &good, &[]);
    let data = std::fs::read(&good).unwrap();
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, &data[..data.len() - 100]).unwrap();
    let res = tern(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("bad.gguf") && err.contains("truncated: tensor 'blk.3.ffn_down.weight'"), "{err}");
}
