//! `mailer send`: load → plan → confirm → run → report.
//!
//! Pass 1 renders every letter (a template bug stops the run before anything
//! goes) and counts what is due; the `delivery` engine does pass 2; the
//! summary and the exit code close the run.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::campaign::Campaign;
use crate::clock::Clock;
use crate::delivery::{self, Engine, interrupted_early};
use crate::exit::Exit;
use crate::ledger::Ledger;
use crate::report::{self, Plan, Summary};
use crate::smtp::Connector;
use crate::throttle::{Throttle, per_minute};
use crate::ui::Ui;

pub(crate) use crate::delivery::Options;

/// Runs `mailer send`.
pub(crate) fn run(campaign: &Campaign, opts: &Options, ui: &Ui, clock: &Arc<dyn Clock>) -> Result<Exit> {
    // From the first moment: a signal in any phase ends the run with 130.
    let interrupt = Interrupt::register()?;
    // Rounds of `--follow` show each warning, hint and note once.
    let remembering;
    let ui = if opts.follow {
        remembering = ui.remembering();
        &remembering
    } else {
        ui
    };
    crate::bounces::refuse_misaligned(campaign)?;
    if opts.dry_run {
        return dry_run(campaign, opts, ui, clock.as_ref(), &interrupt.stop);
    }
    // Load.
    let config = &campaign.config;
    let smtp = config.smtp()?;
    // Credentials before any question: a missing source stops the run here;
    // at a terminal with none set, the password is asked for (not stored).
    let connector = super::connector(smtp, ui)?;
    let mut ledger = Ledger::open(&config.ledger_path, &config.campaign.id)?;
    // Each attempt records the relay account: `daily_limit` is shared by
    // every campaign in the folder that sends through it.
    ledger.set_relay(smtp.account());
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

    let connector = Arc::new(connector);
    let engine = Engine {
        campaign,
        opts,
        dialer: Arc::clone(&connector) as Arc<dyn crate::smtp::Dialer>,
        clock: Arc::clone(clock),
        stop: Arc::clone(&interrupt.stop),
        ui,
        throttle: Mutex::new(Throttle::new(config.delivery.rate)),
    };
    if opts.follow {
        return follow(&engine, &interrupt, ledger, &connector);
    }
    round(&engine, &interrupt, ledger, &connector, true).map(|r| r.exit)
}

/// How often a following run looks again when no limit names a time.
const FOLLOW_POLL: i64 = 60;

/// How one round of sending ended.
struct Round {
    exit: Exit,
    /// Letters are still due or waiting (a following run goes on).
    left: bool,
    /// When to look again, if the round sent nothing (`None`: at once).
    wake: Option<i64>,
    /// Given back for the next round: the lock stays held.
    ledger: Ledger,
}

/// One run's worth: plan, confirm (`ask`), run, report.
fn round(
    engine: &Engine<'_>,
    interrupt: &Interrupt,
    ledger: Ledger,
    connector: &Connector,
    ask: bool,
) -> Result<Round> {
    let Engine {
        campaign, opts, ui, ..
    } = *engine;
    let config = &campaign.config;
    let started = Instant::now();

    // Plan: render everything, count what is due.
    let now = engine.clock.unix();
    let (plan, scanned) = delivery::scan(campaign, Some(&ledger), opts, now, ui, &interrupt.stop)?;
    let (budget, daily) = delivery::campaign_budget(campaign, Some(&ledger), opts, now, ui)?;
    let pace = delivery::pace(campaign, &ledger, &plan, now)?;
    let to_send = pace
        .as_ref()
        .map_or(plan.due, |p| p.letters(&plan))
        .min(budget.unwrap_or(u64::MAX));
    ui.detail(&format!(
        "due {}, this run {to_send} (budget {}); already sent {}, waiting {}, held failed {}, held unknown {}, skipped by hand {}",
        plan.due,
        budget.map_or_else(|| "no limit".to_string(), report::thousands), plan.already_sent, plan.waiting, plan.held_failed, plan.held_unknown, plan.held_by_hand
    ));
    let mut summary = Summary {
        plan,
        ..Summary::default()
    };
    if to_send == 0 {
        summary.not_reached = summary.plan.due;
        let held = delivery::held_by(campaign, &summary.plan, (budget, daily.as_ref()), pace.as_ref());
        if !(opts.follow && summary.plan.due > 0) {
            report::print_summary(&summary, budget, ui);
        }
        // A following run says again only what changed (a new time).
        for line in held.lines.iter().filter(|l| ui.first_time(&format!("held\0{l}"))) {
            ui.note(line);
        }
        return Ok(Round {
            exit: Exit::Done,
            left: summary.plan.due + summary.plan.waiting > 0,
            wake: Some(held.wake.unwrap_or(now + FOLLOW_POLL)),
            ledger,
        });
    }

    // Confirm.
    if ask
        && ui.interactive()
        && !opts.yes
        && let Some(changed) = campaign.changed_since_sent(&ledger)?
    {
        ui.warn(&changed.to_string());
    }
    if ask && ui.interactive() && !opts.yes {
        for w in crate::resend::warnings(campaign, Some(&ledger))? {
            ui.warn(&w);
        }
        show_letters(campaign, &summary.plan, to_send, ui)?;
    }
    if ask
        && ui.interactive()
        && !opts.yes
        && !interrupt.at_once(|| confirm(campaign, &summary.plan, to_send, connector, ui))?
    {
        ui.note("Nothing sent.");
        return Ok(Round {
            exit: Exit::Done,
            left: false,
            wake: None,
            ledger,
        });
    }
    interrupt.check()?;

    // Run: at the pace an earlier round left, if the relay slowed it.
    let slowed = engine
        .throttle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .resume(engine.clock.instant());
    if let Some(interval) = slowed {
        ui.detail(&format!(
            "the relay slowed us earlier: starting at {}",
            per_minute(interval)
        ));
    }
    let quota = pace.map(|p| p.allow);
    let (ended, ledger) = delivery::run(engine, ledger, to_send, scanned, quota, &mut summary)?;

    // Report.
    summary.elapsed = started.elapsed();
    report::print_summary(&summary, budget, ui);
    let file = config.supporters_file.display().to_string();
    let exit = delivery::verdict(&file, ended, &summary, ui)?;
    Ok(Round {
        exit,
        left: true,
        wake: None,
        ledger,
    })
}

