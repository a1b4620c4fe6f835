//! A generated token's ternary matmuls with the 2B-4T shapes (30 layers of q, k, v, o, gate, up,
//! down; one call per matrix, one thread, random codes), three ways, interleaved: I2_S's file
//! rows (the VNNI GEMV's four quarter streams), I2_S tiles with a map per matrix, and I2_S tiles
//! in one arena in call order, as the loader places them (docs/performance-notes.md, "I2_S
//! tiles"). Best of three per round, four rounds.
//!
//!     cargo run --release -p tern-runtime --example i2s_tile_probe
//!
//! `LAYERS=N` for fewer layers. Needs AVX-512 VNNI for the tiles to run as they do in the model.
use std::time::Instant;
use tern_formats::i2s as fmt;
use tern_runtime::cpu;
use tern_runtime::kernels::i2s;
use tern_runtime::kernels::i2s_tiles::{self, I2sTiles};
use tern_runtime::pages::TileArena;

fn main() {
    let isa = cpu::selected();
    let layers: usize = std::env::var("LAYERS").map_or(30, |v| v.parse().expect("LAYERS: a number"));
    let shapes =
        [(2560, 2560), (640, 2560), (640, 2560), (2560, 2560), (6912, 2560), (6912, 2560), (2560, 6912)];
    let reserve: usize =
        shapes.iter().map(|&(m, k)| i2s_tiles::tiles_bytes(m, k) + 64).sum::<usize>() * layers;
    let arena = TileArena::new(reserve).expect("arena");
    let mut next = tern_runtime::bench::xorshift(0x2545_f491_4f6c_dd1d);
    let mut mats = Vec::new();
    for _ in 0..layers {
        for &(m, k) in &shapes {
            let codes: Vec<i8> = (0..m * k).map(|_| (next() % 3) as i8 - 1).collect();
            let bytes = fmt::pack(&codes, m, k, 1.0);
            let mut file = memmap2::MmapMut::map_anon(bytes.len()).expect("map");
            #[cfg(target_os = "linux")]
            let _ = file.advise(memmap2::Advice::HugePage);
            file.copy_from_slice(&bytes);
            let own = I2sTiles::from_i2s(&bytes, m, k).expect("tiles");
            let shared = I2sTiles::from_layout_in(Some(&arena), tern_formats::Layout::I2S, &bytes, m, k)
                .expect("tiles in the arena");
            mats.push((m, k, file, own, shared));
        }
    }
    let acts: Vec<Vec<i8>> =
        [2560usize, 6912].iter().map(|&k| (0..k).map(|_| (next() % 255) as i8).collect()).collect();
    let bytes: usize = mats.iter().map(|(m, k, ..)| m * fmt::row_bytes(*k)).sum();
    let mut out = vec![0i32; 6912];
    println!(
        "{} ({}), {layers} layers",
        isa.name(),
        if i2s_tiles::runs(isa) { "tiles on VNNI" } else { "tiles scalar" }
    );
    for round in 0..4 {
        for way in ["file rows", "tiles, a map each", "tiles, one arena"] {
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for (m, k, file, own, shared) in &mats {
                    let a = if *k == 2560 { &acts[0] } else { &acts[1] };
                    let (rb, o) = (fmt::row_bytes(*k), &mut out[..*m]);
                    match way {
                        "file rows" => i2s::gemv(isa, &file[..m * rb], rb, a, 0, o),
                        "tiles, a map each" => i2s_tiles::gemm(isa, own, 0, *m, a, &[0], o),
                        _ => i2s_tiles::gemm(isa, shared, 0, *m, a, &[0], o),
                    }
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("round {round} {way}: {:.2} ms, {:.1} GB/s", best * 1e3, bytes as f64 / best / 1e9);
        }
    }
}
