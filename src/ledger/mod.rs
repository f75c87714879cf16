//! The send ledger: one `SQLite` row per letter, on disk, private.
//!
//! Owns the states SPEC.md defines and their transitions, the run lock, and
//! durability: a letter's `sending` is committed with a full fsync before its
//! body goes to the server, so no crash, kill or power loss can make a letter
//! that may have gone out look unsent. What to send is decided by `cmd/send`.
//!
//! This file holds the ledger's types ([`Ledger`], [`State`], [`Record`],
//! [`Key`]), opening it, and reading letters' rows; the rest is one concern
//! a file:
//! - `schema`: the tables, and the upgrades of ledgers older versions wrote.
//! - `file`: the file on disk: created complete and private, refused when
//!   empty or a folder, read from a read-only folder.
//! - `lock`: the run lock, and a ledger deleted or replaced under a run
//!   (the rescued copy).
//! - `error`: `SQLite` and I/O errors named for people (a full disk, a
//!   read-only file system, a file that is no ledger).
//! - `write`: a letter's writes: claims (fsynced before the handoff),
//!   outcomes, skips, requeues, recovery after a crash.
//! - `shared`: [`SharedLedger`], the workers' group commit, and the
//!   [`Outcome`]s that ride with it.
//! - `sent`: what went out: hand-overs for the quotas and the schedule,
//!   letters per target and per text.
//! - `hold`: letters held back by hand (`mailer skip`, `mailer requeue`).
//! - `bounce`: delivery status notifications and the VERP secret.
//! - `runs`: how the latest `mailer send` ended.
//! - `others`: the other ledgers in the same folder (other campaigns).

mod bounce;
mod error;
mod file;
mod hold;
mod lock;
mod others;
mod runs;
mod schema;
mod sent;
mod shared;
mod write;

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OptionalExtension as _};

use crate::exit::{Exit, Failure};
use crate::letter::Variant;

pub(crate) use bounce::{Bounce, BounceEffect};
pub(crate) use hold::Change;
pub(crate) use others::{beside, hand_overs_elsewhere, sent_elsewhere, unreadable};
pub(crate) use runs::LastRun;
pub(crate) use shared::{Outcome, SharedLedger};

use error::{cannot_open, disk_error, read_error};
use file::{create, private_dir, read_only_folder, sound_file};
use lock::{identity_of, refuse_leftovers, run_lock};
use schema::{has_held_column, set_up};

/// A letter's state (SPEC.md "Ledger states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum State {
    /// Not yet attempted.
    Pending,
    /// Handed to the server, outcome not yet recorded.
    Sending,
    /// The server said 2xx.
    Sent,
    /// 4xx or a network error before handoff: a later run retries.
    Deferred,
    /// 5xx: retried only with `--retry-failed`.
    Failed,
    /// May have been delivered: retried only with `--resend-unknown`.
    Unknown,
    /// The supporter's row is invalid.
    Skipped,
    /// Sent, then a delivery status notification said it failed (never resent).
    Bounced,
}

impl State {
    /// Every state, in report order.
    pub(crate) const ALL: [State; 8] = [
        State::Sent,
        State::Bounced,
        State::Pending,
        State::Deferred,
        State::Failed,
        State::Unknown,
        State::Skipped,
        State::Sending,
    ];

    /// The name stored and shown.
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Deferred => "deferred",
            State::Failed => "failed",
            State::Unknown => "unknown",
            State::Skipped => "skipped",
            State::Bounced => "bounced",
        }
    }

    fn parse(s: &str) -> Result<State> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .with_context(|| format!("unknown ledger state `{s}`"))
    }
}

/// One letter's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Normalized supporter email.
    pub(crate) supporter: String,
    /// Normalized target email.
    pub(crate) target: String,
    /// Current state.
    pub(crate) state: State,
    /// How many times it was handed to a connection.
    pub(crate) attempts: u32,
    /// The CSV line it came from, when last seen.
    pub(crate) line: Option<u64>,
    /// Its Message-ID.
    pub(crate) message_id: Option<String>,
    /// The server's last reply, or why it was skipped.
    pub(crate) reply: Option<String>,
    /// Earliest next attempt (unix seconds), for `deferred`.
    pub(crate) next_attempt_at: Option<i64>,
    /// When the server accepted it (unix seconds).
    pub(crate) sent_at: Option<i64>,
    /// Skipped by hand (`mailer skip`) until `mailer requeue`; false in a
    /// ledger written before holds existed.
    pub(crate) held: bool,
}

