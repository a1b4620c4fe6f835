//! What the OS says about a mapped file's pages: how much is resident and how much of that in
//! 2 MiB pages. `tern bench` reports it, and the model loader picks the AVX2 GEMV's prefetch by it.

/// How much of the file at `path` this process has mapped in memory, and how much of that is
/// mapped with 2 MiB pages (Linux `/proc/self/smaps`; `None` elsewhere). Weights read through
/// 4 KiB pages can stream more slowly, so `tern bench` reports it (docs/performance-notes.md,
/// "Page sizes").
pub fn mapped_file_pages(path: &std::path::Path) -> Option<(u64, u64)> {
    let path = std::fs::canonicalize(path).ok()?;
    let path = path.to_str()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut rss, mut huge, mut inside) = (0u64, 0u64, false);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode path".
            inside = line.ends_with(&format!(" {path}"));
            continue;
        }
        if !inside {
            continue;
        }
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
        match first {
            "Rss:" => rss += kib(),
            "FilePmdMapped:" => huge += kib(),
            _ => {}
        }
    }
    Some((rss, huge))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smaps reading finds a file this process maps, counts what is resident, and nothing
    /// for a file it does not map.
    #[cfg(target_os = "linux")]
    #[test]
    fn mapped_file_pages_sees_this_process_maps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only map of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        assert_eq!(map.iter().map(|&b| b as u64).sum::<u64>(), 7 << 20);
        let (rss, huge) = mapped_file_pages(&path).unwrap();
        assert!(rss >= 1 << 20 && huge <= rss, "rss {rss}, huge {huge}");
        let other = dir.path().join("other.bin");
        std::fs::write(&other, b"x").unwrap();
        assert_eq!(mapped_file_pages(&other).unwrap(), (0, 0));
    }
}
