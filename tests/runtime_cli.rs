//! The runtime commands end to end through the binary: run, chat, bench, logits on GGUF, and
//! verify (passing on every fixture, failing with exit 1 on a corrupted scale).

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use tern_formats::gguf::GgufFile;

fn converted(form: &str, tmp: &std::path::Path) -> std::path::PathBuf {
    let out = tmp.join(format!("{}.gguf", form.replace('/', "-")));
    convert(&fixtures().join(form), &out, &[]);
    out
}

#[test]
fn verify_passes_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let forms = [
        ("tiny/bf16", 4),
        ("tiny/packed", 4),
        ("odd/bf16", 3),
        ("odd/packed", 3),
        // The other families: 1bitLLM (fp16 masters, SiLU, renamed sub-norms) and Llama-1.58
        // (packed, divided scales, no sub-norms, q/k permuted for interleaved RoPE).
        ("onebit/fp16", 2),
        ("llama158/packed", 2),
    ];
    for (form, layers) in forms {
        let gguf = converted(form, tmp.path());
        let reference = fixtures().join(form);
        let j: serde_json::Value = serde_json::from_str(&tern_ok(&[
            "verify",
            gguf.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--json",
        ]))
        .unwrap();
        assert_eq!(j["pass"], true, "{form}: {j}");
        // Fed identical inputs, every module agrees to float rounding (the gate allows 1e-4).
        for l in j["layers"].as_array().unwrap() {
            assert!(l["modules_rel_l2"].as_f64().unwrap() < 1e-5, "{form}: {l}");
        }
        assert!(j["output_head_rel_l2"].as_f64().unwrap() < 1e-5);
        assert!(j["embedding_rel_l2"].as_f64().unwrap() < 1e-5);
        assert_eq!(j["layers"].as_array().unwrap().len(), layers, "{form}");
        assert_eq!(j["prompts"].as_array().unwrap().len(), 4);
    }
}

/// Multiplies the β (in the I2_S tail) of one tensor of a converted GGUF.
fn corrupt_scale(gguf: &std::path::Path, tensor: &str, factor: f32) {
    let f = GgufFile::open(gguf).unwrap();
    let t = f.tensor(tensor).unwrap().clone();
    let pos = (t.offset + t.size - 32) as usize;
    drop(f);
    let mut bytes = std::fs::read(gguf).unwrap();
    let beta = f32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap());
    bytes[pos..pos + 4].copy_from_slice(&(beta * factor).to_le_bytes());
    std::fs::write(gguf, bytes).unwrap();
}

#[test]
fn verify_fails_on_a_corrupted_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = fixtures().join("tiny/bf16");
    // o_proj ×1.5, and v_proj ×1.01: the latter is invisible end to end (attn_sub_norm is
    // scale-invariant) but not to the module check.
    for (tensor, factor, module) in [
        ("blk.1.attn_output.weight", 1.5, "layer 1 module attn_output"),
        ("blk.2.attn_v.weight", 1.01, "layer 2 module attn_v"),
    ] {
        let dir = tmp.path().join(tensor);
        std::fs::create_dir(&dir).unwrap();
        let gguf = converted("tiny/bf16", &dir);
        corrupt_scale(&gguf, tensor, factor);
        let res = tern(&["verify", gguf.to_str().unwrap(), "--reference", reference.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&res.stdout);
        assert_eq!(res.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("FAIL") && stdout.contains(module), "{tensor}: {stdout}");
        assert!(String::from_utf8_lossy(&res.stderr).contains("verification failed"));
    }
}

