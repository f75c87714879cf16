//! What a run is to do: the ledger's resume rules ([`decide`]), pass 1
//! ([`scan`]: render everything, count what is due) and the budget (the
//! per-run and daily limits), the same for a real run and `--dry-run`.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

use crate::campaign::{Campaign, Prepared};
use crate::delivery::{Options, interrupted_early};
use crate::ledger::{Ledger, Record, State};
use crate::report::{Plan, SHOWN, SkippedRows};
use crate::roster::{Duplicate, Skipped};
use crate::schedule::{Allowance, Limit, Sent};
use crate::ui::Ui;

/// Whether a letter goes this run, given its ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send it.
    Due,
    /// Already delivered.
    Sent,
    /// Deferred, and its backoff has not passed.
    Waiting,
    /// Failed: needs `--retry-failed`.
    HeldFailed,
    /// Unknown: needs `--resend-unknown`.
    HeldUnknown,
    /// Skipped by hand (`mailer skip`): never due until `mailer requeue`.
    HeldByHand,
}

/// The ledger's resume rules.
pub(crate) fn decide(record: Option<&Record>, opts: &Options, now: i64) -> Decision {
    let Some(r) = record else { return Decision::Due };
    match r.state {
        State::Skipped if r.held => Decision::HeldByHand,
        State::Pending | State::Skipped => Decision::Due,
        State::Sent | State::Bounced => Decision::Sent,
        State::Deferred if r.next_attempt_at.is_none_or(|t| t <= now) => Decision::Due,
        State::Deferred => Decision::Waiting,
        State::Failed if opts.retry_failed => Decision::Due,
        State::Failed => Decision::HeldFailed,
        State::Unknown if opts.resend_unknown => Decision::Due,
        State::Unknown | State::Sending => Decision::HeldUnknown,
    }
}

