//! The runtime on GGUF files tern did not write: tests/fixtures/foreign/ holds files laid out as
//! bitnet.cpp and llama.cpp lay them out (scripts/make_foreign_gguf.py, with the `gguf` Python
//! package and its own packers), built from the same checkpoints tern's tests convert. Each must
//! load without tern's own metadata and compute what tern's conversion of those weights computes.

use std::path::{Path, PathBuf};
use tern_converters::model::{Activation, RopePairing};
use tern_converters::{ConvertOptions, OutputType, Plan};
use tern_formats::Layout;
use tern_formats::hf::HfCheckpoint;
use tern_runtime::model::{Model, Session, Want};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn foreign(name: &str) -> Model {
    Model::load(fixtures().join("foreign").join(name)).unwrap()
}

/// tern's own conversion of a fixture checkpoint.
fn tern_conversion(form: &str, output: OutputType, dir: &Path) -> Model {
    Model::load(tern_file(form, output, dir)).unwrap()
}

fn tern_file(form: &str, output: OutputType, dir: &Path) -> PathBuf {
    let ckpt = HfCheckpoint::open(fixtures().join(form)).unwrap();
    let plan = Plan::new(&ckpt, ConvertOptions { output, ..ConvertOptions::default() }).unwrap();
    let out = dir.join(format!("{}-{}.gguf", form.replace('/', "-"), output.name()));
    plan.write(&ckpt, std::io::BufWriter::new(std::fs::File::create(&out).unwrap()), &out, |_| {}).unwrap();
    out
}

/// tern's I2_S conversion of `form` with the β of the projections `which` selects rounded to f16,
/// as bitnet.cpp's converters store them: the same weights as the foreign file, in tern's bytes.
fn tern_i2s_with_f16_scales(form: &str, dir: &Path, which: impl Fn(&str) -> bool) -> Model {
    let path = tern_file(form, OutputType::Ternary(Layout::I2S), dir);
    let f = tern_formats::gguf::GgufFile::open(&path).unwrap();
    let tails: Vec<usize> = f
        .tensors()
        .iter()
        .filter(|t| t.ty == tern_formats::TensorType::I2S && which(&t.name))
        .map(|t| (t.offset + t.size - 32) as usize)
        .collect();
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    for at in tails {
        let beta = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&half::f16::from_f32(beta).to_f32().to_le_bytes());
    }
    let patched = dir.join(format!("{}-f16-scales.gguf", form.replace('/', "-")));
    std::fs::write(&patched, bytes).unwrap();
    Model::load(patched).unwrap()
}

/// Identical logits on every golden prompt of `form`.
fn same_logits(ours: &Model, theirs: &Model, form: &str) {
    for tokens in prompts(form) {
        assert!(logits(ours, &tokens) == logits(theirs, &tokens), "logits differ on {tokens:?}");
    }
}

fn prompts(form: &str) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(fixtures().join(form).join("golden/golden.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
        .collect()
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    Session::new(model, 256).forward(tokens, Want::All, None).unwrap()
}

/// Every projection of `a` and `b` holds the same ternary codes; returns the pairs of scales.
fn same_codes(a: &Model, b: &Model) -> Vec<(f32, f32)> {
    let mut scales = Vec::new();
    for (la, lb) in a.layers.iter().zip(&b.layers) {
        for (ma, mb) in [
            (&la.q, &lb.q),
            (&la.k, &lb.k),
            (&la.v, &lb.v),
            (&la.o, &lb.o),
            (&la.gate, &lb.gate),
            (&la.up, &lb.up),
            (&la.down, &lb.down),
        ] {
            let codes = |m: &Model, t: &tern_runtime::model::TernaryMatrix| {
                t.layout.unpack(m.packed(t).bytes, t.rows, t.cols, t.tiles).unwrap().0
            };
            assert_eq!(codes(a, ma), codes(b, mb), "{} vs {}", ma.name, mb.name);
            scales.push((ma.scale, mb.scale));
        }
    }
    scales
}

/// bitnet.cpp's I2_S file of the wide checkpoint (arch `bitnet-b1.58`, no tern keys) is, byte for
/// byte in its weights, what tern writes: its logits equal tern's conversion's exactly.
#[test]
fn bitnet_cpp_i2s_gives_the_logits_of_terns_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tern_conversion("wide/packed", OutputType::Ternary(Layout::I2S), tmp.path());
    let theirs = foreign("bitnetcpp_i2s.gguf");
    assert_eq!(theirs.config.arch, "bitnet-b1.58");
    assert_eq!(theirs.config.activation, Activation::Relu2);
    assert_eq!(theirs.config.rope_pairing, RopePairing::HalfSplit);
    for (a, b) in same_codes(&ours, &theirs) {
        assert_eq!(a, b, "β");
    }
    for tokens in prompts("wide/packed") {
        assert!(logits(&ours, &tokens) == logits(&theirs, &tokens), "logits differ on {tokens:?}");
    }
}

/// llama.cpp's TQ2_0 and TQ1_0 files (arch `bitnet`, per-block f16 scales, no activation key):
/// the same codes as tern's conversion, β as f16 in every block, and relu² chosen from the
/// grouped-query head layout. This checkpoint's β are bf16 values, which f16 holds exactly, so
/// the logits are identical; a β that f16 rounds would move them by that rounding.
#[test]
fn llama_cpp_tq_files_give_the_logits_of_terns_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, layout) in [("llamacpp_tq2_0.gguf", Layout::TQ2_0), ("llamacpp_tq1_0.gguf", Layout::TQ1_0)] {
        let ours = tern_conversion("wide/packed", OutputType::Ternary(layout), tmp.path());
        let theirs = foreign(file);
        assert_eq!(theirs.config.arch, "bitnet");
        assert_eq!(theirs.config.activation, Activation::Relu2, "{file}: GQA ⇒ the 2B-4T graph");
        for (a, b) in same_codes(&ours, &theirs) {
            assert_eq!(half::f16::from_f32(a).to_f32(), b, "{file}: block scale is f16(β)");
        }
        for tokens in prompts("wide/packed") {
            assert!(
                logits(&ours, &tokens) == logits(&theirs, &tokens),
                "{file}: logits differ on {tokens:?}"
            );
        }
    }
}