/// `--output-type q8_0|q4_0` stores the head block-quantised: the file shrinks, verify reports the
/// head's error and KL against the f32 reference within the type's bound, and a head whose block
/// scales are all doubled fails that bound.
#[test]
fn quantised_output_head_is_verified_within_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = fixtures().join("wide/packed");
    let r = reference.to_str().unwrap();
    let f16 = converted("wide/packed", tmp.path());
    for (ty, bound) in [("q8_0", 3e-2), ("q4_0", 2.5e-1)] {
        let out = tmp.path().join(format!("{ty}.gguf"));
        convert(&reference, &out, &["--output-type", ty]);
        let f = GgufFile::open(&out).unwrap();
        let head = f.tensor("token_embd.weight").unwrap().clone();
        assert_eq!(head.ty.name().to_lowercase(), ty, "the tied embedding is the head");
        assert!(std::fs::metadata(&out).unwrap().len() < std::fs::metadata(&f16).unwrap().len());
        drop(f);
        let o = out.to_str().unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&tern_ok(&["verify", o, "--reference", r, "--json"])).unwrap();
        assert_eq!(j["pass"], true, "{ty}: {j}");
        let (rel, kl) = (j["output_head_rel_l2"].as_f64().unwrap(), j["output_head_kl"].as_f64().unwrap());
        println!("{ty}: head rel-L2 {rel:.3e}, KL {kl:.3e}");
        assert!(rel > 1e-4 && rel < bound && kl > 0.0, "{ty}: {j}");
        assert_eq!(j["output_head_bound"].as_f64().unwrap(), bound);

        // Double every block scale (the f16 d at the start of each block): rel-L2 ≈ 1.
        let block = if ty == "q8_0" { 34 } else { 18 };
        let mut bytes = std::fs::read(&out).unwrap();
        for at in (head.offset as usize..(head.offset + head.size) as usize).step_by(block) {
            let d = half::f16::from_le_bytes([bytes[at], bytes[at + 1]]);
            bytes[at..at + 2].copy_from_slice(&half::f16::from_f32(d.to_f32() * 2.0).to_le_bytes());
        }
        std::fs::write(&out, bytes).unwrap();
        let res = tern(&["verify", o, "--reference", r]);
        let stdout = String::from_utf8_lossy(&res.stdout);
        assert_eq!(res.status.code(), Some(1), "{ty}: {stdout}");
        assert!(stdout.contains("embedding lookup") || stdout.contains("output head"), "{ty}: {stdout}");
    }
}

#[test]
fn strict_verify_gates_on_end_to_end_thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("odd/packed", tmp.path());
    let reference = fixtures().join("odd/packed");
    let (g, r) = (gguf.to_str().unwrap(), reference.to_str().unwrap());
    // Passing with --strict on this fixture, failing once the logits bound is made impossible.
    tern_ok(&["verify", g, "--reference", r, "--strict"]);
    let res = tern(&["verify", g, "--reference", r, "--strict", "--max-rel-l2", "0", "--median-rel-l2", "0"]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stdout).contains("FAIL: median logits rel-L2"));
}

#[test]
fn convert_with_verify_writes_after_passing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v.gguf");
    let res = tern(&[
        "convert",
        fixtures().join("odd/packed").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--verify",
        "--threads",
        "1",
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(String::from_utf8_lossy(&res.stderr).contains("PASS"));
    assert!(out.is_file());
}

#[test]
fn run_is_deterministic_for_a_seed_and_reports_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("tiny/packed", tmp.path());
    let args = [
        "run",
        gguf.to_str().unwrap(),
        "-p",
        "The quick brown fox",
        "-n",
        "12",
        "--seed",
        "7",
        "--temp",
        "0.9",
        "-t",
        "2",
    ];
    let a = tern(&args);
    let b = tern(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "same seed, same text");
    assert!(String::from_utf8_lossy(&a.stdout).starts_with("The quick brown fox"));
    let err = String::from_utf8_lossy(&a.stderr);
    let tk = tern_runtime::tokenizer::Tokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap().unwrap();
    let n = tk.encode("The quick brown fox", true).unwrap().len();
    assert!(
        err.contains(&format!("prompt: {n} tokens")) && err.contains("t/s") && err.contains("seed 7"),
        "{err}"
    );
    // Greedy from token ids: the first generated token is the golden argmax of the last position.
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny/packed/golden/golden.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<String> =
        golden["prompts"][1].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let first = golden["greedy"][1]["new_tokens"][0].as_u64().unwrap();
    let out = tern(&["run", gguf.to_str().unwrap(), "--tokens", &prompt.join(","), "-n", "1", "--greedy"]);
    assert!(out.status.success());
    let expected = tk.decode(&[first as u32], true);
    assert!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').ends_with(&expected), "{expected:?}");
}

#[test]
fn chat_answers_each_line() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("tiny/bf16", tmp.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["chat", gguf.to_str().unwrap(), "-n", "8", "--greedy", "--system", "Be brief."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\n/reset\nWhat is a ternary weight?\nAnd why?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("t/s]").count(), 3, "three replies: {err}");
    assert!(err.contains("(conversation reset)"));
}

