//! What a rayon fork-join costs in a two-thread pool shaped like generation's: a parallel region
//! whose whole work is two units (so ideally one unit of wall time), then a short serial gap, over
//! and over (docs/kernels.md, "Threads"; docs/performance-notes.md, "Threads and the spinning team").
//!
//!     cargo run --release -p tern-runtime --example fork_join_probe
//!
//! For each (tasks, gap) it prints the region's wall time against one unit of work; the excess is
//! the fork-join cost. A long gap lets the idle worker go to sleep, and waking it is the cost then.

use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// About `iters` dependent adds: work the optimiser cannot drop.
fn spin(iters: u64) {
    let mut s = 0u64;
    for k in 0..iters {
        s = s.wrapping_add(black_box(k));
    }
    black_box(s);
}

/// Seconds per call of `f`, over `n` calls.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a two-thread pool");
    pool.install(|| {
        const UNIT: u64 = 20_000;
        let unit = per_call(10_000, || spin(UNIT));
        println!("one unit of work: {:.2} µs", unit * 1e6);
        for (tasks, gap) in [(2usize, 1_000u64), (2, 5_000), (8, 5_000), (32, 5_000), (2, 150_000)] {
            let n = 3_000;
            let per = 2 * UNIT / tasks as u64;
            let both = per_call(n, || {
                (0..tasks).into_par_iter().for_each(|_| spin(per));
                spin(gap);
            });
            let serial = per_call(n, || spin(gap));
            let region = both - serial;
            println!(
                "{tasks:2} tasks, serial gap {:6.1} µs: region {:6.2} µs, one unit {:5.2} µs, fork-join {:+6.2} µs",
                serial * 1e6,
                region * 1e6,
                unit * 1e6,
                (region - unit) * 1e6
            );
        }
    });
}
