//! The `mailer` binary: parse, run, report the error, exit with its code.
use std::process::ExitCode;

use mailer::{Ui, exit_for};

fn main() -> ExitCode {
    let cli = mailer::cli::parse();
    let ui = Ui::new(cli.global.quiet, cli.global.verbose, cli.global.color);
    match mailer::run(cli, &ui) {
        Ok(exit) => exit.into(),
        // A reader that stopped reading (`mailer preview | head`) is not an error.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            ui.error(&format!("{err:#}"));
            exit_for(&err).into()
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
