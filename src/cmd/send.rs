//! `mailer send`: plan → confirm → deliver → record → report.
//!
//! Pass 1 renders every letter (a template bug stops the run before anything
//! goes) and counts what is due. Pass 2 streams the rows again and hands due
//! letters to `concurrency` workers, each owning one reused SMTP connection.
//! The ledger decides what is due; the transport says how each letter went.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lettre::message::dkim::DkimConfig;

use crate::campaign::{Campaign, Prepared, TemplateError};
use crate::clock::Clock;
use crate::exit::{Exit, Failure};
use crate::ledger::{Key, Ledger, Outcome, Record, SharedLedger, State};
use crate::message::Built;
use crate::report::{self, Plan, Summary};
use crate::roster::{Repeat, Skip};
use crate::throttle::{Throttle, sleep_until};
use crate::transport::{ConnectError, Connection, Connector, Delivery, Reply};
use crate::ui::Ui;

/// `send` flags, free of clap.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Do everything but talk to the server; write nothing.
    pub dry_run: bool,
    /// At most this many letters (overrides `max_per_run`).
    pub limit: Option<u64>,
    /// Skip the confirmation.
    pub yes: bool,
    /// Retry `failed` letters.
    pub retry_failed: bool,
    /// Resend `unknown` letters.
    pub resend_unknown: bool,
    /// Keep running until every letter went at its scheduled time.
    pub follow: bool,
}

/// How often a following run looks again when no limit names a time.
const FOLLOW_POLL: i64 = 60;

/// Distinct supporters whose letters the server refused for policy (5.7.x),
/// with no letter delivered in between, that stop the run as a sender problem.
const POLICY_STREAK: usize = 3;

/// Whether a letter goes this run, given its ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
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
}

