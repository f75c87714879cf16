//! The other ledgers in this ledger's folder (other campaigns'), read only
//! and without their run lock: what they sent per target, and their
//! hand-overs through a shared relay account (`daily_limit`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, OptionalExtension as _};

use super::error::read_error;
use super::sent::{hand_overs, sent_per_target};

/// Another ledger's [`Ledger::hand_overs`](super::Ledger::hand_overs) through `account`, read only,
/// without its run lock (a `send` may be running on it): its campaign id
/// and the hand-over times. `Ok(None)` when `path` is no ledger.
pub(crate) fn hand_overs_elsewhere(
    path: &Path,
    since: i64,
    account: &str,
) -> Result<Option<(String, Vec<i64>)>> {
    let Some((conn, id)) = open_other(path)? else {
        return Ok(None);
    };
    let times = hand_overs(&conn, since, Some(account))
        .with_context(|| format!("cannot read ledger `{}`", path.display()))?;
    Ok(Some((id, times)))
}

/// Another ledger's campaign id and its sent letters per target.
pub(crate) type SentElsewhere = (String, Vec<(String, u64)>);

/// Another campaign's ledger, read only: its campaign id and its sent
/// letters per target (`None`: no campaign id recorded). An error names
/// the file, as [`unreadable`] shows it.
pub(crate) fn sent_elsewhere(path: &Path) -> Result<Option<SentElsewhere>> {
    let Some((conn, id)) = open_other(path)? else {
        return Ok(None);
    };
    let sent = sent_per_target(&conn).with_context(|| format!("cannot read ledger `{}`", path.display()))?;
    Ok(Some((id, sent)))
}

/// Opens another ledger beside this one, read only and without its run
/// lock: the connection and its campaign id (made printable: it is shown,
/// and a real one is only a-z, 0-9 and `-`). `Ok(None)` when it records
/// no campaign. Only a regular file is opened: `SQLite` would wait forever
/// on a FIFO, and a folder or a device is no ledger either.
fn open_other(path: &Path) -> Result<Option<(Connection, String)>> {
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    if !regular {
        return Err(anyhow::anyhow!("not a regular file")
            .context(format!("ledger `{}` is not a mailer ledger", path.display())));
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| read_error(e, path))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let id = conn
        .query_row("SELECT value FROM meta WHERE key = 'campaign_id'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(|e| read_error(e, path))?;
    Ok(id.map(|id| (conn, crate::ui::printable(&id).into_owned())))
}

/// The other ledgers (`*.sqlite3`) in the folder of `own`, sorted; `own`
/// itself is left out, by name or through a link. None when the folder
/// cannot be listed.
pub(crate) fn beside(own: &Path) -> Vec<PathBuf> {
    let canonical = std::fs::canonicalize(own).unwrap_or_else(|_| own.to_path_buf());
    let dir = own.parent().filter(|d| !d.as_os_str().is_empty());
    let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) else {
        return Vec::new();
    };
    let mut others: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sqlite3"))
        .filter(|p| p != own && std::fs::canonicalize(p).ok().as_ref() != Some(&canonical))
        .collect();
    others.sort();
    others
}

/// A warning for a ledger beside this one that could not be read
/// ([`sent_elsewhere`], [`hand_overs_elsewhere`]): ``ledger `…` is not a
/// mailer ledger: …``, then `consequence` (what goes unchecked). The
/// context and the reason, without `SQLite`'s echo of it.
pub(crate) fn unreadable(e: &anyhow::Error, consequence: &str) -> String {
    let why: Vec<String> = e.chain().take(2).map(ToString::to_string).collect();
    format!("{}; {consequence}", crate::ui::printable(&why.join(": ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::sent;
    use crate::ledger::{Key, Ledger};
    use crate::letter::Variant;

    #[test]
    fn other_ledgers_are_read_while_their_run_holds_them_and_strangers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.sqlite3");
        // Open to write: its run lock is held while it is read.
        let mut l = Ledger::open(&other, "other").unwrap();
        l.set_relay("h:587 u".into());
        let v = Variant::default();
        let key = Key {
            supporter: "a@x.org",
            target: "t@x.org",
            line: 2,
            message_id: "<a@o>",
            variant: &v,
        };
        l.claim(&key, 100).unwrap();
        l.record(&key, &sent("250", "ok", &[]), 0, true, 101).unwrap();
        assert_eq!(
            sent_elsewhere(&other).unwrap(),
            Some(("other".to_string(), vec![("t@x.org".to_string(), 1)]))
        );
        assert_eq!(
            hand_overs_elsewhere(&other, 0, "h:587 u").unwrap(),
            Some(("other".to_string(), vec![101]))
        );
        assert_eq!(
            hand_overs_elsewhere(&other, 0, "h:587 v").unwrap(),
            Some(("other".to_string(), Vec::new()))
        );
        // A database that names no campaign is no ledger.
        let blank = dir.path().join("blank.sqlite3");
        Connection::open(&blank)
            .unwrap()
            .execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
        assert_eq!(sent_elsewhere(&blank).unwrap(), None);
        assert_eq!(hand_overs_elsewhere(&blank, 0, "h:587 u").unwrap(), None);
        // A file that is no database is named as such.
        let stranger = dir.path().join("notes.sqlite3");
        std::fs::write(&stranger, "notes, not a database\n".repeat(100)).unwrap();
        for err in [
            sent_elsewhere(&stranger).unwrap_err(),
            hand_overs_elsewhere(&stranger, 0, "h:587 u").unwrap_err(),
        ] {
            let shown = unreadable(&err, "not checked");
            let want = format!("ledger `{}` is not a mailer ledger: ", stranger.display());
            assert!(shown.starts_with(&want), "{shown}");
            assert!(shown.ends_with("; not checked"), "{shown}");
        }
        // The folder's other ledgers, sorted, without this one.
        let own = dir.path().join("own.sqlite3");
        assert_eq!(beside(&own), [blank, stranger, other]);
    }
}
