//! `tern verify` holds one layer of the f32 reference at a time: under an address-space cap
//! (setrlimit RLIMIT_AS) that the whole-model reference cannot live in, the streamed one passes.

mod common;

use common::*;
use half::bf16;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// A random bf16 checkpoint with 2B-4T's architecture at about 290 M parameters: large enough
/// that its f32 weights (~1.1 GB) dwarf one layer (~45 MB).
fn write_checkpoint(dir: &Path) {
    let (hidden, ffn, layers, heads, kv_heads, vocab) =
        (1024usize, 2816usize, 24usize, 8usize, 2usize, 16000usize);
    std::fs::create_dir_all(dir).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("wide/packed/config.json")).unwrap())
            .unwrap();
    config["hidden_size"] = hidden.into();
    config["intermediate_size"] = ffn.into();
    config["num_hidden_layers"] = layers.into();
    config["num_attention_heads"] = heads.into();
    config["num_key_value_heads"] = kv_heads.into();
    config["vocab_size"] = vocab.into();
    config["quantization_config"]["quantization_mode"] = "online".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut state = 0x2545_f491_u32;
    let mut random = |n: usize, scale: f32, offset: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let v = offset + scale * ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5);
                bf16::from_f32(v).to_le_bytes()
            })
            .collect()
    };
    let d = hidden / heads;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden], random(vocab * hidden, 0.1, 0.0)),
        ("model.norm.weight".into(), vec![hidden], random(hidden, 0.2, 1.0)),
    ];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        for (name, rows, cols) in [
            ("self_attn.q_proj", hidden, hidden),
            ("self_attn.k_proj", kv_heads * d, hidden),
            ("self_attn.v_proj", kv_heads * d, hidden),
            ("self_attn.o_proj", hidden, hidden),
            ("mlp.gate_proj", ffn, hidden),
            ("mlp.up_proj", ffn, hidden),
            ("mlp.down_proj", hidden, ffn),
        ] {
            tensors.push((p(name), vec![rows, cols], random(rows * cols, 0.1, 0.0)));
        }
        for (name, n) in [
            ("input_layernorm", hidden),
            ("post_attention_layernorm", hidden),
            ("self_attn.attn_sub_norm", hidden),
            ("mlp.ffn_sub_norm", ffn),
        ] {
            tensors.push((p(name), vec![n], random(n, 0.2, 1.0)));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("wide/packed").join(name), dir.join(name)).unwrap();
    }
}

/// Runs `tern ARGS` with its address space capped at `limit` bytes (None: no cap).
fn tern_capped(args: &[&str], limit: Option<u64>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(args);
    if let Some(limit) = limit {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let cap = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().unwrap()
}

#[test]
fn verify_passes_under_a_cap_the_whole_model_reference_cannot_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("mid-bf16");
    write_checkpoint(&ckpt);
    let gguf = tmp.path().join("mid-i2_s.gguf");
    convert(&ckpt, &gguf, &["--no-verify"]);
    let (g, c) = (gguf.to_str().unwrap(), ckpt.to_str().unwrap());
    let verify_args = ["verify", g, "--reference", c, "--json", "--threads", "2"];
    // How much address space the streamed verify takes here, uncapped.
    let out = tern_capped(&verify_args, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["pass"], true);
    let streamed_peak = report["peak_virtual_bytes"].as_u64().unwrap();
    // The whole-model reference holds every weight in f32: 4 bytes per parameter, ~1.1 GB here.
    let f32_weights = 4 * 287_000_000u64;
    let cap = streamed_peak + 128 * (1 << 20);
    println!(
        "streamed verify peaked at {:.0} MiB of address space; cap {:.0} MiB; the whole model's f32 weights alone {:.0} MiB",
        streamed_peak as f64 / (1 << 20) as f64,
        cap as f64 / (1 << 20) as f64,
        f32_weights as f64 / (1 << 20) as f64
    );
    let out = tern_capped(&verify_args, Some(cap));
    assert!(out.status.success(), "streamed verify under the cap: {}", String::from_utf8_lossy(&out.stderr));
    // The whole-model reference cannot run in it: `tern perplexity` on the folder loads every
    // layer at once when the machine's memory allows (it does here; the cap is not memory).
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "It is a truth universally acknowledged. ".repeat(40)).unwrap();
    let perplexity =
        ["perplexity", c, "--file", text.to_str().unwrap(), "--ctx", "64", "--chunks", "1", "--quiet"];
    let out = tern_capped(&perplexity, Some(cap));
    assert!(!out.status.success(), "the whole-model reference ran under a cap meant to be too small for it");
    let uncapped = tern_capped(&perplexity, None);
    assert!(uncapped.status.success(), "{}", String::from_utf8_lossy(&uncapped.stderr));
    // tern logits on the folder streams the reference too: it runs under the cap.
    let out = tern_capped(&["logits", c, "--tokens", "1,2,3", "--json", "--threads", "2"], Some(cap));
    assert!(out.status.success(), "tern logits under the cap: {}", String::from_utf8_lossy(&out.stderr));
}