/// The ledger's resume rules.
#[must_use]
pub fn decide(record: Option<&Record>, opts: &Options, now: i64) -> Decision {
    let Some(r) = record else { return Decision::Due };
    match r.state {
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

/// Runs `mailer send`.
// NOTE: long until the engine moves out of this command (issue 13).
#[allow(clippy::too_many_lines)]
pub fn run(campaign: &Campaign, opts: &Options, ui: &Ui, clock: &Arc<dyn Clock>) -> Result<Exit> {
    // From the first moment: a signal in any phase ends the run with 130.
    let interrupt = Interrupt::register()?;
    crate::bounces::refuse_misaligned(campaign)?;
    if opts.dry_run {
        return dry_run(campaign, opts, ui, clock.as_ref(), &interrupt.stop);
    }
    let config = &campaign.config;
    let connector = Connector::new(config.smtp()?)?;
    let ledger = Ledger::open(&config.ledger_path, &config.campaign.id)?;
    if config.bounces.as_ref().is_some_and(|b| b.return_path.is_some()) {
        ledger.verp_secret()?;
    }
    ui.detail(&format!(
        "config `{}`, supporters `{}`, ledger `{}`",
        config.path.display(),
        config.supporters_file.display(),
        config.ledger_path.display()
    ));
    let recovered = ledger.recover(clock.unix())?;
    if recovered > 0 {
        ui.warn(&format!(
            "{recovered} letter(s) were in flight when an earlier run stopped; they may have been \
             delivered and are now `unknown`\n\nhint: after checking with your relay, \
             `mailer send --resend-unknown` resends them with the same Message-ID"
        ));
    }

    if opts.follow {
        return follow(campaign, opts, ui, clock, &interrupt, ledger, connector);
    }
    round(campaign, opts, ui, clock, &interrupt, ledger, connector, true).map(|r| r.exit)
}

/// How one round of sending ended.
struct Round {
    exit: Exit,
    /// Letters are still due or waiting (a following run goes on).
    left: bool,
    /// When to look again, if the round sent nothing (`None`: at once).
    wake: Option<i64>,
    /// Given back for the next round: the lock stays held.
    ledger: Ledger,
    connector: Connector,
}

/// One run's worth: plan, confirm (`ask`), deliver, record, report.
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
fn round(
    campaign: &Campaign,
    opts: &Options,
    ui: &Ui,
    clock: &Arc<dyn Clock>,
    interrupt: &Interrupt,
    ledger: Ledger,
    connector: Connector,
    ask: bool,
) -> Result<Round> {
    let config = &campaign.config;
    let started = Instant::now();
    // Pass 1: render everything, count what is due.
    let now = clock.unix();
    let (plan, scanned) = scan(campaign, Some(&ledger), opts, now, ui, &interrupt.stop)?;
    let budget = budget(campaign, &ledger, opts, now)?;
    let pace = pace(campaign, &ledger, &plan, now)?;
    let to_send = pace
        .as_ref()
        .map_or(plan.due, |p| p.letters(&plan))
        .min(budget.unwrap_or(u64::MAX));
    ui.detail(&format!(
        "due {}, this run {to_send} (budget {budget:?}); already sent {}, waiting {}, held failed {}, held unknown {}",
        plan.due, plan.already_sent, plan.waiting, plan.held_failed, plan.held_unknown
    ));
    let mut summary = Summary {
        plan,
        ..Summary::default()
    };
    if to_send == 0 {
        summary.not_reached = summary.plan.due;
        let held = held_by(campaign, &ledger, &summary.plan, budget, pace.as_ref(), now)?;
        if !(opts.follow && summary.plan.due > 0) {
            report::print_summary(&summary, budget, ui);
        }
        for line in &held.lines {
            ui.note(line);
        }
        return Ok(Round {
            exit: Exit::Done,
            left: summary.plan.due + summary.plan.waiting > 0,
            wake: Some(held.wake.unwrap_or(now + FOLLOW_POLL)),
            ledger,
            connector,
        });
    }
    if ask
        && ui.interactive()
        && !opts.yes
        && let Some(changed) = campaign.changed_since_sent(&ledger)?
    {
        ui.warn(&changed.to_string());
    }
    if ui.interactive()
        && !opts.yes
        && !interrupt.at_once(|| confirm(campaign, &summary.plan, to_send, &connector, ui))?
    {
        ui.note("Nothing sent.");
        return Ok(Round {
            exit: Exit::Done,
            left: false,
            wake: None,
            ledger,
            connector,
        });
    }
    interrupt.check()?;

    // Pass 2: deliver.
    let shared = Arc::new(Shared {
        ledger: SharedLedger::new(ledger),
        connector,
        clock: Arc::clone(clock),
        dkim: campaign.dkim(),
        retries: config.delivery.retries,
        stop: Arc::clone(&interrupt.stop),
        halt: AtomicBool::new(false),
        reason: Mutex::new(None),
        handed_over: AtomicU64::new(0),
        policy: Mutex::new(Breaker::default()),
        throttle: Mutex::new(Throttle::new(config.delivery.rate)),
        stalls: AtomicU32::new(0),
        ui: ui.clone(),
        // Shown before the first connection, so a slow or stalled server
        // shows its time passing and each retry.
        bar: ui.progress(to_send),
    });
    let mut pass2 = Pass2 {
        scanned,
        quota: pace.map(|p| p.allow),
        ..Pass2::default()
    };
    let dispatched = dispatch(campaign, opts, &shared, to_send, &mut summary, &mut pass2, ui);
    let shared = Arc::try_unwrap(shared).ok().context("workers still running")?;
    let ledger = shared.ledger.into_inner();
    let _ = ledger.checkpoint();
    let halt = shared.reason.into_inner().unwrap_or_else(PoisonError::into_inner);
    let requeued = shared
        .policy
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .requeued;
    // Those letters were reported failed, then kept for a later run.
    summary.failed = summary.failed.saturating_sub(requeued);
    summary.deferred += requeued;
    let went = shared.handed_over.load(Ordering::SeqCst);
    let interrupted = shared.stop.load(Ordering::SeqCst);
    // Pass 1 counted letters that pass 2 did not find: the file changed.
    let missing = pass2.missing(to_send, halt.is_some() || interrupted);
    summary.elapsed = started.elapsed();
    summary.not_reached = summary.plan.due.saturating_sub(summary.attempted());
    summary.stopped = halt.is_some() || interrupted || missing > 0;
    report::print_summary(&summary, budget, ui);
    let connector = shared.connector;
    let exit = verdict(
        campaign,
        Ended {
            dispatched,
            halt,
            went,
            interrupted,
            unrendered: pass2.unrendered,
            missing,
        },
        &summary,
        ui,
    )?;
    Ok(Round {
        exit,
        left: true,
        wake: None,
        ledger,
        connector,
    })
}

/// How pass 2 ended, for [`verdict`].
struct Ended {
    /// The dispatcher's own error (the file, the ledger).
    dispatched: Result<()>,
    halt: Option<Halt>,
    /// Letters handed to the server this run.
    went: u64,
    interrupted: bool,
    /// See [`Pass2::unrendered`].
    unrendered: u64,
    /// Letters pass 1 counted that pass 2 did not find.
    missing: u64,
}

/// The exit code and the closing error. From the first hand-over on, no
/// error may say "nothing was sent" (exit 1): the run ends with 3, or 130
/// when a signal stopped it.
fn verdict(campaign: &Campaign, ended: Ended, summary: &Summary, ui: &Ui) -> Result<Exit> {
    let Ended {
        dispatched,
        halt,
        went,
        interrupted,
        unrendered,
        missing,
    } = ended;
    if let Err(e) = dispatched {
        let e = e.context("the run stopped");
        return Err(match (went > 0, interrupted) {
            (false, false) => e,
            (false, true) => Failure::error(Exit::Interrupted, format!("{e:#}")),
            (true, _) => Failure::error(
                if interrupted {
                    Exit::Interrupted
                } else {
                    Exit::Partial
                },
                letters_went(&format!("{e:#}"), went),
            ),
        });
    }
    if interrupted {
        ui.error(if went > 0 {
            "interrupted: the letters in flight were recorded"
        } else {
            "interrupted before any letter went: nothing was sent"
        });
        return Ok(Exit::Interrupted);
    }
    if let Some(halt) = halt {
        let (exit, text) = match (&halt, went > 0) {
            // Nothing went: "try later" if the server was away, else the
            // setup (TLS, login, policy) needs a person.
            (Halt::Unreachable(_), false) => (Exit::TryLater, halt.to_string()),
            (_, false) => (Exit::BadInput, halt.to_string()),
            // The policy stop says itself what became of the letters.
            (Halt::Policy { .. }, true) => (Exit::Partial, halt.to_string()),
            (_, true) => (Exit::Partial, letters_went(&halt.to_string(), went)),
        };
        return Err(Failure::error(exit, text));
    }
    if unrendered > 0 || missing > 0 {
        let file = campaign.config.supporters_file.display();
        let mut text = format!("the supporters file `{file}` changed during the run:");
        if unrendered > 0 {
            let _ = write!(
                text,
                " {unrendered} letter(s) of rows added or changed since it started cannot be rendered \
                 (listed above) and were not sent;"
            );
        }
        if missing > 0 {
            let _ = write!(
                text,
                " {missing} letter(s) counted when it started were no longer in the file;"
            );
        }
        text.push_str(
            " everything else went as reported\n\nhint: run `mailer check`, fix what it shows, \
             then `mailer send` again: it sends only the letters still due",
        );
        return Err(Failure::error(Exit::Partial, text));
    }
    Ok(if summary.deferred + summary.failed + summary.unknown > 0 {
        Exit::Partial
    } else {
        Exit::Done
    })
}

/// An error after letters went: says so and what to do (exit 1 would
/// claim nothing was sent).
fn letters_went(text: &str, handed_over: u64) -> String {
    let (main, hint) = text
        .split_once("\n\nhint: ")
        .unwrap_or((text, "fix the problem above, then run `mailer send` again"));
    format!(
        "{main}\nletters already went: {handed_over} were handed to the server this run, and each \
         is recorded in the ledger (none is sent twice)\n\nhint: {hint}; it sends only the letters \
         still due"
    )
}

/// The terminal prompt; true to go on.
fn confirm(campaign: &Campaign, plan: &Plan, to_send: u64, connector: &Connector, ui: &Ui) -> bool {
    let smtp = campaign.config.smtp.as_ref();
    let who = smtp
        .and_then(|s| s.username.as_deref())
        .map_or(String::new(), |u| format!(" as {u}"));
    let targets = campaign.target_count() as u64;
    ui.confirm(&format!(
        "About to send {} letter{} ({} supporter{} × {targets} target{}) via {}{who} — continue?",
        report::thousands(to_send),
        plural(to_send),
        report::thousands(plan.supporters),
        plural(plan.supporters),
        plural(targets),
        connector.describe(),
    ))
}

/// What pass 2 found in the file.
#[derive(Debug, Default)]
struct Pass2 {
    /// The last line pass 1 read: rows past it were added during the run.
    scanned: u64,
    /// Letters handed to the workers.
    dispatched: u64,
    /// Letters of rows that pass 1 did not render (added or changed since)
    /// and that cannot be rendered: reported, not sent.
    unrendered: u64,
    /// The whole file was read (not stopped by the budget or a halt).
    exhausted: bool,
    /// `[schedule]`: letters each target may still receive this run.
    quota: Option<Vec<u64>>,
}

impl Pass2 {
    /// Letters pass 1 counted that this pass did not find in the file (it
    /// changed), unless the run stopped early.
    fn missing(&self, to_send: u64, stopped: bool) -> u64 {
        if self.exhausted && !stopped {
            to_send.saturating_sub(self.dispatched)
        } else {
            0
        }
    }
}

/// Pass 2: streams the rows again, records skipped ones, and feeds due
/// letters to the workers (which pace themselves through the shared
/// throttle) until `to_send` went out or the run halts. Counts every worker
/// event into `summary`.
#[allow(clippy::too_many_lines)]
fn dispatch(
    campaign: &Campaign,
    opts: &Options,
    shared: &Arc<Shared>,
    to_send: u64,
    summary: &mut Summary,
    pass2: &mut Pass2,
    ui: &Ui,
) -> Result<()> {
    let config = &campaign.config;
    let clock = Arc::clone(&shared.clock);
    // The dispatcher reads through its own connection (WAL readers never
    // wait), so it does not queue behind the workers' commits.
    let reader = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?
        .context("the ledger disappeared during the run")?;
    let verp = crate::bounces::Verp::new(config, &reader)?;
    let (job_tx, job_rx) = sync_channel::<Job>(0);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (event_tx, event_rx) = std::sync::mpsc::channel::<Event>();
    let bar = shared.bar.clone();
    bar.set_message(format!("connecting to {}", shared.connector.describe()));
    let mut first = first_connection(shared);
    bar.set_message("0 not delivered");
    let workers: Vec<_> = (0..config.delivery.concurrency)
        .map(|_| {
            let (shared, rx, tx) = (Arc::clone(shared), Arc::clone(&job_rx), event_tx.clone());
            let conn = first.take();
            std::thread::spawn(move || worker(&shared, &rx, &tx, conn))
        })
        .collect();
    drop(event_tx);
    let file = config.supporters_file.display().to_string();
    let mut feed = || -> Result<()> {
        for row in campaign.roster()? {
            // A file that cannot be read any more stops the feed; `run`
            // says what already went.
            let row = row?;
            let line = row.line();
            // Pass 1 reported the rows it read; rows added since are new.
            let new_row = line > pass2.scanned;
            let prepared = match campaign.prepare(row, &file, true) {
                Ok(p) => p,
                // Pass 1 rendered every row it read, so this one was added
                // or changed since: its problem, not the whole run's.
                Err(e) if e.is::<TemplateError>() => {
                    pass2.unrendered += config.targets.len() as u64;
                    bar.suspend(|| ui.failure(&format!("{file}:{line}: not sent: {e:#}")));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (supporter, letters) = match prepared {
                Prepared::Letters { supporter, letters } => (supporter, letters),
                Prepared::Skipped(Skip { line, key, reason }) => {
                    if new_row {
                        bar.suspend(|| ui.problem(&format!("{file}:{line}: {reason} (skipped)")));
                    }
                    let ledger = shared.ledger();
                    for t in &config.targets {
                        ledger.skip(&key, &t.key(), line, &reason, clock.unix())?;
                    }
                    continue;
                }
                Prepared::Duplicate(Repeat {
                    line,
                    email,
                    first_line,
                }) => {
                    if new_row {
                        bar.suspend(|| {
                            ui.problem(&format!(
                                "{file}:{line}: `{email}` repeats line {first_line} (ignored)"
                            ));
                        });
                    }
                    continue;
                }
            };
            // Row by row, each target in turn: targets interleave fairly.
            for (i, (target, mut built)) in config.targets.iter().zip(letters).enumerate() {
                // `[schedule]`: this target's share for this run went.
                if pass2.quota.as_ref().is_some_and(|q| q[i] == 0) {
                    continue;
                }
                let target_key = target.key();
                let record = reader.get(&supporter.key, &target_key)?;
                if decide(record.as_ref(), opts, clock.unix()) != Decision::Due {
                    continue;
                }
                if pass2.dispatched >= to_send || shared.halted() {
                    return Ok(());
                }
                if let Some(q) = pass2.quota.as_mut() {
                    q[i] -= 1;
                }
                if let Some(verp) = &verp {
                    built.from = verp.address(&supporter.key, &target_key)?;
                }
                let job = Job {
                    supporter: supporter.key.clone(),
                    target: target_key,
                    line: supporter.line,
                    held: record.as_ref().is_some_and(held_by_breaker),
                    built,
                };
                if job_tx.send(job).is_err() {
                    return Ok(());
                }
                pass2.dispatched += 1;
                while let Ok(event) = event_rx.try_recv() {
                    summary.count(&event, ui, &bar);
                }
            }
        }
        pass2.exhausted = true;
        Ok(())
    };
    let result = feed();
    drop(job_tx);
    for event in &event_rx {
        summary.count(&event, ui, &bar);
    }
    for w in workers {
        let _ = w.join();
    }
    bar.finish_and_clear();
    result
}

/// `[schedule]` for one run: each target's allowance now.
struct Pace {
    /// Letters each target may receive now, in config order.
    allow: Vec<u64>,
    /// What holds each target, and when its next letter may go.
    held: Vec<(crate::schedule::Allowance, Option<i64>)>,
}

impl Pace {
    /// Letters this run may send under the schedule: per target, the
    /// smaller of what is due and what it allows.
    fn letters(&self, plan: &Plan) -> u64 {
        self.allow
            .iter()
            .zip(&plan.per_target)
            .map(|(a, d)| (*a).min(*d))
            .sum()
    }
}

/// Each target's allowance at `now` (`None` without `[schedule]`). A
/// target's total is its letters in today's CSV: one per valid supporter.
fn pace(campaign: &Campaign, ledger: &Ledger, plan: &Plan, now: i64) -> Result<Option<Pace>> {
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
        let total = plan.supporters.max(sent.letters);
        let allowance = window.allowance(now, total, &sent);
        pace.allow.push(allowance.letters);
        pace.held.push((allowance, window.next_letter(now, total, &sent)));
    }
    Ok(Some(pace))
}

/// Why a run sends nothing: one line per limit or window that held it,
/// and when the next letter may go (the earliest, as `wake`).
struct Held {
    lines: Vec<String>,
    wake: Option<i64>,
}

fn held_by(
    campaign: &Campaign,
    ledger: &Ledger,
    plan: &Plan,
    budget: Option<u64>,
    pace: Option<&Pace>,
    now: i64,
) -> Result<Held> {
    use crate::schedule::Limit;
    let config = &campaign.config;
    let mut held = Held {
        lines: Vec::new(),
        wake: None,
    };
    if plan.due == 0 {
        return Ok(held);
    }
    let zone = config
        .schedule
        .as_ref()
        .map_or_else(jiff::tz::TimeZone::system, |s| s.timezone.clone());
    let mut earliest = |t: i64| held.wake = Some(held.wake.map_or(t, |w| w.min(t)));
    let mut lines = Vec::new();
    if budget == Some(0) {
        if let Some(limit) = config.delivery.daily_limit
            && ledger.handed_over_since(now - 86_400)? >= limit
        {
            let free = ledger
                .nth_latest_hand_over(now - 86_400, limit)?
                .map(|t| t + 86_400);
            let when = free.map_or_else(String::new, |t| {
                earliest(t);
                format!(" — next letter allowed {}", crate::schedule::show(t, &zone))
            });
            lines.push(format!("daily_limit {limit}/{limit}{when}"));
        } else {
            lines.push("max_per_run / --limit is 0: nothing goes this run".to_owned());
        }
    }
    if let (Some(pace), Some(schedule)) = (pace, &config.schedule) {
        for ((target, (allowance, next)), due) in config.targets.iter().zip(&pace.held).zip(&plan.per_target)
        {
            if *due == 0 || allowance.letters > 0 {
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
    Ok(held)
}

/// `send --dry-run` with `[schedule]`: per target, its letters, window, open
/// hours and zone, letters per day (if each goes at its time), and when its
/// next letter would go.
fn schedule_plan(campaign: &Campaign, ledger: Option<&Ledger>, plan: &Plan, now: i64) -> Result<String> {
    let Some(schedule) = &campaign.config.schedule else {
        return Ok(String::new());
    };
    let mut text = String::new();
    for target in &campaign.config.targets {
        let key = target.key();
        let window = schedule.window(target.timezone.as_ref(), &key);
        let sent = match ledger {
            Some(l) => l.sent_to(&key, now)?,
            None => crate::schedule::Sent::default(),
        };
        let total = plan.supporters.max(sent.letters);
        let _ = writeln!(
            text,
            "\nSchedule for {}: {total} letter{}, {} handed over",
            target.mailbox(),
            plural(total),
            sent.letters
        );
        let bound = |t: Option<i64>, none: &str| t.map_or_else(|| none.to_owned(), |t| window.show(t));
        let _ = writeln!(
            text,
            "  window   {} → {}",
            bound(window.start(), "the first letter"),
            bound(window.end(), "open-ended")
        );
        let _ = writeln!(
            text,
            "  open     {}, {} ({})",
            schedule.hours,
            schedule.days_text(),
            crate::schedule::zone_name(&window.tz)
        );
        if let Some(n) = schedule.per_target_hourly {
            let _ = writeln!(text, "  hourly   at most {n}");
        }
        for (i, (date, n)) in window.per_day(now, total, &sent).iter().enumerate() {
            let label = if i == 0 { "per day " } else { "        " };
            let _ = writeln!(text, "  {label} {date}  {n:>6}");
        }
        let next = window
            .next_letter(now, total, &sent)
            .map_or_else(|| "none: every letter went".to_owned(), |t| window.show(t));
        let _ = writeln!(text, "  next     {next}");
    }
    Ok(text)
}

/// `send --follow`: rounds until every letter went, sleeping (holding the
/// ledger's lock) until the next letter's time; each round re-reads the
/// supporters file, so new signups join.
fn follow(
    campaign: &Campaign,
    opts: &Options,
    ui: &Ui,
    clock: &Arc<dyn Clock>,
    interrupt: &Interrupt,
    mut ledger: Ledger,
    mut connector: Connector,
) -> Result<Exit> {
    let mut exit = Exit::Done;
    let mut ask = true;
    loop {
        let r = round(campaign, opts, ui, clock, interrupt, ledger, connector, ask)?;
        (ledger, connector, ask) = (r.ledger, r.connector, false);
        if r.exit == Exit::Interrupted {
            return Ok(Exit::Interrupted);
        }
        if r.exit != Exit::Done {
            exit = r.exit;
        }
        if !r.left {
            ui.note("Every letter due was handed over.");
            return Ok(exit);
        }
        // After a round that sent, look again at once; else sleep until
        // the next letter's time.
        let Some(wake) = r.wake else { continue };
        if !sleep_until_wall(clock.as_ref(), wake, &interrupt.stop) {
            ui.error("interrupted while waiting for the next letter's time");
            return Ok(Exit::Interrupted);
        }
    }
}

/// Sleeps until the wall clock reads `wake`, in short steps; false when a
/// signal came first.
fn sleep_until_wall(clock: &dyn Clock, wake: i64, stop: &AtomicBool) -> bool {
    let tick = Duration::from_millis(200);
    while clock.unix() < wake {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        clock.sleep(tick);
    }
    !stop.load(Ordering::SeqCst)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// How many letters this run may send: `--limit`/`max_per_run` and the daily quota.
fn budget(campaign: &Campaign, ledger: &Ledger, opts: &Options, now: i64) -> Result<Option<u64>> {
    let d = &campaign.config.delivery;
    let per_run = opts.limit.or(d.max_per_run);
    let daily = match d.daily_limit {
        Some(limit) => Some(limit.saturating_sub(ledger.handed_over_since(now - 86_400)?)),
        None => None,
    };
    Ok(match (per_run, daily) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Pass 1: renders every letter, reports row problems, counts what is due.
/// Also returns the last line read. A signal (`stop`) ends it with 130.
fn scan(
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
        ..Plan::default()
    };
    let mut last_line = 0;
    for prepared in campaign.prepared(false)? {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted_early());
        }
        let prepared = prepared?;
        last_line = match &prepared {
            Prepared::Letters { supporter, .. } => supporter.line,
            Prepared::Skipped(Skip { line, .. }) | Prepared::Duplicate(Repeat { line, .. }) => *line,
        };
        match prepared {
            Prepared::Skipped(Skip { line, reason, .. }) => {
                plan.skipped_rows += 1;
                ui.problem(&format!("{file}:{line}: {reason} (skipped)"));
            }
            Prepared::Duplicate(Repeat {
                line,
                email,
                first_line,
            }) => {
                plan.duplicates += 1;
                ui.problem(&format!(
                    "{file}:{line}: `{email}` repeats line {first_line} (ignored)"
                ));
            }
            Prepared::Letters { supporter, letters } => {
                plan.supporters += 1;
                for (i, (target, built)) in campaign.config.targets.iter().zip(letters).enumerate() {
                    let record = match ledger {
                        Some(l) => l.get(&supporter.key, &target.key())?,
                        None => None,
                    };
                    match decide(record.as_ref(), opts, now) {
                        Decision::Due => {
                            plan.due += 1;
                            plan.per_target[i] += 1;
                            if plan.first.is_none() {
                                plan.first = Some(built);
                            }
                        }
                        Decision::Sent => plan.already_sent += 1,
                        Decision::Waiting => plan.waiting += 1,
                        Decision::HeldFailed => plan.held_failed += 1,
                        Decision::HeldUnknown => plan.held_unknown += 1,
                    }
                }
            }
        }
    }
    if stop.load(Ordering::Relaxed) {
        return Err(interrupted_early());
    }
    Ok((plan, last_line))
}

fn dry_run(
    campaign: &Campaign,
    opts: &Options,
    ui: &Ui,
    clock: &dyn Clock,
    stop: &AtomicBool,
) -> Result<Exit> {
    let config = &campaign.config;
    let now = clock.unix();
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    let (plan, _) = scan(campaign, ledger.as_ref(), opts, now, ui, stop)?;
    let budget = match &ledger {
        Some(l) => budget(campaign, l, opts, now)?,
        None => opts
            .limit
            .or(config.delivery.max_per_run)
            .map(|p| p.min(config.delivery.daily_limit.unwrap_or(u64::MAX))),
    };
    report::print_plan(campaign, &plan, budget)?;
    if campaign.config.schedule.is_some() {
        report::out(&schedule_plan(campaign, ledger.as_ref(), &plan, now)?)?;
    }
    if let Some(changed) = ledger
        .as_ref()
        .map(|l| campaign.changed_since_sent(l))
        .transpose()?
        .flatten()
    {
        ui.warn(&changed.to_string());
    }
    Ok(Exit::Done)
}

/// SIGINT and SIGTERM, for the whole of `send`: each phase checks `stop`
/// (pass 1 per row, pass 2 before each letter and in every wait) and ends
/// with exit 130.
struct Interrupt {
    /// Set by the first signal.
    stop: Arc<AtomicBool>,
    /// While set, a signal ends the process at once with 130: for blocking
    /// waits (the prompt) when nothing is in flight and nothing is written.
    at_once: Arc<AtomicBool>,
}

impl Interrupt {
    fn register() -> Result<Interrupt> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let stop = Arc::new(AtomicBool::new(false));
        let at_once = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // A second signal while the first is being honoured exits at once;
            // the letter in flight stays `sending` and becomes `unknown` next run.
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))?;
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&at_once))?;
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        Ok(Interrupt { stop, at_once })
    }

    /// `Err` (exit 130) if a signal came.
    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(interrupted_early());
        }
        Ok(())
    }

    /// Runs `f` (a blocking wait that a signal would not cut short) so that
    /// a signal ends the process at once with 130.
    fn at_once<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.at_once.store(true, Ordering::SeqCst);
        let result = self.check().map(|()| f());
        self.at_once.store(false, Ordering::SeqCst);
        result
    }
}

