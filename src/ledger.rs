//! The send ledger: one `SQLite` row per letter, on disk, private.
//!
//! Owns the states SPEC.md defines and their transitions, the run lock, and
//! durability: a letter's `sending` is committed with a full fsync before its
//! body goes to the server, so no crash, kill or power loss can make a letter
//! that may have gone out look unsent. What to send is decided by `cmd/send`.

use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::exit::{Exit, Failure};

/// A letter's state (SPEC.md "Ledger states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
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
}

impl State {
    /// Every state, in report order.
    pub const ALL: [State; 7] = [
        State::Sent,
        State::Pending,
        State::Deferred,
        State::Failed,
        State::Unknown,
        State::Skipped,
        State::Sending,
    ];

    /// The name stored and shown.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Deferred => "deferred",
            State::Failed => "failed",
            State::Unknown => "unknown",
            State::Skipped => "skipped",
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
pub struct Record {
    /// Normalized supporter email.
    pub supporter: String,
    /// Normalized target email.
    pub target: String,
    /// Current state.
    pub state: State,
    /// How many times it was handed to a connection.
    pub attempts: u32,
    /// The CSV line it came from, when last seen.
    pub line: Option<u64>,
    /// Its Message-ID.
    pub message_id: Option<String>,
    /// The server's last reply, or why it was skipped.
    pub reply: Option<String>,
    /// Earliest next attempt (unix seconds), for `deferred`.
    pub next_attempt_at: Option<i64>,
    /// When the server accepted it (unix seconds).
    pub sent_at: Option<i64>,
}

/// How one attempt ended, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx after the final dot.
    Sent(String),
    /// Transient: retry later (at unix second `next_attempt_at`).
    Deferred {
        reply: String,
        next_attempt_at: i64,
        handed_over: bool,
    },
    /// Permanent rejection.
    Failed { reply: String, handed_over: bool },
    /// The body was handed over and no reply came.
    Unknown(String),
}

/// Which letter a write is about.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Normalized supporter email.
    pub supporter: &'a str,
    /// Normalized target email.
    pub target: &'a str,
    /// CSV line.
    pub line: u64,
    /// Message-ID.
    pub message_id: &'a str,
}

/// The open ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS letters (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending','sending','sent','deferred','failed','unknown','skipped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    line INTEGER,
    message_id TEXT,
    reply TEXT,
    next_attempt_at INTEGER,
    sent_at INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (supporter, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reply TEXT,
    handed_over INTEGER NOT NULL
);
-- No index on attempts: it is read once per run (the daily quota), and an
-- index would cost a page write on every letter.
";

