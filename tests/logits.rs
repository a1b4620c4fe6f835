//! `tern logits` on both checkpoint forms: the .npy it writes holds transformers' logits within
//! the reference tolerances, and --json lists the top 5 per position.

mod common;
use common::*;
use tern_runtime::parity::{Thresholds, compare_logits};

fn golden_prompt(form: &str, p: usize) -> (Vec<u32>, Vec<f32>) {
    let dir = fixtures().join(form);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden/golden.json")).unwrap()).unwrap();
    let tokens = json["prompts"][p].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    (tokens, Golden::open(&dir).f32(&format!("logits.{p}")).0)
}

#[test]
fn npy_output_matches_transformers_for_both_forms() {
    let tmp = tempfile::tempdir().unwrap();
    for form in ["tiny/bf16", "tiny/packed", "odd/packed"] {
        let (tokens, expected) = golden_prompt(form, 1);
        let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let out = tmp.path().join("l.npy");
        let dir = fixtures().join(form);
        tern_ok(&[
            "logits",
            dir.to_str().unwrap(),
            "--tokens",
            &list.join(","),
            "--out",
            out.to_str().unwrap(),
            "--force",
        ]);
        let (shape, got) = tern_formats::npy::read_f32(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(shape, vec![tokens.len(), 400]);
        let r = compare_logits(&got, &expected, 400, Thresholds::default().min_gap);
        assert!(
            r.rel_l2 <= Thresholds::default().max_rel_l2 && r.top1_agree == r.top1_considered,
            "{form}: {r:?}"
        );
    }
}

#[test]
fn json_lists_top5_per_position_and_bad_tokens_fail() {
    let dir = fixtures().join("tiny/bf16");
    let (tokens, expected) = golden_prompt("tiny/bf16", 2);
    let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let j: serde_json::Value = serde_json::from_str(&tern_ok(&[
        "logits",
        dir.to_str().unwrap(),
        "--tokens",
        &list.join(","),
        "--json",
    ]))
    .unwrap();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), tokens.len());
    for (pos, row) in rows.iter().enumerate() {
        let top = row["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let want = tern_runtime::parity::argmax(&expected[pos * 400..(pos + 1) * 400]);
        assert_eq!(top[0]["id"].as_u64().unwrap() as usize, want, "position {pos}");
    }
    let res = tern(&["logits", dir.to_str().unwrap(), "--tokens", "1,400"]);
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("token id 400 is outside the vocabulary"));
}
