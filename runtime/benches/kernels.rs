//! Kernel benchmarks at the 2B-4T shapes (criterion): one thread, the instruction set the
//! runtime would select. GEMV (one token) reports GB/s of weight bytes — decode is bound by them;
//! GEMM (32 tokens) reports G multiply-accumulates/s — prompts are bound by compute. The output
//! head is the f16 128256 × 2560 GEMV. Run: `cargo bench -p tern-runtime --bench kernels`
//! (docs/performance-notes.md records the numbers).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use tern_formats::Layout;
use tern_runtime::bench::xorshift;
use tern_runtime::kernels::layouts::{Acts, Packed, TableKey, Tables, gemm_rows};

const SHAPES: [(usize, usize, &str); 4] =
    [(2560, 2560, "q/o"), (640, 2560, "k/v"), (6912, 2560, "gate/up"), (2560, 6912, "down")];

fn ternary(c: &mut Criterion) {
    let isa = tern_runtime::cpu::selected();
    for tokens in [1usize, 32] {
        let mut g = c.benchmark_group(if tokens == 1 { "gemv" } else { "gemm32" });
        g.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
        for (m, k, what) in SHAPES {
            let mut r = xorshift((m * k) as u64);
            let codes: Vec<i8> = (0..m * k).map(|_| (r() % 3) as i8 - 1).collect();
            let acts: Vec<i8> = (0..tokens * k).map(|_| (r() % 255) as i8).collect();
            let sums: Vec<i32> = acts.chunks_exact(k).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
            for layout in [Layout::I2S, Layout::TQ2_0, Layout::TL1, Layout::TL2, Layout::TQ1_0] {
                let Some(tiles) = layout.fit(m, k) else { continue };
                let bytes = layout.pack(&codes, m, k, 1.0, tiles);
                let w = Packed::new(layout, m, k, tiles, &bytes);
                let tables = w.table_key().map(|key: TableKey| Tables::build(key, &acts, k));
                g.throughput(if tokens == 1 {
                    Throughput::Bytes(bytes.len() as u64)
                } else {
                    Throughput::Elements((m * k * tokens) as u64)
                });
                let mut out = vec![0i32; m * tokens];
                g.bench_function(BenchmarkId::new(layout.name(), format!("{m}x{k} {what}")), |b| {
                    b.iter(|| {
                        let a = Acts { codes: &acts, sums: &sums, tables: tables.as_ref(), panel: None };
                        gemm_rows(isa, &w, 0, m, a, &mut out);
                        black_box(&out);
                    })
                });
            }
        }
        g.finish();
    }
}

fn output_head(c: &mut Criterion) {
    let isa = tern_runtime::cpu::selected();
    let (vocab, hidden) = (128256usize, 2560usize);
    let mut r = xorshift(7);
    let rows: Vec<u8> = (0..vocab * hidden)
        .flat_map(|_| half::f16::from_f32((r() % 1000) as f32 / 1000.0 - 0.5).to_le_bytes())
        .collect();
    let x: Vec<f32> = (0..hidden).map(|i| (i as f32).sin()).collect();
    let mut g = c.benchmark_group("output_head");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(rows.len() as u64));
    g.bench_function("f16 128256x2560", |b| {
        b.iter(|| {
            let s: f32 = rows
                .chunks_exact(hidden * 2)
                .map(|row| tern_runtime::kernels::float::dot_f16(isa, row, &x))
                .sum();
            black_box(s)
        })
    });
    g.finish();
}

/// The per-token work between matmuls at the model's widths: RMSNorm and int8 activation
/// quantisation (codes, scale and code sum), which a generated token runs 120 times each.
fn token_ops(c: &mut Criterion) {
    let isa = tern_runtime::cpu::selected();
    let mut g = c.benchmark_group("token_ops");
    g.sample_size(20).measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300));
    for width in [2560usize, 6912] {
        let x: Vec<f32> = (0..width).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let weight: Vec<f32> = (0..width).map(|i| 1.0 + (i as f32 * 0.11).cos() * 0.5).collect();
        g.throughput(Throughput::Elements(width as u64));
        g.bench_function(BenchmarkId::new("rms_norm", width), |b| {
            b.iter(|| black_box(tern_runtime::model::rms_norm(black_box(&x), &weight, 1e-5)))
        });
        let mut codes = vec![0i8; width.next_multiple_of(128)];
        g.bench_function(BenchmarkId::new("quantise", width), |b| {
            b.iter(|| black_box(tern_runtime::kernels::act::quantise(isa, black_box(&x), &mut codes)))
        });
    }
    g.finish();
}

criterion_group!(benches, ternary, output_head, token_ops);
criterion_main!(benches);
