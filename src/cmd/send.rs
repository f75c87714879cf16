//! `mailer send`: load → plan → confirm → run → report.
//!
//! Pass 1 renders every letter (a template bug stops the run before anything
//! goes) and counts what is due; the `delivery` engine does pass 2; the
//! summary and the exit code close the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;

use crate::campaign::Campaign;
use crate::clock::Clock;
use crate::config::Smtp;
use crate::delivery::{self, Engine, interrupted_early};
use crate::exit::{Exit, Failure};
use crate::ledger::Ledger;
use crate::report::{self, Plan, Summary};
use crate::secret::{self, Secret};
use crate::smtp::Connector;
use crate::ui::Ui;

pub(crate) use crate::delivery::Options;

/// Runs `mailer send`.
pub(crate) fn run(campaign: &Campaign, opts: &Options, ui: &Ui, clock: &Arc<dyn Clock>) -> Result<Exit> {
    // From the first moment: a signal in any phase ends the run with 130.
    let interrupt = Interrupt::register()?;
    crate::bounces::refuse_misaligned(campaign)?;
    if opts.dry_run {
        return dry_run(campaign, opts, ui, clock.as_ref(), &interrupt.stop);
    }
    // Load.
    let config = &campaign.config;
    let started = Instant::now();
    let smtp = config.smtp()?;
    let connector = Connector::new(smtp)?;
    password_source(smtp, ui)?;
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

    // Plan: render everything, count what is due.
    let now = clock.unix();
    let (plan, scanned) = delivery::scan(campaign, Some(&ledger), opts, now, ui, &interrupt.stop)?;
    let budget = delivery::campaign_budget(campaign, Some(&ledger), opts, now)?;
    let to_send = plan.due.min(budget.unwrap_or(u64::MAX));
    ui.detail(&format!(
        "due {}, this run {to_send} (budget {}); already sent {}, waiting {}, held failed {}, held unknown {}",
        plan.due,
        budget.map_or_else(|| "no limit".to_string(), report::thousands), plan.already_sent, plan.waiting, plan.held_failed, plan.held_unknown
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

    // Confirm.
    let connector = match ask_password(smtp, ui)? {
        Some(typed) => Connector::new(&typed)?,
        None => connector,
    };
    if ui.interactive()
        && !opts.yes
        && let Some(changed) = campaign.changed_since_sent(&ledger)?
    {
        ui.warn(&changed.to_string());
    }
    if ui.interactive() && !opts.yes {
        for w in crate::resend::warnings(campaign, Some(&ledger))? {
            ui.warn(&w);
        }
        show_letters(campaign, &summary.plan, to_send, ui)?;
    }
    if ui.interactive()
        && !opts.yes
        && !interrupt.at_once(|| confirm(campaign, &summary.plan, to_send, &connector, ui))?
    {
        ui.note("Nothing sent.");
        return Ok(Exit::Done);
    }
    interrupt.check()?;

    // Run.
    let engine = Engine {
        campaign,
        opts,
        dialer: Arc::new(connector),
        clock: Arc::clone(clock),
        stop: Arc::clone(&interrupt.stop),
        ui,
    };
    let ended = delivery::run(&engine, ledger, to_send, scanned, &mut summary)?;

    // Report.
    summary.elapsed = started.elapsed();
    report::print_summary(&summary, budget, ui);
    let file = config.supporters_file.display().to_string();
    delivery::verdict(&file, ended, &summary, ui)
}

/// Settles the password source before anything is asked: the variable is
/// set, the command prints a password (its value is not kept). A variable
/// that is not set is fine on a terminal ([`ask_password`] asks for it).
fn password_source(smtp: &Smtp, ui: &Ui) -> Result<()> {
    if smtp.username.is_none() || (ui.interactive() && smtp.password.is_unset_env()) {
        return Ok(());
    }
    smtp.password
        .resolve()
        .map(drop)
        .map_err(|e| Failure::error(Exit::BadInput, format!("cannot get the SMTP password: {e:#}")))
}

/// On a terminal with no password set: asks for it (no echo) and returns
/// `[smtp]` with it, for this run only.
fn ask_password(smtp: &Smtp, ui: &Ui) -> Result<Option<Smtp>> {
    let Some(user) = &smtp.username else {
        return Ok(None);
    };
    if !ui.interactive() || !smtp.password.is_unset_env() {
        return Ok(None);
    }
    let password = secret::ask(&format!(
        "SMTP password for {user} at {} (not stored): ",
        smtp.host
    ))?;
    Ok(Some(Smtp {
        password: Secret::Literal(password),
        ..smtp.clone()
    }))
}

/// Before the prompt: the letter(s) about to go, and `check`'s warnings.
fn show_letters(campaign: &Campaign, plan: &Plan, to_send: u64, ui: &Ui) -> Result<()> {
    let text = report::confirmation_text(plan, to_send);
    for line in text.lines() {
        ui.note(&crate::ui::printable(line));
    }
    if let Some(first) = &plan.first {
        crate::cmd::check::send_warnings(campaign, first.from.domain(), ui)?;
    }
    Ok(())
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

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
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
    let (plan, _) = delivery::scan(campaign, ledger.as_ref(), opts, now, ui, stop)?;
    if let Some(changed) = ledger
        .as_ref()
        .map(|l| campaign.changed_since_sent(l))
        .transpose()?
        .flatten()
    {
        ui.warn(&changed.to_string());
    }
    for w in crate::resend::warnings(campaign, ledger.as_ref())? {
        ui.warn(&w);
    }
    let budget = delivery::campaign_budget(campaign, ledger.as_ref(), opts, now)?;
    report::print_plan(campaign, &plan, budget)?;
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
        crate::smtp::watch_stop(&stop);
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
