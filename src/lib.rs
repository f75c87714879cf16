//! mailer: deliver a campaign's personalized letters over SMTP, exactly once.
//!
//! The pipeline, from the edges in:
//! - `cli` parses the command line; `run` turns it into plain options.
//! - `cmd/*` orchestrate one subcommand each: load → plan → confirm → run → report.
//! - `campaign` is the shared pipeline: `config` (one file per section) +
//!   `letter` (Tera: load, folder, headers, variants, render) + `roster`
//!   (CSV, streamed) → `message` (lettre, DKIM via `dkim`); rows are
//!   prepared on every core in batches and given out in file order.
//! - `schedule` says when each target's letters may go (`[schedule]`), purely.
//! - `send` hands the prepared letters to `delivery`, the engine: `plan`
//!   (resume rules, budget), `dispatch` (pass 2), `worker` (sessions,
//!   retries, pacing via `throttle`), `breaker` (policy stops), the verdict.
//! - `delivery` talks to the relay through `smtp`'s `Dialer`/`Session` seam:
//!   `session` (TCP, TLS, STARTTLS, AUTH, pipelining) over `wire` (replies,
//!   deadlines, dot-stuffing, redaction); each letter's exchange ends as one
//!   `Attempt`, classified once, which `ledger` (`SQLite`: schema, the run
//!   lock, claims and outcomes, holds, bounces, the other ledgers beside it)
//!   records and `report` counts.
//! - `census` joins CSV and ledger for `status` and `export`; `bounces`
//!   ties each delivery status notification to its letter (VERP, Message-ID);
//!   `uniformity` measures how alike the letters are, for `check`; `targets`
//!   routes supporters to targets; `hold`, `placeholder`, `provider` and `man`
//!   serve `skip`/`requeue`, `check`, `init` and `man`.
//! - Commands return report values; `report` (with `report::check` and
//!   `report::status`) renders them for stdout; `ui` talks to the person on stderr;
//!   `exit` maps outcomes to the exit codes SPEC.md fixes; `clock` and
//!   `secret` keep time and passwords behind small seams.

mod bounces;
mod campaign;
mod census;
pub mod cli;
mod clock;
mod cmd;
mod config;
mod delivery;
mod dkim;
mod exit;
mod hold;
mod ledger;
mod letter;
mod man;
mod message;
mod placeholder;
mod provider;
mod report;
mod resend;
mod roster;
mod schedule;
mod secret;
mod smtp;
mod targets;
mod throttle;
mod ui;
mod uniformity;

pub use crate::exit::{Exit, exit_for};
pub use crate::ui::Ui;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::campaign::Campaign;
use crate::cli::{Cli, Command};
use crate::clock::{Clock, SystemClock};

/// Runs one command line to its exit code. Errors carry their own code (see `exit`).
pub fn run(cli: Cli, ui: &Ui) -> Result<Exit> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config_path = cli.global.config.unwrap_or_else(|| PathBuf::from("mailer.toml"));
    let load = || Campaign::load(&config_path, clock.now());
    match cli.command {
        Command::Init { dir } => cmd::init::run(dir, ui),
        Command::Check { smtp, strict } => {
            cmd::check::run(&load()?, cmd::check::Options { smtp, strict }, ui)
        }
        Command::Preview {
            supporter,
            target,
            limit,
            all,
            out,
            variants,
            html,
        } => cmd::preview::run(
            &load()?,
            &cmd::preview::Options {
                supporter,
                target,
                limit,
                out,
                all,
                variants,
                html,
            },
            ui,
        ),
        Command::Send(a) if a.test.is_some() => {
            cmd::send_test::run(&load()?, a.test.as_deref().unwrap_or_default(), a.limit, ui)
        }
        Command::Send(a) => {
            let opts = cmd::send::Options {
                dry_run: a.dry_run,
                limit: a.limit,
                yes: a.yes,
                retry_failed: a.retry_failed,
                resend_unknown: a.resend_unknown,
                follow: a.follow,
            };
            let campaign = load()?;
            let started = clock.unix();
            let send = || -> Result<Exit> {
                if !opts.dry_run {
                    placeholder::refuse_on_real_relay(&campaign)?;
                    cmd::init::refuse_unwritten(&campaign)?;
                }
                cmd::send::run(&campaign, &opts, ui, &clock)
            };
            let result = send();
            if !opts.dry_run {
                cmd::status::note_run(&campaign.config, started, clock.unix(), &result);
            }
            result
        }
        Command::Bounces => cmd::bounces::run(&load()?, ui, clock.as_ref()),
        Command::Skip {
            supporter,
            target,
            reason,
        } => {
            let opts = cmd::skip::Options {
                supporter,
                target,
                reason,
            };
            cmd::skip::run(&load()?, &opts, ui, clock.unix())
        }
        Command::Requeue { supporter, target } => {
            let opts = cmd::requeue::Options { supporter, target };
            cmd::requeue::run(&load()?, &opts, ui, clock.unix())
        }
        Command::Status { json, failed } => cmd::status::run(&load()?, json, failed, ui, clock.unix()),
        Command::Export { out } => cmd::export::run(&load()?, out.as_deref()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli::command(), "mailer", &mut script);
            report::out(&String::from_utf8_lossy(&script))?;
            Ok(Exit::Done)
        }
        Command::Man => {
            report::out(&man::render(&cli::command())?)?;
            Ok(Exit::Done)
        }
    }
}