/// A signal came before any letter went.
fn interrupted_early() -> anyhow::Error {
    Failure::error(
        Exit::Interrupted,
        "interrupted before any letter went: nothing was sent",
    )
}

/// One letter for a worker.
struct Job {
    supporter: String,
    target: String,
    line: u64,
    /// The policy breaker held it back once already: a refusal now is its own.
    held: bool,
    built: Built,
}

impl Job {
    fn key(&self) -> Key<'_> {
        Key {
            supporter: &self.supporter,
            target: &self.target,
            line: self.line,
            message_id: &self.built.message_id,
            variant: &self.built.variant,
        }
    }
}

/// What a worker reports back.
pub(crate) struct Event {
    pub(crate) supporter: String,
    pub(crate) target: String,
    pub(crate) result: Fate,
}

/// How a letter ended this run.
pub(crate) enum Fate {
    /// Delivered; `refused`: the Cc/Bcc copies the server would not take,
    /// as `(recipient, reply)`.
    Sent {
        reply: String,
        refused: Vec<(String, String)>,
    },
    Deferred(String),
    Failed(String),
    Unknown(String),
    /// Not attempted: the run was stopping.
    NotSent,
}

/// Why the run stopped early.
#[derive(Debug)]
enum Halt {
    Unreachable(String),
    Refused(String),
    /// The policy breaker tripped.
    Policy {
        reply: Reply,
    },
    Ledger(anyhow::Error),
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Unreachable(m) => write!(
                f,
                "{m}\n\nhint: the server may be down; run `mailer send` again later"
            ),
            Halt::Refused(m) => write!(f, "{m}"),
            Halt::Policy { reply: r } => write!(
                f,
                "the server rejected the letters of {POLICY_STREAK} different supporters in a row for \
                 policy reasons ({r}); stopped the run and kept those letters for a later run (after \
                 the usual backoff; refused again then, they fail)\n\nhint: check the sender address, \
                 SPF/DKIM and your relay's sending rights, then run `mailer send` again"
            ),
            Halt::Ledger(e) => write!(f, "{e:#}"),
        }
    }
}

