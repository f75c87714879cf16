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
use crate::letter::Variant;
use crate::smtp::Attempt;

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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS letters (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending','sending','sent','deferred','failed','unknown','skipped','bounced')),
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
    handed_over INTEGER NOT NULL,
    relay TEXT
);
-- No index on attempts: it is read once per run (the daily quota), and an
-- index would cost a page write on every letter.
CREATE TABLE IF NOT EXISTS bounces (
    source TEXT NOT NULL,
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    diagnostic TEXT NOT NULL,
    reporter TEXT NOT NULL,
    permanent INTEGER NOT NULL,
    PRIMARY KEY (source, supporter, target)
) WITHOUT ROWID;
-- Cc/Bcc copies the server refused while it took the letter (which stays
-- `sent`). Added after the first release: a ledger without it reads as none.
CREATE TABLE IF NOT EXISTS refused_copies (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    recipient TEXT NOT NULL,
    reply TEXT NOT NULL,
    at INTEGER NOT NULL,
    UNIQUE (supporter, target, recipient)
);
";

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

    /// Turns `sending` rows left by a run that died into `unknown`, and
    /// records each as a handed-over attempt (it counts against the daily
    /// limit: the server may well have it), with this run's relay account
    /// (set [`Ledger::set_relay`] first): most likely the one it went to.
    pub(crate) fn recover(&self, now: i64) -> Result<usize> {
        let reply = "the run ended after handing the letter over, before the server replied";
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO attempts (supporter, target, at, outcome, reply, handed_over, relay)
             SELECT supporter, target, updated_at, 'unknown', ?1, 1, ?2 FROM letters WHERE state = 'sending'",
            params![reply, self.relay],
        )?;
        let n = tx.execute(
            "UPDATE letters SET state = 'unknown', updated_at = ?1, reply = ?2 WHERE state = 'sending'",
            params![now, reply],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(n)
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

    /// One letter's [`Ledger::claim_many`] (runs claim through [`SharedLedger`]).
    #[cfg(test)]
    fn claim(&self, letter: &Key<'_>, now: i64) -> Result<()> {
        self.claim_many(&[*letter], &[], now)?
            .remove(0)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Claims several letters in one transaction with one fsync (group
    /// commit: workers whose claims arrive together share the disk flush).
    /// The outer `Err` is the commit failing (nothing claimed); an inner
    /// `Err` is a letter already recorded as sent, which must not go again,
    /// or one that is `sending`: another run holds it (the run lock makes
    /// that impossible; this refusal is the ledger's own second line).
    ///
    /// Refuses every letter (outer `Err`) once the ledger's path no longer
    /// names the file this run locked ([`Ledger::still_ours`]).
    ///
    /// `outcomes` are earlier letters' outcomes ([`Ledger::record`]), written
    /// first in the same transaction: a letter's `sent` and the next
    /// letter's `sending` share one commit when their replies came together.
    pub(crate) fn claim_many(
        &self,
        letters: &[Key<'_>],
        outcomes: &[&Outcome],
        now: i64,
    ) -> Result<Vec<Result<(), String>>> {
        let mut outcomes = outcomes;
        if !outcomes.is_empty()
            && self.lost.get().is_none()
            && self.identity.and_then(|i| self.gone(i)).is_some()
        {
            // The ledger went: these outcomes are written first, so the
            // copy `still_ours` saves has them.
            for o in outcomes {
                o.record(self)?;
            }
            outcomes = &[];
        }
        self.still_ours()?;
        self.synchronous("FULL")?;
        let tx = self.conn.unchecked_transaction()?;
        let mut results = Vec::with_capacity(letters.len());
        for o in outcomes {
            self.write_outcome(&o.key.key(), &o.attempt, o.next, o.claimed, o.now)
                .map_err(|e| disk_error(e, &self.path))?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO letters (supporter, target, state, attempts, line, message_id, updated_at,
                    fingerprint, letter_file, language, subject_variant, letter_version)
                 VALUES (?1, ?2, 'sending', 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (supporter, target) DO UPDATE SET
                    state = 'sending', attempts = attempts + 1, line = ?3, message_id = ?4, updated_at = ?5,
                    fingerprint = ?6, letter_file = ?7, language = ?8, subject_variant = ?9,
                    letter_version = ?10
                 WHERE state NOT IN ('sent', 'bounced', 'sending')",
            )?;
            let mut held =
                tx.prepare_cached("SELECT state FROM letters WHERE supporter = ?1 AND target = ?2")?;
            for k in letters {
                let v = k.variant;
                let known = !v.version.is_empty();
                let changed = stmt
                    .execute(params![
                        k.supporter,
                        k.target,
                        k.line as i64,
                        k.message_id,
                        now,
                        Some(v.fingerprint.as_str()).filter(|f| !f.is_empty()),
                        known.then_some(&*v.letter_file),
                        known.then_some(&*v.language),
                        known.then_some(v.subject),
                        known.then_some(&*v.version),
                    ])
                    .map_err(|e| disk_error(e, &self.path))?;
                results.push(if changed == 1 {
                    Ok(())
                } else if held.query_row([k.supporter, k.target], |r| r.get::<_, String>(0))? == "sending" {
                    Err(format!(
                        "letter {} → {} is being sent by another run (its ledger row is `sending`); \
                         not sending it",
                        k.supporter, k.target
                    ))
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

    /// Records how an attempt ended (with the Cc/Bcc copies the server
    /// refused while it took the letter, in the same transaction); a
    /// `deferred` letter waits until unix second `next_attempt_at`.
    /// `claimed`: [`Ledger::claim`] already counted this attempt. Committed
    /// without an fsync: the next claim's fsync covers it, and if power fails
    /// first the letter reads back as `sending`, which becomes `unknown`,
    /// never resent silently.
    pub(crate) fn record(
        &self,
        letter: &Key<'_>,
        attempt: &Attempt,
        next_attempt_at: i64,
        claimed: bool,
        now: i64,
    ) -> Result<()> {
        // Every failure names the ledger (a busy or full disk included).
        let write = || -> rusqlite::Result<()> {
            self.synchronous("NORMAL")?;
            let tx = self.conn.unchecked_transaction()?;
            self.write_outcome(letter, attempt, next_attempt_at, claimed, now)?;
            tx.commit()
        };
        write().map_err(|e| disk_error(e, &self.path))
    }

    /// [`Ledger::record`]'s writes, inside the caller's transaction.
    fn write_outcome(
        &self,
        letter: &Key<'_>,
        attempt: &Attempt,
        next_attempt_at: i64,
        claimed: bool,
        now: i64,
    ) -> rusqlite::Result<()> {
        let (state, next, sent_at) = match attempt {
            Attempt::Sent { .. } => (State::Sent, None, Some(now)),
            Attempt::Deferred { .. } => (State::Deferred, Some(next_attempt_at), None),
            Attempt::Failed { .. } => (State::Failed, None, None),
            Attempt::Unknown(_) => (State::Unknown, None, None),
        };
        let reply = attempt.text();
        let handed_over = attempt.handed_over();
        self.conn
            .prepare_cached(
                "INSERT INTO letters (supporter, target, state, attempts, line, message_id, reply, next_attempt_at,
                    sent_at, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (supporter, target) DO UPDATE SET state = ?3, attempts = attempts + ?10, line = ?4,
                    message_id = ?5, reply = ?6, next_attempt_at = ?7, sent_at = coalesce(?8, sent_at),
                    updated_at = ?9
                 WHERE state NOT IN ('sent', 'bounced')",
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
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (supporter, target, at, outcome, reply, handed_over, relay)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                letter.supporter,
                letter.target,
                now,
                state.as_str(),
                reply,
                handed_over,
                self.relay
            ])?;
        if let Attempt::Sent { refused, .. } = attempt {
            for c in refused {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO refused_copies (supporter, target, recipient, reply, at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        letter.supporter,
                        letter.target,
                        c.recipient,
                        c.reply.to_string(),
                        now
                    ])?;
            }
        }
        Ok(())
    }

    /// Sets `synchronous` (`FULL`: this commit is fsynced; `NORMAL`: not),
    /// skipping the statement when it is already so.
    fn synchronous(&self, mode: &'static str) -> rusqlite::Result<()> {
        if self.sync.get() != Some(mode) {
            self.conn.pragma_update(None, "synchronous", mode)?;
            self.sync.set(Some(mode));
        }
        Ok(())
    }

    /// The Cc/Bcc copies of a letter the server refused, as `(recipient,
    /// reply)` in the order they were sent. None for a ledger written before
    /// copies were kept (opened read-only, it has no such table).
    pub(crate) fn refused_copies(&self, supporter: &str, target: &str) -> Result<Vec<(String, String)>> {
        let read = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT recipient, reply FROM refused_copies WHERE supporter = ?1 AND target = ?2
                 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([supporter, target], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        match read() {
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.starts_with("no such table") => {
                Ok(Vec::new())
            }
            other => other.map_err(Into::into),
        }
    }

    /// Puts a `failed` letter back to `deferred`, due again at unix second
    /// `next_attempt_at` (a run-wide policy stop was not the letter's fault).
    pub(crate) fn requeue(
        &self,
        supporter: &str,
        target: &str,
        next_attempt_at: i64,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE letters SET state = 'deferred', next_attempt_at = ?3, updated_at = ?4
             WHERE supporter = ?1 AND target = ?2 AND state = 'failed'",
            params![supporter, target, next_attempt_at, now],
        )?;
        Ok(())
    }

    /// Records an invalid row's letter as `skipped` (never over a sent letter).
    pub(crate) fn skip(
        &self,
        supporter: &str,
        target: &str,
        line: u64,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.synchronous("NORMAL")?;
        self.conn
            .prepare_cached(
                "INSERT INTO letters (supporter, target, state, line, reply, updated_at)
                 VALUES (?1, ?2, 'skipped', ?3, ?4, ?5)
                 ON CONFLICT (supporter, target) DO UPDATE SET state = 'skipped', line = ?3, reply = ?4,
                    updated_at = ?5
                 WHERE state IN ('pending', 'skipped', 'deferred') AND held = 0",
            )?
            .execute(params![supporter, target, line as i64, reason, now])
            .map_err(|e| disk_error(e, &self.path))?;
        Ok(())
    }

    /// Records `account` (`host:port user`, never a password) with every
    /// attempt this run makes from now on.
    pub(crate) fn set_relay(&mut self, account: String) {
        self.relay = Some(account);
    }

    /// When each letter handed to the server since `since` (unix seconds)
    /// was last handed over, newest first: the daily quota's use (a letter
    /// retried after a refusal counts once). With `account`, only what went
    /// through that relay account; see [`hand_overs`].
    pub(crate) fn hand_overs(&self, since: i64, account: Option<&str>) -> Result<Vec<i64>> {
        hand_overs(&self.conn, since, account)
    }

    /// What one target already received, for `[schedule]`: its letters
    /// handed over (each once), the first hand-over, and every hand-over in
    /// the hour up to `now`.
    pub(crate) fn sent_to(&self, target: &str, now: i64) -> Result<crate::schedule::Sent> {
        let (letters, first_at): (i64, Option<i64>) = self.conn.query_row(
            "SELECT count(DISTINCT supporter), min(at) FROM attempts
             WHERE handed_over = 1 AND target = ?1",
            [target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT at FROM attempts WHERE handed_over = 1 AND target = ?1 AND at > ?2 AND at <= ?3
             ORDER BY at",
        )?;
        let last_hour = stmt
            .query_map(params![target, now - crate::schedule::HOUR, now], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(crate::schedule::Sent {
            letters: letters as u64,
            first_at,
            last_hour,
        })
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

    /// Writes everything to the main database file (end of a run). A
    /// ledger deleted after the run's last claim is saved here.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.still_ours()?;
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }

    /// Checks, with one `stat`, that the ledger's path still names the file
    /// this run locked. If it was deleted (`rm`, with its `-wal` left) or
    /// replaced, the run's lock protects nothing: another run can start on
    /// the path and send the same letters, and when this run ends its record
    /// vanishes with the deleted file. So this run stops handing letters
    /// over, and first saves what it recorded (`PATH.rescued-PID`, a
    /// complete copy, `sending` rows included: they become `unknown`, never
    /// resent by themselves), which a later run refuses to ignore.
    pub(crate) fn still_ours(&self) -> Result<()> {
        let Some(identity) = self.identity else {
            return Ok(());
        };
        if let Some(why) = self.lost.get() {
            return Err(anyhow::anyhow!("{why}"));
        }
        let Some(what) = self.gone(identity) else {
            return Ok(());
        };
        let shown = self.path.display();
        let stop = format!(
            "the ledger `{shown}` was {what} while this run was using it: stopped before handing \
             over another letter, so that none goes twice"
        );
        let why = match self.rescue() {
            Ok(saved) => format!(
                "{stop}; what this run recorded is saved in `{saved}`\n\nhint: when this run has \
                 ended, put it back (`mv {saved} {shown}`{}), then run `mailer send` again",
                if what == "deleted" {
                    ""
                } else {
                    ", after keeping whatever replaced it"
                },
                saved = saved.display()
            ),
            Err(e) => format!(
                "{stop}; saving what it recorded failed ({e:#}), so the letters it sent are known \
                 only from this output\n\nhint: restore the ledger from a backup before the next run"
            ),
        };
        let _ = self.lost.set(why.clone());
        Err(anyhow::anyhow!("{why}"))
    }

    /// How the ledger's path stopped naming the locked file, if it did.
    fn gone(&self, identity: (u64, u64)) -> Option<&'static str> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if identity_of(&meta) == identity => None,
            Ok(_) => Some("replaced by another file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("deleted"),
            // Cannot tell (e.g. a permission change): keep going; the lock
            // still holds for any run that can open the file.
            Err(_) => None,
        }
    }

    /// Writes a complete copy of the open (lost) ledger beside its path.
    fn rescue(&self) -> Result<PathBuf> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".rescued-{}", std::process::id()));
        let to = PathBuf::from(name);
        drop(new_private_file(&to).map_err(|e| write_error(&e, &to))?);
        let target = to
            .to_str()
            .with_context(|| format!("`{}` is not valid UTF-8", to.display()))?;
        self.conn
            .execute("VACUUM INTO ?1", [target])
            .map_err(|e| disk_error(e, &to))?;
        File::open(&to)?.sync_all()?;
        sync_dir(&to)?;
        Ok(to)
    }
}

/// A bounce the ledger records (`mailer bounces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bounce {
    /// Identifies the notification (its Message-ID, or a digest of it):
    /// reading the same one again changes nothing.
    pub(crate) source: String,
    /// Normalized supporter email.
    pub(crate) supporter: String,
    /// Normalized target email.
    pub(crate) target: String,
    /// When the failure happened, as the notification says (unix seconds).
    pub(crate) at: i64,
    /// RFC 3464 `Action` (`failed`, `delayed`).
    pub(crate) action: String,
    /// RFC 3464 `Status`, e.g. `5.1.1`.
    pub(crate) status: String,
    /// The remote server's words (`Diagnostic-Code`), single line.
    pub(crate) diagnostic: String,
    /// The server that reported it (`Remote-MTA`, else `Reporting-MTA`).
    pub(crate) reporter: String,
    /// A final failure: the letter becomes `bounced`.
    pub(crate) permanent: bool,
}

/// What recording a bounce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BounceEffect {
    /// The letter is now `bounced`.
    Bounced,
    /// Kept as a notice (delayed, or the letter was not `sent`); no state change.
    Noted,
    /// This notification was recorded before.
    Known,
}

impl Ledger {
    /// The per-ledger VERP secret, created on first use (32 random bytes).
    pub(crate) fn verp_secret(&self) -> Result<Vec<u8>> {
        if let Some(secret) = self.stored_verp_secret()? {
            return Ok(secret);
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
        let hex = secret.iter().fold(String::new(), |mut s, b| {
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
            s
        });
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('verp_secret', ?1)",
            [hex],
        )?;
        self.stored_verp_secret()?
            .context("the VERP secret was not stored")
    }

    /// The VERP secret, if a run created one (read-only ledgers).
    pub(crate) fn stored_verp_secret(&self) -> Result<Option<Vec<u8>>> {
        let hex: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'verp_secret'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(hex.map(|h| {
            (0..h.len() / 2)
                .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                .collect()
        }))
    }

    /// Records a delivery status notification for a letter, durably. A
    /// permanent one turns a `sent` (or `unknown`) letter `bounced`.
    pub(crate) fn record_bounce(&self, b: &Bounce, now: i64) -> Result<BounceEffect> {
        self.synchronous("FULL")?;
        let tx = self.conn.unchecked_transaction()?;
        let new = tx.execute(
            "INSERT OR IGNORE INTO bounces (source, supporter, target, at, seen_at, action, status, diagnostic,
                reporter, permanent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                b.source,
                b.supporter,
                b.target,
                b.at,
                now,
                b.action,
                b.status,
                b.diagnostic,
                b.reporter,
                b.permanent
            ],
        )?;
        let changed = if new == 1 && b.permanent {
            tx.execute(
                "UPDATE letters SET state = 'bounced', updated_at = ?3
                 WHERE supporter = ?1 AND target = ?2 AND state IN ('sent', 'unknown')",
                params![b.supporter, b.target, now],
            )?
        } else {
            0
        };
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(match (new, changed) {
            (0, _) => BounceEffect::Known,
            (_, 0) => BounceEffect::Noted,
            _ => BounceEffect::Bounced,
        })
    }

    /// Every recorded notification, oldest first.
    pub(crate) fn bounces(&self) -> Result<Vec<Bounce>> {
        let mut stmt = self.conn.prepare(
            "SELECT source, supporter, target, at, action, status, diagnostic, reporter, permanent
             FROM bounces ORDER BY at, supporter, target",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Bounce {
                source: r.get(0)?,
                supporter: r.get(1)?,
                target: r.get(2)?,
                at: r.get(3)?,
                action: r.get(4)?,
                status: r.get(5)?,
                diagnostic: r.get(6)?,
                reporter: r.get(7)?,
                permanent: r.get(8)?,
            })
        });
        match rows {
            Ok(rows) => rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into),
            // A ledger from before bounces, opened read-only: none yet.
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The columns that say which text a handed-over letter was (issue 12).
const VARIANT_COLUMNS: [(&str, &str); 5] = [
    ("fingerprint", "TEXT"),
    ("letter_file", "TEXT"),
    ("language", "TEXT"),
    ("subject_variant", "INTEGER"),
    ("letter_version", "TEXT"),
];