impl Ledger {
    /// Opens (creating if needed) the ledger for `campaign_id`: folder 0700,
    /// file 0600, WAL, integrity-checked, refusing another campaign's file.
    pub fn open(path: &Path, campaign_id: &str) -> Result<Ledger> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        private_file(path)?;
        let conn = Connection::open(path).with_context(|| format!("cannot open ledger `{shown}`"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| disk_error(e, path).context(format!("cannot open ledger `{shown}`")))?;
        if mode != "wal" {
            bail!("ledger `{shown}`: cannot switch to WAL mode (got `{mode}`)");
        }
        // Checkpoint the WAL into the database every ~40 MB rather than every
        // 4 MB: the same few pages are rewritten letter after letter, so
        // fewer checkpoints mean far fewer writes. `checkpoint()` truncates
        // it at the end of a run.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            bail!(
                "ledger `{shown}` is damaged ({check})\n\nhint: restore it from a backup; do not delete it, or letters may be sent twice"
            );
        }
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot set up ledger `{shown}`"))?;
        add_held_column(&conn).with_context(|| format!("cannot set up ledger `{shown}`"))?;
        if !owned_by(&conn, path, campaign_id)? {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('campaign_id', ?1)",
                [campaign_id],
            )?;
        }
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing ledger read-only — for `status`, `export`, dry
    /// runs and the send dispatcher's lookups: no schema, no permission
    /// changes, no writes, and it never waits for a running `send`.
    /// `None` if no run wrote one yet.
    pub fn open_existing(path: &Path, campaign_id: &str) -> Result<Option<Ledger>> {
        if !path.exists() {
            return Ok(None);
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("cannot open ledger `{}`", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        owned_by(&conn, path, campaign_id)?;
        Ok(Some(Ledger {
            conn,
            path: path.to_path_buf(),
        }))
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns `sending` rows left by a run that died into `unknown`, and
    /// records each as a handed-over attempt (it counts against the daily
    /// limit: the server may well have it).
    pub fn recover(&self, now: i64) -> Result<usize> {
        let reply = "the run ended after handing the letter over, before the server replied";
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO attempts (supporter, target, at, outcome, reply, handed_over)
             SELECT supporter, target, updated_at, 'unknown', ?1, 1 FROM letters WHERE state = 'sending'",
            [reply],
        )?;
        let n = tx.execute(
            "UPDATE letters SET state = 'unknown', updated_at = ?1, reply = ?2 WHERE state = 'sending'",
            params![now, reply],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(n)
    }

    /// One letter's row.
    pub fn get(&self, supporter: &str, target: &str) -> Result<Option<Record>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT supporter, target, state, attempts, line, message_id, reply, next_attempt_at, sent_at
             FROM letters WHERE supporter = ?1 AND target = ?2",
        )?;
        stmt.query_row([supporter, target], row_to_record)
            .optional()
            .map_err(Into::into)
    }

    /// Every row, ordered by supporter then target.
    pub fn all(&self) -> Result<Vec<Record>> {
        let mut stmt = self.conn.prepare(
            "SELECT supporter, target, state, attempts, line, message_id, reply, next_attempt_at, sent_at
             FROM letters ORDER BY coalesce(line, 0), supporter, target",
        )?;
        let rows = stmt.query_map([], row_to_record)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }

    /// One letter's [`Ledger::claim_many`] (runs claim through [`SharedLedger`]).
    #[cfg(test)]
    fn claim(&self, letter: &Key<'_>, now: i64) -> Result<()> {
        self.claim_many(&[*letter], now)?
            .remove(0)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Claims several letters in one transaction with one fsync (group
    /// commit: workers whose claims arrive together share the disk flush).
    /// The outer `Err` is the commit failing (nothing claimed); an inner
    /// `Err` is a letter already recorded as sent, which must not go again.
    pub fn claim_many(&self, letters: &[Key<'_>], now: i64) -> Result<Vec<Result<(), String>>> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let tx = self.conn.unchecked_transaction()?;
        let mut results = Vec::with_capacity(letters.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO letters (supporter, target, state, attempts, line, message_id, updated_at)
                 VALUES (?1, ?2, 'sending', 1, ?3, ?4, ?5)
                 ON CONFLICT (supporter, target) DO UPDATE SET
                    state = 'sending', attempts = attempts + 1, line = ?3, message_id = ?4, updated_at = ?5
                 WHERE state <> 'sent'",
            )?;
            for k in letters {
                let changed = stmt
                    .execute(params![k.supporter, k.target, k.line as i64, k.message_id, now])
                    .map_err(|e| disk_error(e, &self.path))?;
                results.push(if changed == 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "letter {} → {} is already recorded as sent; not sending it again",
                        k.supporter, k.target
                    ))
                });
            }
        }
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(results)
    }

    /// Records how an attempt ended. `claimed`: [`Ledger::claim`] already
    /// counted this attempt. Committed without an fsync: the next claim's
    /// fsync covers it, and if power fails first the letter reads back as
    /// `sending`, which becomes `unknown`, never resent silently.
    pub fn record(&self, letter: &Key<'_>, outcome: &Outcome, claimed: bool, now: i64) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let (state, reply, next, sent_at, handed_over) = match outcome {
            Outcome::Sent(r) => (State::Sent, r.as_str(), None, Some(now), true),
            Outcome::Deferred {
                reply,
                next_attempt_at,
                handed_over,
            } => (
                State::Deferred,
                reply.as_str(),
                Some(*next_attempt_at),
                None,
                *handed_over,
            ),
            Outcome::Failed { reply, handed_over } => {
                (State::Failed, reply.as_str(), None, None, *handed_over)
            }
            Outcome::Unknown(r) => (State::Unknown, r.as_str(), None, None, true),
        };
        let tx = self.conn.unchecked_transaction()?;
        tx.prepare_cached(
            "INSERT INTO letters (supporter, target, state, attempts, line, message_id, reply, next_attempt_at,
                sent_at, updated_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (supporter, target) DO UPDATE SET state = ?3, attempts = attempts + ?10, line = ?4,
                message_id = ?5, reply = ?6, next_attempt_at = ?7, sent_at = coalesce(?8, sent_at),
                updated_at = ?9
             WHERE state <> 'sent'",
        )?
        .execute(params![
            letter.supporter,
            letter.target,
            state.as_str(),
            letter.line as i64,
            letter.message_id,
            reply,
            next,
            sent_at,
            now,
            i64::from(!claimed),
        ])?;
        tx.prepare_cached(
            "INSERT INTO attempts (supporter, target, at, outcome, reply, handed_over) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![letter.supporter, letter.target, now, state.as_str(), reply, handed_over])?;
        tx.commit().map_err(|e| disk_error(e, &self.path))
    }

    /// Puts a `failed` letter back to `deferred` (a run-wide policy stop was
    /// not the letter's fault).
    pub fn requeue(&self, supporter: &str, target: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE letters SET state = 'deferred', next_attempt_at = ?3, updated_at = ?3
             WHERE supporter = ?1 AND target = ?2 AND state = 'failed'",
            params![supporter, target, now],
        )?;
        Ok(())
    }

    /// Records an invalid row's letter as `skipped` (never over a sent letter).
    pub fn skip(&self, supporter: &str, target: &str, line: u64, reason: &str, now: i64) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn
            .prepare_cached(
                "INSERT INTO letters (supporter, target, state, line, reply, updated_at)
                 VALUES (?1, ?2, 'skipped', ?3, ?4, ?5)
                 ON CONFLICT (supporter, target) DO UPDATE SET state = 'skipped', line = ?3, reply = ?4,
                    updated_at = ?5
                 WHERE state IN ('pending', 'skipped', 'deferred')",
            )?
            .execute(params![supporter, target, line as i64, reason, now])
            .map_err(|e| disk_error(e, &self.path))?;
        Ok(())
    }

    /// Letters handed to the server since `since` (unix seconds): the daily
    /// quota's use. A letter retried after a refusal counts once.
    pub fn handed_over_since(&self, since: i64) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM (SELECT DISTINCT supporter, target FROM attempts
             WHERE handed_over = 1 AND at >= ?1)",
            [since],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Rows per state.
    pub fn counts(&self) -> Result<Vec<(State, u64)>> {
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

    /// Writes everything to the main database file (end of a run).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }
}