/// How many letters this run may send: `--limit`/`max_per_run` and what is
/// left of `daily_limit` (`handed_over_today`: letters handed over in the
/// last 24 hours; 0 without a ledger). `None`: no limit.
pub(crate) fn budget(per_run: Option<u64>, daily_limit: Option<u64>, handed_over_today: u64) -> Option<u64> {
    let daily = daily_limit.map(|limit| limit.saturating_sub(handed_over_today));
    match (per_run, daily) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// [`budget`] for this campaign, from its ledger if there is one and the
/// other ledgers sharing its relay account ([`daily_use`]); says when
/// `daily_limit` is shared, and warns of a ledger it could not read. Also
/// returns that use (with `daily_limit`), for [`held_by`]: the other
/// ledgers are read once a round.
pub(crate) fn campaign_budget(
    campaign: &Campaign,
    ledger: Option<&Ledger>,
    opts: &Options,
    now: i64,
    ui: &Ui,
) -> Result<(Option<u64>, Option<DailyUse>)> {
    let d = &campaign.config.delivery;
    let (today, daily) = match d.daily_limit {
        Some(limit) => {
            let used = daily_use(campaign, ledger, now)?;
            for why in &used.unread {
                ui.warn(why);
            }
            // Once per run, and again only when other campaigns join: the
            // counts alone change every round of `--follow`.
            let sharing: Vec<&str> = used.shared.iter().map(|(id, _)| id.as_str()).collect();
            if let Some(line) = used.shared_line(limit)
                && ui.first_time(&format!("daily_limit shared\0{}", sharing.join("\0")))
            {
                ui.note(&line);
            }
            (used.used(), Some(used))
        }
        None => (0, None),
    };
    Ok((budget(opts.limit.or(d.max_per_run), d.daily_limit, today), daily))
}

/// A day, the `daily_limit` period.
const DAY: i64 = 86_400;

/// What `daily_limit` used in the last 24 hours: this campaign's letters
/// (all of its ledger's, as before accounts were recorded) and those the
/// other ledgers in its folder handed to the same relay account.
#[derive(Debug, Default)]
pub(crate) struct DailyUse {
    /// Each letter's last hand-over, newest first, every ledger together.
    times: Vec<i64>,
    /// The relay account (`host:port user`).
    account: String,
    /// Other campaigns that used the account: (campaign id, letters).
    pub(crate) shared: Vec<(String, u64)>,
    /// Ledgers that could not be read (their letters are not counted).
    pub(crate) unread: Vec<String>,
}

impl DailyUse {
    /// Letters handed over in the last 24 hours.
    pub(crate) fn used(&self) -> u64 {
        self.times.len() as u64
    }

    /// When one more letter fits `limit`: 24 hours after the `limit`-th
    /// newest hand-over (`None` while fewer went).
    pub(crate) fn frees_at(&self, limit: u64) -> Option<i64> {
        let i = usize::try_from(limit.checked_sub(1)?).ok()?;
        self.times.get(i).map(|t| t + DAY)
    }

    /// `daily_limit 3 is shared with campaign `a` (2 letters) through …`,
    /// when another campaign used the account.
    pub(crate) fn shared_line(&self, limit: u64) -> Option<String> {
        if self.shared.is_empty() {
            return None;
        }
        let who: Vec<String> = self
            .shared
            .iter()
            .map(|(id, n)| format!("campaign `{id}` ({})", crate::report::letters(*n)))
            .collect();
        Some(format!(
            "daily_limit {limit} is shared with {} through the same relay account `{}`: {} of {limit} \
             used in the last 24 h",
            who.join(", "),
            self.account,
            self.used()
        ))
    }
}

/// [`DailyUse`] now: this campaign's ledger (if any), then every other
/// `*.sqlite3` ledger beside it, read only and without its run lock (a
/// `send` may be running on it); one that cannot be read is named in
/// `unread`, never an error.
pub(crate) fn daily_use(campaign: &Campaign, ledger: Option<&Ledger>, now: i64) -> Result<DailyUse> {
    let config = &campaign.config;
    let since = now - DAY;
    let mut used = DailyUse::default();
    if let Some(l) = ledger {
        used.times = l.hand_overs(since, None)?;
    }
    let Some(smtp) = &config.smtp else {
        return Ok(used);
    };
    used.account = smtp.account();
    for path in crate::ledger::beside(&config.ledger_path) {
        match crate::ledger::hand_overs_elsewhere(&path, since, &used.account) {
            Ok(Some((id, times))) if !times.is_empty() => {
                used.shared.push((id, times.len() as u64));
                used.times.extend(times);
            }
            Ok(_) => {}
            Err(e) => used.unread.push(crate::ledger::unreadable(
                &e,
                "its letters are not counted against daily_limit",
            )),
        }
    }
    used.times.sort_unstable_by(|a, b| b.cmp(a));
    Ok(used)
}

/// `[schedule]` for one run: each target's allowance now.
pub(crate) struct Pace {
    /// Letters each target may receive now, in config order.
    pub(crate) allow: Vec<u64>,
    /// What holds each target, and when its next letter may go.
    held: Vec<(Allowance, Option<i64>)>,
}

impl Pace {
    /// Letters this run may send under the schedule: per target, the
    /// smaller of what is due and what it allows.
    pub(crate) fn letters(&self, plan: &Plan) -> u64 {
        self.allow
            .iter()
            .zip(&plan.per_target)
            .map(|(a, d)| (*a).min(*d))
            .sum()
    }
}

/// A target's letters for `[schedule]`: one per supporter routed to it in
/// today's file, and never fewer than it already received.
pub(crate) fn target_total(plan: &Plan, index: usize, sent: &Sent) -> u64 {
    plan.routed_per_target
        .get(index)
        .copied()
        .unwrap_or_default()
        .max(sent.letters)
}

/// Each target's allowance at `now` (`None` without `[schedule]`).
pub(crate) fn pace(campaign: &Campaign, ledger: &Ledger, plan: &Plan, now: i64) -> Result<Option<Pace>> {
    let Some(schedule) = &campaign.config.schedule else {
        return Ok(None);
    };
    let mut pace = Pace {
        allow: Vec::new(),
        held: Vec::new(),
    };
    for target in &campaign.config.targets {
        let key = target.key();
        let window = schedule.window(target.timezone.as_ref(), &key);
        let sent = ledger.sent_to(&key, now)?;
        let total = target_total(plan, target.index, &sent);
        let allowance = window.allowance(now, total, &sent);
        pace.allow.push(allowance.letters);
        pace.held.push((allowance, window.next_letter(now, total, &sent)));
    }
    Ok(Some(pace))
}

/// Why a run sends nothing: one line per limit or window that held it,
/// and when the next letter may go (the earliest, as `wake`).
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) lines: Vec<String>,
    pub(crate) wake: Option<i64>,
}

