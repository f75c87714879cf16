//! What went out, as the ledger recorded it: hand-overs (the relay account's
//! daily limit, a target's schedule) and sent letters per target and per
//! text (which letter file, language, subject and version).

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::Ledger;
use super::schema::{has_relay_column, letter_columns};
use crate::letter::Variant;

impl Ledger {
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
}

/// [`Ledger::hand_overs`] on any ledger's connection. With `account`:
/// the letters handed to that relay account, and those recorded before
/// accounts were (NULL) unless the ledger has recorded only other
/// accounts since: over-counting is the safe side of a relay's limit. A
/// ledger that records no account at all counts whole.
pub(super) fn hand_overs(conn: &Connection, since: i64, account: Option<&str>) -> Result<Vec<i64>> {
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

/// Sent (and bounced) letters per target in `conn`'s ledger.
pub(super) fn sent_per_target(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT target, count(*) FROM letters WHERE state IN ('sent', 'bounced')
         GROUP BY target ORDER BY target",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
}