struct Shared {
    ledger: SharedLedger,
    connector: Connector,
    clock: Arc<dyn Clock>,
    /// Signs each letter again once it is dated at hand-over.
    dkim: Option<Arc<DkimConfig>>,
    retries: u32,
    stop: Arc<AtomicBool>,
    halt: AtomicBool,
    reason: Mutex<Option<Halt>>,
    /// Letters handed to the server this run.
    handed_over: AtomicU64,
    /// The policy breaker.
    policy: Mutex<Breaker>,
    /// Shared by the workers: spaces the starts of letters (and retries).
    throttle: Mutex<Throttle>,
    /// Connection setups in a row that timed out after the server answered.
    stalls: AtomicU32,
    /// For retry notices (`-v`).
    ui: Ui,
    /// The progress bar (hidden off a terminal), also for retry notices.
    bar: indicatif::ProgressBar,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock()
    }

    fn halted(&self) -> bool {
        self.halt.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst)
    }

    fn halt(&self, why: Halt) {
        self.halt.store(true, Ordering::SeqCst);
        let mut reason = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if reason.is_none() {
            *reason = Some(why);
        }
    }
}

fn worker(
    shared: &Shared,
    jobs: &Mutex<Receiver<Job>>,
    events: &Sender<Event>,
    mut conn: Option<Connection>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(mut job) = job else { break };
        let result = if shared.halted() {
            Fate::NotSent
        } else {
            deliver(shared, &mut conn, &mut job)
        };
        let event = Event {
            supporter: job.supporter,
            target: job.target,
            result,
        };
        if events.send(event).is_err() {
            break;
        }
    }
    if let Some(c) = conn {
        c.quit();
    }
}