/// What held a run that sends nothing (`budget` and `daily`:
/// [`campaign_budget`]).
pub(crate) fn held_by(
    campaign: &Campaign,
    plan: &Plan,
    (budget, daily): (Option<u64>, Option<&DailyUse>),
    pace: Option<&Pace>,
) -> Held {
    let config = &campaign.config;
    let mut held = Held::default();
    if plan.due == 0 {
        return held;
    }
    let zone = config
        .schedule
        .as_ref()
        .map_or_else(jiff::tz::TimeZone::system, |s| s.timezone.clone());
    let mut earliest = |t: i64| held.wake = Some(held.wake.map_or(t, |w| w.min(t)));
    let mut lines = Vec::new();
    if budget == Some(0) {
        if let (Some(limit), Some(used)) = (config.delivery.daily_limit, daily)
            && used.used() >= limit
        {
            let when = used.frees_at(limit).map_or_else(String::new, |t| {
                earliest(t);
                format!(" — next letter allowed {}", crate::schedule::show(t, &zone))
            });
            let shared = if used.shared.is_empty() {
                String::new()
            } else {
                let ids: Vec<_> = used.shared.iter().map(|(id, _)| format!("`{id}`")).collect();
                format!(" (shared with {})", ids.join(", "))
            };
            lines.push(format!("daily_limit {limit}/{limit}{shared}{when}"));
        } else {
            lines.push("max_per_run / --limit is 0: nothing goes this run".to_owned());
        }
    }
    if let (Some(pace), Some(schedule)) = (pace, &config.schedule) {
        for (target, (allowance, next)) in config.targets.iter().zip(&pace.held) {
            let due = plan.per_target.get(target.index).copied().unwrap_or_default();
            if due == 0 || allowance.letters > 0 {
                continue;
            }
            let window = schedule.window(target.timezone.as_ref(), &target.key());
            let why = match allowance.limit {
                Limit::NotStarted => "its window has not opened".to_owned(),
                Limit::Closed => format!(
                    "outside its open hours ({}, {}, {})",
                    schedule.hours,
                    schedule.days_text(),
                    crate::schedule::zone_name(&window.tz)
                ),
                Limit::Share => "its share of the window so far went".to_owned(),
                Limit::Hourly => format!(
                    "per_target_hourly {0}/{0}",
                    schedule.per_target_hourly.unwrap_or_default()
                ),
                Limit::None => continue,
            };
            let when = next.map_or_else(String::new, |t| {
                earliest(t);
                format!(" — next letter allowed {}", window.show(t))
            });
            lines.push(format!("`{}`: {due} due, {why}{when}", target.key()));
        }
    }
    held.lines = lines;
    held
}

/// Pass 1: renders every letter, reports row problems, counts what is due.
/// Also returns the last line read. A signal (`stop`) ends it with 130.
pub(crate) fn scan(
    campaign: &Campaign,
    ledger: Option<&Ledger>,
    opts: &Options,
    now: i64,
    ui: &Ui,
    stop: &AtomicBool,
) -> Result<(Plan, u64)> {
    let file = campaign.config.supporters_file.display().to_string();
    let mut plan = Plan {
        per_target: vec![0; campaign.target_count()],
        routed_per_target: vec![0; campaign.target_count()],
        ..Plan::default()
    };
    let mut last_line = 0;
    for prepared in campaign.prepared(false)? {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted_early());
        }
        let prepared = prepared?;
        last_line = match &prepared {
            Prepared::Letters { supporter, .. } | Prepared::Unmatched { supporter, .. } => supporter.line,
            Prepared::Skipped(Skipped { line, .. }) | Prepared::Duplicate(Duplicate { line, .. }) => *line,
        };
        match prepared {
            Prepared::Skipped(skipped) => {
                plan.skipped_rows += 1;
                ui.problem(&format!("{file}:{}: {} (skipped)", skipped.line, skipped.reason));
                quiet_first_sight(campaign, ledger, opts, &skipped, now, ui)?;
            }
            Prepared::Duplicate(Duplicate {
                line,
                email,
                first_line,
            }) => {
                plan.duplicates += 1;
                ui.problem(&format!(
                    "{file}:{line}: `{email}` repeats line {first_line} (ignored)"
                ));
            }
            Prepared::Unmatched { label, .. } => plan.unmatched.add(label),
            Prepared::Letters { supporter, letters } => {
                plan.supporters += 1;
                let due_before = plan.due;
                for (target, built) in letters {
                    let i = target.index;
                    plan.routed_per_target[i] += 1;
                    let record = match ledger {
                        Some(l) => l.get(&supporter.key, &target.key())?,
                        None => None,
                    };
                    match decide(record.as_ref(), opts, now) {
                        Decision::Due => {
                            plan.due += 1;
                            plan.per_target[i] += 1;
                            plan.count_letter(&built);
                            if plan.shown.len() < SHOWN {
                                plan.shown.push(built.clone());
                            }
                            if plan.first.is_none() {
                                plan.first = Some(built);
                            }
                        }
                        Decision::Sent => plan.already_sent += 1,
                        Decision::Waiting => plan.waiting += 1,
                        Decision::HeldFailed => plan.held_failed += 1,
                        Decision::HeldUnknown => plan.held_unknown += 1,
                        Decision::HeldByHand => plan.held_by_hand += 1,
                    }
                }
                if plan.due > due_before {
                    plan.due_supporters += 1;
                }
            }
        }
    }
    if stop.load(Ordering::Relaxed) {
        return Err(interrupted_early());
    }
    let skipped = SkippedRows {
        invalid: plan.skipped_rows,
        duplicates: plan.duplicates,
        unmatched: plan.unmatched.total,
    };
    if let Some(e) = skipped.every_row(&file, plan.supporters) {
        bail!(e);
    }
    Ok((plan, last_line))
}

