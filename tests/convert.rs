//! `tern convert` acceptance: both checkpoint forms give the same ternary codes, equal to
//! transformers' own ternarisation; sharded input gives identical bytes; tern's GGUF reads back
//! exactly; dequantised outputs hold β·t.

mod common;
use common::*;
use tern_formats::gguf::{GgufFile, GgufWriter, TensorSpec};
use tern_formats::{Layout, TensorType};

fn i2s_codes(f: &GgufFile, name: &str) -> (Vec<i8>, f32) {
    let t = f.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(t.ty, TensorType::I2S);
    let (rows, cols) = t.rows_cols();
    Layout::I2S.unpack(f.data(t), rows as usize, cols as usize, None).unwrap()
}

fn check_fixture(name: &str, layers: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixtures().join(name);
    let (a, b) = (tmp.path().join("bf16.gguf"), tmp.path().join("packed.gguf"));
    convert(&fx.join("bf16"), &a, &[]);
    convert(&fx.join("packed"), &b, &[]);
    let (fa, fb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    let golden_bf16 = Golden::open(&fx.join("bf16"));
    let golden_packed = Golden::open(&fx.join("packed"));
    let has_codes = golden_bf16.file.get("codes.model.layers.0.self_attn.q_proj.weight").is_some();
    let mut exact_beta = 0;
    let pairs = projection_names(layers);
    for (gguf, hf) in &pairs {
        let (codes_a, beta_a) = i2s_codes(&fa, gguf);
        let (codes_b, beta_b) = i2s_codes(&fb, gguf);
        assert_eq!(codes_a, codes_b, "{name}: {gguf} differs between bf16 and packed");
        if has_codes {
            assert_eq!(codes_a, golden_bf16.i8(&format!("codes.{hf}")), "{name}: {gguf} vs transformers");
        }
        // β from master weights: torch's f32 mean, within one ulp (docs/formats.md, reduction order).
        let torch_beta = golden_bf16.f32(&format!("beta.{hf}")).0[0];
        assert!(
            (beta_a - torch_beta).abs() <= f32::EPSILON * torch_beta,
            "{gguf}: β {beta_a} vs torch {torch_beta}"
        );
        exact_beta += (beta_a == torch_beta) as usize;
        // β from the packed repo is its weight_scale, exactly.
        assert_eq!(beta_b, golden_packed.f32(&format!("beta.{hf}")).0[0], "{gguf}");
    }
    assert!(
        exact_beta * 2 > pairs.len(),
        "β should mostly match torch to the bit ({exact_beta}/{})",
        pairs.len()
    );
}

#[test]
fn tiny_bf16_and_packed_give_transformers_codes() {
    check_fixture("tiny", 4);
}

#[test]
fn odd_shapes_and_untied_head_convert() {
    check_fixture("odd", 3);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("odd.gguf");
    convert(&fixtures().join("odd/bf16"), &out, &[]);
    let f = GgufFile::open(&out).unwrap();
    assert!(f.tensor("output.weight").is_some(), "untied lm_head must be written");
    // K = 96 is padded to one 128-weight block per row.
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dims.clone(), q.size), (vec![96, 96], 96 * 32 + 32));
}

#[test]
fn sharded_checkpoint_gives_identical_bytes() {
    use safetensors::tensor::{Dtype as StDtype, TensorView};
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny/bf16");
    // Same folder name, so general.name is the same.
    let sharded = tmp.path().join("sharded").join("bf16");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), sharded.join(f)).unwrap();
    }
    let whole = tern_formats::safetensors_file::SafetensorsFile::open(src.join("model.safetensors")).unwrap();
    let tensors = whole.tensors();
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|t| {
                assert_eq!(t.dtype, StDtype::BF16);
                (t.name.clone(), TensorView::new(StDtype::BF16, t.shape.clone(), whole.data(t)).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &sharded.join(&file)).unwrap();
        for t in part {
            weight_map.insert(t.name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let (a, b) = (tmp.path().join("single.gguf"), tmp.path().join("sharded.gguf"));
    convert(&src, &a, &[]);
    convert(&sharded, &b, &[]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "sharded conversion differs");
}

#[test]
fn tern_gguf_reads_back_and_rewrites_byte_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.gguf");
    convert(&fixtures().join("tiny/packed"), &out, &[]);
    let f = GgufFile::open(&out).unwrap();
    let specs: Vec<TensorSpec> = f
        .tensors()
        .iter()
        .map(|t| TensorSpec { name: t.name.clone(), ty: t.ty, dims: t.dims.clone() })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), f.metadata(), specs).unwrap();
    for t in f.tensors() {
        w.write_tensor(&t.name, f.data(t)).unwrap();
    }
    let again = w.finish().unwrap();
    assert!(again == std::fs::read(&out).unwrap(), "re-written GGUF differs");
    assert_eq!(f.metadata().get_str("general.architecture"), Some("bitnet-b1.58"));
    assert_eq!(f.metadata().get_u64("general.file_type"), Some(40));
    assert_eq!(f.metadata().get_str("tokenizer.ggml.pre"), Some("gpt-2"));
}

