//! The delivery engine: what is due (`plan`), pass 2 (`dispatch`), the
//! workers and their retries (`worker`), the policy breaker (`breaker`),
//! and the verdict: the exit code a run earns. It talks to the relay only
//! through `smtp::Dialer`, and records every attempt in the `ledger`;
//! `cmd/send` loads, confirms and reports around it.

mod breaker;
mod dispatch;
mod plan;
mod worker;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};

use crate::campaign::Campaign;
use crate::clock::Clock;
use crate::exit::{Exit, Failure};
use crate::ledger::{Ledger, SharedLedger};
use crate::report::Summary;
use crate::smtp::{Attempt, Dialer, Reply};
use crate::throttle::{Throttle, per_minute};
use crate::ui::Ui;

pub(crate) use plan::{campaign_budget, daily_use, held_by, pace, scan, target_total};

use breaker::{Breaker, POLICY_STREAK};
use dispatch::{Pass2, dispatch};
use worker::Shared;

/// `send` flags, free of clap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Do everything but talk to the server; write nothing.
    pub(crate) dry_run: bool,
    /// At most this many letters (overrides `max_per_run`).
    pub(crate) limit: Option<u64>,
    /// Skip the confirmation.
    pub(crate) yes: bool,
    /// Retry `failed` letters.
    pub(crate) retry_failed: bool,
    /// Resend `unknown` letters.
    pub(crate) resend_unknown: bool,
    /// Keep running until every letter went at its `[schedule]` time.
    pub(crate) follow: bool,
}

/// What a worker reports back: how a letter ended this run (`None`: not
/// attempted, the run was stopping).
pub(crate) struct Event {
    pub(crate) supporter: String,
    pub(crate) target: String,
    pub(crate) attempt: Option<Attempt>,
}

/// Counts a worker's event into the summary; prints a failure line; moves the bar.
fn count(summary: &mut Summary, event: &Event, ui: &Ui, bar: &indicatif::ProgressBar) {
    let line = |what: &str| format!("{} → {}: {what}", event.supporter, event.target);
    let Some(attempt) = &event.attempt else { return };
    match attempt {
        Attempt::Sent { reply, refused } => {
            summary.sent += 1;
            summary.refused_copies += refused.len() as u64;
            bar.suspend(|| {
                ui.detail(&line(&format!("sent: {reply}")));
                // The letter went; its copy did not. Shown even with -q:
                // nothing will retry it.
                for c in refused {
                    ui.failure(&line(&format!(
                        "sent, but the copy to {} was refused: {}",
                        c.recipient, c.reply
                    )));
                }
            });
        }
        Attempt::Deferred { end, .. } => {
            summary.deferred += 1;
            bar.suspend(|| ui.failure(&line(&format!("deferred: {end}"))));
        }
        Attempt::Failed { reply, .. } => {
            summary.failed += 1;
            bar.suspend(|| ui.failure(&line(&format!("failed: {reply}"))));
        }
        Attempt::Unknown(why) => {
            summary.unknown += 1;
            bar.suspend(|| ui.failure(&line(&format!("unknown: {why}"))));
        }
    }
    bar.inc(1);
    let failures = summary.deferred + summary.failed + summary.unknown;
    bar.set_message(format!("{failures} not delivered"));
}

/// A signal came before any letter went.
pub(crate) fn interrupted_early() -> anyhow::Error {
    Failure::error(
        Exit::Interrupted,
        "interrupted before any letter went: nothing was sent",
    )
}

/// Why the run stopped early.
#[derive(Debug)]
pub(crate) enum Halt {
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

/// What pass 2 needs besides the ledger.
pub(crate) struct Engine<'a> {
    pub(crate) campaign: &'a Campaign,
    pub(crate) opts: &'a Options,
    pub(crate) dialer: Arc<dyn Dialer>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Set by a signal.
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) ui: &'a Ui,
    /// The relay's pace, handed from one [`run`] to the next: a round of
    /// `--follow` starts where the relay's throttling left the last one.
    pub(crate) throttle: Mutex<Throttle>,
}

