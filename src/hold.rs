//! Letters held back by hand (`mailer skip`) and put back (`mailer requeue`):
//! which letters such a command names, and how a hold keeps `send` away.
//!
//! The ledger stores each hold (`skipped`, flagged `held`, with its reason);
//! `send` never sends that one letter until requeued (see
//! `delivery::plan::decide`), while the supporter's other letters go.

use anyhow::{Result, bail};

use crate::campaign::Campaign;
use crate::ledger::Ledger;
use crate::roster::Row;

/// How a hold's reason reads in the ledger, `status`, `export` and `send`.
pub(crate) const PREFIX: &str = "skipped by hand: ";

/// The letters one `skip`/`requeue` command line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Normalized supporter email.
    pub(crate) supporter: String,
    /// The supporter's CSV line, if the row is still there.
    pub(crate) line: Option<u64>,
    /// Normalized target emails, config order first.
    pub(crate) targets: Vec<String>,
}

/// The reason as stored: one line of text, prefixed.
pub(crate) fn reason(text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() {
        bail!("`--reason` is empty\n\nhint: say why, e.g. --reason \"asked to wait\"");
    }
    if text.chars().any(char::is_control) {
        bail!("`--reason` must be one line of plain text (no line breaks or control characters)");
    }
    Ok(format!("{PREFIX}{text}"))
}

/// The letters of `supporter` (to `target`, or to every target) that
/// today's CSV or the ledger knows.
pub(crate) fn select(
    campaign: &Campaign,
    ledger: &Ledger,
    supporter: &str,
    target: Option<&str>,
) -> Result<Selection> {
    let key = supporter.trim().to_lowercase();
    let mut line = None;
    for row in campaign.roster()? {
        match row? {
            Row::Valid(s) if s.key == key => line = Some(s.line),
            Row::Skipped(skip) if skip.key == key => line = Some(skip.line),
            _ => {}
        }
        if line.is_some() {
            break;
        }
    }
    let in_ledger = ledger.targets_of(&key)?;
    if line.is_none() && in_ledger.is_empty() {
        bail!(
            "no supporter `{key}` in `{}` nor in the ledger\n\n\
             hint: check the address; `mailer export` lists every letter",
            campaign.config.supporters_file.display()
        );
    }
    let mut all: Vec<String> = campaign.config.targets.iter().map(|t| t.key()).collect();
    for t in in_ledger {
        if !all.contains(&t) {
            all.push(t);
        }
    }
    let targets = match target {
        None => all,
        Some(t) => {
            let t = t.trim().to_lowercase();
            if !all.contains(&t) {
                bail!(
                    "`{t}` is not a target of `{key}`\n\nhint: the targets are {}",
                    all.iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            vec![t]
        }
    };
    Ok(Selection {
        supporter: key,
        line,
        targets,
    })
}