/// `send --follow`: rounds until every letter went, sleeping (holding the
/// ledger's lock) until the next letter's time; each round re-reads the
/// supporters file, so new signups join.
fn follow(
    engine: &Engine<'_>,
    interrupt: &Interrupt,
    mut ledger: Ledger,
    connector: &Connector,
) -> Result<Exit> {
    let mut exit = Exit::Done;
    let mut ask = true;
    loop {
        let r = round(engine, interrupt, ledger, connector, ask)?;
        (ledger, ask) = (r.ledger, false);
        if r.exit == Exit::Interrupted {
            return Ok(Exit::Interrupted);
        }
        if r.exit != Exit::Done {
            exit = r.exit;
        }
        if !r.left {
            engine.ui.note("Every letter due was handed over.");
            return Ok(exit);
        }
        // After a round that sent, look again at once; else sleep until
        // the next letter's time.
        let Some(wake) = r.wake else { continue };
        if !sleep_until_wall(engine.clock.as_ref(), wake, &interrupt.stop) {
            engine
                .ui
                .error("interrupted while waiting for the next letter's time");
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
    ui.confirm(&format!(
        "About to send {} via {}{who} — continue?",
        what_goes(campaign, plan, to_send),
        connector.describe(),
    ))
}

/// The question's count: `3 letters (3 supporters × 1 target)` when every
/// supporter writes to every target; with `match` or `[routing]`, who the
/// letters due now come from and go to (`1,200 letters from 1,000
/// supporters to 12 targets`), and the share of them this run sends.
fn what_goes(campaign: &Campaign, plan: &Plan, to_send: u64) -> String {
    let n = |n: u64, what: &str| format!("{} {what}{}", report::thousands(n), plural(n));
    if !campaign.is_routed() {
        let targets = campaign.target_count() as u64;
        return format!(
            "{} ({} × {})",
            n(to_send, "letter"),
            n(plan.supporters, "supporter"),
            n(targets, "target")
        );
    }
    let targets = plan.per_target.iter().filter(|&&d| d > 0).count() as u64;
    let whom = format!(
        "from {} to {}",
        n(plan.due_supporters, "supporter"),
        n(targets, "target")
    );
    if to_send < plan.due {
        format!(
            "{} (of {} due {whom})",
            n(to_send, "letter"),
            n(plan.due, "letter")
        )
    } else {
        format!("{} {whom}", n(to_send, "letter"))
    }
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
    let (budget, _) = delivery::campaign_budget(campaign, ledger.as_ref(), opts, now, ui)?;
    report::print_plan(campaign, &plan, budget)?;
    if campaign.config.schedule.is_some() {
        report::out(&schedule_plan(campaign, ledger.as_ref(), &plan, now)?)?;
    }
    Ok(Exit::Done)
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
        let total = delivery::target_total(plan, target.index, &sent);
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
