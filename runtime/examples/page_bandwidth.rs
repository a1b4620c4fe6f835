//! How page size sets the speed of streaming weights (docs/performance-notes.md, "Page sizes"): one
//! thread sums the same bytes through a file map advised to 2 MiB pages (as `GgufFile::open`
//! maps models), through anonymous memory in 4 KiB pages and in 2 MiB pages, and, with
//! `--writes DIR`, through fresh 512 MiB files written in 8 KiB, 64 KiB and 2 MiB pieces.
//!
//!     cargo run --release -p tern-runtime --example page_bandwidth -- FILE [--writes DIR]
//!
//! Each line gives the best of five passes and how much of the map the kernel backs with 2 MiB
//! pages (Linux `FilePmdMapped`).

use memmap2::{Advice, Mmap, MmapMut};
use std::io::Write;
use std::path::Path;
use tern_runtime::bench::read_bandwidth_of;
use tern_runtime::pages::mapped_file_pages;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(file) = args.first() else {
        eprintln!("usage: page_bandwidth FILE [--writes DIR]");
        std::process::exit(2);
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    pool.install(|| -> std::io::Result<()> {
        let bytes = stream_file(Path::new(file), "file map, 2 MiB pages advised")?;
        for (advice, what) in
            [(Advice::NoHugePage, "anonymous, 4 KiB pages"), (Advice::HugePage, "anonymous, 2 MiB pages")]
        {
            let mut anon = MmapMut::map_anon(bytes.len())?;
            anon.advise(advice)?;
            anon.copy_from_slice(&bytes);
            println!("{what}: {:.1} GB/s", read_bandwidth_of(&anon, 5) / 1e9);
        }
        if let Some(dir) = args.iter().position(|a| a == "--writes").and_then(|i| args.get(i + 1)) {
            for piece in [8 << 10, 64 << 10, 2 << 20] {
                let path = Path::new(dir).join(format!("page-bandwidth-{piece}.bin"));
                let mut f = std::fs::File::create(&path)?;
                let buf = vec![1u8; piece];
                for _ in 0..(512 << 20) / piece {
                    f.write_all(&buf)?;
                }
                drop(f);
                stream_file(&path, &format!("file written in {} KiB pieces", piece >> 10))?;
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    })
}

/// Maps `path` as tern maps models, streams it and prints the rate and the share in 2 MiB pages.
fn stream_file(path: &Path, what: &str) -> std::io::Result<Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a read-only map of a file this program only reads.
    let map = unsafe { Mmap::map(&file) }?;
    map.advise(Advice::HugePage)?;
    let rate = read_bandwidth_of(&map, 5);
    let (rss, huge) = mapped_file_pages(path).unwrap_or((0, 0));
    println!(
        "{what}: {:.1} GB/s, {:.0} % in 2 MiB pages",
        rate / 1e9,
        100.0 * huge as f64 / rss.max(1) as f64
    );
    Ok(map)
}
