//! `mailer export`: one CSV row per letter, for spreadsheets and audits.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::campaign::Campaign;
use crate::census;
use crate::exit::Exit;
use crate::ledger::Ledger;
use crate::ui::printable;

/// Runs `mailer export [--out FILE]`.
pub(crate) fn run(campaign: &Campaign, out: Option<&Path>) -> Result<Exit> {
    let config = &campaign.config;
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    match out {
        Some(p) => {
            let dest = format!("`{}`", p.display());
            write(campaign, ledger.as_ref(), super::create_private(p)?, &dest)?;
        }
        None => write(campaign, ledger.as_ref(), std::io::stdout().lock(), "stdout")?,
    }
    Ok(Exit::Done)
}

/// Writes the CSV to `sink`, named `dest` in errors.
fn write(campaign: &Campaign, ledger: Option<&Ledger>, sink: impl Write, dest: &str) -> Result<()> {
    let failed_to = |e: anyhow::Error| e.context(format!("cannot write {dest}"));
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
        "bounce_status",
        "bounce_diagnostic",
        "bounced_at",
        "body_fingerprint",
        "letter_file",
        "language",
        "subject_variant",
        "letter_version",
        // Issue 15: who and where, for people reading the sheet.
        "supporter_name",
        "target_name",
        "csv_line",
    ])
    .map_err(|e| failed_to(csv_error(e)))?;
    // Per letter: its final failure if one came back, else its latest delay notice.
    let mut bounces = std::collections::HashMap::new();
    for b in ledger.map(Ledger::bounces).transpose()?.unwrap_or_default() {
        let key = (b.supporter.clone(), b.target.clone());
        let keep = bounces
            .get(&key)
            .is_none_or(|old: &crate::ledger::Bounce| !old.permanent || b.permanent);
        if keep {
            bounces.insert(key, b);
        }
    }
    let mut failed: Option<anyhow::Error> = None;
    census::walk(campaign, ledger, |l| {
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
        let bounce = bounces.get(&(l.supporter.clone(), l.target.clone()));
        let copies: Vec<String> = l
            .refused_copies
            .iter()
            .map(|(to, reply)| format!("{to}: {reply}"))
            .collect();
        // Which text went (recorded when the letter was handed over).
        let variant = match ledger.map(|led| led.variant(&l.supporter, &l.target)) {
            Some(Err(e)) => {
                failed = Some(e);
                return;
            }
            Some(Ok(v)) => v.unwrap_or_default(),
            None => crate::letter::Variant::default(),
        };
        let row = [
            cell(&l.supporter),
            cell(&l.target),
            l.state.as_str().to_string(),
            r.map_or(0, |r| r.attempts).to_string(),
            cell(&reply),
            sent_at,
            cell(&l.message_id.unwrap_or_default()),
            cell(&copies.join("; ")),
            bounce
                .map(|b| format!("{} ({})", b.status, b.action))
                .unwrap_or_default(),
            cell(bounce.map_or("", |b| b.diagnostic.as_str())),
            bounce
                .and_then(|b| jiff::Timestamp::from_second(b.at).ok())
                .map(|t| t.to_string())
                .unwrap_or_default(),
            variant.fingerprint.clone(),
            cell(&variant.letter_file),
            cell(&variant.language),
            if variant.subject == 0 {
                String::new()
            } else {
                variant.subject.to_string()
            },
            variant.version.to_string(),
            cell(l.supporter_name.as_deref().unwrap_or_default()),
            cell(l.target_name.as_deref().unwrap_or_default()),
            l.line.map(|n| n.to_string()).unwrap_or_default(),
        ];
        if let Err(e) = w.write_record(&row) {
            failed = Some(csv_error(e));
        }
    })?;
    if let Some(e) = failed {
        return Err(failed_to(e));
    }
    w.flush().map_err(|e| failed_to(e.into()))?;
    Ok(())
}

/// The I/O error inside a CSV write error, so that a reader that went away
/// (`mailer export | head`) reaches `main` as `BrokenPipe` and ends quietly.
fn csv_error(e: csv::Error) -> anyhow::Error {
    if !e.is_io_error() {
        return e.into();
    }
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io.into(),
        other => anyhow::anyhow!("{other:?}"),
    }
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
