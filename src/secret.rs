//! The SMTP password: where it comes from, resolved only when connecting.
//!
//! [`Secret`] says where to find it; [`Password`] holds the value and never
//! prints it (`Debug` and `Display` show `(redacted)`).

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// How long `password_command` may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the SMTP password comes from (`[smtp] password_env`, `password_command`, `password`).
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
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
    pub fn resolve(&self) -> Result<Password> {
        match self {
            Secret::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Password(value)),
                Ok(_) => bail!("environment variable `{name}` (the SMTP password) is empty"),
                Err(_) => bail!(
                    "environment variable `{name}` (the SMTP password) is not set\n\n\
                     hint: export {name}=... or set `password_command` in [smtp]"
                ),
            },
            Secret::Command { command, dir } => run_password_command(command, dir),
            Secret::Literal(password) => Ok(password.clone()),
        }
    }
}

/// Runs `sh -c CMD` with a timeout; its first stdout line is the password.
fn run_password_command(cmd: &str, dir: &Path) -> Result<Password> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run password_command `{cmd}`"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let status = crate::clock::wait_with_timeout(&mut child, COMMAND_TIMEOUT)?;
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "password_command `{cmd}` did not finish within {}s",
            COMMAND_TIMEOUT.as_secs()
        );
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!("password_command `{cmd}` failed ({status}): {}", stderr.trim());
    }
    let text = String::from_utf8(stdout).context("password_command printed invalid UTF-8")?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        bail!("password_command `{cmd}` printed no password");
    }
    Ok(Password(line))
}

/// A password. Its only way out is [`Password::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a literal value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Password(value)
    }

    /// The value, for the AUTH exchange only.
    #[must_use]
    pub fn expose(&self) -> &str {
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

    #[test]
    fn missing_env_var_is_named() {
        let err = Secret::Env("MAILER_TEST_SURELY_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("MAILER_TEST_SURELY_UNSET_VAR"));
    }
}
