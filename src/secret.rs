//! The SMTP password: where it comes from, resolved only when connecting.
//!
//! [`Secret`] says where to find it; [`Password`] holds the value and never
//! prints it (`Debug` and `Display` show `(redacted)`).

use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// How long `password_command` may take to print its password and exit.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failed `password_command`'s stderr is collected after it exited.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The longest first line read from `password_command`, and the most of its stderr kept.
const MAX_OUTPUT: u64 = 64 * 1024;

/// Where the SMTP password comes from (`[smtp] password_env`, `password_command`, `password`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    /// An environment variable's name (default `MAILER_SMTP_PASSWORD`).
    Env(String),
    /// A shell command whose first line of stdout is the password, run in
    /// the config file's folder.
    Command {
        /// The command line (`sh -c`).
        command: String,
        /// Where it runs.
        dir: PathBuf,
    },
    /// A literal in the config file (accepted only when the file is private).
    Literal(Password),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(name) => write!(f, "Env({name:?})"),
            Secret::Command { command, .. } => write!(f, "Command({command:?})"),
            Secret::Literal(_) => f.write_str("Literal((redacted))"),
        }
    }
}

impl Secret {
    /// Fetches the password now. Never cached: each connection asks again.
    pub(crate) fn resolve(&self) -> Result<Password> {
        match self {
            Secret::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Password(value)),
                Ok(_) => bail!("environment variable `{name}` (the SMTP password) is empty"),
                Err(_) => bail!(
                    "environment variable `{name}` (the SMTP password) is not set\n\n\
                     hint: export {name}=... or set `password_command` in [smtp]"
                ),
            },
            Secret::Command { command, dir } => run_password_command(command, dir, COMMAND_TIMEOUT),
            Secret::Literal(password) => Ok(password.clone()),
        }
    }
}

/// Runs `sh -c CMD`; its first stdout line is the password. `limit` bounds
/// everything: the run, and reading what it printed.
///
/// NOTE: mailer reads the first line and does not wait for the pipes to
/// close: a child the command left running (`…; sleep 45 &`) keeps them
/// open long after the command exited. The command stays in mailer's
/// process group, so a tool that prompts on the terminal (`/dev/tty`) still
/// can; on a timeout the command itself is killed, and mailer stops waiting
/// for anything it left behind.
fn run_password_command(cmd: &str, dir: &Path, limit: Duration) -> Result<Password> {
    let deadline = Instant::now() + limit;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run password_command `{cmd}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        let _ = (&mut reader).take(MAX_OUTPUT).read_until(b'\n', &mut line);
        let _ = line_tx.send(line);
        // Drain the rest, so a chatty command never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stderr = stderr.take(MAX_OUTPUT);
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            if err_tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let Some(status) = wait_until(&mut child, deadline)? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "password_command `{cmd}` did not finish within {}s",
            limit.as_secs()
        );
    };
    if !status.success() {
        // What it wrote before exiting is in the pipe already; a child it
        // left running may hold the pipe open, so collect only briefly.
        let grace = Instant::now() + STDERR_GRACE;
        let mut text = Vec::new();
        while let Ok(chunk) = err_rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            text.extend(chunk);
        }
        bail!(
            "password_command `{cmd}` failed ({status}): {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    let Ok(line) = line_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
        bail!(
            "password_command `{cmd}` printed no password line within {}s",
            limit.as_secs()
        );
    };
    let text = String::from_utf8(line).context("password_command printed invalid UTF-8")?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        bail!("password_command `{cmd}` printed no password");
    }
    Ok(Password(line))
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running.
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    let left = deadline.saturating_duration_since(Instant::now());
    crate::clock::wait_with_timeout(child, left).context("failed to wait for password_command")
}

/// A password. Its only way out is [`Password::expose`].
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Password(String);

impl Password {
    /// Wraps a literal value.
    #[must_use]
    pub(crate) fn new(value: String) -> Self {
        Password(value)
    }

    /// The value, for the AUTH exchange only.
    #[must_use]
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(cmd: &str) -> Secret {
        Secret::Command {
            command: cmd.into(),
            dir: PathBuf::from("."),
        }
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::Literal(Password::new("hunter2".into()));
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{:?}", secret.resolve().unwrap()).contains("hunter2"));
        assert!(!format!("{}", secret.resolve().unwrap()).contains("hunter2"));
    }

    #[test]
    fn command_gives_its_first_line() {
        let pw = command("printf 's3cret\\nother'").resolve().unwrap();
        assert_eq!(pw.expose(), "s3cret");
    }

    #[test]
    fn failing_command_shows_its_stderr() {
        let err = command("echo 'vault locked' >&2; exit 3").resolve().unwrap_err();
        assert!(format!("{err:#}").contains("vault locked"), "{err:#}");
    }

    /// Runs `cmd` with `limit` on another thread; panics if that takes 15 s.
    fn within_15s(cmd: &'static str, limit: Duration) -> Result<Password> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(run_password_command(cmd, Path::new("."), limit)));
        rx.recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("`{cmd}` still running after 15 s"))
    }

    #[test]
    fn a_child_left_running_does_not_hold_the_password_back() {
        let pw = within_15s("echo s3cret; sleep 45 &", COMMAND_TIMEOUT).unwrap();
        assert_eq!(pw.expose(), "s3cret");
    }

    #[test]
    fn a_command_that_prints_more_than_a_pipe_holds_is_not_blocked() {
        let pw = within_15s("echo s3cret; head -c 300000 /dev/zero", COMMAND_TIMEOUT).unwrap();
        assert_eq!(pw.expose(), "s3cret");
    }

    #[test]
    fn a_command_that_never_prints_ends_at_the_timeout() {
        for cmd in ["sleep 45", "sleep 45; echo late", "sleep 45 & exit 0"] {
            let err = within_15s(cmd, Duration::from_secs(1)).unwrap_err();
            assert!(err.to_string().contains("within 1s"), "{cmd}: {err:#}");
        }
    }

    #[test]
    fn a_failing_command_that_leaves_a_child_running_fails_promptly() {
        let err = within_15s("echo 'vault locked' >&2; sleep 45 & exit 3", COMMAND_TIMEOUT).unwrap_err();
        assert!(format!("{err:#}").contains("vault locked"), "{err:#}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let err = Secret::Env("MAILER_TEST_SURELY_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("MAILER_TEST_SURELY_UNSET_VAR"));
    }
}