/// Sleeps between retries unless the run is stopping.
fn pause(shared: &Shared, d: Duration) {
    let clock = shared.clock.as_ref();
    sleep_until(clock, clock.instant() + d, &|| shared.halted());
}

/// Pause between in-run retries: 0.2 s, 0.4 s, 0.8 s … at most 5 s.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(5))
}

/// When a deferred letter may be tried again by a later run: 1 min, 2, 4 … at most 1 h.
fn deferral(attempts: u32) -> i64 {
    (60i64 << attempts.saturating_sub(1).min(6)).min(3600)
}

enum Connected {
    Ready,
    Retry,
    Halted,
}

/// Keeps `conn` usable: reconnects when needed. A refusal (TLS, login)
/// halts the run; an unreachable server halts it once retries are spent.
fn ensure_connected(shared: &Shared, conn: &mut Option<Connection>, may_retry: bool) -> Connected {
    if conn.as_ref().is_some_and(|c| c.is_usable() && c.is_alive()) {
        return Connected::Ready;
    }
    if let Some(old) = conn.take() {
        old.quit();
    }
    match shared.connector.connect() {
        Ok(c) => {
            shared.stalls.store(0, Ordering::SeqCst);
            *conn = Some(c);
            Connected::Ready
        }
        Err(ConnectError::Unreachable(m)) if may_retry => {
            retry_notice(shared, &m);
            Connected::Retry
        }
        // A server that answers and then stalls (a hung login) costs the
        // full timeout each time: one more try, not `retries` more.
        Err(ConnectError::TimedOut(m)) if may_retry && shared.stalls.fetch_add(1, Ordering::SeqCst) == 0 => {
            retry_notice(shared, &m);
            Connected::Retry
        }
        Err(ConnectError::Unreachable(m) | ConnectError::TimedOut(m)) => {
            shared.halt(Halt::Unreachable(m));
            Connected::Halted
        }
        Err(ConnectError::Refused(m)) => {
            shared.halt(Halt::Refused(m));
            Connected::Halted
        }
    }
}

