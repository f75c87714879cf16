//! What `mailer status` found, and how it reads: the counts, the last run,
//! each target by name, the schedule's progress, what was not delivered,
//! bounces; `--failed`'s short list; `--json`'s object.
//!
//! `cmd::status` gathers a [`StatusReport`] from the CSV and the ledger;
//! this module only formats it, so every line is tested without a campaign.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Serialize, Serializer};

use crate::bounces::dsn::problem_key;
use crate::ledger::{Bounce, LastRun, State};
use crate::report::{StatusCounts, thousands};
use crate::ui::printable;

/// Everything `status` shows.
#[derive(Debug, Default)]
pub(crate) struct StatusReport {
    /// The counts `--json` prints.
    pub(crate) counts: StatusCounts,
    /// The supporters file's name.
    pub(crate) file: String,
    /// `[[targets]]` entries in the config.
    pub(crate) configured_targets: u64,
    /// With `match` or `[routing]`: supporters write to different targets.
    pub(crate) routed: bool,
    /// (letters, supporters) as `check` counts them.
    pub(crate) ready: (u64, u64),
    /// (letters, supporters) of invalid rows.
    pub(crate) invalid: (u64, u64),
    /// Letters whose row has left the file.
    pub(crate) departed: u64,
    /// Of those, the ones that will not be sent.
    pub(crate) departed_unsent: u64,
    /// How the last `send` went.
    pub(crate) last_run: Option<LastRun>,
    /// The earliest retry of a deferred letter, and how many wait for one.
    pub(crate) next_retry: Option<i64>,
    /// Deferred letters a later run retries.
    pub(crate) retrying: u64,
    /// Targets in config order, then those only the ledger knows.
    pub(crate) targets: Vec<TargetCounts>,
    /// Each target's progress against `[schedule]`.
    pub(crate) schedule: Option<ScheduleProgress>,
    /// Letters not delivered, in file order.
    pub(crate) problems: Vec<Problem>,
    /// Letters delivered with Cc/Bcc copies refused.
    pub(crate) copies: Vec<RefusedCopies>,
    /// A ledger exists (bounces are reported only then).
    pub(crate) ledger: bool,
    /// Every bounce the ledger holds.
    pub(crate) bounces: Vec<Bounce>,
    /// Per target, each delivered letter: (sent at, bounced).
    pub(crate) delivered: BTreeMap<String, Vec<(i64, bool)>>,
    /// Invalid rows: (line, supporter, reason).
    pub(crate) invalid_rows: Vec<(u64, String, String)>,
    /// Bounced letters: (supporter, line, target label).
    pub(crate) bounced_letters: Vec<(String, Option<u64>, String)>,
}

/// One row of "By target:".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TargetCounts {
    /// `Name <address>`, or the address.
    pub(crate) label: String,
    /// Letters by state name (`sending` counted as `unknown`).
    pub(crate) states: BTreeMap<&'static str, u64>,
}

/// A delivered letter whose Cc/Bcc copies the server refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RefusedCopies {
    /// The supporter's address.
    pub(crate) supporter: String,
    /// The target's address.
    pub(crate) target: String,
    /// Each refused copy: (its address, the server's reply).
    pub(crate) refused: Vec<(String, String)>,
}

/// A letter that needs a look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Its state.
    pub(crate) state: State,
    /// The supporter's address.
    pub(crate) supporter: String,
    /// Its row, if it is still in the file.
    pub(crate) line: Option<u64>,
    /// The target's label.
    pub(crate) target: String,
    /// The server's last reply.
    pub(crate) reply: String,
    /// `retry after …`, `will not be sent …`.
    pub(crate) note: String,
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
            printable(&self.supporter),
            printable(&self.target)
        )
    }
}

/// Each target's progress against `[schedule]`, and `daily_limit`'s use.
/// In `status --json` under `schedule` (SPEC names no key for it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ScheduleProgress {
    /// Configured targets, in config order.
    pub(crate) targets: Vec<TargetProgress>,
    /// `[delivery] daily_limit`, when set and a ledger exists.
    pub(crate) daily_limit: Option<DailyLimit>,
}

/// One target against its schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TargetProgress {
    /// Its address.
    pub(crate) target: String,
    /// Its name, if it has one.
    pub(crate) name: Option<String>,
    /// Letters handed to the server.
    pub(crate) handed_over: u64,
    /// Its letters in all (today's file, or more if more went).
    pub(crate) letters: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub(crate) state: Progress,
}

