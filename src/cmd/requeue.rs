//! `mailer requeue`: put a supporter's failed, unknown or skipped letters
//! back in the queue (a hold from `mailer skip` ends). A sent letter is
//! never touched.

use anyhow::Result;

use crate::campaign::Campaign;
use crate::exit::Exit;
use crate::hold;
use crate::ledger::{Change, Ledger, State};
use crate::ui::Ui;

/// `requeue` arguments, free of clap.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The supporter's email.
    pub(crate) supporter: String,
    /// Only the letter to this target.
    pub(crate) target: Option<String>,
}

/// Runs `mailer requeue`.
pub(crate) fn run(campaign: &Campaign, opts: &Options, ui: &Ui, now: i64) -> Result<Exit> {
    let config = &campaign.config;
    // Opening for writing takes the run lock (exit 75 while a send runs).
    let ledger = Ledger::open(&config.ledger_path, &config.campaign.id)?;
    let sel = hold::select(campaign, &ledger, &opts.supporter, opts.target.as_deref())?;
    let mut requeued = 0;
    let mut final_ = Vec::new();
    for target in &sel.targets {
        let letter = format!("{} → {target}", sel.supporter);
        match ledger.release(&sel.supporter, target, now)? {
            Change::Changed(before) => {
                requeued += 1;
                let was = before.map_or("pending", State::as_str);
                ui.note(&format!("requeued {letter} (was {was})"));
            }
            Change::Untouched(state) => {
                let why = match state {
                    State::Sent | State::Sending => {
                        final_.push(letter.clone());
                        "already went to the server"
                    }
                    _ => "already queued",
                };
                ui.note(&format!("kept     {letter}: {} ({why})", state.as_str()));
            }
        }
    }
    if requeued == 0 && !final_.is_empty() {
        anyhow::bail!(
            "nothing to requeue: {} already went to the server; a sent letter is never sent again",
            final_.join(", ")
        );
    }
    let still_held: Vec<String> = ledger
        .holds()?
        .into_iter()
        .filter(|(s, _, _)| *s == sel.supporter)
        .map(|(_, t, _)| format!("`{t}`"))
        .collect();
    if !still_held.is_empty() {
        ui.warn(&format!(
            "`{}`'s letter to {} is still held, so none of their letters go yet\n\n\
             hint: `mailer requeue --supporter {}` lets them all go",
            sel.supporter,
            still_held.join(", "),
            sel.supporter
        ));
    }
    if requeued > 0 {
        ui.note(&format!(
            "{requeued} letter{} back in the queue for the next `mailer send`",
            if requeued == 1 { "" } else { "s" }
        ));
    }
    Ok(Exit::Done)
}
