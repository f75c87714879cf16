//! `mailer status`: counts by state agreeing with `check`, the last run,
//! each target by name, and every failure with its reply; `--failed` lists
//! only what needs a person.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Result;

use crate::bounces::dsn::problem_key;
use crate::campaign::Campaign;
use crate::census::{self, Origin};
use crate::config::Config;
use crate::exit::Exit;
use crate::ledger::{Bounce, LastRun, Ledger, State};
use crate::report::{StatusCounts, out, thousands};
use crate::ui::printable;

/// A letter that needs a look: `(state, supporter, line, target, reply, note)`.
struct Problem {
    state: State,
    supporter: String,
    line: Option<u64>,
    target: String,
    reply: String,
    /// `retry after …`, `will not be sent …`.
    note: String,
}

impl Problem {
    fn line(&self, file: &str) -> String {
        let at = self.line.map(|l| format!(" ({file}:{l})")).unwrap_or_default();
        let reply = if self.reply.is_empty() {
            String::new()
        } else {
            // Escaped again: a ledger written by an older version may hold raw text.
            format!(": {}", printable(&self.reply))
        };
        let note = if self.note.is_empty() {
            String::new()
        } else {
            format!(" — {}", self.note)
        };
        format!(
            "  {:<8} {}{at} → {}{reply}{note}\n",
            self.state.as_str(),
            self.supporter,
            self.target
        )
    }
}

/// The states in the order `status` lists them.
const STATES: [&str; 7] = [
    "sent", "bounced", "pending", "deferred", "failed", "unknown", "skipped",
];

