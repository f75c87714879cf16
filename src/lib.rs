//! mailer: deliver a campaign's personalized letters over SMTP, exactly once.
//!
//! The pipeline, from the edges in:
//! - `cli` parses the command line; `run` turns it into plain options.
//! - `cmd/*` orchestrate one subcommand each: load → plan → confirm → run → report.
//! - `campaign` is the shared pipeline: `config` + `letter` (Tera) +
//!   `roster` (CSV, streamed) → `message` (lettre, DKIM via `dkim`).
//! - `send` hands the prepared letters to `delivery`, the engine: `plan`
//!   (resume rules, budget), `dispatch` (pass 2), `worker` (sessions,
//!   retries, pacing via `throttle`), `breaker` (policy stops), the verdict.
//! - `delivery` talks to the relay through `smtp`'s `Dialer`/`Session` seam:
//!   `session` (TCP, TLS, STARTTLS, AUTH, pipelining) over `wire` (replies,
//!   deadlines, dot-stuffing, redaction); each letter's exchange ends as one
//!   `Attempt`, classified once, which `ledger` (`SQLite`, crash-safe states,
//!   the run lock) records and `report` counts.
//! - `census` joins CSV and ledger for `status` and `export`; `bounces`
//!   ties each delivery status notification to its letter (VERP, Message-ID).
//! - `report` formats data for stdout; `ui` talks to the person on stderr;
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
mod ledger;
mod letter;
mod message;
mod report;
mod roster;
mod secret;
mod smtp;
mod throttle;
mod ui;

pub use crate::exit::{Exit, exit_for};
pub use crate::ui::Ui;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::CommandFactory as _;

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
        Command::Check { smtp } => cmd::check::run(&load()?, smtp, ui),
        Command::Preview {
            supporter,
            target,
            limit,
            out,
        } => cmd::preview::run(
            &load()?,
            &cmd::preview::Options {
                supporter,
                target,
                limit,
                out,
            },
            ui,
        ),
        Command::Send(a) => {
            let opts = cmd::send::Options {
                dry_run: a.dry_run,
                limit: a.limit,
                yes: a.yes,
                retry_failed: a.retry_failed,
                resend_unknown: a.resend_unknown,
            };
            cmd::send::run(&load()?, &opts, ui, &clock)
        }
        Command::Bounces => cmd::bounces::run(&load()?, ui, clock.as_ref()),
        Command::Status { json } => cmd::status::run(&load()?, json),
        Command::Export { out } => cmd::export::run(&load()?, out.as_deref()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mailer", &mut script);
            report::out(&String::from_utf8_lossy(&script))?;
            Ok(Exit::Done)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            report::out(&String::from_utf8_lossy(&page))?;
            Ok(Exit::Done)
        }
    }
}