/// Ledgers written before variants were recorded lack their columns: add
/// them (NULL for the letters already there: their text is not known), in
/// one transaction. `ALTER TABLE … ADD COLUMN` keeps every row, index and
/// constraint, and a later rebuild (see [`allow_bounced`]) keeps the columns.
fn add_variant_columns(conn: &Connection) -> Result<()> {
    let have = letter_columns(conn)?;
    let missing: Vec<_> = VARIANT_COLUMNS
        .iter()
        .filter(|(name, _)| !have.iter().any(|h| h == name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    for (name, kind) in missing {
        tx.execute_batch(&format!("ALTER TABLE letters ADD COLUMN {name} {kind}"))?;
    }
    tx.commit()?;
    Ok(())
}

/// The `letters` table's column names.
fn letter_columns(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('letters')")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(Into::into)
}

/// Letters sent from one text: what [`Ledger::sent_versions`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentVersion {
    /// The letter file, as the config named it then.
    pub(crate) letter_file: String,
    /// Its language (empty: the file itself).
    pub(crate) language: String,
    /// The subject variant (1-based).
    pub(crate) subject: u32,
    /// The text version (see [`Variant::version`]).
    pub(crate) version: String,
    /// How many letters went with it.
    pub(crate) letters: u64,
}

impl Ledger {
    /// Whether this ledger records variants (a read-only ledger from
    /// before them does not, and reads as if none were recorded).
    fn has_variants(&self) -> Result<bool> {
        Ok(letter_columns(&self.conn)?.iter().any(|c| c == "letter_version"))
    }

    /// Which text a letter was handed over with, if recorded.
    pub(crate) fn variant(&self, supporter: &str, target: &str) -> Result<Option<Variant>> {
        let stmt = self.conn.prepare_cached(
            "SELECT fingerprint, letter_file, language, subject_variant, letter_version
             FROM letters WHERE supporter = ?1 AND target = ?2 AND letter_version IS NOT NULL",
        );
        let mut stmt = match stmt {
            Ok(stmt) => stmt,
            // A ledger from before variants, opened read-only: none recorded.
            Err(e) if e.to_string().contains("no such column") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        stmt.query_row([supporter, target], |r| {
            Ok(Variant {
                fingerprint: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                letter_file: r.get::<_, Option<String>>(1)?.unwrap_or_default().into(),
                language: r.get::<_, Option<String>>(2)?.unwrap_or_default().into(),
                subject: r.get::<_, Option<u32>>(3)?.unwrap_or_default(),
                version: r.get::<_, String>(4)?.into(),
            })
        })
        .optional()
        .map_err(Into::into)
    }

    /// Sent (and bounced) letters per target.
    pub(crate) fn sent_per_target(&self) -> Result<Vec<(String, u64)>> {
        sent_per_target(&self.conn)
    }

    /// Sent (and bounced) letters counted by the text they went with;
    /// letters sent before texts were recorded are left out.
    pub(crate) fn sent_versions(&self) -> Result<Vec<SentVersion>> {
        if !self.has_variants()? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT coalesce(letter_file, ''), coalesce(language, ''), coalesce(subject_variant, 0),
                letter_version, count(*)
             FROM letters WHERE state IN ('sent', 'bounced') AND letter_version IS NOT NULL
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SentVersion {
                letter_file: r.get(0)?,
                language: r.get(1)?,
                subject: r.get(2)?,
                version: r.get(3)?,
                letters: r.get::<_, i64>(4)? as u64,
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }
}

/// Ledgers written before `bounced` existed have a CHECK that refuses it:
/// rebuild `letters` from its own stored definition with the state added
/// (keeping every column and index it has), in one transaction.
fn allow_bounced(conn: &Connection) -> Result<()> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'letters'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains("'bounced'") {
        return Ok(());
    }
    let old = "'unknown','skipped')";
    if !sql.contains(old) {
        bail!("unexpected `letters` table definition");
    }
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'letters' AND sql IS NOT NULL",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let create =
        sql.replacen(old, "'unknown','skipped','bounced')", 1)
            .replacen("letters", "letters_upgraded", 1);
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "{create};
         INSERT INTO letters_upgraded SELECT * FROM letters;
         DROP TABLE letters;
         ALTER TABLE letters_upgraded RENAME TO letters;"
    ))?;
    for index in indexes {
        tx.execute_batch(&index)?;
    }
    tx.commit()?;
    Ok(())
}