/// What [`Ledger::hold`] or [`Ledger::release`] did to one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Changed; the state it had before (`None`: no row yet, i.e. pending).
    Changed(Option<State>),
    /// Left as it is, in this state.
    Untouched(State),
}

impl Ledger {
    /// Holds a letter back by hand: `skipped` with `reason`, flagged so that
    /// no run sends it (nor re-evaluates it) until [`Ledger::release`].
    /// Never touches a letter that is `sent` or in flight (`sending`).
    pub fn hold(
        &self,
        supporter: &str,
        target: &str,
        line: Option<u64>,
        reason: &str,
        now: i64,
    ) -> Result<Change> {
        let tx = self.conn.unchecked_transaction()?;
        let before: Option<String> = tx
            .query_row(
                "SELECT state FROM letters WHERE supporter = ?1 AND target = ?2",
                [supporter, target],
                |r| r.get(0),
            )
            .optional()?;
        let before = before.as_deref().map(State::parse).transpose()?;
        if let Some(s @ (State::Sent | State::Sending)) = before {
            return Ok(Change::Untouched(s));
        }
        tx.execute(
            "INSERT INTO letters (supporter, target, state, line, reply, held, updated_at)
             VALUES (?1, ?2, 'skipped', ?3, ?4, 1, ?5)
             ON CONFLICT (supporter, target) DO UPDATE SET state = 'skipped', line = coalesce(?3, line),
                reply = ?4, held = 1, next_attempt_at = NULL, updated_at = ?5
             WHERE state NOT IN ('sent', 'sending')",
            params![supporter, target, line.map(|l| l as i64), reason, now],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(Change::Changed(before))
    }

    /// Puts a `failed`, `unknown` or `skipped` letter back in the queue
    /// (`pending`, no longer held). Any other state is left as it is.
    pub fn release(&self, supporter: &str, target: &str, now: i64) -> Result<Change> {
        let tx = self.conn.unchecked_transaction()?;
        let before: Option<String> = tx
            .query_row(
                "SELECT state FROM letters WHERE supporter = ?1 AND target = ?2",
                [supporter, target],
                |r| r.get(0),
            )
            .optional()?;
        let before = before.as_deref().map(State::parse).transpose()?;
        match before {
            Some(State::Failed | State::Unknown | State::Skipped) => {}
            Some(s) => return Ok(Change::Untouched(s)),
            None => return Ok(Change::Untouched(State::Pending)),
        }
        tx.execute(
            "UPDATE letters SET state = 'pending', held = 0, reply = NULL, next_attempt_at = NULL,
                updated_at = ?3
             WHERE supporter = ?1 AND target = ?2 AND state IN ('failed', 'unknown', 'skipped')",
            params![supporter, target, now],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(Change::Changed(before))
    }

    /// Letters held back by hand: (supporter, target, reason).
    pub fn holds(&self) -> Result<Vec<(String, String, String)>> {
        if !has_held_column(&self.conn)? {
            return Ok(Vec::new()); // a ledger written before holds existed
        }
        let mut stmt = self.conn.prepare(
            "SELECT supporter, target, coalesce(reply, '') FROM letters
             WHERE held = 1 AND state = 'skipped' ORDER BY supporter, target",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }

    /// Every target this supporter has a ledger row for.
    pub fn targets_of(&self, supporter: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT target FROM letters WHERE supporter = ?1 ORDER BY target")?;
        let rows = stmt.query_map([supporter], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }
}

fn has_held_column(conn: &Connection) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('letters') WHERE name = 'held'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// `held` marks a letter skipped by hand (`mailer skip`), as opposed to one
/// skipped for its row's data, which every run re-evaluates.
fn add_held_column(conn: &Connection) -> Result<()> {
    if !has_held_column(conn)? {
        conn.execute_batch("ALTER TABLE letters ADD COLUMN held INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Refuses a ledger that belongs to another campaign; `false` if it names
/// none yet (a new file).
fn owned_by(conn: &Connection, path: &Path, campaign_id: &str) -> Result<bool> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'campaign_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .with_context(|| format!("ledger `{}` is not a mailer ledger", path.display()))?;
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
    })
}

/// Names a full disk plainly.
fn disk_error(e: rusqlite::Error, path: &Path) -> anyhow::Error {
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A 4 KiB write is what any ledger commit needs at least.
    let probe = dir.join(".mailer-space-probe");
    let full = std::fs::write(&probe, [0u8; 4096]).is_err_and(|e| e.raw_os_error() == Some(28)); // ENOSPC
    let _ = std::fs::remove_file(&probe);
    full
}

#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<()> {
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
fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create ledger `{}`", path.display()))?;
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().recursive(true).create(dir)?;
    Ok(())
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> Result<()> {
    OpenOptions::new().create(true).append(true).open(path)?;
    Ok(())
}

/// The ledger as the send workers share it. Claims go through a group
/// commit: a worker that finds the ledger busy queues its claim, and the
/// next committer writes every queued claim in one transaction, one fsync.
pub struct SharedLedger {
    ledger: Mutex<Ledger>,
    queue: Mutex<ClaimQueue>,
}

#[derive(Default)]
struct ClaimQueue {
    next: u64,
    pending: Vec<(u64, OwnedKey)>,
    done: HashMap<u64, Result<(), String>>,
}

struct OwnedKey {
    supporter: String,
    target: String,
    line: u64,
    message_id: String,
}

impl SharedLedger {
    /// Wraps an open ledger.
    #[must_use]
    pub fn new(ledger: Ledger) -> SharedLedger {
        SharedLedger {
            ledger: Mutex::new(ledger),
            queue: Mutex::default(),
        }
    }

    /// Exclusive use of the ledger (reads, outcomes).
    pub fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, ClaimQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Ledger::claim`], batched with whatever other workers are claiming.
    /// Returns only once this letter's `sending` is on disk.
    pub fn claim(&self, key: &Key<'_>, now: i64) -> Result<()> {
        let ticket = {
            let mut q = self.queue();
            let ticket = q.next;
            q.next += 1;
            let owned = OwnedKey {
                supporter: key.supporter.to_string(),
                target: key.target.to_string(),
                line: key.line,
                message_id: key.message_id.to_string(),
            };
            q.pending.push((ticket, owned));
            ticket
        };
        let ledger = self.lock();
        let batch = {
            let mut q = self.queue();
            if let Some(result) = q.done.remove(&ticket) {
                return result.map_err(|e| anyhow::anyhow!(e));
            }
            std::mem::take(&mut q.pending)
        };
        let keys: Vec<Key<'_>> = batch
            .iter()
            .map(|(_, k)| Key {
                supporter: &k.supporter,
                target: &k.target,
                line: k.line,
                message_id: &k.message_id,
            })
            .collect();
        let outcome = ledger.claim_many(&keys, now);
        let mut q = self.queue();
        let mut mine = Ok(());
        match outcome {
            Ok(results) => {
                for ((t, _), r) in batch.iter().zip(results) {
                    if *t == ticket {
                        mine = r;
                    } else {
                        q.done.insert(*t, r);
                    }
                }
                mine.map_err(|e| anyhow::anyhow!(e))
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for (t, _) in &batch {
                    if *t != ticket {
                        q.done.insert(*t, Err(msg.clone()));
                    }
                }
                Err(e)
            }
        }
    }

    /// The ledger back, once the workers are done.
    #[must_use]
    pub fn into_inner(self) -> Ledger {
        self.ledger.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The run lock: one `send` per ledger at a time. Released on drop (and by
/// the OS if the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock at once, or fails with exit 75.
    pub fn acquire(ledger_path: &Path) -> Result<RunLock> {
        let mut lock_path = ledger_path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        private_file(&lock_path)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open lock `{}`", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Failure::error(
                Exit::TryLater,
                format!(
                    "another run holds the ledger `{}`: try again when it has finished",
                    ledger_path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock `{}`", lock_path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join(".mailer/c.sqlite3"), "c").unwrap();
        (dir, l)
    }

    #[test]
    fn transitions_and_recovery() {
        let (_d, l) = ledger();
        let a = Key {
            supporter: "a@x.org",
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
        };
        l.claim(&a, 100).unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sending
        );
        l.record(&a, &Outcome::Sent("250 ok".into()), true, 101).unwrap();
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts, r.sent_at, r.reply.as_deref()),
            (State::Sent, 1, Some(101), Some("250 ok"))
        );
        // A sent letter can never be claimed again.
        assert!(l.claim(&a, 102).is_err());
        l.record(
            &a,
            &Outcome::Failed {
                reply: "550".into(),
                handed_over: false,
            },
            false,
            102,
        )
        .unwrap();
        // Nor skipped.
        l.skip("a@x.org", "ceo@corp.example", 2, "bad", 103).unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sent
        );

        let b = Key {
            supporter: "b@x.org",
            target: "ceo@corp.example",
            line: 3,
            message_id: "<id2@o>",
        };
        l.record(
            &b,
            &Outcome::Deferred {
                reply: "451".into(),
                next_attempt_at: 160,
                handed_over: false,
            },
            false,
            100,
        )
        .unwrap();
        l.claim(&b, 100).unwrap();
        assert_eq!(l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().attempts, 2);
        assert_eq!(l.recover(200).unwrap(), 1);
        assert_eq!(
            l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Unknown
        );
        // a was delivered; b may have been (recovered): both use the quota.
        assert_eq!(l.handed_over_since(0).unwrap(), 2);
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

    #[test]
    fn group_commit_claims_every_letter_once() {
        let (_d, l) = ledger();
        let shared = std::sync::Arc::new(SharedLedger::new(l));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let shared = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || {
                    let s = format!("s{i}@x.org");
                    let key = Key {
                        supporter: &s,
                        target: "t@x.org",
                        line: i,
                        message_id: "<m@o>",
                    };
                    shared.claim(&key, 1).unwrap();
                    shared
                        .lock()
                        .record(&key, &Outcome::Sent("250".into()), true, 2)
                        .unwrap();
                    // A second claim of a sent letter is refused.
                    assert!(shared.claim(&key, 3).is_err());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let l = std::sync::Arc::try_unwrap(shared).ok().unwrap().into_inner();
        assert_eq!(l.counts().unwrap(), vec![(State::Sent, 8)]);
    }

    #[test]
    fn hold_and_release_never_touch_a_sent_letter() {
        let (_d, l) = ledger();
        let sent = Key {
            supporter: "a@x.org",
            target: "t@x.org",
            line: 2,
            message_id: "<a@o>",
        };
        l.claim(&sent, 1).unwrap();
        l.record(&sent, &Outcome::Sent("250 ok".into()), true, 2).unwrap();
        assert_eq!(
            l.hold("a@x.org", "t@x.org", Some(2), "asked", 3).unwrap(),
            Change::Untouched(State::Sent)
        );
        assert_eq!(
            l.release("a@x.org", "t@x.org", 3).unwrap(),
            Change::Untouched(State::Sent)
        );
        let r = l.get("a@x.org", "t@x.org").unwrap().unwrap();
        assert_eq!((r.state, r.reply.as_deref()), (State::Sent, Some("250 ok")));

        // A letter never tried is held with its reason, and listed as held.
        assert_eq!(
            l.hold("b@x.org", "t@x.org", Some(3), "asked to wait", 4).unwrap(),
            Change::Changed(None)
        );
        let r = l.get("b@x.org", "t@x.org").unwrap().unwrap();
        assert_eq!(
            (r.state, r.reply.as_deref()),
            (State::Skipped, Some("asked to wait"))
        );
        assert_eq!(
            l.holds().unwrap(),
            vec![("b@x.org".into(), "t@x.org".into(), "asked to wait".into())]
        );
        // A skip for invalid data is not a hold.
        l.skip("c@x.org", "t@x.org", 4, "bad email", 4).unwrap();
        assert_eq!(l.holds().unwrap().len(), 1);
        // Release puts it back in the queue.
        assert_eq!(
            l.release("b@x.org", "t@x.org", 5).unwrap(),
            Change::Changed(Some(State::Skipped))
        );
        assert_eq!(
            l.get("b@x.org", "t@x.org").unwrap().unwrap().state,
            State::Pending
        );
        assert!(l.holds().unwrap().is_empty());
        // A pending letter is already queued.
        assert_eq!(
            l.release("b@x.org", "t@x.org", 6).unwrap(),
            Change::Untouched(State::Pending)
        );
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let first = RunLock::acquire(&path).unwrap();
        let err = RunLock::acquire(&path).unwrap_err();
        assert_eq!(crate::exit::exit_for(&err), Exit::TryLater);
        drop(first);
        RunLock::acquire(&path).unwrap();
    }
}
