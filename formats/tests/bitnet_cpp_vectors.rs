//! tern's packers against bytes produced by bitnet.cpp's own functions: every case in
//! `../shared/vectors/bitnet-cpp/cases.json` (when that folder is beside the checkout) and the
//! committed copies in `tests/vectors/` (always).

mod common;
use common::vector_codes;
use std::path::{Path, PathBuf};
use tern_formats::Layout;
use tern_formats::tiles::{self, Tiles};

#[test]
fn generator_matches_the_documented_sanity_check() {
    assert_eq!(vector_codes(1, 8, 1), vec![-1, -1, 1, -1, -1, 1, 1, -1]);
}

/// Checks every case in `dir` (I2_S, TL1, TL2); returns how many were checked.
fn check_dir(dir: &Path) -> usize {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let layout = Layout::from_name(case["layout"].as_str().unwrap()).expect("known layout");
        let (m, k) = (case["M"].as_u64().unwrap() as usize, case["K"].as_u64().unwrap() as usize);
        let tiles = case.get("BM").map(|_| Tiles {
            rows: case["BM"].as_u64().unwrap() as usize,
            cols: case["BK"].as_u64().unwrap() as usize,
            sub_rows: case["bm"].as_u64().unwrap() as usize,
        });
        if let Some(t) = tiles {
            tiles::check(layout, m, k, t).unwrap();
        }
        let scale = case["scale"].as_f64().unwrap() as f32;
        let codes = vector_codes(m, k, case["seed"].as_u64().unwrap());
        let expected = std::fs::read(dir.join(file)).unwrap();
        let packed = layout.pack(&codes, m, k, scale, tiles);
        // TL files hold bitnet.cpp's payload only; tern appends the scale tail after it.
        assert!(packed.len() >= expected.len(), "{file}");
        assert!(packed[..expected.len()] == expected[..], "{file}: bytes differ");
        let (back, s) = layout.unpack(&packed, m, k, tiles).unwrap();
        assert_eq!((back, s), (codes, scale), "{file}");
        checked += 1;
    }
    checked
}

#[test]
fn committed_vectors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    assert_eq!(check_dir(&dir), 4);
}

#[test]
fn shared_vectors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/bitnet-cpp");
    if !dir.join("cases.json").is_file() {
        println!("NOTICE: {} not found; shared bitnet.cpp vectors skipped", dir.display());
        return;
    }
    assert_eq!(check_dir(&dir), 7, "every shared vector (2 I2_S, 2 TL1, 3 TL2)");
}
