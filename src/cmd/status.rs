//! `mailer status`: counts by state, and every failure with its reply.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Result;

use crate::bounces::dsn::problem_key;
use crate::campaign::Campaign;
use crate::census;
use crate::exit::Exit;
use crate::ledger::{Bounce, Ledger, State};
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
    let mut delivered: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
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
            State::Bounced => counts.bounced += 1,
        }
        if let (State::Sent | State::Bounced, Some(at)) =
            (letter.state, letter.record.as_ref().and_then(|r| r.sent_at))
        {
            delivered
                .entry(letter.target.clone())
                .or_default()
                .push((at, letter.state == State::Bounced));
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
        ("bounced", counts.bounced),
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
    if let Some(ledger) = &ledger {
        bounce_report(&mut text, &ledger.bounces()?, &delivered);
    }
    out(&text)?;
    Ok(Exit::Done)
}

/// One problem's bounces: the letters, since when, an example diagnostic,
/// the servers that reported it.
type Group<'a> = (BTreeSet<(&'a str, &'a str)>, i64, &'a str, BTreeSet<&'a str>);

/// Letters looked at for a target's recent bounce rate.
const RECENT: usize = 100;
/// A recent bounce rate above this share warns of filtering.
const BOUNCE_RATE_WARNING: f64 = 0.05;

/// Bounces grouped by problem (with when each started), delay notices, and
/// a warning per target whose recent letters bounce more than 5%.
fn bounce_report(text: &mut String, bounces: &[Bounce], delivered: &BTreeMap<String, Vec<(i64, bool)>>) {
    // problem → (letters, first seen, an example diagnostic)
    let mut groups: BTreeMap<String, Group<'_>> = BTreeMap::new();
    let mut delays = BTreeSet::new();
    for b in bounces {
        if !b.permanent {
            delays.insert((b.supporter.as_str(), b.target.as_str()));
            continue;
        }
        let g = groups
            .entry(problem_key(&b.diagnostic))
            .or_insert_with(|| (BTreeSet::new(), b.at, &b.diagnostic, BTreeSet::new()));
        g.0.insert((&b.supporter, &b.target));
        g.1 = g.1.min(b.at);
        if !b.reporter.is_empty() {
            g.3.insert(&b.reporter);
        }
    }
    if !groups.is_empty() {
        let _ = writeln!(text, "\nBounced, by problem:");
        let mut sorted: Vec<_> = groups.values().collect();
        sorted.sort_by_key(|(letters, first, ..)| (std::cmp::Reverse(letters.len()), *first));
        for (letters, first, example, reporters) in sorted {
            let n = letters.len() as u64;
            // Escaped again: a ledger written by an older version may hold raw text.
            let by = reporters
                .iter()
                .map(|r| printable(r))
                .collect::<Vec<_>>()
                .join(", ");
            let by = if by.is_empty() {
                String::new()
            } else {
                format!(" (reported by {by})")
            };
            let _ = writeln!(
                text,
                "  {} letter{} since {}: {}{by}",
                thousands(n),
                if n == 1 { "" } else { "s" },
                utc_minute(*first),
                printable(example)
            );
        }
    }
    if !delays.is_empty() {
        let _ = writeln!(
            text,
            "\n{} letter{} had a delay notice (4.x.x): the receiving side is still trying; no state changed",
            delays.len(),
            if delays.len() == 1 { "" } else { "s" }
        );
    }
    for (target, letters) in delivered {
        let mut recent = letters.clone();
        recent.sort_unstable_by_key(|(at, _)| std::cmp::Reverse(*at));
        recent.truncate(RECENT);
        let refused = recent.iter().filter(|(_, b)| *b).count();
        let rate = refused as f64 / recent.len() as f64;
        if refused >= 2 && rate > BOUNCE_RATE_WARNING {
            let _ = writeln!(
                text,
                "\nwarning: {refused} of the last {} letters to {} bounced ({:.0}%, above {:.0}%): its mail \
                 system may be filtering the campaign\n  hint: pause `mailer send` for this target and read the \
                 bounce diagnostics above",
                recent.len(),
                printable(target),
                rate * 100.0,
                BOUNCE_RATE_WARNING * 100.0
            );
        }
    }
}

/// `2026-12-01 10:00 UTC`.
fn utc_minute(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(
        |_| unix.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    )
}