/// A moment shown in the target's (or schedule's) time zone; `--json`
/// gives it in RFC 3339 UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moment {
    /// Unix seconds.
    pub(crate) unix: i64,
    /// `2026-12-01 10:00 Europe/Paris`.
    pub(crate) shown: String,
}

impl Serialize for Moment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match jiff::Timestamp::from_second(self.unix) {
            Ok(t) => s.collect_str(&t),
            Err(_) => s.serialize_i64(self.unix),
        }
    }
}

/// A target's state at `now` (see `cmd::status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Progress {
    /// Every letter went.
    AllHandedOver,
    /// Before `start`.
    WindowOpens {
        /// When it opens.
        opens: Moment,
    },
    /// `end` passed with letters still due.
    WindowClosed {
        /// Letters still due.
        still_due: u64,
        /// The hourly cap they go at, if any.
        per_target_hourly: Option<u64>,
    },
    /// Outside the target's open hours.
    OutsideOpenHours {
        /// When they open again, if ever.
        until: Option<Moment>,
    },
    /// Letters could go now.
    Behind {
        /// How many.
        behind_by: u64,
    },
    /// None could go now.
    OnSchedule {
        /// When the next may.
        next_letter: Option<Moment>,
    },
}

/// `daily_limit USED/LIMIT — next letter allowed …`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DailyLimit {
    /// Letters handed over in the last 24 hours.
    pub(crate) used: u64,
    /// The limit.
    pub(crate) limit: u64,
    /// Other campaigns in the folder that used the same relay account in
    /// the last 24 hours: (campaign id, letters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) shared: Vec<SharedUse>,
    /// When one more fits, once it is used up.
    pub(crate) next_letter_allowed: Option<Moment>,
}

/// Another campaign's letters through the same relay account, counted
/// against `daily_limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SharedUse {
    /// Its campaign id.
    pub(crate) campaign: String,
    /// Letters it handed over in the last 24 hours.
    pub(crate) letters: u64,
}

/// `status --json`: SPEC's counts, then `schedule` with `[schedule]`.
#[derive(Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    counts: &'a StatusCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<&'a ScheduleProgress>,
}

/// The states in the order `status` lists them.
const STATES: [&str; 7] = [
    "sent", "bounced", "pending", "deferred", "failed", "unknown", "skipped",
];

/// `status --json`: one object on one line; SPEC's keys, then `schedule`
/// (each target's progress, `daily_limit`'s use) when there is one.
pub(crate) fn json(r: &StatusReport) -> serde_json::Result<String> {
    let object = Json {
        counts: &r.counts,
        schedule: r.schedule.as_ref(),
    };
    Ok(format!("{}\n", serde_json::to_string(&object)?))
}

/// `status`: the whole report.
#[must_use]
pub(crate) fn text(r: &StatusReport) -> String {
    let (counts, file) = (&r.counts, r.file.as_str());
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Campaign {} — {} letter{}",
        counts.campaign,
        thousands(counts.total),
        plural(counts.total)
    );
    let n_targets = r.configured_targets;
    // With `match` or `[routing]`, supporters write to different targets:
    // there is no product to show.
    let join = if r.routed { ", to" } else { " ×" };
    let _ = writeln!(
        text,
        "  {:>8}  for {} supporter{} in {file}{join} {} target{} (as `mailer check` counts them)",
        thousands(r.ready.0),
        thousands(r.ready.1),
        plural(r.ready.1),
        thousands(n_targets),
        plural(n_targets)
    );
    if r.invalid.0 > 0 {
        let _ = writeln!(
            text,
            "  {:>8}  for {} invalid row{} that `mailer send` skips (`mailer check` lists them)",
            thousands(r.invalid.0),
            thousands(r.invalid.1),
            plural(r.invalid.1)
        );
    }
    if r.departed > 0 {
        let _ = writeln!(
            text,
            "  {:>8}  whose row has left {file} ({} will not be sent)",
            thousands(r.departed),
            thousands(r.departed_unsent)
        );
    }
    if let Some(run) = &r.last_run {
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
        let retry = match r.next_retry {
            Some(at) if name == "deferred" && n > 0 => format!("  next retry after {}", utc_minute(at)),
            _ => String::new(),
        };
        let _ = writeln!(text, "  {name:<9} {:>8}{retry}", thousands(n));
    }
    by_target(&mut text, &r.targets);
    if let Some(schedule) = &r.schedule {
        schedule_lines(&mut text, schedule);
    }
    if !r.problems.is_empty() {
        let _ = writeln!(text, "\nNot delivered:");
        for p in &r.problems {
            text.push_str(&p.line(file));
        }
    }
    if !r.copies.is_empty() {
        let n: usize = r.copies.iter().map(|c| c.refused.len()).sum();
        let _ = writeln!(
            text,
            "\nCopies refused: {} (the letters reached their targets and are not sent again)",
            thousands(n as u64)
        );
        for c in &r.copies {
            for (to, reply) in &c.refused {
                let _ = writeln!(
                    text,
                    "  {} → {}: copy to {to} refused: {}",
                    c.supporter,
                    c.target,
                    printable(reply)
                );
            }
        }
    }
    if r.ledger {
        bounce_lines(&mut text, &r.bounces, &r.delivered);
    }
    text
}