/// Which letter a write is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    /// Normalized supporter email.
    pub(crate) supporter: &'a str,
    /// Normalized target email.
    pub(crate) target: &'a str,
    /// CSV line.
    pub(crate) line: u64,
    /// Message-ID.
    pub(crate) message_id: &'a str,
    /// Which text it is: recorded when the letter is claimed (handed over).
    pub(crate) variant: &'a Variant,
}

/// The open ledger.
pub(crate) struct Ledger {
    // NOTE: field order matters: `conn` must be dropped (closing `SQLite`'s
    // own descriptors) before `_lock`, see [`Ledger::open`].
    conn: Connection,
    path: PathBuf,
    /// The run lock, for a ledger opened to write.
    _lock: Option<File>,
    /// The locked file's (device, inode): `path` must keep naming it.
    identity: Option<(u64, u64)>,
    /// Set once `path` no longer names the locked file: why the run must stop.
    lost: std::cell::OnceCell<String>,
    /// The `letters` columns a [`Record`] reads (`held` only where it exists).
    columns: &'static str,
    /// The relay account this run hands letters to (`host:port user`),
    /// recorded with each attempt: `daily_limit` is the account's.
    relay: Option<String>,
    /// The `synchronous` setting last set (see [`Ledger::synchronous`]).
    sync: std::cell::Cell<Option<&'static str>>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger for `campaign_id` to write:
    /// folder 0700, file 0600, WAL, integrity-checked, refusing another
    /// campaign's file. Holds the run lock until dropped: while one `send`
    /// has it open, another fails at once with exit 75.
    pub(crate) fn open(path: &Path, campaign_id: &str) -> Result<Ledger> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        if !path.exists() {
            refuse_leftovers(path)?;
            create(path, campaign_id)?;
        }
        let lock = run_lock(path)?;
        // NOTE: the lock holds only while `path` names the locked inode. A
        // run that opened the file just before it was deleted or replaced
        // would hold a lock nobody else can see.
        let identity = identity_of(&lock.metadata()?);
        if std::fs::metadata(path).ok().as_ref().map(identity_of) != Some(identity) {
            return Err(Failure::error(
                Exit::TryLater,
                format!(
                    "the ledger `{shown}` was deleted or replaced while this run was opening it: \
                     try again"
                ),
            ));
        }
        sound_file(path)?;
        let conn = Connection::open(path).with_context(|| format!("cannot open ledger `{shown}`"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| disk_error(e, path).context(format!("cannot open ledger `{shown}`")))?;
        if mode != "wal" {
            bail!("ledger `{shown}`: cannot switch to WAL mode (got `{mode}`)");
        }
        // Checkpoint the WAL every ~4 MB (SQLite's default): after each
        // checkpoint commits overwrite the WAL from its start instead of
        // growing it, so a commit's fdatasync writes no inode (see
        // .cargo/config.toml). `checkpoint()` truncates it at the end of a run.
        conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            bail!(
                "ledger `{shown}` is damaged ({check})\n\nhint: restore it from a backup; do not delete it, or letters may be sent twice"
            );
        }
        set_up(&conn).with_context(|| format!("cannot set up ledger `{shown}`"))?;
        if !owned_by(&conn, path, campaign_id)? {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('campaign_id', ?1)",
                [campaign_id],
            )?;
        }
        Ok(Ledger {
            columns: record_columns(&conn)?,
            conn,
            path: path.to_path_buf(),
            _lock: Some(lock),
            identity: Some(identity),
            lost: std::cell::OnceCell::new(),
            relay: None,
            sync: std::cell::Cell::new(None),
        })
    }

    /// Opens an existing ledger read-only — for `status`, `export`, dry
    /// runs and the send dispatcher's lookups: no schema, no permission
    /// changes, no writes, no run lock, and it never waits for a running
    /// `send`. `None` if no run wrote one yet.
    pub(crate) fn open_existing(path: &Path, campaign_id: &str) -> Result<Option<Ledger>> {
        // NOTE: only `stat` here, never a `File` on the ledger: this runs
        // inside `send` beside its writing connection, and closing any
        // descriptor of the file would drop that connection's POSIX locks.
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                refuse_leftovers(path)?;
                return Ok(None);
            }
            _ => sound_file(path)?,
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| read_error(e, path))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let conn = match owned_by(&conn, path, campaign_id) {
            Ok(_) => conn,
            Err(e) if cannot_open(&e) => read_only_folder(path, campaign_id)?,
            Err(e) => return Err(e),
        };
        Ok(Some(Ledger {
            path: path.to_path_buf(),
            _lock: None,
            identity: None,
            lost: std::cell::OnceCell::new(),
            sync: std::cell::Cell::new(None),
            columns: record_columns(&conn)?,
            conn,
            relay: None,
        }))
    }

    /// One letter's row.
    pub(crate) fn get(&self, supporter: &str, target: &str) -> Result<Option<Record>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM letters WHERE supporter = ?1 AND target = ?2",
            self.columns
        ))?;
        stmt.query_row([supporter, target], row_to_record)
            .optional()
            .map_err(Into::into)
    }

    /// Every row, ordered by supporter then target.
    pub(crate) fn all(&self) -> Result<Vec<Record>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM letters ORDER BY coalesce(line, 0), supporter, target",
            self.columns
        ))?;
        let rows = stmt.query_map([], row_to_record)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }

    /// Rows per state.
    #[cfg(test)]
    fn counts(&self) -> Result<Vec<(State, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, count(*) FROM letters GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (s, n) = row?;
            out.push((State::parse(&s)?, n as u64));
        }
        Ok(out)
    }
}

