//! `mailer send`: plan → confirm → deliver → record → report.
//!
//! Pass 1 renders every letter (a template bug stops the run before anything
//! goes) and counts what is due. Pass 2 streams the rows again and hands due
//! letters to `concurrency` workers, each owning one reused SMTP connection.
//! The ledger decides what is due; the transport says how each letter went.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::campaign::{Campaign, Prepared};
use crate::clock::Clock;
use crate::exit::{Exit, Failure};
use crate::ledger::{Key, Ledger, Outcome, Record, RunLock, SharedLedger, State};
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
}

/// Consecutive 5.7.x rejections that stop the run as a policy problem.
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
pub fn run(campaign: &Campaign, opts: &Options, ui: &Ui, clock: &Arc<dyn Clock>) -> Result<Exit> {
    if opts.dry_run {
        return dry_run(campaign, opts, ui, clock.as_ref());
    }
    let config = &campaign.config;
    let started = Instant::now();
    let connector = Connector::new(config.smtp()?)?;
    let _lock = RunLock::acquire(&config.ledger_path)?;
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

    // Pass 1: render everything, count what is due.
    let now = clock.unix();
    let plan = scan(campaign, Some(&ledger), opts, now, ui)?;
    let budget = budget(campaign, &ledger, opts, now)?;
    let to_send = plan.due.min(budget.unwrap_or(u64::MAX));
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
        report::print_summary(&summary, budget, ui);
        return Ok(Exit::Done);
    }
    if ui.interactive()
        && !opts.yes
        && let Some(changed) = campaign.changed_since_sent(&ledger)?
    {
        ui.warn(&changed.to_string());
    }
    if ui.interactive() && !opts.yes && !confirm(campaign, &summary.plan, to_send, &connector, ui) {
        ui.note("Nothing sent.");
        return Ok(Exit::Done);
    }

    // Pass 2: deliver.
    let stop = Arc::new(AtomicBool::new(false));
    register_signals(&stop)?;
    let shared = Arc::new(Shared {
        ledger: SharedLedger::new(ledger),
        connector,
        clock: Arc::clone(clock),
        retries: config.delivery.retries,
        stop,
        halt: AtomicBool::new(false),
        reason: Mutex::new(None),
        handed_over: AtomicBool::new(false),
        streak: Mutex::new(Vec::new()),
        throttle: Mutex::new(Throttle::new(config.delivery.rate)),
    });
    let dispatched = dispatch(campaign, opts, &shared, to_send, &mut summary, ui);
    let shared = Arc::try_unwrap(shared).ok().context("workers still running")?;
    let ledger = shared.ledger.into_inner();
    let _ = ledger.checkpoint();
    let halt = shared.reason.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(Halt::Policy { requeued, .. }) = &halt {
        // Those letters were reported failed, then kept for a later run.
        summary.failed = summary.failed.saturating_sub(*requeued);
        summary.deferred += requeued;
    }
    summary.elapsed = started.elapsed();
    summary.not_reached = summary.plan.due.saturating_sub(summary.attempted());
    summary.stopped = halt.is_some() || shared.stop.load(Ordering::SeqCst);
    report::print_summary(&summary, budget, ui);

    dispatched.context("the run stopped")?;
    if shared.stop.load(Ordering::SeqCst) {
        ui.error("interrupted: the letters in flight were recorded");
        return Ok(Exit::Interrupted);
    }
    if let Some(halt) = halt {
        let exit = match (&halt, shared.handed_over.load(Ordering::SeqCst)) {
            // Nothing went: "try later" if the server was away, else the
            // setup (TLS, login, policy) needs a person.
            (Halt::Unreachable(_), false) => Exit::TryLater,
            (_, false) => Exit::BadInput,
            (_, true) => Exit::Partial,
        };
        return Err(Failure::error(exit, halt.to_string()));
    }
    Ok(if summary.deferred + summary.failed + summary.unknown > 0 {
        Exit::Partial
    } else {
        Exit::Done
    })
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

