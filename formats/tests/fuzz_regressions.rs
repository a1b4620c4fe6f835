//! Every input the fuzzer ever crashed on (`scripts/fuzz.sh`, docs/reliability.md), replayed
//! through the same property the fuzz target checks. Files: `fuzz_regressions/<target>-*.bin`.

#[path = "../../fuzz/cases.rs"]
mod cases;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{target}-")))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    found.sort();
    found
}

/// TL2's unpacker accepted pair indices above 8 in the tail (decoding them to codes like 4):
/// found by the `unpack` target on its first run.
#[test]
fn unpack_crashes_stay_fixed() {
    let cases = inputs("unpack");
    assert!(cases.len() >= 2, "the regression inputs are missing");
    for (name, data) in cases {
        let r = std::panic::catch_unwind(|| cases::unpack_case(&data));
        assert!(r.is_ok(), "{name} panics again");
    }
}
