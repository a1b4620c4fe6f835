//! What the OS says about a mapped file's pages: how much is resident and how much of that in
//! 2 MiB pages. `tern bench` reports it, and the model loader picks the AVX2 GEMV's prefetch by it.
//! Also zeroed buffers asked for in 2 MiB pages, for tables a kernel reads at random.

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

/// A zeroed buffer of `len` values of `T`, asked for in one 2 MiB page or more (an anonymous map,
/// aligned to 2 MiB, advised `MADV_HUGEPAGE`), or on the heap where the map fails. For tables a
/// kernel reads at random from L2: in 4 KiB pages, which L2 sets their lines fall in depends on
/// the physical pages the process got, and some processes ran the AVX2 lookup GEMM much slower
/// (docs/performance-notes.md, "Prompt GEMM").
pub struct HugeZeroed<T> {
    map: Option<(memmap2::MmapMut, usize)>,
    heap: Vec<T>,
    len: usize,
}

const HUGE_PAGE: usize = 2 << 20;

impl<T: Copy> HugeZeroed<T> {
    /// # Safety
    /// All-zero bytes must be a valid `T` (the map's memory starts zeroed), equal to `zero`.
    pub unsafe fn new(len: usize, zero: T) -> HugeZeroed<T> {
        let bytes = len * std::mem::size_of::<T>();
        if let Ok(map) = memmap2::MmapMut::map_anon(bytes + HUGE_PAGE) {
            #[cfg(target_os = "linux")]
            // Only a hint: where 2 MiB pages are off, the buffer is as good as the heap's.
            let _ = map.advise(memmap2::Advice::HugePage);
            let base = map.as_ptr() as usize;
            let start = base.next_multiple_of(HUGE_PAGE) - base;
            return HugeZeroed { map: Some((map, start)), heap: Vec::new(), len };
        }
        HugeZeroed { map: None, heap: vec![zero; len], len }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: `start + len · size_of::<T>()` bytes lie in the map (2 MiB were added to
            // its length), the start is 2 MiB-aligned (so aligned for T), the bytes were zero
            // and are only written as T, which the constructor's contract makes valid.
            Some((map, start)) => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().add(*start) as *mut T, self.len)
            },
            None => &mut self.heap,
        }
    }
}

/// Memory that a model's repacked weight tiles share, handed out in load order — the order
/// generation calls the matrices in — so each matrix's tiles continue the previous one's
/// forward stream: a map per matrix restarts the stream at every matrix, which streamed slower
/// (docs/performance-notes.md, "I2_S tiles"). Reserved at its largest (pages never touched cost
/// nothing), asked for in 2 MiB pages (fewer TLB misses).
pub struct TileArena {
    map: std::sync::Arc<memmap2::MmapRaw>,
    used: std::cell::Cell<usize>,
}

impl TileArena {
    pub fn new(capacity: usize) -> std::io::Result<TileArena> {
        let map = memmap2::MmapMut::map_anon(capacity.max(1))?;
        #[cfg(target_os = "linux")]
        // Only a hint: without 2 MiB pages the tiles work as well, a little slower.
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(TileArena { map: std::sync::Arc::new(map.into()), used: std::cell::Cell::new(0) })
    }

    /// The next `len` bytes (zero: never handed out before), 64-byte aligned; an error when the
    /// arena is full.
    pub fn take(&self, len: usize) -> std::io::Result<ArenaBytes> {
        let offset = self.used.get().next_multiple_of(64);
        if offset + len > self.map.len() {
            return Err(std::io::Error::other("the tile arena is full"));
        }
        self.used.set(offset + len);
        Ok(ArenaBytes { map: self.map.clone(), offset, len })
    }
}

/// One range of a [`TileArena`], handed out once: whoever holds it is the only one who can
/// reach those bytes. Keeps the arena's memory alive.
pub struct ArenaBytes {
    map: std::sync::Arc<memmap2::MmapRaw>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for ArenaBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArenaBytes({} bytes)", self.len)
    }
}

impl ArenaBytes {
    /// The next `len` bytes of `arena`, or, without one, a range in an arena of its own.
    pub fn take_from(arena: Option<&TileArena>, len: usize) -> std::io::Result<ArenaBytes> {
        match arena {
            Some(arena) => arena.take(len),
            None => TileArena::new(len)?.take(len),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range lies inside the map (checked by `take`), which `self.map` keeps
        // alive; only this value reaches it, and writes need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(self.offset), self.len) }
    }
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

    /// The buffer is zeroed, as long as asked, aligned for its type, and holds what is written.
    #[test]
    fn huge_zeroed_is_a_zeroed_writable_slice() {
        for len in [0usize, 1, 1000, (3 << 20) / 8] {
            // SAFETY: zero bytes are the u64 0.
            let mut buffer = unsafe { HugeZeroed::new(len, 0u64) };
            let slice = buffer.as_mut_slice();
            assert_eq!(slice.len(), len);
            assert!(slice.iter().all(|&v| v == 0));
            assert_eq!(slice.as_ptr() as usize % std::mem::align_of::<u64>(), 0);
            for (i, v) in slice.iter_mut().enumerate() {
                *v = i as u64 * 3;
            }
            assert!(buffer.as_mut_slice().iter().enumerate().all(|(i, &v)| v == i as u64 * 3));
        }
    }
}
