//! How the ledger names what went wrong: a full disk, a read-only file
//! system, a file that is no mailer ledger, and `SQLite` failing to open a
//! file at all.

use std::path::Path;

use super::file::folder_of;

/// Names why a ledger cannot be opened to write, read-only file systems first.
pub(super) fn write_error(e: &std::io::Error, path: &Path) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        anyhow::anyhow!(
            "cannot write ledger `{}`: its folder is on a read-only file system, and `mailer send` \
             records every letter there\n\nhint: run it where the ledger's folder is writable \
             (`mailer status` and `mailer send --dry-run` work read-only)",
            path.display()
        )
    } else {
        anyhow::anyhow!("cannot open ledger `{}` to write: {e}", path.display())
    }
}

/// Labels an error met while reading a ledger: only a file that is not a
/// database, or a database without mailer's tables, is "not a mailer ledger".
pub(super) fn read_error(e: rusqlite::Error, path: &Path) -> anyhow::Error {
    let foreign = match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            f.code == rusqlite::ErrorCode::NotADatabase
                || msg.as_deref().is_some_and(|m| m.starts_with("no such table"))
        }
        _ => false,
    };
    let what = if foreign {
        format!("ledger `{}` is not a mailer ledger", path.display())
    } else {
        format!("cannot read ledger `{}`", path.display())
    };
    anyhow::Error::from(e).context(what)
}

/// Whether `SQLite` could not open a file (the database, or its `-shm`).
pub(super) fn cannot_open(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|e| e.downcast_ref::<rusqlite::Error>())
        .any(|e| e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen))
}

/// Names a full disk plainly.
pub(super) fn disk_error(e: rusqlite::Error, path: &Path) -> anyhow::Error {
    // SQLITE_FULL, or an I/O error while the filesystem has no room left
    // (growing the WAL index fails as `SQLITE_IOERR_SHMSIZE`).
    let full = match &e {
        rusqlite::Error::SqliteFailure(f, _) => {
            f.code == rusqlite::ErrorCode::DiskFull
                || (f.code == rusqlite::ErrorCode::SystemIoFailure && no_space_left(path))
        }
        _ => false,
    };
    if full {
        anyhow::anyhow!(
            "the disk holding the ledger `{}` is full: stopped before sending another letter\n\n\
             hint: free some space, then run `mailer send` again",
            path.display()
        )
    } else {
        anyhow::Error::from(e).context(format!("cannot write ledger `{}`", path.display()))
    }
}

/// Whether the filesystem holding `path` has no free space.
fn no_space_left(path: &Path) -> bool {
    let dir = folder_of(path).unwrap_or(Path::new("."));
    // A 4 KiB write is what any ledger commit needs at least.
    let probe = dir.join(".mailer-space-probe");
    let full = std::fs::write(&probe, [0u8; 4096]).is_err_and(|e| e.raw_os_error() == Some(28)); // ENOSPC
    let _ = std::fs::remove_file(&probe);
    full
}