/// Says on the bar (and under `-v`) that a connection is tried again.
fn retry_notice(shared: &Shared, why: &str) {
    let first_line = why.lines().next().unwrap_or_default();
    shared.bar.set_message(format!("trying again: {first_line}"));
    shared
        .bar
        .suspend(|| shared.ui.detail(&format!("{first_line}; trying again")));
}

/// The first connection, opened before any worker starts, so a wrong
/// password or certificate is tried once, not once per worker.
fn first_connection(shared: &Shared) -> Option<Connection> {
    let mut conn = None;
    for attempt in 1.. {
        match ensure_connected(shared, &mut conn, attempt <= shared.retries && !shared.halted()) {
            Connected::Ready => return conn,
            Connected::Retry => pause(shared, retry_pause(attempt)),
            Connected::Halted => return None,
        }
    }
    None
}

/// Delivers one letter with in-run retries; records every attempt.
fn deliver(shared: &Shared, conn: &mut Option<Connection>, job: &mut Job) -> Fate {
    let clock = shared.clock.as_ref();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let may_retry = attempt <= shared.retries && !shared.halted();
        // Pace the starts of letters across all workers; a signal or a
        // run-wide stop cuts the wait short.
        let slot = shared
            .throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(clock.instant());
        // Dated (and signed) for the moment its slot comes, as it is handed
        // over: a paced run's letters do not carry the hour the run started.
        // Done before the wait, so the work does not delay the slot.
        let at = clock.now() + slot.saturating_duration_since(clock.instant());
        job.built.stamp(at, shared.dkim.as_deref());
        if !sleep_until(clock, slot, &|| shared.halted()) {
            return Fate::NotSent;
        }
        match ensure_connected(shared, conn, may_retry) {
            Connected::Ready => {}
            Connected::Retry => {
                pause(shared, retry_pause(attempt));
                continue;
            }
            Connected::Halted => return Fate::NotSent,
        }
        let c = conn.as_mut().expect("connected above");
        let key = job.key();
        let mut claimed = false;
        let delivery = c.deliver(&job.built, || {
            shared.ledger.claim(&key, clock.unix())?;
            claimed = true;
            shared.handed_over.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let now = clock.unix();
        // A letter the breaker held once counts no more: refused again, it fails.
        let policy = match &delivery {
            Ok(Delivery::Rejected { reply, .. }) if reply.is_policy() && !job.held => Some(reply.clone()),
            _ => None,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                shared.halt(Halt::Ledger(e));
                return Fate::NotSent;
            }
        };
        let (outcome, result, retry) = judge(delivery, attempt, now);
        let copies = match &result {
            Fate::Sent { refused, .. } => refused.as_slice(),
            _ => &[],
        };
        if let Err(e) = shared
            .ledger()
            .record_with_copies(&key, &outcome, copies, claimed, now)
        {
            shared.halt(Halt::Ledger(e));
            return result;
        }
        track_policy(shared, job, policy, &outcome, now + deferral(attempt));
        if retry && may_retry {
            pause(shared, retry_pause(attempt));
            continue;
        }
        return result;
    }
}

