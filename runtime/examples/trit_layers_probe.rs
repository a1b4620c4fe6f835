//! One generated token's trit-tile products through LAYERS layers of 2B-4T-shaped matrices
//! (q, k, v, o, gate, up, down; 8 layers are 117 MB, beyond any L3 here), each matrix's
//! activations prepared as the forward pass does, one thread: decoding the codes against the
//! lookup product on triple sums, interleaved, as the rate each streams the tiles at, per shape
//! and in all (docs/performance-notes.md, "Trit tiles"). `trit_probe` measures the kernels with
//! the matrix in cache; this is what memory lets them do.
//!
//!     cargo run --release -p tern-runtime --example trit_layers_probe [LAYERS]

use std::time::{Duration, Instant};
use tern_runtime::cpu;
use tern_runtime::kernels::trit_tiles::{self, TritTiles};

const SHAPES: [(usize, usize); 7] =
    [(2560, 2560), (640, 2560), (640, 2560), (2560, 2560), (6912, 2560), (6912, 2560), (2560, 6912)];

fn main() {
    let layers: usize = std::env::args().nth(1).map_or(8, |s| s.parse().expect("LAYERS: a number"));
    let isa = cpu::selected();
    if !trit_tiles::runs_on_sums(isa) {
        println!("{}: no lookup product from trit tiles on this CPU", isa.name());
        return;
    }
    let mut next = tern_runtime::bench::xorshift(0x9E37_79B9);
    let mut mats = Vec::new();
    for _ in 0..layers {
        for &(m, k) in &SHAPES {
            let codes: Vec<i8> = (0..m * k).map(|_| (next() % 3) as i8 - 1).collect();
            mats.push(TritTiles::pack(&codes, m, k).expect("memory for the tiles"));
        }
    }
    let acts: Vec<Vec<i8>> =
        [2560usize, 6912].iter().map(|&k| (0..k).map(|_| next() as i8).collect()).collect();
    let act = |k: usize| if k == 2560 { &acts[0] } else { &acts[1] };
    let bytes: usize = mats.iter().map(|w| w.bytes().len()).sum();
    let mut out = vec![0i32; 6912];
    for _ in 0..3 {
        let (mut decoded, mut looked_up) = (Duration::MAX, Duration::MAX);
        let mut per_shape = [Duration::ZERO; SHAPES.len()];
        for _ in 0..5 {
            let t = Instant::now();
            for w in &mats {
                let a = act(w.cols());
                let mut arranged = vec![0u8; trit_tiles::arranged_len(w.cols())];
                trit_tiles::arrange(a, &mut arranged);
                let sums = [a.iter().map(|&q| q as i32).sum::<i32>()];
                trit_tiles::gemm(isa, w, 0, w.rows(), &arranged, &sums, &mut out[..w.rows()]);
            }
            decoded = decoded.min(t.elapsed());
            let t = Instant::now();
            for (i, w) in mats.iter().enumerate() {
                let started = Instant::now();
                let mut table = vec![0u8; trit_tiles::sums_len(w.cols())];
                trit_tiles::triple_sums(act(w.cols()), &mut table);
                trit_tiles::gemv_sums(isa, w, 0, w.rows(), &table, &mut out[..w.rows()]);
                per_shape[i % SHAPES.len()] += started.elapsed();
            }
            looked_up = looked_up.min(t.elapsed());
        }
        let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        let shapes: Vec<String> = SHAPES
            .iter()
            .zip(per_shape)
            .map(|(&(m, k), d)| {
                format!(
                    "{m}x{k} {:.1}",
                    (5 * layers * trit_tiles::tiles_bytes(m, k)) as f64 / d.as_secs_f64() / 1e9
                )
            })
            .collect();
        println!(
            "{} {layers} layers, {:.0} MB: decoded {:.1} GB/s, triple sums {:.1} GB/s ({})",
            isa.name(),
            bytes as f64 / 1e6,
            rate(decoded),
            rate(looked_up),
            shapes.join(", ")
        );
    }
}
