//! The F16 output head against several positions at once (sequences decoding together), as
//! multiply-accumulates per second on one thread: 64 rows that stay in cache, then 32768 rows
//! (168 MB) streaming from memory; best of five runs (docs/performance-notes.md, "F16 head").
//!
//!     cargo run --release -p tern-runtime --example head_probe [POSITIONS]
//!
//! `TERN_KERNEL=avx2|avx512vnni` picks the kernel (default: the CPU's best); 8 positions unless
//! told.
use std::time::Instant;
use tern_runtime::cpu;
use tern_runtime::kernels::float::dot_f16_rows_positions;

fn main() {
    let isa = cpu::selected();
    let cols = 2560;
    let positions: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(8);
    for rows in [64usize, 32768] {
        let w: Vec<u8> = (0..rows * cols * 2).map(|i| ((i * 7) % 60) as u8).collect();
        let xs: Vec<f32> = (0..positions * cols).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut out = vec![0f32; rows * positions];
        let reps = if rows == 64 { 2000 } else { 4 };
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                dot_f16_rows_positions(isa, &w, &xs, cols, &mut out);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let macs = (rows * cols * positions * reps) as f64;
        println!(
            "rows {rows} positions {positions}: {:.1} GMAC/s, {:.1} GB/s of weights",
            macs / best / 1e9,
            (rows * cols * 2 * reps) as f64 / best / 1e9
        );
    }
}
