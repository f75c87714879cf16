//! The workers: each owns one reused session, paces itself through the
//! shared throttle, retries what may be retried, and records every attempt
//! (`sending` before the body, the outcome after).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use lettre::message::dkim::DkimConfig;

use crate::clock::Clock;
use crate::delivery::breaker::Breaker;
use crate::delivery::{Event, Halt};
use crate::ledger::{Key, Ledger, Outcome, SharedLedger};
use crate::message::Built;
use crate::smtp::{Attempt, ConnectError, Dialer, Envelope, Session};
use crate::throttle::{Throttle, per_minute, sleep_until};
use crate::ui::Ui;

/// One letter for a worker.
pub(crate) struct Job {
    pub(crate) supporter: String,
    pub(crate) target: String,
    pub(crate) line: u64,
    /// The policy breaker held it back once already: a refusal now is its own.
    pub(crate) held: bool,
    pub(crate) built: Built,
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

/// What the dispatcher and the workers share.
pub(crate) struct Shared {
    pub(crate) ledger: SharedLedger,
    pub(crate) dialer: Arc<dyn Dialer>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Signs each letter again once it is dated at hand-over.
    pub(crate) dkim: Option<Arc<DkimConfig>>,
    pub(crate) retries: u32,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) halt: AtomicBool,
    pub(crate) reason: Mutex<Option<Halt>>,
    /// Letters handed to the server this run.
    pub(crate) handed_over: AtomicU64,
    /// The policy breaker.
    pub(crate) policy: Mutex<Breaker>,
    /// Shared by the workers: spaces the starts of letters (and retries).
    pub(crate) throttle: Mutex<Throttle>,
    /// Connection setups in a row that timed out after the server answered.
    pub(crate) stalls: AtomicU32,
    /// For retry notices (`-v`).
    pub(crate) ui: Ui,
    /// The progress bar (hidden off a terminal), also for retry notices.
    pub(crate) bar: indicatif::ProgressBar,
    /// When the relay first throttled this run, and the pace it left.
    pub(crate) throttled: Mutex<Option<(SystemTime, Duration)>>,
}

impl Shared {
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock()
    }

    pub(crate) fn halted(&self) -> bool {
        self.halt.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn halt(&self, why: Halt) {
        self.halt.store(true, Ordering::SeqCst);
        let mut reason = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if reason.is_none() {
            *reason = Some(why);
        }
    }
}

/// A worker: takes jobs until the dispatcher stops, reports each letter.
/// When another letter is ready as one goes, it takes that one too, so its
/// envelope can ride with this body (see [`Session::send`]).
pub(crate) fn worker(
    shared: &Shared,
    jobs: &Mutex<Receiver<Job>>,
    events: &Sender<Event>,
    mut conn: Option<Box<dyn Session>>,
) {
    let mut ahead: Option<Job> = None;
    let mut settle: Option<Outcome> = None;
    loop {
        let job = match ahead.take() {
            Some(job) => Ok(job),
            None => jobs.lock().unwrap_or_else(PoisonError::into_inner).recv(),
        };
        let Ok(mut job) = job else { break };
        let attempt = if shared.halted() {
            None
        } else {
            deliver(shared, &mut conn, &mut job, &mut ahead, &mut settle, Some(jobs))
        };
        // The run stops: what waited for the next claim is written now.
        if attempt.is_none() || shared.halted() {
            settle_now(shared, &mut settle);
        }
        let event = Event {
            supporter: job.supporter,
            target: job.target,
            attempt,
        };
        if events.send(event).is_err() {
            break;
        }
    }
    settle_now(shared, &mut settle);
    if let Some(c) = conn {
        c.quit();
    }
}