/// How one attempt ends: what the ledger records, what the run reports, and
/// whether an in-run retry may help.
fn judge(delivery: Delivery, attempt: u32, now: i64) -> (Outcome, Fate, bool) {
    match delivery {
        Delivery::Accepted { reply, refused } => {
            let refused: Vec<(String, String)> = refused
                .into_iter()
                .map(|c| (c.recipient, c.reply.to_string()))
                .collect();
            (
                Outcome::Sent(reply.to_string()),
                Fate::Sent {
                    reply: reply.to_string(),
                    refused,
                },
                false,
            )
        }
        Delivery::Rejected { reply, handed_over } if reply.is_transient() => {
            let text = reply.to_string();
            let next = now + deferral(attempt);
            (
                Outcome::Deferred {
                    reply: text.clone(),
                    next_attempt_at: next,
                    handed_over,
                },
                Fate::Deferred(text),
                true,
            )
        }
        Delivery::Rejected { reply, handed_over } => {
            let text = reply.to_string();
            (
                Outcome::Failed {
                    reply: text.clone(),
                    handed_over,
                },
                Fate::Failed(text),
                false,
            )
        }
        Delivery::Lost {
            reason,
            handed_over: true,
        } => (Outcome::Unknown(reason.clone()), Fate::Unknown(reason), false),
        Delivery::Lost {
            reason,
            handed_over: false,
        } => {
            let next = now + deferral(attempt);
            (
                Outcome::Deferred {
                    reply: reason.clone(),
                    next_attempt_at: next,
                    handed_over: false,
                },
                Fate::Deferred(reason),
                true,
            )
        }
    }
}

