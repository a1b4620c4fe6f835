//! Atomic output files: data goes to a temporary file in the destination folder, is fsynced,
//! and is renamed into place only when the caller commits. Dropping an uncommitted
//! [`AtomicFile`] (error, panic, early return) removes the temporary file, so a failed
//! conversion never leaves a half-written model behind.
//!
//! Signals end a process without running destructors, so every live temporary file is also
//! listed in a process-wide registry: a signal handler (the binary installs one for Ctrl-C)
//! calls [`remove_temp_files`] before exiting.

use std::fs::File;
use std::io::{self, BufWriter, Write};
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
    writer: Option<BufWriter<File>>,
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
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes and fsyncs the temporary file, so it can be read (e.g. verified) before commit.
    pub fn sync(&mut self) -> io::Result<()> {
        let w = self.writer.as_mut().expect("writer present until commit");
        w.flush()?;
        w.get_ref().sync_all()
    }

    /// Flushes, fsyncs and renames the file into place.
    pub fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| e.into_error())?;
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
}
