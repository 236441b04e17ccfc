//! Per-domain run lock: a non-blocking `flock` on `<lock_dir>/<domain>.lock`.
//!
//! The kernel releases the lock when its holder dies, SIGKILL included, so a crashed
//! run never blocks the next one. The file's content names the holder for the
//! message a second run prints; it is informative only and never decides anything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fs2::FileExt;

use crate::error::{Error, Result};

/// A held domain lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DomainLock {
    file: File,
    path: PathBuf,
}

impl DomainLock {
    /// Takes the lock of `domain` without waiting, or returns `Error::Locked` naming the holder.
    pub fn acquire(lock_dir: &Path, domain: &str, run_id: &str, now: &str) -> Result<DomainLock> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(lock_dir)
            .map_err(|source| Error::Io {
                action: "failed to create lock folder",
                path: lock_dir.to_path_buf(),
                source,
            })?;
        let path = lock_dir.join(format!("{domain}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| Error::Io {
                action: "failed to open lock file",
                path: path.clone(),
                source,
            })?;
        if file.try_lock_exclusive().is_err() {
            let mut holder = String::new();
            // The holder writes its line right after locking; an empty read means it
            // has not written yet.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Locked {
                domain: domain.to_string(),
                holder: if holder.is_empty() {
                    "holder not yet recorded".into()
                } else {
                    holder.to_string()
                },
            });
        }
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let line = format!(
            "pid={} host={host} run_id={run_id} since={now}\n",
            std::process::id()
        );
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()));
        if let Err(source) = written {
            return Err(Error::Io {
                action: "failed to write lock file",
                path,
                source,
            });
        }
        Ok(DomainLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DomainLock {
    fn drop(&mut self) {
        // Emptying the file before unlocking keeps a stale holder line from
        // showing up in a later message.
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}