/// Pass 2: delivers up to `to_send` letters (`scanned`: the last line pass
/// 1 read; `quota`: under `[schedule]`, at most so many to each target),
/// counting into `summary`. Returns how it ended, for [`verdict`], and the
/// ledger (its lock still held).
pub(crate) fn run(
    engine: &Engine<'_>,
    ledger: Ledger,
    to_send: u64,
    scanned: u64,
    quota: Option<Vec<u64>>,
    summary: &mut Summary,
) -> Result<(Ended, Ledger)> {
    let Engine {
        campaign, opts, ui, ..
    } = *engine;
    let config = &campaign.config;
    let shared = Arc::new(Shared {
        ledger: SharedLedger::new(ledger),
        dialer: Arc::clone(&engine.dialer),
        clock: Arc::clone(&engine.clock),
        dkim: campaign.dkim(),
        retries: config.delivery.retries,
        stop: Arc::clone(&engine.stop),
        halt: AtomicBool::new(false),
        reason: Mutex::new(None),
        handed_over: AtomicU64::new(0),
        policy: Mutex::new(Breaker::default()),
        throttle: Mutex::new(
            engine
                .throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        ),
        stalls: AtomicU32::new(0),
        ui: ui.clone(),
        // Shown before the first connection, so a slow or stalled server
        // shows its time passing and each retry.
        bar: ui.progress(to_send),
        throttled: Mutex::default(),
    });
    let mut pass2 = Pass2 {
        scanned,
        quota,
        ..Pass2::default()
    };
    let dispatched = dispatch(campaign, opts, &shared, to_send, summary, &mut pass2, ui);
    let shared = Arc::try_unwrap(shared).ok().context("workers still running")?;
    let ledger = shared.ledger.into_inner();
    let _ = ledger.checkpoint();
    *engine.throttle.lock().unwrap_or_else(PoisonError::into_inner) = shared
        .throttle
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let halt = shared.reason.into_inner().unwrap_or_else(PoisonError::into_inner);
    let requeued = shared
        .policy
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .requeued;
    // Those letters were reported failed, then kept for a later run.
    summary.failed = summary.failed.saturating_sub(requeued);
    summary.deferred += requeued;
    let throttled = shared
        .throttled
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    summary.throttled = throttled.map(|(first, pace)| {
        format!(
            "the relay throttled us at {}; slowed to {}",
            worker::clock_time(first),
            per_minute(pace)
        )
    });
    let went = shared.handed_over.load(Ordering::SeqCst);
    let interrupted = shared.stop.load(Ordering::SeqCst);
    // Pass 1 counted letters that pass 2 did not find: the file changed.
    let missing = pass2.missing(to_send, halt.is_some() || interrupted);
    summary.not_reached = summary.plan.due.saturating_sub(summary.attempted());
    summary.stopped = halt.is_some() || interrupted || missing > 0;
    let ended = Ended {
        dispatched,
        halt,
        went,
        interrupted,
        unrendered: pass2.unrendered,
        missing,
    };
    Ok((ended, ledger))
}

/// How pass 2 ended, for [`verdict`].
pub(crate) struct Ended {
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

/// The exit code and the closing error (`file`: the supporters file). From
/// the first hand-over on, no error may say "nothing was sent" (exit 1):
/// the run ends with 3, or 130 when a signal stopped it.
pub(crate) fn verdict(file: &str, ended: Ended, summary: &Summary, ui: &Ui) -> Result<Exit> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ColorChoice;

    fn ended(halt: Option<Halt>, went: u64, interrupted: bool) -> Ended {
        Ended {
            dispatched: Ok(()),
            halt,
            went,
            interrupted,
            unrendered: 0,
            missing: 0,
        }
    }

    #[test]
    fn the_exit_a_run_earns() {
        let ui = Ui::new(true, false, ColorChoice::Never);
        let clean = Summary::default();
        let partial = Summary {
            deferred: 1,
            ..Summary::default()
        };
        let code = |ended: Ended, summary: &Summary| match verdict("s.csv", ended, summary, &ui) {
            Ok(exit) => exit,
            Err(e) => crate::exit::exit_for(&e),
        };
        let unreachable = || Some(Halt::Unreachable("down".into()));
        let refused = || Some(Halt::Refused("535".into()));
        // (how it ended, summary) -> exit
        let table = [
            (ended(None, 3, false), &clean, Exit::Done),
            (ended(None, 3, false), &partial, Exit::Partial),
            (ended(None, 0, true), &clean, Exit::Interrupted),
            (ended(None, 2, true), &clean, Exit::Interrupted),
            (ended(unreachable(), 0, false), &clean, Exit::TryLater),
            (ended(unreachable(), 1, false), &clean, Exit::Partial),
            (ended(refused(), 0, false), &clean, Exit::BadInput),
            (ended(refused(), 4, false), &clean, Exit::Partial),
            (
                Ended {
                    dispatched: Err(anyhow::anyhow!("cannot read")),
                    ..ended(None, 0, false)
                },
                &clean,
                Exit::BadInput,
            ),
            (
                Ended {
                    dispatched: Err(anyhow::anyhow!("cannot read")),
                    ..ended(None, 1, false)
                },
                &clean,
                Exit::Partial,
            ),
            (
                Ended {
                    missing: 1,
                    ..ended(None, 1, false)
                },
                &clean,
                Exit::Partial,
            ),
        ];
        for (i, (ended, summary, want)) in table.into_iter().enumerate() {
            assert_eq!(code(ended, summary), want, "row {i}");
        }
    }

    #[test]
    fn an_error_after_letters_went_says_so_and_keeps_its_hint() {
        let text = letters_went("the server is down\n\nhint: wait", 2);
        assert!(text.starts_with("the server is down\nletters already went: 2 were"));
        assert!(text.ends_with("hint: wait; it sends only the letters still due"));
    }
}
