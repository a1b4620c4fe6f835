//! Atomic output files: data goes to a temporary file in the destination folder, is fsynced,
//! and is renamed into place only when the caller commits. Dropping an uncommitted
//! [`AtomicFile`] (error, panic, early return) removes the temporary file, so a failed
//! conversion never leaves a half-written model behind.
//!
//! Signals end a process without running destructors, so every live temporary file is also
//! listed in a process-wide registry: a signal handler (the binary installs one for Ctrl-C)
//! calls [`remove_temp_files`] before exiting.
//!
//! Data reaches the file in whole 2 MiB chunks at 2 MiB-aligned offsets ([`ChunkWriter`]): page
//! caches that support large folios (ext4 on Linux 6.18, for one) then keep the new file in
//! 2 MiB folios, which a later mmap maps with 2 MiB pages. Streaming the weights through 4 KiB
//! pages instead can cost read bandwidth (docs/performance-notes.md, "Page sizes").

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files not yet committed or dropped.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list intact; keep using it.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn forget(path: &Path) {
    live().retain(|p| p != path);
}

/// Removes every temporary file still being written (for signal handlers, before exiting).
/// Returns the paths removed.
pub fn remove_temp_files() -> Vec<PathBuf> {
    let paths = std::mem::take(&mut *live());
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    paths
}

pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<ChunkWriter>,
}

impl AtomicFile {
    /// Creates `.<name>.tmp-<pid>` next to `target`.
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name"))?;
        let temp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&temp)?;
        live().push(temp.clone());
        Ok(AtomicFile { target: target.to_path_buf(), temp, writer: Some(ChunkWriter::new(file)) })
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes and fsyncs the temporary file, so it can be read (e.g. verified) before commit.
    pub fn sync(&mut self) -> io::Result<()> {
        let w = self.writer.as_mut().expect("writer present until commit");
        w.flush()?;
        w.file.sync_all()
    }

    /// Flushes, fsyncs and renames the file into place.
    pub fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp, &self.target)?;
        forget(&self.temp);
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; not every filesystem allows syncing a folder.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("writer present until commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("writer present until commit").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
            forget(&self.temp);
        }
    }
}

/// Size and alignment of the writes [`ChunkWriter`] makes: one PMD-sized page.
const CHUNK: usize = 2 << 20;

/// A buffered writer whose writes to the file cover whole `CHUNK`s at `CHUNK`-aligned offsets
/// (except the last, and whatever a `flush` forces out; later chunks realign).
struct ChunkWriter {
    file: File,
    buf: Vec<u8>,
    /// Bytes already handed to the file.
    written: u64,
}

impl ChunkWriter {
    fn new(file: File) -> ChunkWriter {
        ChunkWriter { file, buf: Vec::with_capacity(CHUNK), written: 0 }
    }

    /// Room left before the next aligned boundary.
    fn room(&self) -> usize {
        CHUNK - (self.written as usize + self.buf.len()) % CHUNK
    }

    fn drain(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn into_inner(mut self) -> io::Result<File> {
        self.drain()?;
        Ok(self.file)
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.room());
        self.buf.extend_from_slice(&data[..n]);
        if self.room() == CHUNK {
            self.drain()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("tern-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.gguf");
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"half").unwrap();
            assert!(f.temp_path().exists());
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        // What a signal handler does: live temporary files go, committed ones stay.
        let other = dir.join("other.gguf");
        let f = AtomicFile::create(&other).unwrap();
        let temp = f.temp_path().to_path_buf();
        assert!(remove_temp_files().contains(&temp));
        assert!(!temp.exists() && target.exists());
        std::mem::forget(f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Pieces of every size, a flush in the middle (as `sync` before verify does), and a length
    /// that is not a multiple of the chunk: the file holds exactly the bytes written, in order.
    /// (A plain file: the other test's `remove_temp_files` would race with an `AtomicFile`.)
    #[test]
    fn chunked_writes_keep_every_byte() {
        let path = std::env::temp_dir().join(format!("tern-chunks-{}.bin", std::process::id()));
        let mut w = ChunkWriter::new(File::create(&path).unwrap());
        let mut want = Vec::new();
        let mut x = 7u32;
        for (i, len) in [1, 31, CHUNK - 40, 5, 3 * CHUNK + 17, 0, 1000, CHUNK].into_iter().enumerate() {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
            if i == 3 {
                w.flush().unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), want);
            }
            // Everything before the last chunk boundary has reached the file.
            assert_eq!(w.written + w.buf.len() as u64, want.len() as u64);
            assert!(w.buf.len() < CHUNK);
        }
        drop(w.into_inner().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), want);
        std::fs::remove_file(&path).unwrap();
    }
}
