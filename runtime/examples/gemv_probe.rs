//! How close the I2_S GEMV comes to a plain read of the same bytes, on rows that sit in cache
//! and on rows streaming from memory through 2 MiB pages (docs/performance-notes.md, "GEMV prefetch distance").
//!
//!     cargo run --release -p tern-runtime --example gemv_probe [COLS] [MODEL.gguf]
//!
//! `SKEW=16` starts the activations 16 bytes past a cache line (as `malloc` may) instead of on
//! one. With a 2B-4T-shaped I2_S file it also runs the model's ternary matrices in file order,
//! one call per matrix (up to 8192 rows) as generation does with one thread, through the file's
//! own map (`CHUNK=ROWS`: that many rows per call instead; `ONLY_MODEL=1`: only that part).
//! `TERN_KERNEL=avx2|avx512vnni` picks the kernel; `TERN_WEIGHT_PREFETCH=off` turns the AVX2
//! GEMV's one-stream prefetch off (the model loader does when the weights are in 4 KiB pages),
//! which matters only off Intel or with `TERN_STREAMS=1`: on Intel the AVX2 GEMV reads four
//! prefetched quarter streams either way. `THREADS=2` runs the model part with two
//! threads instead, four ways: a fork-join per matrix of runs of 16-row quarter bands (how
//! `bitlinear` split a matrix until 2026-11-26) and of two halves (how it splits one now), and two
//! threads started once for the whole sequence that each take the same half of every matrix,
//! with a spinning barrier after each matrix ("team", a persistent team as generation could run
//! one) or none ("no barrier"). All against a read of each matrix in two halves.
//! `GAP_US=N` spins N µs on the calling thread before each banded matrix (serial work between
//! matmuls, during which the other worker idles) and rates the bands by their calls' time alone.

use std::time::Instant;
use tern_runtime::cpu;
use tern_runtime::kernels::i2s::gemv;

fn main() {
    let mut args = std::env::args().skip(1);
    let cols: usize = args.next().map(|s| s.parse().expect("COLS: a number")).unwrap_or(2560);
    assert!(cols.is_multiple_of(128), "COLS: a multiple of 128");
    let model = args.next();
    let isa = cpu::selected();
    // As the model loader does: `TERN_WEIGHT_PREFETCH=off` turns the AVX2 GEMV's prefetch off.
    if std::env::var("TERN_WEIGHT_PREFETCH").is_ok_and(|v| v == "off") {
        tern_runtime::kernels::i2s::set_weight_prefetch(false);
    }
    let rb = cols / 4;
    let mut next = tern_runtime::bench::xorshift(0x2545_f491_4f6c_dd1d);
    let act_store: Vec<i8> = (0..cols + 64).map(|_| (next() % 255) as i8).collect();
    let skew: usize = std::env::var("SKEW").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let start = (64 - act_store.as_ptr() as usize % 64) % 64 + skew;
    let act = &act_store[start..start + cols];
    let sum: i32 = act.iter().map(|&a| a as i32).sum();
    // Bytes of four valid codes (0..2) each.
    let mut code_byte = || (0..4).fold(0u8, |b, i| b | (((next() >> (8 * i)) % 3) as u8) << (2 * i));
    if let (Ok(_), Some(path)) = (std::env::var("ONLY_MODEL"), &model) {
        model_sequence(path, isa);
        return;
    }
    let cached_rows = 1024;
    let streamed_rows = (600 << 20) / rb;
    let cached: Vec<u8> = (0..cached_rows * rb).map(|_| code_byte()).collect();
    let mut streamed = memmap2::MmapMut::map_anon(streamed_rows * rb).expect("600 MiB buffer");
    #[cfg(target_os = "linux")]
    streamed.advise(memmap2::Advice::HugePage).expect("madvise");
    streamed.iter_mut().for_each(|b| *b = code_byte());
    let mut out = vec![0i32; streamed_rows];
    println!("{} GEMV, {cols} columns", isa.name());
    for (what, rows, reps) in [("cached", &cached[..], 400), ("streamed", &streamed[..], 5)] {
        for _ in 0..3 {
            let n = rows.len() / rb;
            let read = rate(rows.len() * reps, || {
                for _ in 0..reps {
                    std::hint::black_box(sum_words(rows));
                }
            });
            let kernel = rate(rows.len() * reps, || {
                for _ in 0..reps {
                    gemv(isa, rows, rb, act, sum, &mut out[..n]);
                }
            });
            println!(
                "{what:9} read {read:5.1} GB/s  gemv {kernel:5.1} GB/s ({:.0} %)",
                100.0 * kernel / read
            );
        }
    }
    if let Some(path) = model {
        model_sequence(&path, isa);
    }
}

/// The ternary matrices of every layer of a 2B-4T-shaped I2_S file, in file order.
fn model_sequence(path: &str, isa: cpu::Isa) {
    let file = tern_formats::gguf::GgufFile::open(path).expect("a GGUF file");
    let mut mats: Vec<_> = file
        .tensors()
        .iter()
        .filter(|t| t.ty == tern_formats::TensorType::I2S)
        .map(|t| (file.data(t), t.dims[0] as usize, t.dims[1] as usize))
        .collect();
    mats.sort_by_key(|(d, _, _)| d.as_ptr() as usize);
    let bytes: usize = mats.iter().map(|(_, cols, rows)| rows * cols / 4).sum();
    let act: Vec<i8> = (0..8192).map(|i| (i * 37 % 255) as i8).collect();
    let mut out = vec![0i32; 8192];
    let chunk: usize = std::env::var("CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(8192);
    if let Some(threads) = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
        pool.install(|| model_sequence_threads(&mats, bytes, &act, isa));
        return;
    }
    for _ in 0..3 {
        let read = rate(bytes, || {
            for (d, cols, rows) in &mats {
                std::hint::black_box(sum_words(&d[..rows * cols / 4]));
            }
        });
        let kernel = rate(bytes, || {
            for (d, cols, rows) in &mats {
                let rb = cols / 4;
                for (chunk, o) in d[..rows * rb].chunks(chunk * rb).zip(out.chunks_mut(chunk)) {
                    gemv(isa, chunk, rb, &act[..*cols], 0, &mut o[..chunk.len() / rb]);
                }
            }
        });
        println!("model     read {read:5.1} GB/s  gemv {kernel:5.1} GB/s ({:.0} %)", 100.0 * kernel / read);
    }
}

