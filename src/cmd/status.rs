//! `mailer status`: counts by state, and every failure with its reply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;

use crate::campaign::Campaign;
use crate::census;
use crate::exit::Exit;
use crate::ledger::{Ledger, State};
use crate::report::{StatusCounts, out, thousands};
use crate::ui::printable;

/// Runs `mailer status [--json]`.
pub fn run(campaign: &Campaign, json: bool) -> Result<Exit> {
    let config = &campaign.config;
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    let mut counts = StatusCounts {
        campaign: config.campaign.id.clone(),
        ..StatusCounts::default()
    };
    let mut by_target: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut copies = Vec::new();
    census::walk(campaign, ledger.as_ref(), |letter| {
        counts.total += 1;
        match letter.state {
            State::Sent => counts.sent += 1,
            State::Pending => counts.pending += 1,
            State::Deferred => counts.deferred += 1,
            State::Failed => counts.failed += 1,
            State::Unknown | State::Sending => counts.unknown += 1,
            State::Skipped => counts.skipped += 1,
        }
        *by_target
            .entry(letter.target.clone())
            .or_default()
            .entry(letter.state.as_str())
            .or_default() += 1;
        if matches!(letter.state, State::Failed | State::Unknown | State::Deferred) {
            let reply = letter
                .record
                .as_ref()
                .and_then(|r| r.reply.clone())
                .unwrap_or_default();
            problems.push((letter.state, letter.supporter, letter.target, reply));
        } else if !letter.refused_copies.is_empty() {
            copies.push((letter.supporter, letter.target, letter.refused_copies));
        }
    })?;
    if json {
        out(&format!("{}\n", serde_json::to_string(&counts)?))?;
        return Ok(Exit::Done);
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Campaign {} — {} letters",
        counts.campaign,
        thousands(counts.total)
    );
    for (name, n) in [
        ("sent", counts.sent),
        ("pending", counts.pending),
        ("deferred", counts.deferred),
        ("failed", counts.failed),
        ("unknown", counts.unknown),
        ("skipped", counts.skipped),
    ] {
        let _ = writeln!(text, "  {name:<9} {:>8}", thousands(n));
    }
    if by_target.len() > 1 {
        let _ = writeln!(text, "\nBy target:");
        for (target, states) in &by_target {
            let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
            let _ = writeln!(text, "  {target}: {}", parts.join(", "));
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(text, "\nNot delivered:");
        for (state, s, t, reply) in &problems {
            // Escaped again: a ledger written by an older version may hold raw text.
            let _ = writeln!(text, "  {:<8} {s} → {t}: {}", state.as_str(), printable(reply));
        }
    }
    if !copies.is_empty() {
        let n: usize = copies.iter().map(|(_, _, c)| c.len()).sum();
        let _ = writeln!(
            text,
            "\nCopies refused: {} (the letters reached their targets and are not sent again)",
            thousands(n as u64)
        );
        for (s, t, refused) in &copies {
            for (to, reply) in refused {
                let _ = writeln!(text, "  {s} → {t}: copy to {to} refused: {}", printable(reply));
            }
        }
    }
    out(&text)?;
    Ok(Exit::Done)
}