/// A job the dispatcher has ready now, or within [`READY`]: only for an
/// unpaced run (a paced letter's envelope would hold the session open
/// until its slot). A dispatcher that has finished answers at once.
fn next_ready(shared: &Shared, jobs: &Mutex<Receiver<Job>>) -> Option<Job> {
    let paced = shared
        .throttle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_paced();
    if paced || shared.halted() {
        return None;
    }
    // Another worker waiting for a job holds the lock: then none is ready.
    let rx = jobs.try_lock().ok()?;
    rx.recv_timeout(READY).ok()
}

/// How long a body waits for the dispatcher's next letter to ride with it:
/// a dispatcher slower than this is the bottleneck anyway.
const READY: Duration = Duration::from_millis(10);

/// Sleeps between retries unless the run is stopping.
fn pause(shared: &Shared, d: Duration) {
    let clock = shared.clock.as_ref();
    sleep_until(clock, clock.instant() + d, &|| shared.halted());
}

/// Pause between in-run retries: 0.2 s, 0.4 s, 0.8 s … at most 5 s.
pub(crate) fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(5))
}

/// Attempts of one letter the relay may throttle in a run, beyond its
/// `retries`: each halves the pace, so the run slows until the relay takes
/// it; past this the letter waits for a later run (deferred, never failed).
const THROTTLED_TRIES: u32 = 10;

/// When a deferred letter may be tried again by a later run: 1 min, 2, 4 … at most 1 h.
pub(crate) fn deferral(attempts: u32) -> i64 {
    (60i64 << attempts.saturating_sub(1).min(6)).min(3600)
}

enum Connected {
    Ready,
    Retry,
    Halted,
}