/// Refuses a ledger that belongs to another campaign; `false` if it names
/// none yet (a new file).
fn owned_by(conn: &Connection, path: &Path, campaign_id: &str) -> Result<bool> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'campaign_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| read_error(e, path))?;
    match stored {
        Some(id) if id != campaign_id => bail!(
            "ledger `{}` belongs to campaign `{id}`, not `{campaign_id}`\n\n\
             hint: set [ledger] path to this campaign's own file",
            path.display()
        ),
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let state: String = r.get(2)?;
    Ok(Record {
        supporter: r.get(0)?,
        target: r.get(1)?,
        state: State::parse(&state).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        attempts: r.get::<_, i64>(3)? as u32,
        line: r.get::<_, Option<i64>>(4)?.map(|l| l as u64),
        message_id: r.get(5)?,
        reply: r.get(6)?,
        next_attempt_at: r.get(7)?,
        sent_at: r.get(8)?,
        held: r.get::<_, i64>(9)? != 0,
    })
}

/// The columns [`row_to_record`] reads, in its order: a ledger written
/// before holds existed (opened read-only, so not upgraded) holds none.
fn record_columns(conn: &Connection) -> Result<&'static str> {
    Ok(if has_held_column(conn)? {
        "supporter, target, state, attempts, line, message_id, reply, next_attempt_at, sent_at, held"
    } else {
        "supporter, target, state, attempts, line, message_id, reply, next_attempt_at, sent_at, 0"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Attempt, End, RefusedCopy, Reply, classify};

    pub(super) fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join(".mailer/c.sqlite3"), "c").unwrap();
        (dir, l)
    }

    /// The letter from `supporter` to `ceo@corp.example` (line 2).
    pub(super) fn to_ceo<'a>(supporter: &'a str, variant: &'a Variant) -> Key<'a> {
        Key {
            supporter,
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
            variant,
        }
    }

    pub(super) fn reply(code: u16, text: &str) -> End {
        End::Reply(Reply {
            code,
            text: text.into(),
        })
    }

    /// A 2xx attempt with these refused copies `(recipient, code, text)`.
    pub(super) fn sent(code: &str, text: &str, refused: &[(&str, u16, &str)]) -> Attempt {
        let refused = refused
            .iter()
            .map(|(to, code, text)| RefusedCopy {
                recipient: (*to).to_string(),
                reply: Reply {
                    code: *code,
                    text: (*text).to_string(),
                },
            })
            .collect();
        classify(reply(code.parse().unwrap(), text), true, refused)
    }

    #[test]
    fn files_are_private_and_campaign_is_checked() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, l) = ledger();
        drop(l);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(".mailer")), 0o700);
        assert_eq!(mode(&dir.path().join(".mailer/c.sqlite3")), 0o600);
        let err = Ledger::open(&dir.path().join(".mailer/c.sqlite3"), "other")
            .err()
            .unwrap();
        assert!(err.to_string().contains("belongs to campaign `c`"), "{err}");
    }
}
