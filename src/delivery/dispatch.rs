//! Pass 2: streams the rows again, records skipped ones, and feeds due
//! letters to the workers (which pace themselves through the shared
//! throttle) until the budget is spent or the run halts.

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};

use crate::campaign::{Campaign, Prepared, TemplateError};
use crate::delivery::breaker::held_by_breaker;
use crate::delivery::plan::{Decision, decide};
use crate::delivery::worker::{Job, Shared, first_connection, worker};
use crate::delivery::{Event, Options, count};
use crate::ledger::Ledger;
use crate::report::Summary;
use crate::roster::{Duplicate, Skipped};
use crate::ui::Ui;

/// What pass 2 found in the file.
#[derive(Debug, Default)]
pub(crate) struct Pass2 {
    /// The last line pass 1 read: rows past it were added during the run.
    pub(crate) scanned: u64,
    /// Letters handed to the workers.
    pub(crate) dispatched: u64,
    /// Letters of rows that pass 1 did not render (added or changed since)
    /// and that cannot be rendered: reported, not sent.
    pub(crate) unrendered: u64,
    /// The whole file was read (not stopped by the budget or a halt).
    pub(crate) exhausted: bool,
    /// `[schedule]`: letters each target may still receive this run.
    pub(crate) quota: Option<Vec<u64>>,
}

impl Pass2 {
    /// Letters pass 1 counted that this pass did not find in the file (it
    /// changed), unless the run stopped early.
    pub(crate) fn missing(&self, to_send: u64, stopped: bool) -> u64 {
        if self.exhausted && !stopped {
            to_send.saturating_sub(self.dispatched)
        } else {
            0
        }
    }
}

/// Runs pass 2 to its end: every worker event is counted into `summary`.
pub(crate) fn dispatch(
    campaign: &Campaign,
    opts: &Options,
    shared: &Arc<Shared>,
    to_send: u64,
    summary: &mut Summary,
    pass2: &mut Pass2,
    ui: &Ui,
) -> Result<()> {
    let config = &campaign.config;
    // The dispatcher reads through its own connection (WAL readers never
    // wait), so it does not queue behind the workers' commits.
    let reader = Ledger::open_existing(&config.ledger_path, &config.campaign.id)?
        .context("the ledger disappeared during the run")?;
    let verp = crate::bounces::Verp::new(config, &reader)?;
    // One letter ready per worker: it can ride with the body before it.
    let (job_tx, job_rx) = sync_channel::<Job>(config.delivery.concurrency);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (event_tx, event_rx) = std::sync::mpsc::channel::<Event>();
    let bar = shared.bar.clone();
    bar.set_message(format!("connecting to {}", shared.dialer.describe()));
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
    let clock = Arc::clone(&shared.clock);
    let mut feed = || -> Result<()> {
        for row in campaign.roster()? {
            // A file that cannot be read any more stops the feed; `run`
            // says what already went.
            let row = row?;
            let line = row.line();
            // Pass 1 reported the rows it read; rows added since are new.
            let new_row = line > pass2.scanned;
            let prepared = match campaign.prepare_to_send(row, &file) {
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
                other => {
                    set_aside(other, new_row, campaign, shared, &file, ui)?;
                    continue;
                }
            };
            // Row by row, each target in turn: targets interleave fairly.
            for (target, mut built) in letters {
                // `[schedule]`: this target's share for this run went.
                if pass2
                    .quota
                    .as_ref()
                    .is_some_and(|q| q.get(target.index).is_none_or(|n| *n == 0))
                {
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
                if let Some(n) = pass2.quota.as_mut().and_then(|q| q.get_mut(target.index)) {
                    *n -= 1;
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
                    count(summary, &event, ui, &bar);
                }
            }
        }
        pass2.exhausted = true;
        Ok(())
    };
    let result = feed();
    drop(job_tx);
    for event in &event_rx {
        count(summary, &event, ui, &bar);
    }
    for w in workers {
        let _ = w.join();
    }
    bar.finish_and_clear();
    result
}

/// A row with no letters: a skipped row is recorded (`skipped`) for every
/// target, a repeated one ignored; each is reported only if pass 1 did not
/// read it (`new_row`).
fn set_aside(
    prepared: Prepared,
    new_row: bool,
    campaign: &Campaign,
    shared: &Shared,
    file: &str,
    ui: &Ui,
) -> Result<()> {
    match prepared {
        Prepared::Letters { .. } | Prepared::Unmatched { .. } => {}
        Prepared::Skipped(Skipped { line, key, reason }) => {
            if new_row {
                shared
                    .bar
                    .suspend(|| ui.problem(&format!("{file}:{line}: {reason} (skipped)")));
            }
            let ledger = shared.ledger();
            for t in campaign.unconditional_targets() {
                ledger.skip(&key, &t.key(), line, &reason, shared.clock.unix())?;
            }
        }
        Prepared::Duplicate(Duplicate {
            line,
            email,
            first_line,
        }) => {
            if new_row {
                shared.bar.suspend(|| {
                    ui.problem(&format!(
                        "{file}:{line}: `{email}` repeats line {first_line} (ignored)"
                    ));
                });
            }
        }
    }
    Ok(())
}