/// The schema, and the upgrades of ledgers older versions wrote: each
/// writes only what is missing, so on a current ledger it writes nothing.
fn set_up(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    allow_bounced(conn)?;
    add_held_column(conn)?;
    add_relay_column(conn)?;
    add_variant_columns(conn)
}

/// Whether `attempts` records the relay account (ledgers written before
/// it do not; opened read-only, they are not upgraded).
fn has_relay_column(conn: &Connection) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('attempts') WHERE name = 'relay'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Ledgers written before the relay account was recorded: add the column
/// (NULL for the attempts already there: their account is not known).
fn add_relay_column(conn: &Connection) -> Result<()> {
    if !has_relay_column(conn)? {
        conn.execute_batch("ALTER TABLE attempts ADD COLUMN relay TEXT")?;
    }
    Ok(())
}

/// [`Ledger::hand_overs`] on any ledger's connection. With `account`:
/// the letters handed to that relay account, and those recorded before
/// accounts were (NULL) unless the ledger has recorded only other
/// accounts since: over-counting is the safe side of a relay's limit. A
/// ledger that records no account at all counts whole.
fn hand_overs(conn: &Connection, since: i64, account: Option<&str>) -> Result<Vec<i64>> {
    let filter = if account.is_some() && has_relay_column(conn)? {
        "AND (relay = ?2 OR (relay IS NULL AND NOT EXISTS
            (SELECT 1 FROM attempts WHERE relay IS NOT NULL AND relay <> ?2)))"
    } else {
        // Every letter (`?2` is bound either way, and always `IS` itself).
        "AND ?2 IS ?2"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT max(at) AS last FROM attempts WHERE handed_over = 1 AND at >= ?1 {filter}
         GROUP BY supporter, target ORDER BY last DESC"
    ))?;
    let rows = stmt.query_map(params![since, account], |r| r.get(0))?;
    rows.collect::<rusqlite::Result<Vec<i64>>>().map_err(Into::into)
}

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