#[test]
fn bench_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("odd/bf16", tmp.path());
    let j: serde_json::Value = serde_json::from_str(&tern_ok(&[
        "bench",
        gguf.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "4",
        "-t",
        "1,2",
        "-r",
        "2",
        "--kv-type",
        "f16",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["kv_type"], "f16");
    // This process mapped the file and reports how (Linux smaps).
    if cfg!(target_os = "linux") {
        assert!(j["mapped_bytes"].as_u64().unwrap() > 0, "{}", j["mapped_bytes"]);
    }
    let results = j["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["test"], "pp16");
    assert_eq!(results[3]["test"], "tg4");
    assert!(
        results
            .iter()
            .all(|r| r["median"].as_f64().unwrap() > 0.0 && r["samples"].as_array().unwrap().len() == 2)
    );
    assert!(j["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn logits_on_gguf_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("odd/packed", tmp.path());
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("odd/packed/golden/golden.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<String> =
        golden["prompts"][0].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let out = tmp.path().join("l.npy");
    tern_ok(&[
        "logits",
        gguf.to_str().unwrap(),
        "--tokens",
        &prompt.join(","),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (shape, got) = tern_formats::npy::read_f32(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(shape, vec![prompt.len(), 400]);
    let expected = Golden::open(&fixtures().join("odd/packed")).f32("logits.0").0;
    let r = tern_runtime::parity::compare_logits(&got, &expected, 400, 1e-2);
    assert!(r.rel_l2 < 2e-2 && r.top1_agree == r.top1_considered, "{r:?}");
}

#[test]
fn verify_and_bench_work_for_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = fixtures().join("wide/packed");
    for layout in ["i2_s", "tl1", "tl2", "tq1_0", "tq2_0"] {
        let out = tmp.path().join(format!("wide-{layout}.gguf"));
        convert(&reference, &out, &["--type", layout]);
        let f = GgufFile::open(&out).unwrap();
        assert!(
            f.tensors()
                .iter()
                .filter(|t| t.ty.is_ternary())
                .all(|t| t.ty.name().eq_ignore_ascii_case(layout))
        );
        let j: serde_json::Value = serde_json::from_str(&tern_ok(&[
            "verify",
            out.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--json",
        ]))
        .unwrap();
        assert_eq!(j["pass"], true, "{layout}: {j}");
        let b: serde_json::Value = serde_json::from_str(&tern_ok(&[
            "bench",
            out.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "2",
            "-t",
            "1",
            "-r",
            "1",
            "--json",
        ]))
        .unwrap();
        assert_eq!(b["results"].as_array().unwrap().len(), 2, "{layout}");
    }
}

/// The parity gate runs by default: a converter fault (a scale off by 1 %, injected into the
/// temporary output) fails the conversion with exit 1 and no file; without the fault the gate
/// passes; with --no-verify the faulty file is written (the gate is what stopped it).
#[test]
fn convert_gate_refuses_a_corrupted_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixtures().join("tiny/bf16");
    let out = tmp.path().join("g.gguf");
    let run = |extra: &[&str]| {
        let mut args = vec!["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--force"];
        args.extend_from_slice(extra);
        tern(&args)
    };
    let res = run(&["--fault-scale", "blk.1.attn_v.weight=1.01"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains("verification failed, nothing written") && err.contains("layer 1 module attn_v"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "left a file behind");
    let res = run(&[]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success() && err.contains("parity gate: PASS"), "{err}");
    let res = run(&["--no-verify", "--fault-scale", "blk.1.attn_v.weight=1.01"]);
    assert!(res.status.success() && out.is_file());
    assert!(!String::from_utf8_lossy(&res.stderr).contains("parity gate"));
    let res = tern(&["verify", out.to_str().unwrap(), "--reference", input.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(1), "the injected fault must be in the written file");
}

/// `--roofline` relates tg to the measured bandwidth and the file's bytes per token; `--profile`
/// splits a token's time into operations that add up to no more than the whole.
#[test]
fn bench_roofline_and_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("tiny/bf16", tmp.path());
    let args = ["bench", gguf.to_str().unwrap(), "-p", "16", "-n", "8", "-t", "1", "-r", "1"];
    let mut with_flags = args.to_vec();
    with_flags.extend(["--roofline", "--roofline-mib", "64", "--profile", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&tern_ok(&with_flags)).unwrap();
    let roof = &j["roofline"][0];
    let (bw, bpt) = (roof["read_bytes_per_s"].as_f64().unwrap(), roof["bytes_per_token"].as_f64().unwrap());
    assert!(bw > 1e8, "bandwidth {bw}");
    // The tiny model's weights: 786432 ternary weights at 2 bits plus the 400×128 f16 head (and
    // each tensor's scale where the kernels read the file's bytes rather than tiles).
    assert_eq!(bpt as u64, j["bytes_per_token"].as_u64().unwrap());
    assert!((786432.0 / 4.0 + 400.0 * 128.0 * 2.0..400_000.0).contains(&bpt), "bytes per token {bpt}");
    assert_eq!(
        (j["results"][0]["test"].as_str(), j["results"][1]["test"].as_str()),
        (Some("pp16"), Some("tg8"))
    );
    let tg = j["results"][1]["median"].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    assert!(close(roof["ceiling_tokens_per_s"].as_f64().unwrap(), bw / bpt));
    assert!(close(roof["fraction_of_ceiling"].as_f64().unwrap(), tg / (bw / bpt)));
    // One profile of the prompt, then one of generation, each adding up to at most its whole.
    let tests: Vec<_> =
        j["profile"].as_array().unwrap().iter().map(|p| p["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "tg8"]);
    for p in j["profile"].as_array().unwrap() {
        let per_token = p["seconds_per_token"].as_f64().unwrap();
        let ops = p["seconds_per_token_by_op"].as_object().unwrap();
        assert_eq!(ops.len(), 8);
        let sum: f64 = ops.values().map(|v| v.as_f64().unwrap()).sum();
        assert!(sum > 0.0 && sum <= per_token * 1.0001, "{sum} vs {per_token}");
        assert!(ops["ternary matmuls"].as_f64().unwrap() > 0.0 && ops["output head"].as_f64().unwrap() > 0.0);
        // An I2_S model builds no TL tables; a prompt may lay its activations out as a panel
        // for the prompt GEMM (AMX tiles, AVX2 lookup columns), generation never does.
        let layout = ops["activation layout (TL tables, panels)"].as_f64().unwrap();
        assert!(if p["test"] == "tg8" { layout == 0.0 } else { layout >= 0.0 }, "{layout}");
        // Generation streams every weight once per token: the ternary bytes and the head's over
        // their ops' time. A prompt reads them once per batch, so it rates nothing.
        let streamed = p["weight_bytes_per_s_by_op"].as_object().unwrap();
        if p["test"] == "tg8" {
            let head = 400.0 * 128.0 * 2.0;
            let ternary = bpt - head;
            let want = ternary / ops["ternary matmuls"].as_f64().unwrap();
            assert!(close(streamed["ternary matmuls"].as_f64().unwrap(), want), "{streamed:?}");
            let want = head / ops["output head"].as_f64().unwrap();
            assert!(close(streamed["output head"].as_f64().unwrap(), want), "{streamed:?}");
        } else {
            assert!(streamed.is_empty(), "{streamed:?}");
        }
        // The tiny file is below the size the bandwidth is streamed through around each run.
        assert!(p["read_bytes_per_s"].is_null());
    }
}

/// `--batch` adds one batched-generation test per size after tg, each with its own profile, which
/// (weights read once per step for all sequences) rates no weight streaming.
#[test]
fn bench_batched_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = converted("tiny/bf16", tmp.path());
    let args = ["bench", gguf.to_str().unwrap(), "-p", "0", "-n", "4", "-b", "1,3", "-t", "1", "-r", "1"];
    let mut with_flags = args.to_vec();
    with_flags.extend(["--profile", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&tern_ok(&with_flags)).unwrap();
    let results = j["results"].as_array().unwrap();
    let tests: Vec<_> = results.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["tg4", "tg4 b1", "tg4 b3"]);
    assert_eq!((results[1]["batch"].as_u64(), results[2]["batch"].as_u64()), (Some(1), Some(3)));
    assert!(results.iter().all(|r| r["median"].as_f64().unwrap() > 0.0));
    let profiles = j["profile"].as_array().unwrap();
    let tests: Vec<_> = profiles.iter().map(|p| p["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["tg4", "tg4 b1", "tg4 b3"]);
    for p in &profiles[1..] {
        assert!(p["weight_bytes_per_s_by_op"].as_object().unwrap().is_empty());
        let ops = p["seconds_per_token_by_op"].as_object().unwrap();
        assert!(ops["ternary matmuls"].as_f64().unwrap() > 0.0 && ops["output head"].as_f64().unwrap() > 0.0);
    }
    // The table names each test.
    let text = tern_ok(&args);
    assert!(text.contains("| tg4 b3 |"), "{text}");
}
