//! Checks of fjall's own files *before* fjall opens them.
//!
//! fjall's recovery trusts its files more than an event log can afford:
//! a damaged version file makes lsm-tree assert or allocate without bound
//! (the process aborts), and a damaged entry in a fjall journal file makes
//! recovery truncate the file there — destroying every later batch, intact
//! or not. So before each open:
//!
//! - every keyspace's `current` pointer and the version file it names are
//!   checked against the xxh3-128 checksum `current` records (lsm-tree
//!   writes it but does not check it);
//! - the fjall journal files (`*.jnl`) are copied aside. If the open then
//!   fails its integrity checks, the copy is kept and the error says where,
//!   so a refused open never loses bytes; if it succeeds, the copy is
//!   removed.
//!
//! Nothing here knows about events; it only protects the storage engine's
//! files from the storage engine's recovery.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ids::Seq;

fn damaged(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        seq: Seq::ZERO,
        reason: format!("storage file {} is damaged: {reason}", path.display()),
    }
}

/// Checks each keyspace's `current` file and the version file it names.
pub(crate) fn check_versions(db: &Path) -> Result<()> {
    let keyspaces = db.join("keyspaces");
    let Ok(entries) = std::fs::read_dir(&keyspaces) else {
        return Ok(()); // fjall reports a missing layout itself, without panicking
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(&keyspaces))?;
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let current = dir.join("current");
        let Ok(bytes) = std::fs::read(&current) else {
            continue; // a keyspace being created; fjall handles it
        };
        if bytes.len() != 25 {
            return Err(damaged(&current, format!("{} bytes, expected 25", bytes.len())));
        }
        let id = u64::from_le_bytes(
            bytes[..8]
                .try_into()
                .map_err(|_| damaged(&current, "short".into()))?,
        );
        let sum = u128::from_le_bytes(
            bytes[8..24]
                .try_into()
                .map_err(|_| damaged(&current, "short".into()))?,
        );
        if bytes[24] != 0 {
            return Err(damaged(
                &current,
                format!("checksum type {}, expected 0 (xxh3)", bytes[24]),
            ));
        }
        let version = dir.join(format!("v{id}"));
        let content = std::fs::read(&version).map_err(|e| {
            damaged(
                &current,
                format!(
                    "names version file {} which cannot be read: {e}",
                    version.display()
                ),
            )
        })?;
        let found = xxhash_rust::xxh3::xxh3_128(&content);
        if found != sum {
            return Err(damaged(
                &version,
                format!(
                    "checksum {found:032x}, but {} records {sum:032x}",
                    current.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A copy of the fjall journal files taken before an open.
#[derive(Debug)]
pub(crate) struct JournalFilesCopy {
    dir: PathBuf,
}

impl JournalFilesCopy {
    /// Copies `db/*.jnl` into `<data>/recovery/<stamp>/`.
    pub(crate) fn take(data: &Path, db: &Path) -> Result<Option<JournalFilesCopy>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(db).map_err(Error::io(db))? {
            let p = entry.map_err(Error::io(db))?.path();
            if p.extension().is_some_and(|e| e == "jnl") {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Ok(None);
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = data.join("recovery").join(format!("pre-open-{stamp}"));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        for f in files {
            let target = dir.join(f.file_name().unwrap_or_default());
            std::fs::copy(&f, &target).map_err(Error::io(&f))?;
        }
        Ok(Some(JournalFilesCopy { dir }))
    }

    /// The open succeeded: the copy is not needed.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent); // only if empty
        }
    }

    /// The open failed: keep the copy and say where it is.
    pub(crate) fn keep(self, error: Error) -> Error {
        Error::Refused {
            source: Box::new(error),
            kept: self.dir,
        }
    }
}

/// A private copy of a journal's storage for a read-only open, so that
/// fjall's recovery (which writes: it truncates damaged journal files,
/// flushes, rewrites version files) never touches the original. Immutable
/// table files are hard-linked, everything else is copied. Removed on drop.
#[derive(Debug)]
pub(crate) struct ReadCopy {
    dir: PathBuf,
}

const READ_COPY_PREFIX: &str = ".read-copy-";

impl ReadCopy {
    /// Copies `<data>/db` and `<data>/HEAD` into `<data>/.read-copy-<pid>-<n>/`
    /// while holding the storage lock, so no writer changes them meanwhile.
    pub(crate) fn make(data: &Path) -> Result<ReadCopy> {
        remove_stale(data);
        let db = data.join("db");
        let lock_path = db.join("lock");
        let lock = std::fs::File::open(&lock_path).map_err(Error::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: data.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Io {
                    path: lock_path,
                    source: e,
                });
            }
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{READ_COPY_PREFIX}{}-{n}", std::process::id());
        // Beside the journal (tables are hard-linked: cheap); where the data
        // directory is not writable (a read-only mount, an auditor's copy),
        // in the temporary directory (tables are copied).
        let copy = match ReadCopy::fill(data, &db, data.join(&name)) {
            Ok(c) => c,
            Err(_) => ReadCopy::fill(data, &db, std::env::temp_dir().join(&name))?,
        };
        drop(lock);
        Ok(copy)
    }

    fn fill(data: &Path, db: &Path, dir: PathBuf) -> Result<ReadCopy> {
        let _ = std::fs::remove_dir_all(&dir);
        let copy = ReadCopy { dir };
        copy_tree(db, &copy.dir.join("db"), false)?;
        let head = data.join("HEAD");
        if head.exists() {
            std::fs::copy(&head, copy.dir.join("HEAD")).map_err(Error::io(&head))?;
        }
        Ok(copy)
    }

    /// The copy's data directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ReadCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_tree(from: &Path, to: &Path, immutable: bool) -> Result<()> {
    std::fs::create_dir_all(to).map_err(Error::io(to))?;
    for entry in std::fs::read_dir(from).map_err(Error::io(from))? {
        let entry = entry.map_err(Error::io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(Error::io(&src))?;
        if ty.is_dir() {
            let name = entry.file_name();
            let tables = immutable || name == "tables" || name == "blobs";
            copy_tree(&src, &dst, tables)?;
        } else if entry.file_name() == "lock" {
            // The copy gets its own, unheld lock file.
            std::fs::File::create(&dst).map_err(Error::io(&dst))?;
        } else if immutable {
            // Table files are written once and never changed in place.
            std::fs::hard_link(&src, &dst)
                .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
                .map_err(Error::io(&src))?;
        } else {
            std::fs::copy(&src, &dst).map_err(Error::io(&src))?;
        }
    }
    Ok(())
}

/// Removes read copies left by processes that no longer exist.
fn remove_stale(data: &Path) {
    let Ok(entries) = std::fs::read_dir(data) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(READ_COPY_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
