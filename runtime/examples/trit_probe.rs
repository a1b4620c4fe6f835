//! The trit-tile product on 1, 4 and 8 tokens with its matrix in L2 (384 × 2560: 200 KiB of
//! tiles), and one token's lookup product on triple sums against decoding, interleaved,
//! timed as the best of many calls: what the kernel computes per cycle when memory does not
//! set the pace (docs/performance-notes.md, "Trit tiles").
//!
//!     cargo run --release -p tern-runtime --example trit_probe [ROWS] [COLS]

use std::time::{Duration, Instant};
use tern_runtime::cpu;
use tern_runtime::kernels::trit_tiles::{self, TritTiles};

fn main() {
    let mut args = std::env::args().skip(1);
    let m: usize = args.next().map(|s| s.parse().expect("ROWS: a number")).unwrap_or(384);
    let k: usize = args.next().map(|s| s.parse().expect("COLS: a number")).unwrap_or(2560);
    let mut next = tern_runtime::bench::xorshift(0x9E37_79B9);
    let codes: Vec<i8> = (0..m * k).map(|_| (next() % 3) as i8 - 1).collect();
    let act: Vec<i8> = (0..k).map(|_| next() as i8).collect();
    let w = TritTiles::pack(&codes, m, k).expect("memory for the tiles");
    let mut arranged = vec![0u8; trit_tiles::arranged_len(k)];
    trit_tiles::arrange(&act, &mut arranged);
    let sums = [act.iter().map(|&q| q as i32).sum::<i32>()];
    let isa = cpu::selected();
    let mut out = vec![0i32; m];
    for tokens in [1usize, 4, 8] {
        let acts: Vec<u8> = arranged.iter().copied().cycle().take(tokens * arranged.len()).collect();
        let sums = vec![sums[0]; tokens];
        let mut out = vec![0i32; m * tokens];
        let mut best = Duration::MAX;
        for _ in 0..2000 / tokens {
            let t = Instant::now();
            trit_tiles::gemm(isa, &w, 0, m, &acts, &sums, &mut out);
            best = best.min(t.elapsed());
        }
        let macs = (m * k * tokens) as f64;
        println!("{} {m}x{k}, {tokens} token(s): {:.1} GMAC/s", isa.name(), macs / best.as_secs_f64() / 1e9);
    }
    if trit_tiles::runs_on_sums(isa) {
        let mut table = vec![0u8; trit_tiles::sums_len(k)];
        trit_tiles::triple_sums(&act, &mut table);
        // Interleaved with the decoding product, so both see the same memory.
        let calls = (2_000_000_000 / (m * k)).clamp(20, 2000);
        for _ in 0..3 {
            let (mut decoded, mut looked_up) = (Duration::MAX, Duration::MAX);
            for _ in 0..calls {
                let t = Instant::now();
                trit_tiles::gemm(isa, &w, 0, m, &arranged, &sums, &mut out);
                decoded = decoded.min(t.elapsed());
                let t = Instant::now();
                trit_tiles::gemv_sums(isa, &w, 0, m, &table, &mut out);
                looked_up = looked_up.min(t.elapsed());
            }
            let rate = |d: Duration| (m * k) as f64 / d.as_secs_f64() / 1e9;
            println!(
                "{} {m}x{k}, 1 token: decoded {:.1}, by triple sums {:.1} GMAC/s",
                isa.name(),
                rate(decoded),
                rate(looked_up)
            );
        }
        let mut best = Duration::MAX;
        for _ in 0..2000 {
            let t = Instant::now();
            trit_tiles::triple_sums(&act, &mut table);
            best = best.min(t.elapsed());
        }
        println!("triple sums of {k} activations: {:.2} µs", best.as_secs_f64() * 1e6);
    }
    std::hint::black_box(&mut out);
}
