//! `mailer status`: counts by state agreeing with `check`, the last run,
//! each target by name, and every failure with its reply; `--failed` lists
//! only what needs a person.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::campaign::Campaign;
use crate::census::{self, Origin};
use crate::config::Config;
use crate::exit::Exit;
use crate::ledger::{Ledger, State};
use crate::report::status::{
    DailyLimit, Moment, Problem, Progress, RefusedCopies, ScheduleProgress, SharedUse, StatusReport,
    TargetCounts, TargetProgress, utc_minute,
};
use crate::report::{self, StatusCounts, out};
use crate::ui::{Ui, printable};

/// Runs `mailer status [--json] [--failed]` at `now` (Unix seconds).
pub(crate) fn run(campaign: &Campaign, json: bool, failed_only: bool, ui: &Ui, now: i64) -> Result<Exit> {
    let config = &campaign.config;
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    let mut found = StatusReport {
        file: config.supporters_file.file_name().map_or_else(
            || config.supporters_file.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ),
        ..StatusReport::default()
    };
    // Letters to each target in today's file, for `[schedule]`.
    let routed = walk(campaign, ledger.as_ref(), &mut found)?;
    // `--failed` lists letters only; `--json` always carries the schedule.
    if json || !failed_only {
        found.schedule = schedule(campaign, ledger.as_ref(), &routed, now, ui)?;
    }
    if json {
        out(&report::status::json(&found)?)?;
        return Ok(Exit::Done);
    }
    found.last_run = ledger.as_ref().map(Ledger::last_run).transpose()?.flatten();
    found.bounces = ledger
        .as_ref()
        .map(Ledger::bounces)
        .transpose()?
        .unwrap_or_default();
    found.ledger = ledger.is_some();
    if failed_only {
        out(&report::status::attention(&found))?;
    } else {
        out(&report::status::text(&found))?;
    }
    Ok(Exit::Done)
}

/// One walk over the CSV and the ledger: the counts, each target's row, the
/// letters that need a look; returns each target's letters in today's file.
#[allow(clippy::too_many_lines)] // one walk feeding one report
fn walk(
    campaign: &Campaign,
    ledger: Option<&Ledger>,
    found: &mut StatusReport,
) -> Result<BTreeMap<String, u64>> {
    let config = &campaign.config;
    let file = found.file.clone();
    let mut counts = StatusCounts {
        campaign: config.campaign.id.clone(),
        ..StatusCounts::default()
    };
    // Targets in config order, then targets only the ledger knows.
    let mut targets: Vec<(String, TargetCounts)> = config
        .targets
        .iter()
        .map(|t| {
            (
                t.key(),
                TargetCounts {
                    label: target_label(t.name.as_deref(), &t.key()),
                    states: BTreeMap::new(),
                },
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
    census::walk(campaign, ledger, |letter| {
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
            .position(|(k, _)| *k == letter.target)
            .unwrap_or_else(|| {
                targets.push((
                    letter.target.clone(),
                    TargetCounts {
                        label: label.clone(),
                        states: BTreeMap::new(),
                    },
                ));
                targets.len() - 1
            });
        *targets[slot]
            .1
            .states
            .entry(state_name(letter.state))
            .or_default() += 1;
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
            copies.push(RefusedCopies {
                supporter: letter.supporter,
                target: letter.target,
                refused: letter.refused_copies,
            });
        }
    })?;
    *found = StatusReport {
        counts,
        configured_targets: config.targets.len() as u64,
        routed: campaign.is_routed(),
        ready,
        invalid,
        departed,
        departed_unsent,
        next_retry,
        retrying,
        targets: targets.into_iter().map(|(_, t)| t).collect(),
        problems,
        copies,
        delivered,
        invalid_rows,
        bounced_letters,
        ..std::mem::take(found)
    };
    Ok(routed)
}

/// Each target's progress against `[schedule]`, and what `daily_limit`
/// used and when it frees (warning of a ledger beside it could not read);
/// `None` without `[schedule]`.
///
/// A target's state at `now`, from its letters in today's file and the
/// ledger: `behind by N` when N letters could go now (the schedule's share
/// of the open time passed so far, less what it received, within
/// `per_target_hourly`; without `end` every letter due); `on schedule` when
/// none could, with when the next may; `window closed` once `end` passed
/// with letters still due; `outside its open hours until …`; `window
/// opens …` before `start`; `all handed over`.
fn schedule(
    campaign: &Campaign,
    ledger: Option<&Ledger>,
    routed: &BTreeMap<String, u64>,
    now: i64,
    ui: &Ui,
) -> Result<Option<ScheduleProgress>> {
    let config = &campaign.config;
    let Some(schedule) = &config.schedule else {
        return Ok(None);
    };
    let mut progress = ScheduleProgress::default();
    for target in &config.targets {
        let key = target.key();
        let sent = ledger
            .map(|l| l.sent_to(&key, now))
            .transpose()?
            .unwrap_or_default();
        let total = routed.get(&key).copied().unwrap_or_default().max(sent.letters);
        let due = total - sent.letters;
        let window = schedule.window(target.timezone.as_ref(), &key);
        let moment = |unix: i64| Moment {
            unix,
            shown: window.show(unix),
        };
        let state = if due == 0 {
            Progress::AllHandedOver
        } else if let Some(start) = window.start().filter(|s| now < *s) {
            Progress::WindowOpens { opens: moment(start) }
        } else if window.end().is_some_and(|e| now >= e) {
            Progress::WindowClosed {
                still_due: due,
                per_target_hourly: schedule.per_target_hourly,
            }
        } else if !window.is_open(now) {
            Progress::OutsideOpenHours {
                until: window.next_open(now).map(moment),
            }
        } else {
            let allowance = window.allowance(now, total, &sent);
            if allowance.letters > 0 {
                Progress::Behind {
                    behind_by: allowance.letters,
                }
            } else {
                Progress::OnSchedule {
                    next_letter: window.next_letter(now, total, &sent).map(moment),
                }
            }
        };
        progress.targets.push(TargetProgress {
            target: key.clone(),
            name: target.name.clone().filter(|n| !n.trim().is_empty()),
            handed_over: sent.letters,
            letters: total,
            state,
        });
    }
    // Without a ledger yet too: other campaigns may have used the account.
    if let Some(limit) = config.delivery.daily_limit {
        let daily = crate::delivery::daily_use(campaign, ledger, now)?;
        // As `send` says: the use shown leaves these ledgers' letters out.
        for why in &daily.unread {
            ui.warn(why);
        }
        let used = daily.used();
        let next_letter_allowed = if used >= limit {
            daily.frees_at(limit).map(|t| Moment {
                unix: t,
                shown: crate::schedule::show(t, &schedule.timezone),
            })
        } else {
            None
        };
        progress.daily_limit = Some(DailyLimit {
            used,
            limit,
            shared: daily
                .shared
                .into_iter()
                .map(|(campaign, letters)| SharedUse { campaign, letters })
                .collect(),
            next_letter_allowed,
        });
    }
    Ok(Some(progress))
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
