//! TQ1_0 / TQ2_0 against bytes made by the `gguf` Python package's own quantiser
//! (tests/fixtures/tq, scripts/make_tq_vectors.py): tern's packer reproduces them byte for byte
//! on ternary inputs, and its decoder gives gguf-py's dequantised values on every case.

mod common;
use half::f16;
use std::path::PathBuf;
use tern_formats::{Layout, tq1_0, tq2_0};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tq")
}

/// The documented mixer, with the listed blocks forced to zero.
fn codes(rows: usize, cols: usize, seed: u64, zero_blocks: &[(usize, usize)]) -> Vec<i8> {
    let mut t = common::vector_codes(rows, cols, seed);
    for &(r, b) in zero_blocks {
        t[r * cols + b * 256..][..256].fill(0);
    }
    t
}

fn fnv1a64(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in values.iter().flat_map(|v| v.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[test]
fn tq_vectors_from_gguf_py() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let mut ternary_checked = 0;
    let mut decoded = 0;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let layout = Layout::from_name(&case["type"].as_str().unwrap().to_ascii_lowercase()).unwrap();
        let (rows, cols) = (case["rows"].as_u64().unwrap() as usize, case["cols"].as_u64().unwrap() as usize);
        let bytes = std::fs::read(dir().join(case["file"].as_str().unwrap())).unwrap();
        let input = &case["input"];
        if input["kind"] == "ternary" {
            let zero: Vec<(usize, usize)> = input["zero_blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
                .collect();
            let t = codes(rows, cols, input["seed"].as_u64().unwrap(), &zero);
            let scale = input["scale"].as_f64().unwrap() as f32;
            assert!(layout.pack(&t, rows, cols, scale, None) == bytes, "{name}: bytes differ from gguf-py");
            let (back, s) = layout.unpack(&bytes, rows, cols, None).unwrap();
            assert_eq!((back, s), (t, scale), "{name}");
            ternary_checked += 1;
        }
        // Decode every case (including non-ternary inputs) and compare gguf-py's dequantisation.
        let (block_bytes, mut trits) = (case["block_bytes"].as_u64().unwrap() as usize, vec![0i8; 256]);
        let mut values = Vec::with_capacity(rows * cols);
        for block in bytes.chunks_exact(block_bytes) {
            let d = f16::from_le_bytes([block[block_bytes - 2], block[block_bytes - 1]]).to_f32();
            match layout {
                Layout::TQ1_0 => tq1_0::decode_block(block, &mut trits),
                _ => tq2_0::decode_block(block, &mut trits).unwrap(),
            }
            values.extend(trits.iter().map(|&t| t as f32 * d));
        }
        let expected = u64::from_str_radix(
            case["dequant"]["fnv1a64_f32_le"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        assert_eq!(fnv1a64(&values), expected, "{name}: dequantised values differ from gguf-py");
        decoded += 1;
    }
    assert_eq!((ternary_checked, decoded), (8, 10));
}