/// bitnet.cpp's Llama path (Llama3-8B-1.58, Falcon3, Falcon-E): arch `llama`, q/k rows permuted,
/// scale = 1/weight_scale; the o_proj of 192-weight rows, which I2_S cannot hold in bitnet.cpp, as
/// F16 values t·f16(β). tern runs it with interleaved RoPE and packs the F16 projection at load:
/// the logits equal tern's conversion's once its o_proj β is rounded to f16 as well.
#[test]
fn bitnet_cpp_llama_file_runs_like_terns_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let theirs = foreign("bitnetcpp_llama_i2s.gguf");
    let c = &theirs.config;
    assert_eq!(
        (c.arch.as_str(), c.activation, c.rope_pairing),
        ("llama", Activation::Silu, RopePairing::Interleaved)
    );
    assert_eq!(c.head_dim, 48, "from llama.rope.dimension_count");
    assert!(!theirs.tied);
    let ours =
        tern_i2s_with_f16_scales("llama158/packed", tmp.path(), |name| name.ends_with("attn_output.weight"));
    for (a, b) in same_codes(&ours, &theirs) {
        assert_eq!(a, b, "β");
    }
    same_logits(&ours, &theirs, "llama158/packed");
}

/// bitnet.cpp's 1bitLLM path: arch `bitnet` without an activation key and with multi-head
/// attention, so SiLU; sub-norms; β computed and stored in fp16 by its converter. tern's
/// conversion with its β rounded to f16 gives the same logits.
#[test]
fn bitnet_cpp_1bitllm_file_runs_like_terns_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let theirs = foreign("bitnetcpp_1bitllm_i2s.gguf");
    let c = &theirs.config;
    assert_eq!(
        (c.arch.as_str(), c.activation, c.rope_pairing),
        ("bitnet", Activation::Silu, RopePairing::HalfSplit)
    );
    assert!(theirs.layers.iter().all(|l| l.attn_sub_norm.is_some() && l.ffn_sub_norm.is_some()));
    let ours = tern_i2s_with_f16_scales("onebit/fp16", tmp.path(), |_| true);
    for (a, b) in same_codes(&ours, &theirs) {
        assert_eq!(a, b, "β");
    }
    same_logits(&ours, &theirs, "onebit/fp16");
}

/// tern's own dequantised output (`--type f16`) runs too: F16 projections holding β·t are packed
/// at load (β as f16: exact for this checkpoint's bf16 β, so the logits are identical).
#[test]
fn f16_projections_run_as_ternary() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tern_conversion("wide/packed", OutputType::Ternary(Layout::I2S), tmp.path());
    let f16 = tern_conversion("wide/packed", OutputType::F16, tmp.path());
    for (a, b) in same_codes(&ours, &f16) {
        assert_eq!(half::f16::from_f32(a).to_f32(), b);
    }
    for tokens in prompts("wide/packed") {
        assert!(logits(&ours, &tokens) == logits(&f16, &tokens), "f16 output differs on {tokens:?}");
    }
}

/// A float projection that is not one β times {-1, 0, 1} is refused, naming the tensor and where.
#[test]
fn non_ternary_float_projection_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tern_file("wide/packed", OutputType::F16, tmp.path());
    let f = tern_formats::gguf::GgufFile::open(&path).unwrap();
    let t = f.tensor("blk.1.ffn_up.weight").unwrap();
    // Row 2, column 5 of a [512, 256] matrix.
    let at = t.offset as usize + (2 * 256 + 5) * 2;
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at..at + 2].copy_from_slice(&half::f16::from_f32(0.123).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = Model::load(&path).err().expect("a non-ternary projection must not load").to_string();
    assert!(
        e.contains("blk.1.ffn_up.weight") && e.contains("not ternary") && e.contains("row 2, column 5"),
        "{e}"
    );
}

/// A Q6_K token embedding (what llama-quantize stores for a tied embedding) decodes to exactly
/// what gguf-py's own dequantiser gives, row by row, and serves as the tied output head.
#[test]
fn q6_k_embedding_decodes_like_gguf_py() {
    let model = foreign("bitnetcpp_i2s_q6k.gguf");
    let raw = std::fs::read(fixtures().join("foreign/bitnetcpp_i2s_q6k.token_embd.f32")).unwrap();
    let want: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let ids: Vec<u32> = (0..model.config.vocab as u32).collect();
    let got = Session::new(&model, 8).embed(&ids).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "Q6_K rows differ from gguf-py's dequantisation");

    // The tied head reads the same rows: each logit is a decoded row dotted with the normed state.
    let h = model.config.hidden;
    let x: Vec<f32> = (0..2 * h).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    let got = Session::new(&model, 8).logits(&x);
    let normed = tern_runtime::model::rms_norm(&x, &model.output_norm, model.config.rms_eps);
    for (p, state) in normed.chunks(h).enumerate() {
        for (r, row) in want.chunks(h).enumerate() {
            let dot: f32 = row.iter().zip(state).map(|(a, b)| a * b).sum();
            assert_eq!(got[p * model.config.vocab + r], dot, "position {p}, row {r}");
        }
    }
}