/// Under `-q` (cron), a row seen skipped for the first time is still named,
/// once: printed and recorded `skipped` now, so the next run (and pass 2)
/// knows it. A row already recorded skipped for the same reason stays quiet.
fn quiet_first_sight(
    campaign: &Campaign,
    ledger: Option<&Ledger>,
    opts: &Options,
    skipped: &Skipped,
    now: i64,
    ui: &Ui,
) -> Result<()> {
    let Some(ledger) = ledger.filter(|_| ui.quiet && !opts.dry_run) else {
        return Ok(());
    };
    let Skipped { line, key, reason } = skipped;
    let mut fresh = false;
    for t in campaign.unconditional_targets() {
        // Only what `skip` would write is news; a sent letter stays sent.
        let news = match ledger.get(key, &t.key())? {
            None => true,
            Some(r) if r.state == State::Skipped => r.reply.as_deref() != Some(reason.as_str()),
            Some(r) => matches!(r.state, State::Pending | State::Deferred),
        };
        if news {
            fresh = true;
            ledger.skip(key, &t.key(), *line, reason, now)?;
        }
    }
    if fresh {
        let file = campaign.config.supporters_file.display();
        ui.failure(&format!("{file}:{line}: {reason} (skipped)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: State, next: Option<i64>) -> Record {
        Record {
            supporter: "a@x.org".into(),
            target: "t@x.org".into(),
            state,
            attempts: 1,
            line: Some(2),
            message_id: None,
            reply: None,
            next_attempt_at: next,
            sent_at: None,
            held: false,
        }
    }

    #[test]
    fn resume_rules() {
        let plain = Options::default();
        let all = Options {
            retry_failed: true,
            resend_unknown: true,
            ..Options::default()
        };
        assert_eq!(decide(None, &plain, 0), Decision::Due);
        assert_eq!(decide(Some(&record(State::Sent, None)), &all, 0), Decision::Sent);
        assert_eq!(
            decide(Some(&record(State::Deferred, Some(100))), &plain, 99),
            Decision::Waiting
        );
        assert_eq!(
            decide(Some(&record(State::Deferred, Some(100))), &plain, 100),
            Decision::Due
        );
        assert_eq!(
            decide(Some(&record(State::Failed, None)), &plain, 0),
            Decision::HeldFailed
        );
        assert_eq!(decide(Some(&record(State::Failed, None)), &all, 0), Decision::Due);
        assert_eq!(
            decide(Some(&record(State::Unknown, None)), &plain, 0),
            Decision::HeldUnknown
        );
        assert_eq!(
            decide(Some(&record(State::Unknown, None)), &all, 0),
            Decision::Due
        );
        assert_eq!(
            decide(Some(&record(State::Skipped, None)), &plain, 0),
            Decision::Due
        );
        // A letter skipped by hand waits for `requeue`, whatever the flags.
        let held = Record {
            held: true,
            ..record(State::Skipped, None)
        };
        assert_eq!(decide(Some(&held), &plain, 0), Decision::HeldByHand);
        assert_eq!(decide(Some(&held), &all, 0), Decision::HeldByHand);
    }

    #[test]
    fn one_budget_rule() {
        // (per run, daily limit, handed over today) -> budget
        let table = [
            (None, None, 0, None),
            (Some(10), None, 5, Some(10)),
            // A fresh campaign (no ledger) still has its daily limit.
            (None, Some(3), 0, Some(3)),
            (None, Some(3), 2, Some(1)),
            (None, Some(3), 9, Some(0)),
            (Some(10), Some(3), 1, Some(2)),
            (Some(1), Some(3), 0, Some(1)),
        ];
        for (per_run, daily, today, want) in table {
            assert_eq!(
                budget(per_run, daily, today),
                want,
                "{per_run:?} {daily:?} {today}"
            );
        }
    }
}