/// Keeps `conn` usable: reconnects when needed. A refusal (TLS, login)
/// halts the run; an unreachable server halts it once retries are spent.
fn ensure_connected(shared: &Shared, conn: &mut Option<Box<dyn Session>>, may_retry: bool) -> Connected {
    if conn.as_ref().is_some_and(|c| c.is_ready()) {
        return Connected::Ready;
    }
    if let Some(old) = conn.take() {
        old.quit();
    }
    match shared.dialer.connect() {
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
pub(crate) fn first_connection(shared: &Shared) -> Option<Box<dyn Session>> {
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

/// Writes an outcome that was waiting for the next claim, alone.
fn settle_now(shared: &Shared, settle: &mut Option<Outcome>) {
    if let Some(outcome) = settle.take()
        && let Err(e) = outcome.record(&shared.ledger())
    {
        shared.halt(Halt::Ledger(e));
    }
}

/// Delivers one letter with in-run retries; records every attempt. `None`:
/// not attempted (the run is stopping). `ahead`: the letter this worker
/// sends next, if it has one; when it has none and `jobs` has one ready as
/// this body goes, it is taken there, so its envelope can ride along.
///
/// `settle`: the previous letter's outcome, when it was `sent` and this
/// letter's envelope rode with its body: their replies came back together,
/// so it is written in the same commit as this letter's `sending` (one
/// commit, one fsync), or alone as soon as this letter will not be claimed.
/// This letter's `sent` is left there in turn when the next one is primed.
pub(crate) fn deliver(
    shared: &Shared,
    conn: &mut Option<Box<dyn Session>>,
    job: &mut Job,
    ahead: &mut Option<Job>,
    settle: &mut Option<Outcome>,
    jobs: Option<&Mutex<Receiver<Job>>>,
) -> Option<Attempt> {
    let clock = shared.clock.as_ref();
    if settle.is_some()
        && conn
            .as_ref()
            .is_none_or(|c| c.primed() != Some(job.built.message_id.as_str()))
    {
        settle_now(shared, settle);
    }
    let mut tries = 0u32;
    // Throttled attempts do not use up the letter's retries.
    let mut throttles = 0u32;
    loop {
        tries += 1;
        let may_retry = tries - throttles <= shared.retries && !shared.halted();
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
        // A paced wait (the relay throttled us since the envelope went)
        // would keep the previous letter `sending` all along.
        if slot > clock.instant() {
            settle_now(shared, settle);
        }
        if !sleep_until(clock, slot, &|| shared.halted()) {
            settle_now(shared, settle);
            return None;
        }
        // A session primed for another letter (this one is being retried)
        // waits for that letter's body: start afresh.
        if conn
            .as_ref()
            .is_some_and(|c| c.primed().is_some_and(|id| id != job.built.message_id))
        {
            conn.take().expect("checked above").quit();
        }
        if settle.is_some() && !conn.as_ref().is_some_and(|c| c.is_ready()) {
            settle_now(shared, settle);
        }
        match ensure_connected(shared, conn, may_retry) {
            Connected::Ready => {}
            Connected::Retry => {
                pause(shared, retry_pause(tries));
                continue;
            }
            Connected::Halted => return None,
        }
        let c = conn.as_mut().expect("connected above");
        let key = job.key();
        let mut claimed = false;
        let attempt = c.send(&job.built, &mut || {
            shared.ledger.claim(&key, settle.take(), clock.unix())?;
            claimed = true;
            shared.handed_over.fetch_add(1, Ordering::SeqCst);
            if ahead.is_none() {
                *ahead = jobs.and_then(|jobs| next_ready(shared, jobs));
            }
            Ok(ahead.as_ref().map(|j| Envelope::from(&j.built)))
        });
        let attempt = match attempt {
            Ok(a) => a,
            Err(e) => {
                shared.halt(Halt::Ledger(e));
                return None;
            }
        };
        // Not claimed (refused, or lost before its body): the previous
        // letter's outcome goes alone, before this one's.
        settle_now(shared, settle);
        let now = clock.unix();
        let next = now + deferral(tries);
        // The next letter's envelope replies came with this outcome: its
        // claim follows at once and carries this `sent` (see `settle`).
        let together = conn.as_ref().is_some_and(|c| c.primed_replied());
        if together && matches!(attempt, Attempt::Sent { .. }) {
            *settle = Some(Outcome::new(&key, &attempt, next, claimed, now));
        } else if let Err(e) = shared.ledger().record(&key, &attempt, next, claimed, now) {
            shared.halt(Halt::Ledger(e));
            return Some(attempt);
        }
        track_policy(shared, job, &attempt, next);
        let again = if let Some(reply) = attempt.throttled() {
            throttles += 1;
            slow_down(shared, reply);
            throttles <= THROTTLED_TRIES && !shared.halted()
        } else {
            matches!(attempt, Attempt::Deferred { .. }) && may_retry
        };
        if again {
            pause(shared, retry_pause((tries - throttles).max(1)));
            continue;
        }
        return Some(attempt);
    }
}

/// The relay throttled us: halve the run's pace (the next slot moves out,
/// so this connection pauses too) and say so under `-v`.
fn slow_down(shared: &Shared, reply: &crate::smtp::Reply) {
    let clock = shared.clock.as_ref();
    let pace = shared
        .throttle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .slow_down(clock.instant());
    let now = clock.now();
    let mut throttled = shared.throttled.lock().unwrap_or_else(PoisonError::into_inner);
    let first = throttled.map_or(now, |(first, _)| first);
    *throttled = Some((first, pace));
    drop(throttled);
    shared.bar.set_message(format!("slowed to {}", per_minute(pace)));
    shared.bar.suspend(|| {
        shared.ui.detail(&format!(
            "the relay throttled us at {} ({reply}); slowed to {}",
            clock_time(now),
            per_minute(pace)
        ));
    });
}

/// HH:MM in the machine's time zone.
pub(crate) fn clock_time(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map_or_else(
        |_| "--:--".into(),
        |t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%H:%M")
                .to_string()
        },
    )
}

/// Feeds the policy breaker; requeues what it holds and stops the run
/// when it trips.
fn track_policy(shared: &Shared, job: &Job, attempt: &Attempt, next: i64) {
    let mut breaker = shared.policy.lock().unwrap_or_else(PoisonError::into_inner);
    let verdict = breaker.track(&job.supporter, &job.target, job.held, attempt, next);
    if !verdict.requeue.is_empty() {
        let now = shared.clock.unix();
        let ledger = shared.ledger();
        for (s, t, next) in &verdict.requeue {
            match ledger.requeue(s, t, *next, now) {
                Ok(()) => breaker.requeued += 1,
                Err(e) => shared.halt(Halt::Ledger(e)),
            }
        }
    }
    if verdict.trips {
        let reply = attempt.policy().cloned().expect("a policy refusal trips it");
        shared.halt(Halt::Policy { reply });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::cli::ColorChoice;
    use crate::clock::ManualClock;
    use crate::ledger::{Record, State};
    use crate::smtp::fake::{Answer, Fake};

    /// The workers' shared state over `fake`, with a fresh ledger and a
    /// clock that moves only when slept on.
    pub(crate) fn shared(fake: &Fake, retries: u32) -> (tempfile::TempDir, Shared) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3"), "c").unwrap();
        let shared = Shared {
            ledger: SharedLedger::new(ledger),
            dialer: Arc::new(fake.clone()),
            clock: Arc::new(ManualClock::new(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            )),
            dkim: None,
            retries,
            stop: Arc::default(),
            halt: AtomicBool::new(false),
            reason: Mutex::new(None),
            handed_over: AtomicU64::new(0),
            policy: Mutex::default(),
            throttle: Mutex::new(Throttle::new(None)),
            stalls: AtomicU32::new(0),
            ui: Ui::new(true, false, ColorChoice::Never),
            bar: indicatif::ProgressBar::hidden(),
            throttled: Mutex::default(),
        };
        (dir, shared)
    }

    pub(crate) fn job(supporter: &str) -> Job {
        Job {
            supporter: supporter.into(),
            target: "t@corp.example".into(),
            line: 2,
            held: false,
            built: Built::sample(&format!("<{supporter}>"), "t@corp.example"),
        }
    }

    fn row(shared: &Shared, supporter: &str) -> Record {
        shared.ledger().get(supporter, "t@corp.example").unwrap().unwrap()
    }

    fn state(a: Option<&Attempt>) -> &'static str {
        match a {
            Some(Attempt::Sent { .. }) => "sent",
            Some(Attempt::Deferred { .. }) => "deferred",
            Some(Attempt::Failed { .. }) => "failed",
            Some(Attempt::Unknown(_)) => "unknown",
            None => "not sent",
        }
    }

    #[test]
    fn a_transient_refusal_is_retried_in_the_run() {
        let fake = Fake::default();
        fake.answer(Answer::Envelope(451, "4.3.0 later"));
        let (_d, sh) = shared(&fake, 2);
        let mut conn = first_connection(&sh);
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut None, &mut None, None);
        assert_eq!(state(a.as_ref()), "sent");
        assert_eq!(fake.bodies(), ["<a@x.org>"]);
        let r = row(&sh, "a@x.org");
        assert_eq!((r.state, r.attempts), (State::Sent, 2));
    }

    #[test]
    fn retries_are_spent_then_the_letter_waits_for_a_later_run() {
        let fake = Fake::default();
        for _ in 0..3 {
            fake.answer(Answer::Envelope(451, "4.3.0 later"));
        }
        let (_d, sh) = shared(&fake, 2);
        let mut conn = first_connection(&sh);
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut None, &mut None, None);
        assert_eq!(state(a.as_ref()), "deferred");
        assert!(fake.bodies().is_empty());
        let r = row(&sh, "a@x.org");
        assert_eq!((r.state, r.attempts), (State::Deferred, 3));
        // The third try's backoff: 4 minutes after it.
        assert_eq!(r.next_attempt_at, Some(sh.clock.unix() + 240));
    }

    #[test]
    fn a_body_without_a_reply_is_unknown_and_never_retried() {
        let fake = Fake::default();
        fake.answer(Answer::LostAfter);
        let (_d, sh) = shared(&fake, 5);
        let mut conn = first_connection(&sh);
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut None, &mut None, None);
        assert_eq!(state(a.as_ref()), "unknown");
        assert_eq!(fake.bodies().len(), 1);
        assert_eq!(row(&sh, "a@x.org").state, State::Unknown);
        assert_eq!(sh.handed_over.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_connection_lost_before_the_body_is_retried_on_a_new_one() {
        let fake = Fake::default();
        fake.answer(Answer::LostBefore);
        let (_d, sh) = shared(&fake, 1);
        let mut conn = first_connection(&sh);
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut None, &mut None, None);
        assert_eq!(state(a.as_ref()), "sent");
        assert_eq!(fake.connections(), 2);
    }

    #[test]
    fn a_refused_login_halts_at_once() {
        let fake = Fake::default();
        fake.refuse_connect(ConnectError::Refused("535 no".into()));
        let (_d, sh) = shared(&fake, 5);
        assert!(first_connection(&sh).is_none());
        assert!(matches!(*sh.reason.lock().unwrap(), Some(Halt::Refused(_))));
        assert_eq!(fake.connections(), 0);
    }

    #[test]
    fn an_unreachable_server_is_tried_retries_times_more_and_a_stall_once_more() {
        let fake = Fake::default();
        for _ in 0..3 {
            fake.refuse_connect(ConnectError::Unreachable("refused".into()));
        }
        let (_d, sh) = shared(&fake, 2);
        assert!(first_connection(&sh).is_none());
        assert!(matches!(*sh.reason.lock().unwrap(), Some(Halt::Unreachable(_))));

        let fake = Fake::default();
        fake.refuse_connect(ConnectError::TimedOut("stalled".into()));
        let (_d, sh) = shared(&fake, 5);
        assert!(first_connection(&sh).is_some());
        let fake = Fake::default();
        for _ in 0..2 {
            fake.refuse_connect(ConnectError::TimedOut("stalled".into()));
        }
        let (_d, sh) = shared(&fake, 5);
        assert!(first_connection(&sh).is_none());
    }

    #[test]
    fn the_breaker_stops_the_run_and_keeps_the_letters() {
        let fake = Fake::default();
        for _ in 0..3 {
            fake.answer(Answer::Body(554, "5.7.1 spam"));
        }
        let (_d, sh) = shared(&fake, 2);
        let mut conn = first_connection(&sh);
        for s in ["a@x.org", "b@x.org", "c@x.org"] {
            let a = deliver(&sh, &mut conn, &mut job(s), &mut None, &mut None, None);
            assert_eq!(state(a.as_ref()), "failed");
        }
        assert!(sh.halted());
        assert!(matches!(*sh.reason.lock().unwrap(), Some(Halt::Policy { .. })));
        for s in ["a@x.org", "b@x.org", "c@x.org"] {
            assert_eq!(row(&sh, s).state, State::Deferred, "{s}");
        }
        assert_eq!(sh.policy.lock().unwrap().requeued, 3);
        // Once halted, nothing more goes.
        assert!(deliver(&sh, &mut conn, &mut job("d@x.org"), &mut None, &mut None, None).is_none());
    }

    #[test]
    fn the_next_letter_rides_with_the_body_and_goes_on_that_session() {
        let fake = Fake::default();
        let (_d, sh) = shared(&fake, 2);
        let mut conn = first_connection(&sh);
        let mut ahead = Some(job("b@x.org"));
        let mut settle = None;
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut ahead, &mut settle, None);
        let mut b = ahead.take().unwrap();
        assert_eq!(state(a.as_ref()), "sent");
        assert_eq!(conn.as_ref().unwrap().primed(), Some("<b@x.org>"));
        // Primed, but not claimed: its `sending` waits for its own 354.
        assert!(sh.ledger().get("b@x.org", "t@corp.example").unwrap().is_none());
        // a's `sent` waits to share b's commit.
        assert!(settle.is_some());
        assert_eq!(row(&sh, "a@x.org").state, State::Sending);
        let a = deliver(&sh, &mut conn, &mut b, &mut None, &mut settle, None);
        assert_eq!(state(a.as_ref()), "sent");
        assert!(settle.is_none());
        assert_eq!(row(&sh, "a@x.org").state, State::Sent);
        assert_eq!(row(&sh, "b@x.org").state, State::Sent);
        assert_eq!(
            (fake.primed(), fake.connections(), fake.mixed_up()),
            (1, 1, false)
        );
    }

    #[test]
    fn a_sent_letter_is_recorded_at_once_when_the_next_replies_are_not_in_yet() {
        let fake = Fake::default();
        fake.late_replies();
        let (_d, sh) = shared(&fake, 2);
        let mut conn = first_connection(&sh);
        let mut ahead = Some(job("b@x.org"));
        let mut settle = None;
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut ahead, &mut settle, None);
        assert_eq!(state(a.as_ref()), "sent");
        assert_eq!(conn.as_ref().unwrap().primed(), Some("<b@x.org>"));
        // A slow server's next replies could keep it `sending` for long.
        assert!(settle.is_none());
        assert_eq!(row(&sh, "a@x.org").state, State::Sent);
    }

    #[test]
    fn a_retry_never_uses_a_session_primed_for_another_letter() {
        let fake = Fake::default();
        fake.answer(Answer::Body(451, "4.3.0 try again"));
        let (_d, sh) = shared(&fake, 2);
        let mut conn = first_connection(&sh);
        let mut ahead = Some(job("b@x.org"));
        let mut settle = None;
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut ahead, &mut settle, None);
        let mut b = ahead.take().unwrap();
        assert_eq!(state(a.as_ref()), "sent");
        let a = deliver(&sh, &mut conn, &mut b, &mut None, &mut settle, None);
        assert_eq!(state(a.as_ref()), "sent");
        // The retry of a went on a fresh session, b's envelope with it again.
        assert_eq!(
            (fake.primed(), fake.connections(), fake.mixed_up()),
            (2, 2, false)
        );
        assert_eq!(fake.bodies(), ["<a@x.org>", "<a@x.org>", "<b@x.org>"]);
        assert!(settle.is_none());
        assert_eq!(row(&sh, "a@x.org").state, State::Sent);
    }

    #[test]
    fn a_throttled_letter_slows_the_run_and_does_not_use_up_its_retries() {
        let fake = Fake::default();
        for _ in 0..4 {
            fake.answer(Answer::Envelope(
                454,
                "Throttling failure: Maximum sending rate exceeded.",
            ));
        }
        let (_d, sh) = shared(&fake, 0);
        let mut conn = first_connection(&sh);
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut None, &mut None, None);
        assert_eq!(state(a.as_ref()), "sent");
        assert!(sh.throttle.lock().unwrap().is_paced());
        assert!(sh.throttled.lock().unwrap().is_some());
        let r = row(&sh, "a@x.org");
        assert_eq!((r.state, r.attempts), (State::Sent, 5));
    }

    #[test]
    fn a_relay_that_never_stops_throttling_defers_the_letter_never_fails_it() {
        let fake = Fake::default();
        for _ in 0..=THROTTLED_TRIES {
            fake.answer(Answer::Envelope(421, "4.7.0 Too many messages, slow down"));
        }
        let (_d, sh) = shared(&fake, 0);
        let mut conn = first_connection(&sh);
        let a = deliver(&sh, &mut conn, &mut job("a@x.org"), &mut None, &mut None, None);
        assert_eq!(state(a.as_ref()), "deferred");
        assert_eq!(row(&sh, "a@x.org").state, State::Deferred);
    }
}
