//! The process exit codes SPEC.md fixes, and the one place they are mapped.
//!
//! Commands return an [`Exit`]; errors carry one through [`Failure`] when they
//! mean something other than "bad input" (exit 1).

use std::fmt;
use std::process::ExitCode;

/// How a run ended, as cron and scripts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything attempted was delivered, or nothing was due.
    Done,
    /// Config, letter or supporters file is wrong; nothing was sent.
    BadInput,
    /// Command-line usage error (clap prints it).
    Usage,
    /// The run finished, but some letters failed, were deferred or are unknown.
    Partial,
    /// Try later: the ledger is held by another run, or the server was unreachable.
    TryLater,
    /// Interrupted by SIGINT/SIGTERM after recording the letters in flight.
    Interrupted,
}

impl Exit {
    /// The numeric code, as listed in the README and `--help`.
    #[must_use]
    pub(crate) fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::BadInput => 1,
            Exit::Usage => 2,
            Exit::Partial => 3,
            Exit::TryLater => 75,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// An error that ends the process with a specific code rather than 1.
///
/// Make it the root of the error (`Err(Failure::error(..))?`, then add context
/// freely); [`exit_for`] finds it anywhere in the chain.
#[derive(Debug)]
pub(crate) struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    /// An error with this exit code and message.
    pub(crate) fn error(exit: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            exit,
            message: message.into(),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error: the first [`Failure`] in its chain, else 1.
#[must_use]
pub fn exit_for(err: &anyhow::Error) -> Exit {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(Exit::BadInput, |f| f.exit)
}

/// Help text listing the exit codes, shown under `mailer --help`.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done: everything this run attempted was delivered (or nothing was due)
  1    error in config, letter or supporters file, or the relay refused TLS/login; nothing was sent
  2    usage error
  3    the run finished (or stopped after some letters went), but some letters failed,
       were deferred or are unknown
  75   try later: another run holds the ledger, or the server was unreachable
  130  interrupted (SIGINT/SIGTERM): the in-flight letters were recorded first";

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn codes_match_the_spec() {
        let all = [
            (Exit::Done, 0),
            (Exit::BadInput, 1),
            (Exit::Usage, 2),
            (Exit::Partial, 3),
            (Exit::TryLater, 75),
            (Exit::Interrupted, 130),
        ];
        for (exit, code) in all {
            assert_eq!(exit.code(), code);
            assert!(EXIT_CODES_HELP.contains(&format!("  {code} ")));
        }
    }

    #[test]
    fn failure_is_found_anywhere_in_the_chain() {
        let plain = anyhow::anyhow!("bad row");
        assert_eq!(exit_for(&plain), Exit::BadInput);
        let held = Failure::error(Exit::TryLater, "another run holds the ledger");
        assert_eq!(exit_for(&held), Exit::TryLater);
        let nested = Err::<(), _>(Failure::error(Exit::TryLater, "connection refused"))
            .context("cannot reach the server")
            .unwrap_err();
        assert_eq!(exit_for(&nested), Exit::TryLater);
        assert_eq!(
            format!("{nested:#}"),
            "cannot reach the server: connection refused"
        );
    }
}