/// The model part with the current rayon pool: per matrix, a read split in halves, the GEMV in
/// quarter bands of 16 rows and in halves; then the two-thread team with and without barriers.
fn model_sequence_threads(mats: &[(&[u8], usize, usize)], bytes: usize, act: &[i8], isa: cpu::Isa) {
    use rayon::prelude::*;
    use tern_runtime::kernels::i2s::{QuarterBand, gemv_quarters, split_quarters};
    let mut out = vec![0i32; 8192];
    for _ in 0..3 {
        let read = rate(bytes, || {
            for (d, cols, rows) in mats {
                let (a, b) = d[..rows * cols / 4].split_at(rows / 2 * cols / 4);
                let (x, y) = rayon::join(|| sum_words(a), || sum_words(b));
                std::hint::black_box(x ^ y);
            }
        });
        let gap = std::time::Duration::from_micros(
            std::env::var("GAP_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        );
        let mut in_calls = std::time::Duration::ZERO;
        let bands = rate(bytes, || {
            for &(d, cols, rows) in mats {
                let t = Instant::now();
                while t.elapsed() < gap {}
                let t = Instant::now();
                let (rb, quarter) = (cols / 4, rows / 4);
                let ([q0, q1, q2, q3], _) = split_quarters(&mut out[..rows], quarter);
                let it = q0.par_chunks_mut(16).zip(q1.par_chunks_mut(16));
                it.zip(q2.par_chunks_mut(16)).zip(q3.par_chunks_mut(16)).enumerate().for_each(
                    |(i, (((o0, o1), o2), o3))| {
                        let band = QuarterBand {
                            rows: d,
                            row_bytes: rb,
                            quarter,
                            first: i * 16,
                            act: &act[..cols],
                            act_sum: 0,
                        };
                        gemv_quarters(isa, band, [o0, o1, o2, o3]);
                    },
                );
                in_calls += t.elapsed();
            }
        });
        let bands = if gap.is_zero() { bands } else { bytes as f64 / in_calls.as_secs_f64() / 1e9 };
        let halves = rate(bytes, || {
            for &(d, cols, rows) in mats {
                let rb = cols / 4;
                let (oa, ob) = out[..rows].split_at_mut(rows / 2);
                let (a, b) = d[..rows * rb].split_at(rows / 2 * rb);
                rayon::join(
                    || gemv(isa, a, rb, &act[..cols], 0, oa),
                    || gemv(isa, b, rb, &act[..cols], 0, ob),
                );
            }
        });
        let team = rate(bytes, || team_halves(mats, act, isa, true));
        let free = rate(bytes, || team_halves(mats, act, isa, false));
        println!(
            "model, {} threads: read {read:5.1} GB/s  bands {bands:5.1} GB/s ({:.0} %)  halves {halves:5.1} GB/s ({:.0} %)  team {team:5.1} GB/s ({:.0} %)  no barrier {free:5.1} GB/s ({:.0} %)",
            rayon::current_num_threads(),
            100.0 * bands / read,
            100.0 * halves / read,
            100.0 * team / read,
            100.0 * free / read
        );
    }
}

/// Two threads started once for the whole sequence, each taking the same half of every quarter of
/// every matrix, with a spinning barrier after each matrix (`barrier`: as a persistent team would
/// run generation) or none at all (the streams never wait: the most two threads can stream).
fn team_halves(mats: &[(&[u8], usize, usize)], act: &[i8], isa: cpu::Isa, barrier: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tern_runtime::kernels::i2s::{QuarterBand, gemv_quarters};
    let arrived = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let arrived = &arrived;
            s.spawn(move || {
                let mut out = vec![0i32; 4 * 8192];
                for (m, &(d, cols, rows)) in mats.iter().enumerate() {
                    let quarter = rows / 4;
                    let (first, last) = (t * quarter / 2, (t + 1) * quarter / 2);
                    let n = last - first;
                    let (o0, rest) = out.split_at_mut(n);
                    let (o1, rest) = rest.split_at_mut(n);
                    let (o2, rest) = rest.split_at_mut(n);
                    let band = QuarterBand {
                        rows: d,
                        row_bytes: cols / 4,
                        quarter,
                        first,
                        act: &act[..cols],
                        act_sum: 0,
                    };
                    gemv_quarters(isa, band, [o0, o1, o2, &mut rest[..n]]);
                    if barrier {
                        arrived.fetch_add(1, Ordering::AcqRel);
                        while arrived.load(Ordering::Acquire) < 2 * (m + 1) {
                            std::hint::spin_loop();
                        }
                    }
                }
                std::hint::black_box(&out);
            });
        }
    });
}

fn rate(bytes: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    bytes as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn sum_words(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 4];
    for c in bytes.chunks_exact(32) {
        for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
            *a = a.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}
