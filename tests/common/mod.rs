//! Shared helpers for the integration tests: run the real `tern` binary, locate fixtures, read
//! golden data written by transformers (scripts/make_fixtures.py).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tern_formats::safetensors_file::{Dtype, SafetensorsFile};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("tern runs")
}

pub fn tern_ok(args: &[&str]) -> String {
    let out = tern(args);
    assert!(out.status.success(), "tern {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn convert(input: &Path, output: &Path, extra: &[&str]) {
    let mut args = vec!["convert", input.to_str().unwrap(), "-o", output.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    tern_ok(&args);
}

/// Copies a fixture folder (flat) into a new temp dir with the same folder name.
pub fn copy_fixture(src: &Path, tmp: &Path) -> PathBuf {
    let dst = tmp.join(src.file_name().unwrap());
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    dst
}

pub struct Golden {
    pub file: SafetensorsFile,
}

impl Golden {
    pub fn open(form_dir: &Path) -> Golden {
        Golden { file: SafetensorsFile::open(form_dir.join("golden/golden.safetensors")).unwrap() }
    }

    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let t = self.file.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"));
        (self.file.to_f32(t).unwrap(), t.shape.clone())
    }

    pub fn i8(&self, name: &str) -> Vec<i8> {
        let t = self.file.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"));
        assert_eq!(t.dtype, Dtype::I8);
        self.file.data(t).iter().map(|&b| b as i8).collect()
    }
}

/// (GGUF name, HF name) of every ternary projection of a model with `layers` layers.
pub fn projection_names(layers: usize) -> Vec<(String, String)> {
    let pairs = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ];
    (0..layers)
        .flat_map(|l| {
            pairs
                .iter()
                .map(move |(g, h)| (format!("blk.{l}.{g}.weight"), format!("model.layers.{l}.{h}.weight")))
        })
        .collect()
}
