//! Delivery status notifications recorded against letters (`mailer bounces`),
//! each once, and the per-ledger VERP secret that ties a bounce to its
//! letter. Reading the mailbox is `bounces`'.

use anyhow::{Context as _, Result};
use rusqlite::{OptionalExtension as _, params};

use super::Ledger;
use super::error::disk_error;

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
