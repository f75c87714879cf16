//! `mailer skip`: hold a supporter's letters back (`skipped`, with the
//! reason) until `mailer requeue`: only the letters named (all of theirs,
//! or the one to `--target`); their other letters still go. A sent letter
//! is never touched.

use anyhow::Result;

use crate::campaign::Campaign;
use crate::exit::Exit;
use crate::hold;
use crate::ledger::{Change, Ledger, State};
use crate::ui::Ui;

/// `skip` arguments, free of clap.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The supporter's email.
    pub(crate) supporter: String,
    /// Only the letter to this target.
    pub(crate) target: Option<String>,
    /// Why (kept in the ledger, shown by `status` and `export`).
    pub(crate) reason: String,
}

/// Runs `mailer skip`.
pub(crate) fn run(campaign: &Campaign, opts: &Options, ui: &Ui, now: i64) -> Result<Exit> {
    let reason = hold::reason(&opts.reason)?;
    let config = &campaign.config;
    // Opening for writing takes the run lock (exit 75 while a send runs).
    let ledger = Ledger::open(&config.ledger_path, &config.campaign.id)?;
    let sel = hold::select(campaign, &ledger, &opts.supporter, opts.target.as_deref())?;
    let mut held = 0;
    let mut kept = Vec::new();
    for target in &sel.targets {
        let letter = format!("{} → {target}", sel.supporter);
        match ledger.hold(&sel.supporter, target, sel.line, &reason, now)? {
            Change::Changed(before) => {
                held += 1;
                let was = before.map_or("pending", State::as_str);
                ui.note(&format!("skipped  {letter} (was {was})"));
            }
            Change::Untouched(state) => {
                ui.note(&format!("kept     {letter}: already {}", state.as_str()));
                kept.push(letter);
            }
        }
    }
    if held == 0 {
        anyhow::bail!(
            "nothing to skip: {} already went to the server; a sent letter is never changed",
            kept.join(", ")
        );
    }
    let requeue = match &opts.target {
        Some(_) if sel.targets.len() == 1 => {
            format!(
                "mailer requeue --supporter {} --target {}",
                sel.supporter, sel.targets[0]
            )
        }
        _ => format!("mailer requeue --supporter {}", sel.supporter),
    };
    ui.note(&format!(
        "{held} letter{} held back: `mailer send` will not send {} until `{requeue}`",
        if held == 1 { "" } else { "s" },
        if held == 1 { "it" } else { "them" },
    ));
    Ok(Exit::Done)
}