/// Runs `mailer status [--json] [--failed]` at `now` (Unix seconds).
#[allow(clippy::too_many_lines)] // one walk feeding one report
pub(crate) fn run(campaign: &Campaign, json: bool, failed_only: bool, now: i64) -> Result<Exit> {
    let config = &campaign.config;
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    let file = config.supporters_file.file_name().map_or_else(
        || config.supporters_file.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut counts = StatusCounts {
        campaign: config.campaign.id.clone(),
        ..StatusCounts::default()
    };
    // Targets in config order, then targets only the ledger knows.
    let mut targets: Vec<(String, String, BTreeMap<&'static str, u64>)> = config
        .targets
        .iter()
        .map(|t| {
            (
                t.key(),
                target_label(t.name.as_deref(), &t.key()),
                BTreeMap::new(),
            )
        })
        .collect();
    let mut problems: Vec<Problem> = Vec::new();
    let mut invalid_rows: Vec<(u64, String, String)> = Vec::new();
    let mut bounced_letters: Vec<(String, Option<u64>, String)> = Vec::new();
    let mut delivered: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
    let mut copies = Vec::new();
    // (letters, supporters) by origin: ready (as `check` counts), invalid, departed.
    let (mut ready, mut invalid, mut departed) = ((0u64, 0u64), (0u64, 0u64), 0u64);
    let mut departed_unsent = 0u64;
    // Letters to each target in today's file, for `[schedule]`.
    let mut routed: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_key = String::new();
    // Deferred letters a later run retries (their row is still in the CSV).
    let (mut next_retry, mut retrying): (Option<i64>, u64) = (None, 0);
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
        let new_row = letter.supporter != last_key;
        last_key.clone_from(&letter.supporter);
        match letter.origin {
            Origin::Ready | Origin::Held => {
                if letter.origin == Origin::Ready {
                    *routed.entry(letter.target.clone()).or_default() += 1;
                }
                ready.0 += 1;
                ready.1 += u64::from(new_row);
            }
            Origin::Invalid => {
                invalid.0 += 1;
                invalid.1 += u64::from(new_row);
                if new_row && letter.state == State::Skipped {
                    invalid_rows.push((
                        letter.line.unwrap_or_default(),
                        letter.supporter.clone(),
                        letter.reason.clone().unwrap_or_default(),
                    ));
                }
            }
            Origin::Departed => departed += 1,
        }
        let label = target_label(letter.target_name.as_deref(), &letter.target);
        let slot = targets
            .iter()
            .position(|(k, ..)| *k == letter.target)
            .unwrap_or_else(|| {
                targets.push((letter.target.clone(), label.clone(), BTreeMap::new()));
                targets.len() - 1
            });
        *targets[slot].2.entry(state_name(letter.state)).or_default() += 1;
        let record = letter.record.as_ref();
        if let (State::Sent | State::Bounced, Some(at)) = (letter.state, record.and_then(|r| r.sent_at)) {
            delivered
                .entry(letter.target.clone())
                .or_default()
                .push((at, letter.state == State::Bounced));
        }
        let retry_at = record.and_then(|r| r.next_attempt_at);
        if letter.state == State::Deferred
            && letter.origin != Origin::Departed
            && let Some(at) = retry_at
        {
            next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
            retrying += 1;
        }
        let gone = letter.origin == Origin::Departed
            && !matches!(letter.state, State::Sent | State::Bounced | State::Skipped);
        departed_unsent += u64::from(gone);
        let reply = record.and_then(|r| r.reply.clone()).unwrap_or_default();
        if letter.state == State::Bounced {
            bounced_letters.push((letter.supporter.clone(), letter.line, label.clone()));
        }
        if gone
            || matches!(
                letter.state,
                State::Failed | State::Unknown | State::Deferred | State::Sending
            )
        {
            let note = if gone {
                format!("will not be sent: the row left {file}")
            } else if letter.state == State::Deferred {
                retry_at
                    .map(|at| format!("retry after {}", utc_minute(at)))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            problems.push(Problem {
                state: letter.state,
                supporter: letter.supporter,
                line: letter.line,
                target: label,
                reply,
                note,
            });
        } else if !letter.refused_copies.is_empty() {
            copies.push((letter.supporter, letter.target, letter.refused_copies));
        }
    })?;
    if json {
        out(&format!("{}\n", serde_json::to_string(&counts)?))?;
        return Ok(Exit::Done);
    }
    let last_run = ledger.as_ref().map(Ledger::last_run).transpose()?.flatten();
    let bounces = ledger
        .as_ref()
        .map(Ledger::bounces)
        .transpose()?
        .unwrap_or_default();
    if failed_only {
        return attention(
            &file,
            &problems,
            &invalid_rows,
            &bounced_letters,
            &bounces,
            next_retry,
            retrying,
        );
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Campaign {} — {} letter{}",
        counts.campaign,
        thousands(counts.total),
        plural(counts.total)
    );
    let n_targets = config.targets.len() as u64;
    // With `match` or `[routing]`, supporters write to different targets:
    // there is no product to show.
    let join = if campaign.is_routed() { ", to" } else { " ×" };
    let _ = writeln!(
        text,
        "  {:>8}  for {} supporter{} in {file}{join} {} target{} (as `mailer check` counts them)",
        thousands(ready.0),
        thousands(ready.1),
        plural(ready.1),
        thousands(n_targets),
        plural(n_targets)
    );
    if invalid.0 > 0 {
        let _ = writeln!(
            text,
            "  {:>8}  for {} invalid row{} that `mailer send` skips (`mailer check` lists them)",
            thousands(invalid.0),
            thousands(invalid.1),
            plural(invalid.1)
        );
    }
    if departed > 0 {
        let _ = writeln!(
            text,
            "  {:>8}  whose row has left {file} ({} will not be sent)",
            thousands(departed),
            thousands(departed_unsent)
        );
    }
    if let Some(run) = &last_run {
        let _ = writeln!(text, "{}", describe_run(run));
    }
    text.push('\n');
    for (name, n) in [
        ("sent", counts.sent),
        ("bounced", counts.bounced),
        ("pending", counts.pending),
        ("deferred", counts.deferred),
        ("failed", counts.failed),
        ("unknown", counts.unknown),
        ("skipped", counts.skipped),
    ] {
        let retry = match next_retry {
            Some(at) if name == "deferred" && n > 0 => format!("  next retry after {}", utc_minute(at)),
            _ => String::new(),
        };
        let _ = writeln!(text, "  {name:<9} {:>8}{retry}", thousands(n));
    }
    by_target(&mut text, &targets);
    schedule_report(&mut text, campaign, ledger.as_ref(), &routed, now)?;
    if !problems.is_empty() {
        let _ = writeln!(text, "\nNot delivered:");
        for p in &problems {
            text.push_str(&p.line(&file));
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
    if ledger.is_some() {
        bounce_report(&mut text, &bounces, &delivered);
    }
    out(&text)?;
    Ok(Exit::Done)
}

/// Each target's progress against `[schedule]`, and what `daily_limit`
/// used and when it frees; nothing without `[schedule]`.
///
/// A target's state at `now`, from its letters in today's file and the
/// ledger: `behind by N` when N letters could go now (the schedule's share
/// of the open time passed so far, less what it received, within
/// `per_target_hourly`; without `end` every letter due); `on schedule` when
/// none could, with when the next may; `window closed` once `end` passed
/// with letters still due; `outside its open hours until …`; `window
/// opens …` before `start`; `all handed over`.
fn schedule_report(
    text: &mut String,
    campaign: &Campaign,
    ledger: Option<&Ledger>,
    routed: &BTreeMap<String, u64>,
    now: i64,
) -> Result<()> {
    let config = &campaign.config;
    let Some(schedule) = &config.schedule else {
        return Ok(());
    };
    let _ = writeln!(text, "\nSchedule:");
    for target in &config.targets {
        let key = target.key();
        let label = target
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .map_or_else(|| key.clone(), |n| printable(n).into_owned());
        let sent = ledger
            .map(|l| l.sent_to(&key, now))
            .transpose()?
            .unwrap_or_default();
        let total = routed.get(&key).copied().unwrap_or_default().max(sent.letters);
        let due = total - sent.letters;
        let window = schedule.window(target.timezone.as_ref(), &key);
        let state = if due == 0 {
            "all handed over".to_owned()
        } else if let Some(start) = window.start().filter(|s| now < *s) {
            format!("window opens {}", window.show(start))
        } else if window.end().is_some_and(|e| now >= e) {
            let how = schedule.per_target_hourly.map_or_else(
                || "they all go in the next run in open hours".to_owned(),
                |n| format!("they go at per_target_hourly {n} in open hours"),
            );
            format!("window closed ({due} still due: {how})")
        } else if !window.is_open(now) {
            window.next_open(now).map_or_else(
                || "outside its open hours".to_owned(),
                |t| format!("outside its open hours until {}", window.show(t)),
            )
        } else {
            let allowance = window.allowance(now, total, &sent);
            if allowance.letters > 0 {
                format!("behind by {}", allowance.letters)
            } else {
                let next = window
                    .next_letter(now, total, &sent)
                    .map(|t| format!(" (next letter {})", window.show(t)))
                    .unwrap_or_default();
                format!("on schedule{next}")
            }
        };
        let _ = writeln!(
            text,
            "  {label}: {} of {} handed over — {state}",
            thousands(sent.letters),
            thousands(total)
        );
    }
    if let (Some(limit), Some(l)) = (config.delivery.daily_limit, ledger) {
        let daily = crate::delivery::daily_use(campaign, Some(l), now)?;
        let used = daily.used();
        let when = if used >= limit {
            daily
                .frees_at(limit)
                .map(|t| {
                    format!(
                        " — next letter allowed {}",
                        crate::schedule::show(t, &schedule.timezone)
                    )
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        let shared = daily
            .shared
            .iter()
            .map(|(id, n)| format!("`{id}` {n}"))
            .collect::<Vec<_>>();
        let shared = if shared.is_empty() {
            String::new()
        } else {
            format!(" (shared: {})", shared.join(", "))
        };
        let _ = writeln!(text, "  daily_limit {used}/{limit}{shared}{when}");
    }
    Ok(())
}

/// `s` unless one.
fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `Satya Nadella <ceo@corp.example>`, or the address alone.
fn target_label(name: Option<&str>, key: &str) -> String {
    match name.filter(|n| !n.trim().is_empty()) {
        Some(n) => format!("{} <{key}>", printable(n)),
        None => key.to_string(),
    }
}

/// A ledger state as `status` counts it (`sending` is `unknown` to a reader).
fn state_name(state: State) -> &'static str {
    match state {
        State::Sending => State::Unknown.as_str(),
        s => s.as_str(),
    }
}

/// One row per target, one aligned column per state.
fn by_target(text: &mut String, targets: &[(String, String, BTreeMap<&'static str, u64>)]) {
    let width = targets
        .iter()
        .map(|(_, label, _)| label.chars().count())
        .max()
        .unwrap_or(0)
        .max("By target:".len() - 2);
    let cells: Vec<Vec<String>> = targets
        .iter()
        .map(|(_, _, states)| {
            STATES
                .iter()
                .map(|s| thousands(states.get(s).copied().unwrap_or(0)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = STATES
        .iter()
        .enumerate()
        .map(|(i, s)| cells.iter().map(|c| c[i].len()).max().unwrap_or(0).max(s.len()))
        .collect();
    let _ = write!(text, "\n{:<w$}", "By target:", w = width + 2);
    for (s, w) in STATES.iter().zip(&widths) {
        let _ = write!(text, "  {s:>w$}");
    }
    text.push('\n');
    for ((_, label, _), row) in targets.iter().zip(&cells) {
        let pad = width - label.chars().count();
        let _ = write!(text, "  {label}{}", " ".repeat(pad));
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(text, "  {cell:>w$}");
        }
        text.push('\n');
    }
}

/// `Last run: … UTC, exit 3 (…): 12 sent, 1 deferred`.
fn describe_run(run: &LastRun) -> String {
    let (Some(finished), Some(exit)) = (run.finished, run.exit) else {
        return format!(
            "Last letter attempt: {} (no run recorded how it ended: was it killed?)",
            utc_minute(run.started)
        );
    };
    let meaning = match exit {
        0 => "done",
        1 => "stopped before sending: an error in the config, letter, supporters or relay",
        2 => "usage error",
        3 => "finished, but some letters were not delivered",
        75 => "try later: the server was unreachable or another run held the ledger",
        130 => "interrupted",
        _ => "ended",
    };
    let outcomes = if run.outcomes.is_empty() {
        "no letter attempted".to_string()
    } else {
        run.outcomes
            .iter()
            .map(|(o, n)| format!("{} {o}", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let error = if run.error.is_empty() {
        String::new()
    } else {
        format!("\n  error: {}", printable(&run.error))
    };
    let span = if finished - run.started >= 60 {
        format!("{} – {}", utc_minute(run.started), utc_minute(finished))
    } else {
        utc_minute(run.started)
    };
    format!("Last run: {span}, exit {exit} ({meaning}): {outcomes}{error}")
}

/// `status --failed`: only what a person has to act on.
fn attention(
    file: &str,
    problems: &[Problem],
    invalid_rows: &[(u64, String, String)],
    bounced_letters: &[(String, Option<u64>, String)],
    bounces: &[Bounce],
    next_retry: Option<i64>,
    deferred: u64,
) -> Result<Exit> {
    let mut text = String::new();
    let listed: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.state != State::Deferred || !p.note.starts_with("retry"))
        .collect();
    for p in &listed {
        text.push_str(&p.line(file));
    }
    for (supporter, line, target) in bounced_letters {
        let why = bounces
            .iter()
            .filter(|b| b.permanent && b.supporter == *supporter)
            .map(|b| b.diagnostic.as_str())
            .next()
            .unwrap_or("");
        let at = line.map(|l| format!(" ({file}:{l})")).unwrap_or_default();
        let _ = writeln!(text, "  bounced  {supporter}{at} → {target}: {}", printable(why));
    }
    for (line, supporter, reason) in invalid_rows {
        let _ = writeln!(
            text,
            "  skipped  {supporter} ({file}:{line}): {}",
            printable(reason)
        );
    }
    let n = listed.len() + bounced_letters.len() + invalid_rows.len();
    let mut head = if n == 0 {
        "Nothing needs attention.\n".to_string()
    } else {
        format!(
            "Needs attention: {} letter{} or row{}\n",
            thousands(n as u64),
            plural(n as u64),
            plural(n as u64)
        )
    };
    if let (Some(at), 1..) = (next_retry, deferred) {
        let _ = writeln!(
            head,
            "({} deferred letter{} will be retried by `mailer send` after {}.)",
            thousands(deferred),
            plural(deferred),
            utc_minute(at)
        );
    }
    out(&format!("{head}{text}"))?;
    Ok(Exit::Done)
}

/// Notes how a `send` ended in its ledger, for `status`'s "Last run".
/// Best effort: a ledger that does not exist yet, is held by another run
/// or cannot be written is left alone.
pub(crate) fn note_run(config: &Config, started: i64, finished: i64, result: &Result<Exit>) {
    if !config.ledger_path.is_file() {
        return;
    }
    let (exit, error) = match result {
        Ok(exit) => (exit.code(), String::new()),
        Err(e) => (
            crate::exit::exit_for(e).code(),
            format!("{e:#}").lines().next().unwrap_or_default().to_string(),
        ),
    };
    if let Ok(ledger) = Ledger::open(&config.ledger_path, &config.campaign.id) {
        let _ = ledger.note_run(started, finished, exit, &error);
    }
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