/// `Schedule:` then one line per target and `daily_limit`'s use.
fn schedule_lines(text: &mut String, s: &ScheduleProgress) {
    let _ = writeln!(text, "\nSchedule:");
    for t in &s.targets {
        let label = t
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .map_or_else(|| t.target.clone(), |n| printable(n).into_owned());
        let state = match &t.state {
            Progress::AllHandedOver => "all handed over".to_owned(),
            Progress::WindowOpens { opens } => format!("window opens {}", opens.shown),
            Progress::WindowClosed {
                still_due,
                per_target_hourly,
            } => {
                let how = per_target_hourly.map_or_else(
                    || "they all go in the next run in open hours".to_owned(),
                    |n| format!("they go at per_target_hourly {n} in open hours"),
                );
                format!("window closed ({still_due} still due: {how})")
            }
            Progress::OutsideOpenHours { until } => until.as_ref().map_or_else(
                || "outside its open hours".to_owned(),
                |t| format!("outside its open hours until {}", t.shown),
            ),
            Progress::Behind { behind_by } => format!("behind by {behind_by}"),
            Progress::OnSchedule { next_letter } => {
                let next = next_letter
                    .as_ref()
                    .map(|t| format!(" (next letter {})", t.shown))
                    .unwrap_or_default();
                format!("on schedule{next}")
            }
        };
        let _ = writeln!(
            text,
            "  {label}: {} of {} handed over — {state}",
            thousands(t.handed_over),
            thousands(t.letters)
        );
    }
    if let Some(d) = &s.daily_limit {
        let when = d
            .next_letter_allowed
            .as_ref()
            .map(|t| format!(" — next letter allowed {}", t.shown))
            .unwrap_or_default();
        let shared = d
            .shared
            .iter()
            .map(|u| format!("`{}` {}", u.campaign, u.letters))
            .collect::<Vec<_>>();
        let shared = if shared.is_empty() {
            String::new()
        } else {
            format!(" (shared: {})", shared.join(", "))
        };
        let _ = writeln!(text, "  daily_limit {}/{}{shared}{when}", d.used, d.limit);
    }
}

