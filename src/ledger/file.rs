//! The ledger file on disk: created complete (never left empty) in a private
//! folder, refused when it is empty or a folder, and opened read-only where
//! its folder cannot be written. The run lock is `lock`'s.

use std::fs::{DirBuilder, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use rusqlite::Connection;

use super::error::{disk_error, read_error, write_error};
use super::owned_by;
use super::schema::set_up;

/// Writes a new, complete ledger file at `path`: built under a temporary
/// name, then linked into place only if `path` is still free. So mailer
/// never leaves a zero-length ledger behind, and a zero-length one is never
/// mistaken for a fresh start (it may be a truncated copy).
pub(super) fn create(path: &Path, campaign_id: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".new-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    drop(new_private_file(&tmp).map_err(|e| write_error(&e, path))?);
    // Built complete (every upgrade included), so that opening it writes
    // nothing: a fresh ledger's first open never adds columns in its WAL.
    let built = (|| -> Result<()> {
        let conn = Connection::open(&tmp).map_err(|e| disk_error(e, path))?;
        set_up(&conn)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('campaign_id', ?1)",
            [campaign_id],
        )
        .map_err(|e| disk_error(e, path))?;
        conn.close().map_err(|(_, e)| disk_error(e, path))
    })();
    let placed = built
        .and_then(|()| File::open(&tmp)?.sync_all().map_err(Into::into))
        .and_then(|()| match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            // Another run created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // A file system without hard links (FAT): copy into a file only
            // this run can have created. A run racing it may then meet the
            // file still empty, and stops with an error: never a fresh start.
            Err(_) => copy_new(&tmp, path),
        })
        .and_then(|()| sync_dir(path));
    let _ = std::fs::remove_file(&tmp);
    placed.with_context(|| format!("cannot create ledger `{}`", path.display()))
}

/// Copies `from` to `to` unless `to` exists.
fn copy_new(from: &Path, to: &Path) -> Result<()> {
    let mut out = match new_private_file(to) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(write_error(&e, to)),
    };
    std::io::copy(&mut File::open(from)?, &mut out)?;
    out.sync_all()?;
    Ok(())
}

/// Makes a new directory entry for `path` durable.
pub(super) fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(dir) = folder_of(path) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The folder holding `path` (`.` for a bare file name).
pub(super) fn folder_of(path: &Path) -> Option<&Path> {
    let dir = path.parent()?;
    Some(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
}

/// Refuses a ledger path that is a folder, or an empty file: an empty
/// ledger is a lost record of sent letters, never a fresh start.
pub(super) fn sound_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read ledger `{}`", path.display()))?;
    if meta.is_dir() {
        bail!(
            "ledger `{}` is a folder, not a ledger file\n\nhint: set [ledger] path to a file",
            path.display()
        );
    }
    if meta.len() == 0 {
        bail!(
            "ledger `{}` is empty (0 bytes): its record of sent letters is gone, so nothing can tell \
             which letters already went\n\nhint: restore it from a backup; only if no letter was ever \
             sent with it, delete it and run again",
            path.display()
        );
    }
    Ok(())
}

/// Reads a ledger whose folder is read-only. A WAL database normally needs
/// its `-shm` file, which cannot be created there; with no `-wal` file
/// every committed letter is in the main file, so it is opened `immutable`
/// (no locks, no `-shm`). No `send` can be running on it: a running one
/// always has a `-wal` file. With a `-wal` file, say what is wrong.
pub(super) fn read_only_folder(path: &Path, campaign_id: &str) -> Result<Connection> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        bail!(
            "cannot read ledger `{}`: its folder seems to be read-only, and `SQLite` must create \
             `{}-shm` beside it to read the changes still in `{}`\n\nhint: run it where the \
             folder is writable, or copy the folder (with the -wal file) to a writable place",
            path.display(),
            path.display(),
            wal.display()
        );
    }
    let uri = format!("file:{}?immutable=1", uri_path(path)?);
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri, flags).map_err(|e| read_error(e, path))?;
    owned_by(&conn, path, campaign_id)?;
    Ok(conn)
}

/// `path`, absolute and percent-encoded for an `SQLite` `file:` URI.
fn uri_path(path: &Path) -> Result<String> {
    use std::fmt::Write as _;
    let abs = std::path::absolute(path)?;
    let abs = abs
        .to_str()
        .with_context(|| format!("ledger path `{}` is not valid UTF-8", path.display()))?;
    let mut out = String::new();
    for &b in abs.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Ok(out)
}

#[cfg(unix)]
pub(super) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create ledger folder `{}`", dir.display()))?;
    }
    // The ledger names every supporter: keep our own `.mailer` folder private
    // even if someone created it by hand (a folder the user chose is theirs).
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 && dir.file_name().is_some_and(|n| n == ".mailer") {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make ledger folder `{}` private", dir.display()))?;
    }
    Ok(())
}

#[cfg(unix)]
pub(super) fn new_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
pub(super) fn private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().recursive(true).create(dir)?;
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn new_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    #[test]
    fn uri_paths_are_percent_encoded() {
        assert_eq!(
            uri_path(Path::new("/tmp/a b?c#%d/l.sqlite3")).unwrap(),
            "/tmp/a%20b%3Fc%23%25d/l.sqlite3"
        );
    }

    #[test]
    fn a_new_ledger_is_never_left_empty_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        drop(Ledger::open(&path, "c").unwrap());
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.sqlite3"], "no temporary file left");
        std::fs::write(&path, "").unwrap();
        for err in [
            Ledger::open(&path, "c").err().unwrap(),
            Ledger::open_existing(&path, "c").err().unwrap(),
        ] {
            assert!(err.to_string().contains("is empty (0 bytes)"), "{err}");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
