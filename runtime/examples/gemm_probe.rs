//! The prompt GEMM at the 2B-4T shapes, timed as the best of many short calls: on a shared host
//! other tenants only ever add time, so the fastest call is the steadiest estimate of what the
//! kernel itself does (criterion's means moved ±30 % between runs here; docs/performance-notes.md, "Prompt GEMM").
//!
//!     cargo run --release -p tern-runtime --example gemm_probe [TOKENS] [LAYOUT]
//!
//! One thread, 64 tokens (a prompt micro-batch) and I2_S unless told; prints G multiply-
//! accumulates per second per shape and for a whole layer's mix. `TERN_KERNEL=avx2|avx512vnni`
//! picks the kernel; `TERN_TRIT_TILES=off` runs TL1, TL2 and TQ1_0 from their own bytes where AVX-512
//! VNNI would read trit tiles; `CALLS=N` the calls per shape (default 40); `THREADS=N` runs each product
//! on N threads, split as the forward pass splits it: by 32-token spans where AVX2's lookup GEMM
//! runs (`layouts::token_spans`), else in runs of rows, `CHUNK_ROWS=N` each (default: one run
//! per thread).

use rayon::prelude::*;
use std::time::{Duration, Instant};
use tern_formats::Layout;
use tern_runtime::cpu;
use tern_runtime::kernels::layouts::{self, Acts, Packed, TableKey, Tables, gemm_rows};
use tern_runtime::kernels::trit_tiles;

/// (rows, cols, name, matrices of this shape per layer)
const SHAPES: [(usize, usize, &str, usize); 4] =
    [(2560, 2560, "q/o", 2), (640, 2560, "k/v", 2), (6912, 2560, "gate/up", 2), (2560, 6912, "down", 1)];

fn main() {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map(|s| s.parse().expect("TOKENS: a number")).unwrap_or(64);
    let layout =
        args.next().map(|s| Layout::from_name(&s).expect("LAYOUT: a layout name")).unwrap_or(Layout::I2S);
    let calls: usize = std::env::var("CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let chunk_rows: Option<usize> = std::env::var("CHUNK_ROWS").ok().and_then(|v| v.parse().ok());
    let threads: usize = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
    let isa = cpu::selected();
    let mut next = tern_runtime::bench::xorshift(0x2545_f491_4f6c_dd1d);
    println!("{} {} tokens={tokens}, {threads} thread(s), best of {calls} calls", layout.name(), isa.name());
    let (mut layer_macs, mut layer_time) = (0f64, Duration::ZERO);
    for (m, k, what, per_layer) in SHAPES {
        let Some(tiles) = layout.fit(m, k) else { continue };
        let codes: Vec<i8> = (0..m * k).map(|_| (next() % 3) as i8 - 1).collect();
        let acts: Vec<i8> = (0..tokens * k).map(|_| (next() % 255) as i8).collect();
        let sums: Vec<i32> = acts.chunks_exact(k).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
        let bytes = layout.pack(&codes, m, k, 1.0, tiles);
        let trit_tiles = trit_tiles::wanted(isa, layout).then(|| {
            trit_tiles::TritTiles::from_layout(layout, &bytes, m, k, tiles).expect("memory for the tiles")
        });
        let w = Packed { trit_tiles: trit_tiles.as_ref(), ..Packed::new(layout, m, k, tiles, &bytes) };
        let tables =
            w.tables_read(isa, tokens).or(w.table_key()).map(|key: TableKey| Tables::build(key, &acts, k));
        // Built once per input (and per span), as the forward pass builds them.
        let panel = layouts::panel(isa, layout, &acts, &sums, k);
        let spans: Vec<_> = layouts::token_spans(isa, layout, tokens)
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let panel = layouts::panel(isa, layout, &acts[t.start * k..t.end * k], &sums[t.clone()], k);
                (t, panel)
            })
            .collect();
        let mut out = vec![0i32; m * tokens];
        let step = chunk_rows.unwrap_or(m.div_ceil(threads)).next_multiple_of(w.row_group()).min(m);
        let mut best = Duration::MAX;
        for _ in 0..calls {
            let t = Instant::now();
            pool.install(|| {
                if spans.is_empty() {
                    let a =
                        Acts { codes: &acts, sums: &sums, tables: tables.as_ref(), panel: panel.as_ref() };
                    out.par_chunks_mut(step * tokens).enumerate().for_each(|(i, o)| {
                        gemm_rows(isa, &w, i * step, i * step + o.len() / tokens, a, o);
                    });
                } else {
                    spans.par_iter().for_each(|(t, panel)| {
                        let (codes, sums) = (&acts[t.start * k..t.end * k], &sums[t.clone()]);
                        let a = Acts { codes, sums, tables: None, panel: panel.as_ref() };
                        let mut span_out = vec![0i32; m * t.len()];
                        gemm_rows(isa, &w, 0, m, a, &mut span_out);
                        std::hint::black_box(&span_out);
                    });
                }
            });
            best = best.min(t.elapsed());
            std::hint::black_box(&out);
        }
        let macs = (m * k * tokens) as f64;
        println!(
            "{what:>8} {m}x{k}: {:7.1} GMAC/s  ({:.2} ms)",
            macs / best.as_secs_f64() / 1e9,
            best.as_secs_f64() * 1e3
        );
        layer_macs += macs * per_layer as f64;
        layer_time += best * per_layer as u32;
    }
    println!("   layer mix: {:7.1} GMAC/s", layer_macs / layer_time.as_secs_f64() / 1e9);
}
