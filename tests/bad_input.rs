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
fn float_llama_without_bitnet_quantization() {
    // A Llama-1.58 checkpoint whose config lost its quantization_config reads as a float model.
    let c = case("llama158/packed");
    std::fs::write(
        c.input.join("config.json"),
        std::fs::read_to_string(c.input.join("config.json"))
            .unwrap()
            .replace("\"quant_method\": \"bitnet\"", "\"quant_method\": \"gptq\""),
    )
    .unwrap();
    fails(&c, &["config.json", "LlamaForCausalLM", "float model", "llama-1.58"]);
}

#[test]
fn one_bit_llm_sub_norm_missing() {
    // 1bitLLM names its sub-norms inner_attn_ln / ffn_layernorm; one gone is named exactly.
    let c = case("onebit/fp16");
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    let bytes = std::fs::read(c.input.join("model.safetensors")).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in parsed.tensors() {
        if name != "model.layers.1.mlp.ffn_layernorm.weight" {
            tensors.push((name, view));
        }
    }
    let out = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(c.input.join("model.safetensors"), out).unwrap();
    fails(&c, &["model.layers.1.mlp.ffn_layernorm.weight"]);
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

/// A safetensors file cut at every structural boundary: inside the length field, right after it,
/// inside the header, at its end, and inside every tensor's data.
#[test]
fn safetensors_truncated_at_every_boundary() {
    let c = case("tiny/bf16");
    let p = c.input.join("model.safetensors");
    let data = std::fs::read(&p).unwrap();
    let header_len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let f = SafetensorsFile::open(&p).unwrap();
    let mut cuts = vec![3, 8, 8 + header_len / 2, 8 + header_len];
    cuts.extend(f.tensors().iter().map(|t| t.start + (t.end - t.start) / 2));
    for cut in cuts {
        std::fs::write(&p, &data[..cut]).unwrap();
        let err = fails(&c, &["model.safetensors"]);
        assert!(
            ["too short", "truncated", "header length", "corrupt", "past the end"]
                .iter()
                .any(|n| err.contains(n)),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn safetensors_header_not_json() {
    let c = case("tiny/bf16");
    let p = c.input.join("model.safetensors");
    let mut data = std::fs::read(&p).unwrap();
    data[8..40].fill(b'#');
    std::fs::write(&p, data).unwrap();
    fails(&c, &["model.safetensors", "header"]);
}

/// A dtype in the header that disagrees with the tensor's byte length.
#[test]
fn dtype_inconsistent_with_bytes() {
    let c = case("tiny/bf16");
    let p = c.input.join("model.safetensors");
    let mut data = std::fs::read(&p).unwrap();
    let header_len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(data[8..8 + header_len].to_vec()).unwrap();
    // Same length: JSON allows the trailing space.
    let edited = header.replacen("\"BF16\"", "\"F32\" ", 1);
    assert_ne!(header, edited);
    data[8..8 + header_len].copy_from_slice(edited.as_bytes());
    std::fs::write(&p, data).unwrap();
    fails(&c, &["model.safetensors"]);
}

#[test]
fn zero_size_dimension_in_config() {
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"] {
        let c = case("tiny/bf16");
        edit_config(&c, |v| v[key] = serde_json::json!(0));
        fails(&c, &[key]);
    }
}

/// /sys refuses new files even to root, so this holds wherever the tests run.
#[test]
fn unwritable_output_folder() {
    let c = case("tiny/bf16");
    let res = tern(&["convert", c.input.to_str().unwrap(), "-o", "/sys/tern-test-output.gguf", "--quiet"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(err.contains("/sys") && err.contains("tern-test-output.gguf"), "{err}");
    assert!(!Path::new("/sys/tern-test-output.gguf").exists());
}

/// A full disk, simulated with a file-size limit (RLIMIT_FSIZE): `write` fails with EFBIG
/// part-way through the output, exactly where ENOSPC would.
#[test]
fn disk_full_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    let c = case("tiny/bf16");
    let out = c.out_dir.join("model.gguf");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["convert", c.input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quiet"]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 64 * 1024, rlim_max: 64 * 1024 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let res = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(err.contains("model.gguf") && err.contains("File too large"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&c.out_dir).unwrap().collect();
    assert!(left.is_empty(), "output folder not empty: {left:?}");
}

/// Writes a random bf16 BitNet checkpoint shaped like the tiny fixture but with hidden 1024,
/// intermediate 3072 and 8 layers (~100 M parameters): big enough that converting it takes a
/// while, so a signal lands mid-conversion.
fn write_medium_checkpoint(dir: &Path) {
    use safetensors::tensor::{Dtype as StDtype, TensorView};
    let tiny = fixtures().join("tiny/bf16");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    let (h, i, layers) = (1024usize, 3072usize, 8usize);
    config["hidden_size"] = h.into();
    config["intermediate_size"] = i.into();
    config["num_hidden_layers"] = layers.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    let kv = h / 2; // 2 of 4 heads
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h]), ("model.norm.weight".into(), vec![h])];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        shapes.extend([
            (p("input_layernorm"), vec![h]),
            (p("post_attention_layernorm"), vec![h]),
            (p("self_attn.attn_sub_norm"), vec![h]),
            (p("mlp.ffn_sub_norm"), vec![i]),
            (p("self_attn.q_proj"), vec![h, h]),
            (p("self_attn.k_proj"), vec![kv, h]),
            (p("self_attn.v_proj"), vec![kv, h]),
            (p("self_attn.o_proj"), vec![h, h]),
            (p("mlp.gate_proj"), vec![i, h]),
            (p("mlp.up_proj"), vec![i, h]),
            (p("mlp.down_proj"), vec![h, i]),
        ]);
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, s)| {
            (0..s.iter().product::<usize>())
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    half::bf16::from_f32((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| (n.clone(), TensorView::new(StDtype::BF16, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Ctrl-C in the middle of a conversion: exit 130, the temporary file removed, no output.
#[test]
fn interrupted_conversion_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("medium");
    write_medium_checkpoint(&input);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.gguf");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quiet"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary output exists, then interrupt.
    let started = std::time::Instant::now();
    while std::fs::read_dir(&out_dir).unwrap().next().is_none() {
        assert!(child.try_wait().unwrap().is_none(), "conversion ended before it could be interrupted");
        assert!(started.elapsed().as_secs() < 60, "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: removed") && err.contains("model.gguf.tmp-"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "output folder not empty: {left:?}");
}

/// A GGUF cut at structural boundaries (magic, version, counts, metadata, tensor infos, data):
/// `inspect` and `run` fail cleanly naming the file.
#[test]
fn gguf_truncated_at_every_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("a.gguf");
    convert(&fixtures().join("tiny/bf16"), &good, &[]);
    let data = std::fs::read(&good).unwrap();
    let bad = tmp.path().join("cut.gguf");
    for cut in [0, 2, 4, 6, 8, 12, 16, 20, 24, 30, 200, 2000, 20_000, data.len() / 2, data.len() - 1] {
        std::fs::write(&bad, &data[..cut]).unwrap();
        for cmd in
            [&["inspect", bad.to_str().unwrap()][..], &["run", bad.to_str().unwrap(), "-p", "hi", "-n", "1"]]
        {
            let res = tern(cmd);
            let err = String::from_utf8_lossy(&res.stderr);
            assert_eq!(res.status.code(), Some(2), "cut at {cut}, {cmd:?}: {err}");
            assert!(err.contains("cut.gguf"), "cut at {cut}, {cmd:?}: {err}");
        }
    }
}

/// A missing model file: named once with the OS's reason once (the library's message already
/// quotes its source, so the printed cause chain must not repeat it).
#[test]
fn missing_model_file_is_named_with_its_reason_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model.gguf");
    for cmd in ["bench", "run"] {
        let res = tern(&[cmd, missing.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&res.stderr).into_owned();
        assert_eq!(res.status.code(), Some(2), "{cmd}: {err}");
        assert_eq!(err.matches("no-such-model.gguf").count(), 1, "{cmd}: {err}");
        assert_eq!(err.matches("os error 2").count(), 1, "{cmd}: {err}");
    }
}
