//! The other ledgers in this ledger's folder (other campaigns'), read only
//! and without their run lock: what they sent per target, and their
//! hand-overs through a shared relay account (`daily_limit`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rusqlite::{Connection, OptionalExtension as _};

use super::error::read_error;
use super::sent::{hand_overs, sent_per_target};

/// Another ledger's [`Ledger::hand_overs`] through `account`, read only,
/// without its run lock (a `send` may be running on it): its campaign id
/// and the hand-over times. `Ok(None)` when `path` is no ledger.
pub(crate) fn hand_overs_elsewhere(
    path: &Path,
    since: i64,
    account: &str,
) -> Result<Option<(String, Vec<i64>)>> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| read_error(e, path))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let Some(id) = conn
        .query_row("SELECT value FROM meta WHERE key = 'campaign_id'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(|e| read_error(e, path))?
    else {
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
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| read_error(e, path))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let Some(id) = conn
        .query_row("SELECT value FROM meta WHERE key = 'campaign_id'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(|e| read_error(e, path))?
    else {
        return Ok(None);
    };
    let sent = sent_per_target(&conn).with_context(|| format!("cannot read ledger `{}`", path.display()))?;
    Ok(Some((id, sent)))
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