#[test]
fn f32_output_holds_beta_times_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("i2s.gguf"), tmp.path().join("f32.gguf"));
    let src = fixtures().join("tiny/bf16");
    convert(&src, &a, &[]);
    convert(&src, &b, &["--type", "f32", "--embed-type", "f32"]);
    let (fa, fb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    for (gguf, _) in projection_names(4) {
        let (codes, beta) = i2s_codes(&fa, &gguf);
        let t = fb.tensor(&gguf).unwrap();
        assert_eq!(t.ty, TensorType::F32);
        let values: Vec<f32> =
            fb.data(t).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let expected: Vec<f32> = codes.iter().map(|&c| c as f32 * beta).collect();
        assert_eq!(values, expected, "{gguf}");
    }
    assert_eq!(fb.metadata().get_u64("general.file_type"), Some(0));
}

#[test]
fn inspect_describes_gguf_safetensors_and_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.gguf");
    let src = fixtures().join("tiny/bf16");
    convert(&src, &out, &[]);
    let j: serde_json::Value =
        serde_json::from_str(&tern_ok(&["inspect", out.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(j["kind"], "gguf");
    assert_eq!(j["tensors"].as_array().unwrap().len(), 2 + 4 * 11);
    assert_eq!(j["totals"]["ternary_parameters"], 4 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 384 * 128));
    let tokens =
        j["metadata"].as_array().unwrap().iter().find(|m| m["key"] == "tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens["value"]["len"], 400);

    let st = src.join("model.safetensors");
    let j: serde_json::Value =
        serde_json::from_str(&tern_ok(&["inspect", st.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(j["kind"], "safetensors");
    let emb =
        j["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "model.embed_tokens.weight").unwrap();
    assert_eq!((emb["type"].as_str(), emb["shape"].clone()), (Some("BF16"), serde_json::json!([400, 128])));

    let text = tern_ok(&["inspect", src.to_str().unwrap()]);
    assert!(text.contains("family bitnet-b1.58, online weights, activation relu2, lm_head tied"), "{text}");
    let text = tern_ok(&["inspect", out.to_str().unwrap()]);
    assert!(text.contains("I2_S") && text.contains("bits per weight"), "{text}");
}

/// Codes and β of every projection of a converted file, whatever its layout (tiles from
/// `tern.tiles`, TQ's exact β from `tern.scale.*`, TL's β from its `_scale` tensor).
fn projections(f: &GgufFile, layers: usize) -> Vec<(String, TensorType, Vec<i8>, f32)> {
    let tiles = f.metadata().get("tern.tiles").and_then(|v| v.as_array()).map(|a| {
        let flat: Vec<usize> = a.iter().map(|v| v.as_u64().unwrap() as usize).collect();
        flat.chunks_exact(5).map(|c| c.to_vec()).collect::<Vec<_>>()
    });
    projection_names(layers)
        .into_iter()
        .map(|(name, _)| {
            let t = f.tensor(&name).unwrap();
            let (rows, cols) = t.rows_cols();
            let (rows, cols) = (rows as usize, cols as usize);
            let layout = t.ty.traits().layout.expect("a ternary layout");
            let tile = tiles.as_ref().and_then(|ts| {
                ts.iter().find(|r| r[0] == rows && r[1] == cols).map(|r| tern_formats::tiles::Tiles {
                    rows: r[2],
                    cols: r[3],
                    sub_rows: r[4],
                })
            });
            let (codes, mut beta) = layout.unpack(f.data(t), rows, cols, tile).unwrap();
            if let Some(s) = f.tensor(&format!("{name}_scale")) {
                let b = f32::from_le_bytes(f.data(s)[..4].try_into().unwrap());
                assert_eq!(b, beta, "{name}: tail and _scale tensor agree");
            }
            if let Some(v) = f.metadata().get(&format!("tern.scale.{name}")) {
                let exact = v.as_f64().unwrap() as f32;
                assert_eq!(half::f16::from_f32(exact).to_f32(), beta, "{name}: block d is f16(β)");
                beta = exact;
            }
            (name, t.ty, codes, beta)
        })
        .collect()
}

#[test]
fn every_layout_stores_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for (fixture, layers) in [("tiny/packed", 4), ("odd/bf16", 3)] {
        let src = fixtures().join(fixture);
        let base = tmp.path().join("i2_s.gguf");
        convert(&src, &base, &["--force"]);
        let reference = projections(&GgufFile::open(&base).unwrap(), layers);
        for layout in ["tl1", "tl2", "tq1_0", "tq2_0"] {
            let out = tmp.path().join(format!("{layout}.gguf"));
            let res = tern(&[
                "convert",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--type",
                layout,
                "--force",
                "--quiet",
            ]);
            assert!(res.status.success(), "{fixture} {layout}: {}", String::from_utf8_lossy(&res.stderr));
            let f = GgufFile::open(&out).unwrap();
            let got = projections(&f, layers);
            let mut native = 0;
            for ((name, ty, codes, beta), (_, _, want_codes, want_beta)) in got.iter().zip(&reference) {
                assert!(codes == want_codes, "{fixture} {layout} {name}: codes differ from I2_S");
                assert_eq!(beta, want_beta, "{fixture} {layout} {name}");
                native += (ty.name().eq_ignore_ascii_case(layout)) as usize;
            }
            // Shapes the layout cannot hold fall back to I2_S, with a warning naming them.
            let fell_back = got.len() - native;
            assert_eq!(
                fell_back > 0,
                String::from_utf8_lossy(&res.stderr).contains("stored as I2_S instead"),
                "{fixture} {layout}"
            );
            println!("{fixture} {layout}: {native} native, {fell_back} I2_S");
        }
    }
}

/// `--compat bitnet.cpp` refuses what bitnet.cpp cannot load (llama.cpp's types, padded I2_S
/// rows) with exit 2 and no output, and warns about TL tiles bitnet.cpp has no kernels for.
#[test]
fn compat_bitnet_cpp_refuses_what_bitnet_cpp_cannot_load() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.gguf");
    let odd = fixtures().join("odd/bf16");
    let o = |ty: &str| out.to_str().map(|p| (p.to_string(), ty.to_string())).unwrap();
    for (ty, needle) in [
        ("tq2_0", "tq2_0 is llama.cpp's"),
        ("i2_s", "blk.0.attn_q.weight (96x96)"),
        ("tl2", "128-weight blocks"),
    ] {
        let (path, ty) = o(ty);
        let r =
            tern(&["convert", odd.to_str().unwrap(), "-o", &path, "--type", &ty, "--compat", "bitnet.cpp"]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{ty}: {err}");
        assert!(err.contains(needle) && err.contains("odd/bf16"), "{ty}: {err}");
        assert!(!out.exists() && std::fs::read_dir(tmp.path()).unwrap().count() == 0, "{ty} left output");
    }
    // Whole 128-weight rows: TL2 is written, with the tiles bitnet.cpp would need kernels for.
    let wide = fixtures().join("wide/packed");
    let r = tern(&[
        "convert",
        wide.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "tl2",
        "--compat",
        "bitnet.cpp",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("256x256: BM=256 BK=96 bm=32"), "{err}");
    let f = GgufFile::open(&out).unwrap();
    assert!(f.tensors().iter().any(|t| t.ty == TensorType::TL2));
    assert!(f.tensors().iter().all(|t| t.ty != TensorType::I2S || t.rows_cols().1 % 128 == 0));
    // The default (tern) pads the same odd rows instead of refusing.
    let r = tern(&["convert", odd.to_str().unwrap(), "-o", tmp.path().join("t.gguf").to_str().unwrap()]);
    assert!(r.status.success() && String::from_utf8_lossy(&r.stderr).contains("padded with zero weights"));
}

/// A 2B-4T-family file in llama.cpp's TQ types says that llama.cpp cannot load it (its arch is
/// bitnet.cpp's name); bitnet.cpp's own layouts carry no such note.
#[test]
fn tq_files_of_the_2b4t_family_say_llama_cpp_cannot_load_them() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixtures().join("wide/packed");
    for (ty, noted) in [("tq2_0", true), ("tq1_0", true), ("i2_s", false)] {
        let out = tmp.path().join(format!("{ty}.gguf"));
        let j: serde_json::Value = serde_json::from_str(&tern_ok(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--type",
            ty,
            "--json",
        ]))
        .unwrap();
        let notes = j["notes"].as_array().unwrap();
        assert_eq!(notes.len(), noted as usize, "{ty}: {j}");
        if noted {
            let text = notes[0].as_str().unwrap();
            assert!(text.contains("llama.cpp cannot load") && text.contains("SiLU"), "{text}");
        }
    }
}