/// The policy breaker's state.
#[derive(Debug, Default)]
struct Breaker {
    /// Consecutive 5.7.x refusals: (supporter, target, when to retry).
    streak: Vec<(String, String, i64)>,
    /// It tripped: later policy refusals (letters in flight) are held too.
    tripped: bool,
    /// Letters put back from `failed` to `deferred`.
    requeued: u64,
}

impl Breaker {
    fn supporters(&self) -> usize {
        self.streak
            .iter()
            .map(|(s, _, _)| s)
            .collect::<HashSet<_>>()
            .len()
    }
}

/// Stops the run when the server keeps refusing the letters of several
/// supporters for policy (5.7.x): that is a sender problem, not theirs, so
/// those letters go back to `deferred` with the usual backoff (`next`). One
/// supporter's letters to many targets are that supporter's problem.
fn track_policy(shared: &Shared, job: &Job, policy: Option<Reply>, outcome: &Outcome, next: i64) {
    let mut breaker = shared.policy.lock().unwrap_or_else(PoisonError::into_inner);
    match (policy, outcome) {
        (Some(reply), _) => {
            breaker
                .streak
                .push((job.supporter.clone(), job.target.clone(), next));
            let trips = !breaker.tripped && breaker.supporters() >= POLICY_STREAK;
            // After the trip, letters other workers had in flight are held the same way.
            if trips || breaker.tripped {
                let now = shared.clock.unix();
                let held = std::mem::take(&mut breaker.streak);
                let ledger = shared.ledger();
                for (s, t, next) in &held {
                    match ledger.requeue(s, t, *next, now) {
                        Ok(()) => breaker.requeued += 1,
                        Err(e) => shared.halt(Halt::Ledger(e)),
                    }
                }
                drop(ledger);
                breaker.tripped = true;
                if trips {
                    shared.halt(Halt::Policy { reply });
                }
            }
        }
        // Other refusals neither extend nor break a streak.
        (None, Outcome::Failed { .. } | Outcome::Deferred { .. }) => {}
        (None, _) if breaker.tripped => {}
        (None, _) => breaker.streak.clear(),
    }
}

/// A `deferred` letter whose last reply is a 5xx: only the policy breaker
/// defers a permanent refusal.
fn held_by_breaker(r: &Record) -> bool {
    r.state == State::Deferred
        && r.reply
            .as_deref()
            .and_then(|t| t.get(..3))
            .is_some_and(|code| code.starts_with('5') && code.bytes().all(|b| b.is_ascii_digit()))
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
    }

    #[test]
    fn backoffs_are_bounded() {
        assert_eq!(retry_pause(1), Duration::from_millis(200));
        assert_eq!(retry_pause(2), Duration::from_millis(400));
        assert_eq!(retry_pause(30), Duration::from_secs(5));
        assert_eq!(deferral(1), 60);
        assert_eq!(deferral(2), 120);
        assert_eq!(deferral(20), 3600);
    }
}