/// Writes a new, complete ledger file at `path`: built under a temporary
/// name, then linked into place only if `path` is still free. So mailer
/// never leaves a zero-length ledger behind, and a zero-length one is never
/// mistaken for a fresh start (it may be a truncated copy).
fn create(path: &Path, campaign_id: &str) -> Result<()> {
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
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What [`Ledger::hold`] or [`Ledger::release`] did to one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Changed; the state it had before (`None`: no row yet, i.e. pending).
    Changed(Option<State>),
    /// Left as it is, in this state.
    Untouched(State),
}

impl Ledger {
    /// Holds a letter back by hand: `skipped` with `reason`, flagged so that
    /// no run sends it (nor re-evaluates it) until [`Ledger::release`].
    /// Never touches a letter that is `sent` or in flight (`sending`).
    pub(crate) fn hold(
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
    pub(crate) fn release(&self, supporter: &str, target: &str, now: i64) -> Result<Change> {
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
    pub(crate) fn holds(&self) -> Result<Vec<(String, String, String)>> {
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
    pub(crate) fn targets_of(&self, supporter: &str) -> Result<Vec<String>> {
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

/// Takes the run lock: an exclusive `flock` on the ledger file itself.
///
/// NOTE: the lock is on the database's own inode, not on a side file that
/// anyone could delete (a deleted lock file let a second run in beside the
/// first). `File::try_lock` is `flock(2)`; `SQLite` locks with POSIX `fcntl`
/// locks. On Linux and the BSDs the two kinds are independent, so this lock
/// never blocks `SQLite` and `status` keeps reading during a run. The trap
/// is the other POSIX rule: closing *any* descriptor of a file drops every
/// `fcntl` lock the process holds on it, including `SQLite`'s (its own
/// descriptors are pooled to avoid this; ours is not). So this descriptor
/// is opened before the run's connection and closed after it (`Ledger`
/// drops `conn` first), and `open_existing` never opens the file itself.
/// On NFS, Linux emulates `flock` with `fcntl`; `SQLite` is not safe there
/// anyway.
fn run_lock(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| write_error(&e, path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::error(
            Exit::TryLater,
            format!(
                "another run holds the ledger `{}`: try again when it has finished",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock ledger `{}`", path.display()))
        }
    }
}

/// A file's (device, inode).
fn identity_of(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
}

/// With no ledger at `path`, refuses to start afresh when what is beside
/// it says letters were recorded: its `-wal` or `-shm` journal (a run may
/// hold the deleted ledger, or a copy missed the main file), or a copy a
/// run saved when its ledger was deleted under it.
///
/// NOTE: exit 1, not 75: if a run does hold a deleted ledger it stops at
/// its next letter and saves its record, and then this refusal names that
/// copy; either way a person must put a ledger back. "Try later" would let
/// cron retry until the journal is gone and start afresh, resending.
fn refuse_leftovers(path: &Path) -> Result<()> {
    let shown = path.display();
    let journals: Vec<PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut journal = path.as_os_str().to_owned();
            journal.push(suffix);
            PathBuf::from(journal)
        })
        .filter(|j| std::fs::symlink_metadata(j).is_ok())
        .collect();
    if let Some(saved) = rescued_copy(path) {
        // NOTE: the deleted ledger's journal stays behind (SQLite neither
        // checkpoints nor deletes the WAL of an unlinked database); its
        // frames belong to the deleted file and would corrupt the copy.
        let rm = if journals.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = journals.iter().map(|j| j.display().to_string()).collect();
            format!("rm {} && ", names.join(" "))
        };
        bail!(
            "the ledger `{shown}` is missing, but `{}` holds the record a run saved when the \
             ledger was deleted under it\n\nhint: once that run has ended, put it back \
             (`{rm}mv {} {shown}`), then run again",
            saved.display(),
            saved.display()
        );
    }
    if let Some(journal) = journals.first() {
        bail!(
            "the ledger `{shown}` is missing but its journal `{}` is there: another run may hold \
             a deleted ledger, or a copy was incomplete\n\nhint: restore the ledger from a \
             backup; if a run is still going, wait for it to end (it saves its record as \
             `{shown}.rescued-PID`). Do not delete the journal to get past this: letters \
             would be sent twice",
            journal.display()
        );
    }
    Ok(())
}

/// A copy [`Ledger::still_ours`] saved beside `path`, if any.
fn rescued_copy(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = path.file_name()?.to_owned();
    prefix.push(".rescued-");
    let prefix = prefix.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| path.with_file_name(e.file_name()))
}

/// Refuses a ledger path that is a folder, or an empty file: an empty
/// ledger is a lost record of sent letters, never a fresh start.
fn sound_file(path: &Path) -> Result<()> {
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

/// Names why a ledger cannot be opened to write, read-only file systems first.
fn write_error(e: &std::io::Error, path: &Path) -> anyhow::Error {
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
fn read_error(e: rusqlite::Error, path: &Path) -> anyhow::Error {
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
fn cannot_open(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|e| e.downcast_ref::<rusqlite::Error>())
        .any(|e| e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen))
}

/// Reads a ledger whose folder is read-only. A WAL database normally needs
/// its `-shm` file, which cannot be created there; with no `-wal` file
/// every committed letter is in the main file, so it is opened `immutable`
/// (no locks, no `-shm`). No `send` can be running on it: a running one
/// always has a `-wal` file. With a `-wal` file, say what is wrong.
fn read_only_folder(path: &Path, campaign_id: &str) -> Result<Connection> {
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

/// Refuses a ledger that belongs to another campaign; `false` if it names
/// none yet (a new file).
/// Sent (and bounced) letters per target in `conn`'s ledger.
fn sent_per_target(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT target, count(*) FROM letters WHERE state IN ('sent', 'bounced')
         GROUP BY target ORDER BY target",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
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
fn new_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().recursive(true).create(dir)?;
    Ok(())
}

#[cfg(not(unix))]
fn new_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// The ledger as the send workers share it. Claims go through a group
/// commit: a worker that finds the ledger busy queues its claim, and the
/// next committer writes every queued claim in one transaction, one fsync.
pub(crate) struct SharedLedger {
    ledger: Mutex<Ledger>,
    queue: Mutex<ClaimQueue>,
}

#[derive(Default)]
struct ClaimQueue {
    next: u64,
    pending: Vec<(u64, OwnedKey, Option<Outcome>)>,
    done: HashMap<u64, Result<(), String>>,
}

struct OwnedKey {
    supporter: String,
    target: String,
    line: u64,
    message_id: String,
    variant: Variant,
}

impl OwnedKey {
    fn new(key: &Key<'_>) -> OwnedKey {
        OwnedKey {
            supporter: key.supporter.to_string(),
            target: key.target.to_string(),
            line: key.line,
            message_id: key.message_id.to_string(),
            variant: key.variant.clone(),
        }
    }

    fn key(&self) -> Key<'_> {
        Key {
            supporter: &self.supporter,
            target: &self.target,
            line: self.line,
            message_id: &self.message_id,
            variant: &self.variant,
        }
    }
}

/// A letter's outcome waiting to be written with the next claim on its
/// connection ([`SharedLedger::claim`]), or alone ([`Outcome::record`]).
pub(crate) struct Outcome {
    key: OwnedKey,
    attempt: Attempt,
    next: i64,
    claimed: bool,
    now: i64,
}

impl Outcome {
    /// What [`Ledger::record`] would write now.
    pub(crate) fn new(key: &Key<'_>, attempt: &Attempt, next: i64, claimed: bool, now: i64) -> Outcome {
        Outcome {
            key: OwnedKey::new(key),
            attempt: attempt.clone(),
            next,
            claimed,
            now,
        }
    }

    /// Writes it alone (no fsync, like [`Ledger::record`]).
    pub(crate) fn record(&self, ledger: &Ledger) -> Result<()> {
        ledger.record(&self.key.key(), &self.attempt, self.next, self.claimed, self.now)
    }
}

impl SharedLedger {
    /// Wraps an open ledger.
    #[must_use]
    pub(crate) fn new(ledger: Ledger) -> SharedLedger {
        SharedLedger {
            ledger: Mutex::new(ledger),
            queue: Mutex::default(),
        }
    }

    /// Exclusive use of the ledger (reads, outcomes).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, ClaimQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Ledger::claim`], batched with whatever other workers are claiming.
    /// Returns only once this letter's `sending` is on disk. `outcome`, an
    /// earlier letter's, is written first in the same commit.
    pub(crate) fn claim(&self, key: &Key<'_>, outcome: Option<Outcome>, now: i64) -> Result<()> {
        let ticket = {
            let mut q = self.queue();
            let ticket = q.next;
            q.next += 1;
            q.pending.push((ticket, OwnedKey::new(key), outcome));
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
        let keys: Vec<Key<'_>> = batch.iter().map(|(_, k, _)| k.key()).collect();
        let outcomes: Vec<&Outcome> = batch.iter().filter_map(|(_, _, o)| o.as_ref()).collect();
        let outcome = ledger.claim_many(&keys, &outcomes, now);
        let mut q = self.queue();
        let mut mine = Ok(());
        match outcome {
            Ok(results) => {
                for ((t, _, _), r) in batch.iter().zip(results) {
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
                for (t, _, _) in &batch {
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
    pub(crate) fn into_inner(self) -> Ledger {
        self.ledger.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How the latest `mailer send` (not a dry run) ended, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastRun {
    /// Unix second it started.
    pub(crate) started: i64,
    /// Unix second it ended; `None` when no run said how it ended (a
    /// ledger from before runs were noted, or a run that was killed).
    pub(crate) finished: Option<i64>,
    /// Its exit code, when it ended.
    pub(crate) exit: Option<u8>,
    /// Its error, when it ended with one (first line).
    pub(crate) error: String,
    /// Letter attempts during the run, by outcome (`sent`, `deferred` …);
    /// empty when the run did not say how it ended.
    pub(crate) outcomes: Vec<(String, u64)>,
}

impl Ledger {
    /// Notes how a run ended (`status` shows it as "Last run").
    pub(crate) fn note_run(&self, started: i64, finished: i64, exit: u8, error: &str) -> Result<()> {
        let value = serde_json::json!({
            "started": started, "finished": finished, "exit": exit, "error": error,
        });
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_run', ?1)",
                [value.to_string()],
            )
            .map_err(|e| disk_error(e, &self.path))?;
        Ok(())
    }

    /// The latest run: the noted one, unless letters were attempted after
    /// it ended (a run that never said how it ended: the latest attempt).
    pub(crate) fn last_run(&self) -> Result<Option<LastRun>> {
        let noted: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_run'", [], |r| r.get(0))
            .optional()?;
        let noted: Option<serde_json::Value> = noted.and_then(|v| serde_json::from_str(&v).ok());
        let latest: Option<i64> = self
            .conn
            .query_row("SELECT max(at) FROM attempts", [], |r| r.get(0))?;
        let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_i64);
        let mut run = match noted {
            Some(v) if latest.is_none_or(|at| field(&v, "finished").is_some_and(|f| at <= f)) => LastRun {
                started: field(&v, "started").unwrap_or_default(),
                finished: field(&v, "finished"),
                exit: field(&v, "exit").and_then(|e| u8::try_from(e).ok()),
                error: v
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or_default()
                    .to_string(),
                outcomes: Vec::new(),
            },
            _ => match latest {
                // No run noted its end after the latest attempt: say when that was.
                Some(at) => LastRun {
                    started: at,
                    finished: None,
                    exit: None,
                    error: String::new(),
                    outcomes: Vec::new(),
                },
                None => return Ok(None),
            },
        };
        let Some(until) = run.finished else {
            return Ok(Some(run));
        };
        let mut stmt = self.conn.prepare(
            "SELECT outcome, count(*) FROM attempts WHERE at >= ?1 AND at <= ?2
             GROUP BY outcome ORDER BY count(*) DESC, outcome",
        )?;
        run.outcomes = stmt
            .query_map(params![run.started, until], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{End, RefusedCopy, Reply, classify};

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join(".mailer/c.sqlite3"), "c").unwrap();
        (dir, l)
    }

    fn reply(code: u16, text: &str) -> End {
        End::Reply(Reply {
            code,
            text: text.into(),
        })
    }

    /// A 2xx attempt with these refused copies `(recipient, code, text)`.
    fn sent(code: &str, text: &str, refused: &[(&str, u16, &str)]) -> Attempt {
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
    fn the_last_run_is_the_noted_one_unless_letters_went_after_it() {
        let (_d, l) = ledger();
        assert_eq!(l.last_run().unwrap(), None);
        let v = Variant::default();
        let key = |supporter| Key {
            supporter,
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
            variant: &v,
        };
        l.record(&key("a@x.org"), &sent("250", "ok", &[]), 0, false, 100)
            .unwrap();
        let deferred = classify(reply(451, "later"), false, Vec::new());
        l.record(&key("b@x.org"), &deferred, 500, false, 101).unwrap();
        l.note_run(99, 102, 3, "").unwrap();
        let run = l.last_run().unwrap().unwrap();
        assert_eq!((run.started, run.finished, run.exit), (99, Some(102), Some(3)));
        assert_eq!(run.outcomes, vec![("deferred".into(), 1), ("sent".into(), 1)]);
        // A run that died without a word: its latest attempt, no outcome.
        l.record(&key("c@x.org"), &sent("250", "ok", &[]), 0, false, 200)
            .unwrap();
        let run = l.last_run().unwrap().unwrap();
        assert_eq!((run.started, run.finished, run.exit), (200, None, None));
    }

    #[test]
    fn an_outcome_rides_with_the_next_claim_in_one_commit() {
        let (_d, l) = ledger();
        let v = Variant::default();
        let key = |supporter| Key {
            supporter,
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
            variant: &v,
        };
        l.claim(&key("a@x.org"), 100).unwrap();
        let sent_a = Outcome::new(
            &key("a@x.org"),
            &sent("250", "ok", &[("cc@x.org", 550, "no")]),
            0,
            true,
            101,
        );
        let before = l.conn.total_changes();
        let results = l.claim_many(&[key("b@x.org")], &[&sent_a], 101).unwrap();
        assert!(results[0].is_ok());
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!((r.state, r.attempts, r.sent_at), (State::Sent, 1, Some(101)));
        assert_eq!(l.refused_copies("a@x.org", "ceo@corp.example").unwrap().len(), 1);
        assert_eq!(
            l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sending
        );
        // a's row, its attempt, its refused copy, b's row.
        assert_eq!(l.conn.total_changes() - before, 4);
        // A claim refused (already sent) still carries the outcome before it.
        let sent_b = Outcome::new(&key("b@x.org"), &sent("250", "ok", &[]), 0, true, 102);
        let results = l.claim_many(&[key("a@x.org")], &[&sent_b], 102).unwrap();
        assert!(results[0].is_err());
        assert_eq!(
            l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sent
        );
    }

    #[test]
    fn transitions_and_recovery() {
        let (_d, l) = ledger();
        let a = Key {
            supporter: "a@x.org",
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
            variant: &Variant::default(),
        };
        l.claim(&a, 100).unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sending
        );
        l.record(&a, &sent("250", "ok", &[]), 0, true, 101).unwrap();
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts, r.sent_at, r.reply.as_deref()),
            (State::Sent, 1, Some(101), Some("250 ok"))
        );
        // A sent letter can never be claimed again.
        assert!(l.claim(&a, 102).is_err());
        l.record(&a, &classify(reply(550, "no"), false, Vec::new()), 0, false, 102)
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
            variant: &Variant::default(),
        };
        l.record(
            &b,
            &classify(reply(451, "later"), false, Vec::new()),
            160,
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
        assert_eq!(l.hand_overs(0, None).unwrap().len(), 2);
    }

    #[test]
    fn refused_copies_are_kept_with_the_sent_letter() {
        let (_d, l) = ledger();
        let a = Key {
            supporter: "a@x.org",
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
            variant: &Variant::default(),
        };
        l.claim(&a, 100).unwrap();
        let refused = vec![
            ("a@x.org".to_string(), "550 5.1.1 no".to_string()),
            ("archive@o.org".to_string(), "452 4.2.2 full".to_string()),
        ];
        l.record(
            &a,
            &sent(
                "250",
                "ok",
                &[("a@x.org", 550, "5.1.1 no"), ("archive@o.org", 452, "4.2.2 full")],
            ),
            0,
            true,
            101,
        )
        .unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sent
        );
        assert_eq!(l.refused_copies("a@x.org", "ceo@corp.example").unwrap(), refused);
        assert!(
            l.refused_copies("b@x.org", "ceo@corp.example")
                .unwrap()
                .is_empty()
        );
        // A ledger from before the table existed reads as "none refused".
        l.conn.execute_batch("DROP TABLE refused_copies").unwrap();
        assert!(
            l.refused_copies("a@x.org", "ceo@corp.example")
                .unwrap()
                .is_empty()
        );
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
                        variant: &Variant::default(),
                    };
                    shared.claim(&key, None, 1).unwrap();
                    shared
                        .lock()
                        .record(&key, &sent("250", "ok", &[]), 0, true, 2)
                        .unwrap();
                    // A second claim of a sent letter is refused.
                    assert!(shared.claim(&key, None, 3).is_err());
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
            variant: &Variant::default(),
        };
        l.claim(&sent, 1).unwrap();
        l.record(&sent, &super::tests::sent("250", "ok", &[]), 0, true, 2)
            .unwrap();
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
    fn old_ledgers_gain_the_variant_columns_and_keep_their_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // A ledger as the previous version wrote it: no variant columns,
        // no `bounced` either (both upgrades run, in order).
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&SCHEMA.replace(",'bounced'", "")).unwrap();
        old.execute_batch(
            "INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO letters (supporter, target, state, attempts, message_id, sent_at, updated_at)
             VALUES ('a@x.org', 't@x.org', 'sent', 1, '<m@o>', 5, 5);",
        )
        .unwrap();
        drop(old);
        // Read-only, before any upgrade: no variants, no error.
        let ro = Ledger::open_existing(&path, "c").unwrap().unwrap();
        assert_eq!(ro.variant("a@x.org", "t@x.org").unwrap(), None);
        assert!(ro.sent_versions().unwrap().is_empty());
        drop(ro);
        let l = Ledger::open(&path, "c").unwrap();
        let cols = letter_columns(&l.conn).unwrap();
        for (name, _) in VARIANT_COLUMNS {
            assert!(cols.iter().any(|c| c == name), "{name} missing: {cols:?}");
        }
        assert_eq!(l.get("a@x.org", "t@x.org").unwrap().unwrap().state, State::Sent);
        // The old letter's text is unknown; a new one records its own.
        assert_eq!(l.variant("a@x.org", "t@x.org").unwrap(), None);
        let v = Variant {
            letter_file: "letters/a.md".into(),
            language: "".into(),
            subject: 2,
            version: "00112233aabbccdd".into(),
            fingerprint: "ffeeddccbbaa9988".into(),
        };
        let key = Key {
            supporter: "b@x.org",
            target: "t@x.org",
            line: 3,
            message_id: "<n@o>",
            variant: &v,
        };
        l.claim(&key, 6).unwrap();
        l.record(&key, &sent("250", "", &[]), 0, true, 7).unwrap();
        assert_eq!(l.variant("b@x.org", "t@x.org").unwrap(), Some(v));
        assert_eq!(
            l.sent_versions().unwrap(),
            vec![SentVersion {
                letter_file: "letters/a.md".into(),
                language: String::new(),
                subject: 2,
                version: "00112233aabbccdd".into(),
                letters: 1,
            }]
        );
        drop(l);
        // Opening again changes nothing.
        let l = Ledger::open(&path, "c").unwrap();
        assert_eq!(letter_columns(&l.conn).unwrap().len(), cols.len());
    }

    #[test]
    fn old_ledgers_gain_the_relay_column_and_count_for_the_account_they_may_have_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // Attempts as the previous version wrote them: no relay account.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&SCHEMA.replace(",\n    relay TEXT", ""))
            .unwrap();
        assert!(!has_relay_column(&old).unwrap());
        old.execute_batch(
            "INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO attempts VALUES ('a@x.org', 't@x.org', 100, 'sent', '250', 1);
             INSERT INTO attempts VALUES ('b@x.org', 't@x.org', 110, 'failed', '550', 1);
             INSERT INTO attempts VALUES ('c@x.org', 't@x.org', 120, 'deferred', '451', 0);
             INSERT INTO attempts VALUES ('z@x.org', 't@x.org', 10, 'sent', '250', 1);",
        )
        .unwrap();
        drop(old);
        // Read-only and not upgraded: every letter counts, for any account.
        assert_eq!(
            hand_overs_elsewhere(&path, 50, "h:587 u").unwrap(),
            Some(("c".to_string(), vec![110, 100]))
        );
        // Opened to write: the column is added, the old rows keep NULL and
        // still count (this ledger never named another account).
        let mut l = Ledger::open(&path, "c").unwrap();
        assert!(has_relay_column(&l.conn).unwrap());
        assert_eq!(l.hand_overs(50, Some("h:587 u")).unwrap(), vec![110, 100]);
        l.set_relay("h:587 v".into());
        let v = Variant::default();
        let key = Key {
            supporter: "d@x.org",
            target: "t@x.org",
            line: 5,
            message_id: "<d@o>",
            variant: &v,
        };
        l.claim(&key, 130).unwrap();
        l.record(&key, &sent("250", "", &[]), 0, true, 130).unwrap();
        // Once it names another account, its unnamed rows are that one's.
        assert_eq!(l.hand_overs(50, Some("h:587 u")).unwrap(), Vec::<i64>::new());
        assert_eq!(l.hand_overs(50, Some("h:587 v")).unwrap(), vec![130, 110, 100]);
        assert_eq!(l.hand_overs(50, None).unwrap(), vec![130, 110, 100]);
        drop(l);
        // Opening again changes nothing; a new ledger has the column.
        let l = Ledger::open(&path, "c").unwrap();
        assert_eq!(l.hand_overs(0, None).unwrap().len(), 4);
        let (_d, fresh) = ledger();
        assert!(has_relay_column(&fresh.conn).unwrap());
    }

    #[test]
    fn old_ledgers_learn_bounced_and_bounces_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // A ledger as the previous version wrote it (no `bounced`, no bounces table),
        // with an extra column and index another change might have added.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&SCHEMA.replace(",'bounced'", "").replace(
            "CREATE TABLE IF NOT EXISTS bounces",
            "CREATE TABLE IF NOT EXISTS unused_bounces",
        ))
        .unwrap();
        old.execute_batch(
            "ALTER TABLE letters ADD COLUMN extra TEXT;
             CREATE INDEX letters_by_state ON letters (state);
             INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO letters (supporter, target, state, attempts, message_id, sent_at, updated_at, extra)
             VALUES ('a@x.org', 't@x.org', 'sent', 1, '<m@o>', 5, 5, 'kept');",
        )
        .unwrap();
        assert!(
            old.execute("UPDATE letters SET state = 'bounced'", []).is_err(),
            "the old CHECK refuses `bounced`"
        );
        drop(old);
        let l = Ledger::open(&path, "c").unwrap();
        let b = Bounce {
            source: "mid:dsn1@relay".into(),
            supporter: "a@x.org".into(),
            target: "t@x.org".into(),
            at: 10,
            action: "failed".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 user unknown".into(),
            reporter: "mx.x.org".into(),
            permanent: true,
        };
        assert_eq!(l.record_bounce(&b, 11).unwrap(), BounceEffect::Bounced);
        assert_eq!(l.record_bounce(&b, 12).unwrap(), BounceEffect::Known);
        let r = l.get("a@x.org", "t@x.org").unwrap().unwrap();
        assert_eq!((r.state, r.sent_at), (State::Bounced, Some(5)));
        let extra: String = l
            .conn
            .query_row("SELECT extra FROM letters", [], |r| r.get(0))
            .unwrap();
        assert_eq!(extra, "kept");
        let index: i64 = l
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'letters_by_state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 1);
        // A bounced letter is never claimed (sent) again.
        let key = Key {
            supporter: "a@x.org",
            target: "t@x.org",
            line: 2,
            message_id: "<m@o>",
            variant: &Variant::default(),
        };
        assert!(l.claim(&key, 20).is_err());
        assert_eq!(l.bounces().unwrap(), vec![b]);
        // The VERP secret is made once and kept.
        let secret = l.verp_secret().unwrap();
        assert_eq!(secret.len(), 32);
        assert_eq!(l.verp_secret().unwrap(), secret);
        assert_eq!(l.stored_verp_secret().unwrap(), Some(secret));
    }

    #[test]
    fn lock_is_exclusive_and_held_on_the_ledger_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".mailer/l.sqlite3");
        let first = Ledger::open(&path, "c").unwrap();
        let err = Ledger::open(&path, "c").err().unwrap();
        assert_eq!(crate::exit::exit_for(&err), Exit::TryLater);
        assert!(err.to_string().contains("another run holds the ledger"), "{err}");
        // Nothing beside the ledger can be deleted to get around it.
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let p = entry.unwrap().path();
            if p != path {
                std::fs::remove_file(p).unwrap();
            }
        }
        assert_eq!(
            crate::exit::exit_for(&Ledger::open(&path, "c").err().unwrap()),
            Exit::TryLater
        );
        // Readers are never locked out.
        assert!(Ledger::open_existing(&path, "c").unwrap().is_some());
        drop(first);
        Ledger::open(&path, "c").unwrap();
    }

    #[test]
    fn a_deleted_or_replaced_ledger_stops_claims_and_is_saved() {
        let a = Key {
            supporter: "a@x.org",
            target: "ceo@corp.example",
            line: 2,
            message_id: "<a@o>",
            variant: &Variant::default(),
        };
        let b = Key {
            supporter: "b@x.org",
            message_id: "<b@o>",
            ..a
        };
        for replace in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(".mailer/c.sqlite3");
            let l = Ledger::open(&path, "c").unwrap();
            l.claim(&a, 100).unwrap();
            l.record(&a, &sent("250", "ok", &[]), 0, true, 101).unwrap();
            std::fs::remove_file(&path).unwrap();
            if replace {
                std::fs::write(&path, b"another file").unwrap();
            }
            // With the journal left behind, no run may start afresh.
            if !replace {
                let err = format!("{:#}", Ledger::open(&path, "c").err().unwrap());
                assert!(err.contains("is missing but its journal"), "{err}");
            }
            let err = l.claim(&b, 102).unwrap_err().to_string();
            let what = if replace {
                "replaced by another file"
            } else {
                "deleted"
            };
            assert!(
                err.contains(&format!("was {what} while this run was using it")),
                "{err}"
            );
            assert!(l.claim(&b, 103).is_err(), "every later claim is refused too");
            assert!(l.checkpoint().is_err());
            drop(l);
            let saved = rescued_copy(&path).expect("a saved copy");
            assert!(err.contains(&format!("saved in `{}`", saved.display())), "{err}");
            let perms = std::fs::metadata(&saved).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&perms) & 0o777, 0o600);
            if !replace {
                let err = format!("{:#}", Ledger::open(&path, "c").err().unwrap());
                assert!(err.contains("holds the record a run saved"), "{err}");
                assert!(
                    err.contains("hint: once that run has ended, put it back (`rm "),
                    "{err}"
                );
                for j in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{j}", path.display()));
                }
                std::fs::rename(&saved, &path).unwrap();
                let l = Ledger::open(&path, "c").unwrap();
                let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
                assert_eq!(r.state, State::Sent);
                assert!(l.get("b@x.org", "ceo@corp.example").unwrap().is_none());
            }
        }
    }

    #[test]
    fn a_claim_refuses_a_letter_another_run_holds() {
        let (_d, l) = ledger();
        let a = Key {
            supporter: "a@x.org",
            target: "ceo@corp.example",
            line: 2,
            message_id: "<id@o>",
            variant: &Variant::default(),
        };
        l.claim(&a, 100).unwrap();
        let err = l.claim(&a, 101).unwrap_err();
        assert!(err.to_string().contains("another run"), "{err}");
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!((r.state, r.attempts), (State::Sending, 1));
    }

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