/// Pass 2: streams the rows again, records skipped ones, and feeds due
/// letters to the workers (which pace themselves through the shared
/// throttle) until `to_send` went out or the run halts. Counts every worker
/// event into `summary`.
fn dispatch(
    campaign: &Campaign,
    opts: &Options,
    shared: &Arc<Shared>,
    to_send: u64,
    summary: &mut Summary,
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
    let mut first = first_connection(shared);
    let workers: Vec<_> = (0..config.delivery.concurrency)
        .map(|_| {
            let (shared, rx, tx) = (Arc::clone(shared), Arc::clone(&job_rx), event_tx.clone());
            let conn = first.take();
            std::thread::spawn(move || worker(&shared, &rx, &tx, conn))
        })
        .collect();
    drop(event_tx);
    let bar = ui.progress(to_send);
    let mut dispatched = 0u64;
    let file = config.supporters_file.display().to_string();
    let mut feed = || -> Result<()> {
        for row in campaign.roster()? {
            let (supporter, letters) = match campaign.prepare(row?, &file, true)? {
                Prepared::Letters { supporter, letters } => (supporter, letters),
                Prepared::Skipped(Skip { line, key, reason }) => {
                    let ledger = shared.ledger();
                    for t in &config.targets {
                        ledger.skip(&key, &t.key(), line, &reason, clock.unix())?;
                    }
                    continue;
                }
                Prepared::Duplicate(Repeat { .. }) => continue,
            };
            for (target, mut built) in config.targets.iter().zip(letters) {
                let target_key = target.key();
                let record = reader.get(&supporter.key, &target_key)?;
                if decide(record.as_ref(), opts, clock.unix()) != Decision::Due {
                    continue;
                }
                if dispatched >= to_send || shared.halted() {
                    return Ok(());
                }
                if let Some(verp) = &verp {
                    built.from = verp.address(&supporter.key, &target_key)?;
                }
                let job = Job {
                    supporter: supporter.key.clone(),
                    target: target_key,
                    line: supporter.line,
                    built,
                };
                if job_tx.send(job).is_err() {
                    return Ok(());
                }
                dispatched += 1;
                while let Ok(event) = event_rx.try_recv() {
                    summary.count(&event, ui, &bar);
                }
            }
        }
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
fn scan(campaign: &Campaign, ledger: Option<&Ledger>, opts: &Options, now: i64, ui: &Ui) -> Result<Plan> {
    let file = campaign.config.supporters_file.display().to_string();
    let mut plan = Plan {
        per_target: vec![0; campaign.target_count()],
        ..Plan::default()
    };
    for prepared in campaign.prepared(false)? {
        match prepared? {
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
    Ok(plan)
}

fn dry_run(campaign: &Campaign, opts: &Options, ui: &Ui, clock: &dyn Clock) -> Result<Exit> {
    let config = &campaign.config;
    let now = clock.unix();
    let ledger = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?;
    let plan = scan(campaign, ledger.as_ref(), opts, now, ui)?;
    let budget = match &ledger {
        Some(l) => budget(campaign, l, opts, now)?,
        None => opts
            .limit
            .or(config.delivery.max_per_run)
            .map(|p| p.min(config.delivery.daily_limit.unwrap_or(u64::MAX))),
    };
    report::print_plan(campaign, &plan, budget)?;
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

fn register_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // A second signal while the first is being honoured exits at once;
        // the letter in flight stays `sending` and becomes `unknown` next run.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(stop))?;
        signal_hook::flag::register(sig, Arc::clone(stop))?;
    }
    Ok(())
}

/// One letter for a worker.
struct Job {
    supporter: String,
    target: String,
    line: u64,
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
    Sent(String),
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
    /// `requeued` letters went back from `failed` to `deferred`.
    Policy {
        reply: Reply,
        requeued: u64,
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
            Halt::Policy { reply: r, .. } => write!(
                f,
                "the server rejected {POLICY_STREAK} letters in a row for policy reasons ({r}); stopped \
                 the run and kept those letters for a later run\n\nhint: check the sender address, SPF/DKIM \
                 and your relay's sending rights, then run `mailer send` again"
            ),
            Halt::Ledger(e) => write!(f, "{e:#}"),
        }
    }
}

struct Shared {
    ledger: SharedLedger,
    connector: Connector,
    clock: Arc<dyn Clock>,
    retries: u32,
    stop: Arc<AtomicBool>,
    halt: AtomicBool,
    reason: Mutex<Option<Halt>>,
    handed_over: AtomicBool,
    /// Consecutive 5.7.x refusals: (supporter, target).
    streak: Mutex<Vec<(String, String)>>,
    /// Shared by the workers: spaces the starts of letters (and retries).
    throttle: Mutex<Throttle>,
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
        let Ok(job) = job else { break };
        let result = if shared.halted() {
            Fate::NotSent
        } else {
            deliver(shared, &mut conn, &job)
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
    sleep_until(clock, clock.now() + d, &|| shared.halted());
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
            *conn = Some(c);
            Connected::Ready
        }
        Err(ConnectError::Unreachable(_)) if may_retry => Connected::Retry,
        Err(ConnectError::Unreachable(m)) => {
            shared.halt(Halt::Unreachable(m));
            Connected::Halted
        }
        Err(ConnectError::Refused(m)) => {
            shared.halt(Halt::Refused(m));
            Connected::Halted
        }
    }
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
fn deliver(shared: &Shared, conn: &mut Option<Connection>, job: &Job) -> Fate {
    let clock = shared.clock.as_ref();
    let key = job.key();
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
            .reserve(clock.now());
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
        let mut claimed = false;
        let delivery = c.deliver(&job.built, || {
            shared.ledger.claim(&key, clock.unix())?;
            claimed = true;
            shared.handed_over.store(true, Ordering::SeqCst);
            Ok(())
        });
        let now = clock.unix();
        let policy = match &delivery {
            Ok(Delivery::Rejected { reply, .. }) if reply.is_policy() => Some(reply.clone()),
            _ => None,
        };
        let (outcome, result, retry) = match delivery {
            Err(e) => {
                shared.halt(Halt::Ledger(e));
                return Fate::NotSent;
            }
            Ok(Delivery::Accepted(r)) => (Outcome::Sent(r.to_string()), Fate::Sent(r.to_string()), false),
            Ok(Delivery::Rejected { reply, handed_over }) if reply.is_transient() => {
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
            Ok(Delivery::Rejected { reply, handed_over }) => {
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
            Ok(Delivery::Lost {
                reason,
                handed_over: true,
            }) => (Outcome::Unknown(reason.clone()), Fate::Unknown(reason), false),
            Ok(Delivery::Lost {
                reason,
                handed_over: false,
            }) => {
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
        };
        if let Err(e) = shared.ledger().record(&key, &outcome, claimed, now) {
            shared.halt(Halt::Ledger(e));
            return result;
        }
        track_policy(shared, job, policy, &outcome);
        if retry && may_retry {
            pause(shared, retry_pause(attempt));
            continue;
        }
        return result;
    }
}

/// Stops the run when the server keeps refusing letters for policy (5.7.x):
/// that is a sender problem, so those letters go back to `deferred`.
fn track_policy(shared: &Shared, job: &Job, policy: Option<Reply>, outcome: &Outcome) {
    let mut streak = shared.streak.lock().unwrap_or_else(PoisonError::into_inner);
    match (policy, outcome) {
        (Some(reply), _) => {
            streak.push((job.supporter.clone(), job.target.clone()));
            if streak.len() >= POLICY_STREAK {
                let now = shared.clock.unix();
                let ledger = shared.ledger();
                for (s, t) in streak.iter() {
                    let _ = ledger.requeue(s, t, now);
                }
                drop(ledger);
                streak.clear();
                shared.halt(Halt::Policy {
                    reply,
                    requeued: POLICY_STREAK as u64,
                });
            }
        }
        // Other refusals neither extend nor break a streak.
        (None, Outcome::Failed { .. } | Outcome::Deferred { .. }) => {}
        (None, _) => streak.clear(),
    }
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
