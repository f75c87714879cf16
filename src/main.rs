//! The `mailer` binary: parse, run, report the error, exit with its code.
use std::process::ExitCode;

use clap::Parser as _;
use mailer::cli::Cli;
use mailer::exit::exit_for;
use mailer::ui::Ui;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui::new(cli.global.quiet, cli.global.verbose, cli.global.color);
    match mailer::run(cli, &ui) {
        Ok(exit) => exit.into(),
        Err(err) => {
            ui.error(&format!("{err:#}"));
            exit_for(&err).into()
        }
    }
}
