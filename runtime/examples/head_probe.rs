//! The output head as multiply-accumulates per second on one thread: 64 rows that stay in cache,
//! then 128256 rows (2B-4T's vocabulary, more than an L3 holds) streaming from memory; best of
//! five runs (docs/performance-notes.md, "F16
//! head", "Quantised heads"). F16 rows against several positions at once (sequences decoding
//! together), or a Q4_0/Q8_0 head's tiles (8 positions for F16 unless told, 1 for Q4_0/Q8_0).
//!
//!     cargo run --release -p tern-runtime --example head_probe [POSITIONS | q4_0 [POSITIONS] | q8_0 [POSITIONS]]
//!
//! `TERN_KERNEL=avx2|avx512vnni` picks the kernel (default: the CPU's best).
use std::time::Instant;
use tern_formats::TensorType;
use tern_runtime::cpu;
use tern_runtime::kernels::float::dot_f16_rows_positions;
use tern_runtime::kernels::head;

fn main() {
    let isa = cpu::selected();
    let cols = 2560;
    let arg = std::env::args().nth(1).unwrap_or_else(|| "8".into());
    let integer = match arg.as_str() {
        "q4_0" => Some(TensorType::Q4_0),
        "q8_0" => Some(TensorType::Q8_0),
        _ => None,
    };
    let positions: usize = match integer {
        Some(_) => std::env::args().nth(2).map_or(1, |p| p.parse().expect("POSITIONS")),
        None => arg.parse().expect("POSITIONS, q4_0 or q8_0"),
    };
    for rows in [64usize, 128256] {
        let row_bytes = match integer {
            Some(ty) => head::block_bytes(ty).unwrap() * cols / 32,
            None => cols * 2,
        };
        // Small f16 values and scales (bytes below 0x3C in each half).
        let w: Vec<u8> = (0..rows * row_bytes).map(|i| ((i * 7) % 60) as u8).collect();
        let xs: Vec<f32> = (0..positions * cols).map(|i| (i % 13) as f32 * 0.1).collect();
        let acts: Vec<_> = xs.chunks_exact(cols).map(head::HeadActs::quantise).collect();
        let tiles = integer.map(|ty| head::HeadTiles::pack(ty, &w, rows, cols).unwrap());
        let mut out = vec![0f32; rows * positions];
        let reps = if rows == 64 { 2000 } else { 4 };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                match &tiles {
                    Some(tiles) => head::dot_rows(head::Kernel::for_isa(isa), tiles, 0, &acts, &mut out),
                    None => dot_f16_rows_positions(isa, &w, &xs, cols, &mut out),
                }
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&out);
        let macs = (rows * cols * positions * reps) as f64;
        println!(
            "{arg}, rows {rows} positions {positions}: {:.1} GMAC/s, {:.1} GB/s of weights",
            macs / best / 1e9,
            (rows * row_bytes * reps) as f64 / best / 1e9
        );
    }
}