/// `s` unless one.
fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One row per target, one aligned column per state.
fn by_target(text: &mut String, targets: &[TargetCounts]) {
    let width = targets
        .iter()
        .map(|t| t.label.chars().count())
        .max()
        .unwrap_or(0)
        .max("By target:".len() - 2);
    let cells: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            STATES
                .iter()
                .map(|s| thousands(t.states.get(s).copied().unwrap_or(0)))
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
    for (t, row) in targets.iter().zip(&cells) {
        let pad = width - t.label.chars().count();
        let _ = write!(text, "  {}{}", t.label, " ".repeat(pad));
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
#[must_use]
pub(crate) fn attention(r: &StatusReport) -> String {
    let file = r.file.as_str();
    let mut text = String::new();
    let listed: Vec<&Problem> = r
        .problems
        .iter()
        .filter(|p| p.state != State::Deferred || !p.note.starts_with("retry"))
        .collect();
    for p in &listed {
        text.push_str(&p.line(file));
    }
    for (supporter, line, target) in &r.bounced_letters {
        let why = r
            .bounces
            .iter()
            .filter(|b| b.permanent && b.supporter == *supporter)
            .map(|b| b.diagnostic.as_str())
            .next()
            .unwrap_or("");
        let at = line.map(|l| format!(" ({file}:{l})")).unwrap_or_default();
        let _ = writeln!(
            text,
            "  bounced  {}{at} → {}: {}",
            printable(supporter),
            printable(target),
            printable(why)
        );
    }
    for (line, supporter, reason) in &r.invalid_rows {
        let _ = writeln!(
            text,
            "  skipped  {} ({file}:{line}): {}",
            printable(supporter),
            printable(reason)
        );
    }
    let n = listed.len() + r.bounced_letters.len() + r.invalid_rows.len();
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
    if let (Some(at), 1..) = (r.next_retry, r.retrying) {
        let _ = writeln!(
            head,
            "({} deferred letter{} will be retried by `mailer send` after {}.)",
            thousands(r.retrying),
            plural(r.retrying),
            utc_minute(at)
        );
    }
    format!("{head}{text}")
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
fn bounce_lines(text: &mut String, bounces: &[Bounce], delivered: &BTreeMap<String, Vec<(i64, bool)>>) {
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
#[must_use]
pub(crate) fn utc_minute(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(
        |_| unix.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: u64, sent: u64) -> StatusCounts {
        StatusCounts {
            campaign: "c".into(),
            total,
            sent,
            pending: total - sent,
            ..StatusCounts::default()
        }
    }

    fn target(label: &str, states: &[(&'static str, u64)]) -> TargetCounts {
        TargetCounts {
            label: label.into(),
            states: states.iter().copied().collect(),
        }
    }

    #[test]
    fn an_empty_campaign_reads_as_zeros_with_singular_and_plural_right() {
        let r = StatusReport {
            counts: counts(0, 0),
            file: "supporters.csv".into(),
            configured_targets: 1,
            ..StatusReport::default()
        };
        assert_eq!(
            text(&r),
            "Campaign c — 0 letters\n\
             \x20        0  for 0 supporters in supporters.csv × 1 target (as `mailer check` counts them)\n\
             \n\
             \x20 sent             0\n\
             \x20 bounced          0\n\
             \x20 pending          0\n\
             \x20 deferred         0\n\
             \x20 failed           0\n\
             \x20 unknown          0\n\
             \x20 skipped          0\n\
             \n\
             By target:  sent  bounced  pending  deferred  failed  unknown  skipped\n"
        );
        assert_eq!(attention(&r), "Nothing needs attention.\n");
    }

    #[test]
    fn counts_get_thousands_separators_and_target_names_align() {
        let r = StatusReport {
            counts: counts(1_234_567, 1_000),
            file: "s.csv".into(),
            configured_targets: 2,
            ready: (1_234_567, 1),
            targets: vec![
                target(
                    "Satya Nadella <ceo@corp.example>",
                    &[("sent", 1_000), ("pending", 1_233_567)],
                ),
                target("cfo@corp.example", &[("failed", 12)]),
            ],
            ..StatusReport::default()
        };
        let shown = text(&r);
        assert!(
            shown.starts_with(
                "Campaign c — 1,234,567 letters\n  1,234,567  for 1 supporter in s.csv × 2 targets"
            ),
            "{shown}"
        );
        assert!(shown.contains("\n  sent         1,000\n"), "{shown}");
        assert!(
            shown.ends_with(
                "\nBy target:                           sent  bounced    pending  deferred  failed  unknown  skipped\n\
                 \x20 Satya Nadella <ceo@corp.example>  1,000        0  1,233,567         0       0        0        0\n\
                 \x20 cfo@corp.example                      0        0          0         0      12        0        0\n"
            ),
            "{shown}"
        );
    }

    #[test]
    fn a_name_with_wide_letters_aligns_by_characters_not_bytes() {
        let r = StatusReport {
            counts: counts(2, 0),
            targets: vec![
                target("Zoë Ødegaard <z@x.example>", &[]),
                target("a@x.example", &[]),
            ],
            ..StatusReport::default()
        };
        let shown = text(&r);
        let rows: Vec<&str> = shown
            .lines()
            .skip_while(|l| !l.starts_with("By target:"))
            .collect();
        let widths: Vec<usize> = rows.iter().map(|l| l.chars().count()).collect();
        assert_eq!(rows.len(), 3, "{shown}");
        assert!(widths.iter().all(|w| *w == widths[0]), "{shown}");
    }

    #[test]
    fn not_delivered_lines_carry_the_row_the_reply_and_the_note() {
        let problem = Problem {
            state: State::Deferred,
            supporter: "ana@mail.example".into(),
            line: Some(7),
            target: "ceo@corp.example".into(),
            reply: "451 4.3.0 try\x1b later".into(),
            note: "retry after 2025-12-01 10:00 UTC".into(),
        };
        let failed = Problem {
            state: State::Failed,
            note: String::new(),
            reply: "550 no".into(),
            line: None,
            ..problem.clone()
        };
        let r = StatusReport {
            counts: counts(2, 0),
            file: "s.csv".into(),
            problems: vec![problem, failed],
            next_retry: Some(1_764_583_200),
            retrying: 1,
            ..StatusReport::default()
        };
        assert!(text(&r).ends_with(
            "\nNot delivered:\n\
             \x20 deferred ana@mail.example (s.csv:7) → ceo@corp.example: 451 4.3.0 try\\u{1b} later — retry after 2025-12-01 10:00 UTC\n\
             \x20 failed   ana@mail.example → ceo@corp.example: 550 no\n"
        ));
        // The count line says when the next retry is due only when something is deferred.
        assert!(text(&r).contains("\n  deferred         0\n"));
        // `--failed` leaves out what a later run retries by itself, and says when.
        assert_eq!(
            attention(&r),
            "Needs attention: 1 letter or row\n\
             (1 deferred letter will be retried by `mailer send` after 2025-12-01 10:00 UTC.)\n\
             \x20 failed   ana@mail.example → ceo@corp.example: 550 no\n"
        );
    }

    #[test]
    fn refused_copies_are_counted_one_by_one() {
        let copy = |to: &str| (to.to_owned(), "550 no\r\n".to_owned());
        let r = StatusReport {
            counts: counts(1, 1),
            copies: vec![RefusedCopies {
                supporter: "ana@mail.example".into(),
                target: "ceo@corp.example".into(),
                refused: vec![copy("a@org.example"), copy("b@org.example")],
            }],
            ..StatusReport::default()
        };
        assert!(text(&r).ends_with(
            "\nCopies refused: 2 (the letters reached their targets and are not sent again)\n\
             \x20 ana@mail.example → ceo@corp.example: copy to a@org.example refused: 550 no\\r\\n\n\
             \x20 ana@mail.example → ceo@corp.example: copy to b@org.example refused: 550 no\\r\\n\n"
        ));
    }

    fn moment(unix: i64, shown: &str) -> Moment {
        Moment {
            unix,
            shown: shown.into(),
        }
    }

    fn schedule_of(states: Vec<Progress>) -> ScheduleProgress {
        ScheduleProgress {
            targets: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| TargetProgress {
                    target: format!("t{i}@corp.example"),
                    name: (i == 0).then(|| "Satya Nadella".to_owned()),
                    handed_over: 1_000,
                    letters: 2_500,
                    state,
                })
                .collect(),
            daily_limit: Some(DailyLimit {
                used: 500,
                limit: 500,
                shared: Vec::new(),
                next_letter_allowed: Some(moment(1_764_590_400, "2025-12-01 12:00 UTC")),
            }),
        }
    }

    #[test]
    fn schedule_lines_say_where_each_target_stands() {
        let r = StatusReport {
            counts: counts(0, 0),
            schedule: Some(schedule_of(vec![
                Progress::Behind { behind_by: 12 },
                Progress::OnSchedule {
                    next_letter: Some(moment(0, "2026-12-01 10:05 Europe/Paris")),
                },
                Progress::WindowClosed {
                    still_due: 20,
                    per_target_hourly: Some(10),
                },
                Progress::WindowClosed {
                    still_due: 3,
                    per_target_hourly: None,
                },
                Progress::OutsideOpenHours {
                    until: Some(moment(0, "2026-12-02 09:00 UTC")),
                },
                Progress::OutsideOpenHours { until: None },
                Progress::WindowOpens {
                    opens: moment(0, "2026-12-05 00:00 UTC"),
                },
                Progress::AllHandedOver,
            ])),
            ..StatusReport::default()
        };
        let shown = text(&r);
        let schedule = &shown[shown.find("\nSchedule:\n").expect(&shown)..];
        assert_eq!(
            schedule,
            "\nSchedule:\n\
             \x20 Satya Nadella: 1,000 of 2,500 handed over — behind by 12\n\
             \x20 t1@corp.example: 1,000 of 2,500 handed over — on schedule (next letter 2026-12-01 10:05 Europe/Paris)\n\
             \x20 t2@corp.example: 1,000 of 2,500 handed over — window closed (20 still due: they go at per_target_hourly 10 in open hours)\n\
             \x20 t3@corp.example: 1,000 of 2,500 handed over — window closed (3 still due: they all go in the next run in open hours)\n\
             \x20 t4@corp.example: 1,000 of 2,500 handed over — outside its open hours until 2026-12-02 09:00 UTC\n\
             \x20 t5@corp.example: 1,000 of 2,500 handed over — outside its open hours\n\
             \x20 t6@corp.example: 1,000 of 2,500 handed over — window opens 2026-12-05 00:00 UTC\n\
             \x20 t7@corp.example: 1,000 of 2,500 handed over — all handed over\n\
             \x20 daily_limit 500/500 — next letter allowed 2025-12-01 12:00 UTC\n"
        );
    }

    #[test]
    fn a_routed_campaign_shows_no_product_and_a_shared_limit_names_the_others() {
        let mut r = StatusReport {
            counts: counts(5, 0),
            file: "supporters.csv".into(),
            configured_targets: 3,
            routed: true,
            ready: (5, 3),
            schedule: Some(schedule_of(vec![Progress::AllHandedOver])),
            ..StatusReport::default()
        };
        if let Some(DailyLimit { shared, .. }) = r.schedule.as_mut().and_then(|s| s.daily_limit.as_mut()) {
            shared.push(SharedUse {
                campaign: "spring".into(),
                letters: 120,
            });
        }
        let shown = text(&r);
        assert!(
            shown
                .contains("for 3 supporters in supporters.csv, to 3 targets (as `mailer check` counts them)"),
            "{shown}"
        );
        assert!(
            shown.contains("daily_limit 500/500 (shared: `spring` 120) — next letter allowed"),
            "{shown}"
        );
        assert!(
            json(&r)
                .unwrap()
                .contains("\"shared\":[{\"campaign\":\"spring\",\"letters\":120}]"),
            "{}",
            json(&r).unwrap()
        );
        r.routed = false;
        assert!(text(&r).contains("for 3 supporters in supporters.csv × 3 targets"));
    }

    #[test]
    fn json_is_the_spec_object_without_a_schedule() {
        let r = StatusReport {
            counts: counts(3, 1),
            ..StatusReport::default()
        };
        assert_eq!(
            json(&r).unwrap(),
            "{\"campaign\":\"c\",\"total\":3,\"sent\":1,\"pending\":2,\"deferred\":0,\"failed\":0,\
             \"unknown\":0,\"skipped\":0,\"bounced\":0}\n"
        );
    }

    #[test]
    fn json_adds_the_schedule_with_snake_case_states_and_rfc3339_times() {
        let r = StatusReport {
            counts: counts(0, 0),
            schedule: Some(schedule_of(vec![
                Progress::OnSchedule {
                    next_letter: Some(moment(1_764_583_200, "2025-12-01 11:00 Europe/Paris")),
                },
                Progress::OutsideOpenHours { until: None },
            ])),
            ..StatusReport::default()
        };
        let shown = json(&r).unwrap();
        assert!(
            shown.ends_with(
                ",\"bounced\":0,\"schedule\":{\"targets\":[\
                 {\"target\":\"t0@corp.example\",\"name\":\"Satya Nadella\",\"handed_over\":1000,\
                 \"letters\":2500,\"state\":\"on_schedule\",\"next_letter\":\"2025-12-01T10:00:00Z\"},\
                 {\"target\":\"t1@corp.example\",\"name\":null,\"handed_over\":1000,\"letters\":2500,\
                 \"state\":\"outside_open_hours\",\"until\":null}],\
                 \"daily_limit\":{\"used\":500,\"limit\":500,\"next_letter_allowed\":\"2025-12-01T12:00:00Z\"}}}\n"
            ),
            "{shown}"
        );
    }

    #[test]
    fn last_run_says_how_it_ended() {
        let run = LastRun {
            started: 1_764_583_200,
            finished: Some(1_764_583_200 + 600),
            exit: Some(3),
            error: String::new(),
            outcomes: vec![("sent".into(), 1_200), ("deferred".into(), 1)],
        };
        assert_eq!(
            describe_run(&run),
            "Last run: 2025-12-01 10:00 UTC – 2025-12-01 10:10 UTC, exit 3 (finished, but some letters \
             were not delivered): 1,200 sent, 1 deferred"
        );
        let killed = LastRun {
            finished: None,
            exit: None,
            ..run
        };
        assert_eq!(
            describe_run(&killed),
            "Last letter attempt: 2025-12-01 10:00 UTC (no run recorded how it ended: was it killed?)"
        );
    }
}
