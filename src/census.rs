//! The campaign's letters as of now: today's CSV × targets joined with the
//! ledger, plus ledger letters whose row has left the CSV. Feeds `status`
//! and `export`, so both count exactly what `send` would see.

use std::collections::HashSet;

use anyhow::Result;

use crate::campaign::{Campaign, Prepared};
use crate::ledger::{Ledger, Record, State};
use crate::roster::{Duplicate, Skipped, fingerprint};

/// One letter's current standing.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Normalized supporter email (or `line:N` for a row without one).
    pub(crate) supporter: String,
    /// Normalized target email.
    pub(crate) target: String,
    /// State now: ledger state, else `pending` (or `skipped` for invalid rows).
    pub(crate) state: State,
    /// The ledger row, if any.
    pub(crate) record: Option<Record>,
    /// Message-ID (known for every valid letter, sent or not).
    pub(crate) message_id: Option<String>,
    /// Why a skipped letter is skipped.
    pub(crate) reason: Option<String>,
    /// For a sent letter: the Cc/Bcc copies the server refused, as
    /// `(recipient, reply)`.
    pub(crate) refused_copies: Vec<(String, String)>,
    /// Where the letter comes from: a row of today's CSV, or only the ledger.
    pub(crate) origin: Origin,
    /// The row's 1-based line in the supporters file (none once it left).
    pub(crate) line: Option<u64>,
    /// The supporter's display name, for a valid row.
    pub(crate) supporter_name: Option<String>,
    /// The target's configured name, when it has one and is still configured.
    pub(crate) target_name: Option<String>,
}

/// Where a letter of the census comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A valid row of today's CSV: a letter `check` counts as ready.
    Ready,
    /// A valid row's letter held back by hand (`mailer skip`, the ledger's
    /// `held`): `check` counts it too.
    Held,
    /// A row `send` skips (invalid email, a value that cannot go in a header).
    Invalid,
    /// Only in the ledger: the row has left the CSV, so `send` never sends it.
    Departed,
}

/// The configured name of the target `key`, if it is still configured.
fn configured_name(campaign: &Campaign, key: &str) -> Option<String> {
    let target = campaign.config.targets.iter().find(|t| t.key() == key)?;
    target.name.clone()
}

/// Calls `visit` for every letter: CSV order first, then departed ones.
pub(crate) fn walk(campaign: &Campaign, ledger: Option<&Ledger>, mut visit: impl FnMut(Entry)) -> Result<()> {
    let mut seen = HashSet::new();
    let lookup = |s: &str, t: &str| -> Result<Option<Record>> {
        match ledger {
            Some(l) => l.get(s, t),
            None => Ok(None),
        }
    };
    // Only sent letters can have refused copies: skip the lookup otherwise.
    let copies = |r: Option<&Record>| -> Result<Vec<(String, String)>> {
        match (ledger, r) {
            (Some(l), Some(r)) if r.state == State::Sent => l.refused_copies(&r.supporter, &r.target),
            _ => Ok(Vec::new()),
        }
    };
    for prepared in campaign.prepared(false)? {
        match prepared? {
            Prepared::Letters { supporter, letters } => {
                for (target, built) in letters {
                    let t = target.key();
                    seen.insert(fingerprint(&[&supporter.key, &t]));
                    let record = lookup(&supporter.key, &t)?;
                    // A letter skipped by hand stays skipped until requeued.
                    let held = record.as_ref().filter(|r| r.held && r.state == State::Skipped);
                    let state = match record.as_ref().map(|r| r.state) {
                        _ if held.is_some() => State::Skipped,
                        None | Some(State::Skipped | State::Pending) => State::Pending,
                        Some(s) => s,
                    };
                    let (reason, origin) = match held {
                        Some(r) => (r.reply.clone(), Origin::Held),
                        None => (None, Origin::Ready),
                    };
                    visit(Entry {
                        supporter: supporter.key.clone(),
                        target: t,
                        state,
                        refused_copies: copies(record.as_ref())?,
                        record,
                        message_id: Some(built.message_id),
                        reason,
                        origin,
                        line: Some(supporter.line),
                        supporter_name: Some(supporter.name.clone()).filter(|n| !n.is_empty()),
                        target_name: target.name.clone(),
                    });
                }
            }
            Prepared::Skipped(Skipped { key, reason, line }) => {
                for target in campaign.unconditional_targets() {
                    let t = target.key();
                    seen.insert(fingerprint(&[&key, &t]));
                    let record = lookup(&key, &t)?;
                    // A letter sent before the row went bad stays sent.
                    let state = match record.as_ref().map(|r| r.state) {
                        Some(s @ (State::Sent | State::Unknown | State::Failed | State::Bounced)) => s,
                        _ => State::Skipped,
                    };
                    let message_id = record.as_ref().and_then(|r| r.message_id.clone());
                    visit(Entry {
                        supporter: key.clone(),
                        target: t,
                        state,
                        refused_copies: copies(record.as_ref())?,
                        record,
                        message_id,
                        reason: Some(reason.clone()),
                        origin: Origin::Invalid,
                        line: Some(line),
                        supporter_name: None,
                        target_name: target.name.clone(),
                    });
                }
            }
            Prepared::Duplicate(Duplicate { .. }) | Prepared::Unmatched { .. } => {}
        }
    }
    if let Some(ledger) = ledger {
        for record in ledger.all()? {
            // Skipped rows that left the CSV were never letters.
            if record.state == State::Skipped
                || seen.contains(&fingerprint(&[&record.supporter, &record.target]))
            {
                continue;
            }
            let target_name = configured_name(campaign, &record.target);
            visit(Entry {
                origin: Origin::Departed,
                line: None,
                supporter_name: None,
                target_name,
                supporter: record.supporter.clone(),
                target: record.target.clone(),
                state: record.state,
                message_id: record.message_id.clone(),
                reason: None,
                refused_copies: copies(Some(&record))?,
                record: Some(record),
            });
        }
    }
    Ok(())
}
