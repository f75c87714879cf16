//! `mailer export`: one CSV row per letter, for spreadsheets and audits.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::campaign::Campaign;
use crate::census;
use crate::exit::Exit;
use crate::ledger::Ledger;
use crate::ui::printable;

/// Runs `mailer export [--out FILE]`.
pub fn run(campaign: &Campaign, out: Option<&Path>) -> Result<Exit> {
    let config = &campaign.config;
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    let sink: Box<dyn Write> = match out {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("cannot write `{}`", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = csv::Writer::from_writer(sink);
    w.write_record([
        "supporter",
        "target",
        "state",
        "attempts",
        "last_reply",
        "sent_at",
        "message_id",
        // Added after SPEC's columns, at the end, so readers by position still work.
        "refused_copies",
    ])?;
    let mut failed = None;
    census::walk(campaign, ledger.as_ref(), |l| {
        if failed.is_some() {
            return;
        }
        let r = l.record.as_ref();
        let reply = r.and_then(|r| r.reply.clone()).or(l.reason).unwrap_or_default();
        let sent_at = r
            .and_then(|r| r.sent_at)
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let copies: Vec<String> = l
            .refused_copies
            .iter()
            .map(|(to, reply)| format!("{to}: {reply}"))
            .collect();
        let row = [
            cell(&l.supporter),
            cell(&l.target),
            l.state.as_str().to_string(),
            r.map_or(0, |r| r.attempts).to_string(),
            cell(&reply),
            sent_at,
            cell(&l.message_id.unwrap_or_default()),
            cell(&copies.join("; ")),
        ];
        if let Err(e) = w.write_record(&row) {
            failed = Some(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    w.flush()?;
    Ok(Exit::Done)
}

/// Neutralizes spreadsheet formulas: a cell starting with `=`, `+`, `-` or `@`
/// (or a tab / CR) gets a leading `'`. Control characters (a server's reply
/// stored by an older version) are escaped, never written raw.
fn cell(value: &str) -> String {
    let value = printable(value);
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.into_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formulas_are_neutralized() {
        assert_eq!(super::cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(super::cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(super::cell("ana@x.org"), "ana@x.org");
    }
}
