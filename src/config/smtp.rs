//! `[smtp]`: the relay, its transport security and where its password comes from.
//!
//! The password is only located here (a [`Secret`]); `secret.rs` resolves it
//! just before connecting, and `smtp/session.rs` speaks to the relay.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;
use toml::Spanned;

use crate::secret::{Password, Secret};

/// `[smtp] security`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Security {
    /// Plain connect, then a mandatory STARTTLS upgrade (default).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: loopback only unless `allow_insecure`.
    None,
}

impl Security {
    /// The port this mode uses when `port` is absent.
    #[must_use]
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Starttls => "STARTTLS",
            Security::Tls => "TLS",
            Security::None => "no TLS",
        })
    }
}

/// `[smtp]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct Smtp {
    /// Server host name or IP.
    pub(crate) host: String,
    /// Port (default by `security`).
    pub(crate) port: u16,
    /// Transport security.
    pub(crate) security: Security,
    /// AUTH user; no AUTH when absent.
    pub(crate) username: Option<String>,
    /// Where the password comes from.
    pub(crate) password: Secret,
    /// Extra trusted root(s), PEM.
    pub(crate) ca_file: Option<PathBuf>,
    /// Connect and per-reply timeout.
    pub(crate) timeout: Duration,
}

impl Smtp {
    /// The relay account letters go to, `host:port user` (lower-case;
    /// `host:port` without AUTH): what `daily_limit` counts, across every
    /// campaign in the folder. Never the password.
    #[must_use]
    pub(crate) fn account(&self) -> String {
        let host = self.host.to_lowercase();
        match &self.username {
            Some(user) => format!("{host}:{} {}", self.port, user.trim().to_lowercase()),
            None => format!("{host}:{}", self.port),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    host: Spanned<String>,
    port: Option<u16>,
    #[serde(default)]
    security: Security,
    username: Option<Spanned<String>>,
    password_env: Option<String>,
    password_command: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default)]
    allow_insecure: bool,
}

/// `timeout_secs` when absent, for `[smtp]` and `[bounces]`.
pub(super) fn default_timeout() -> u64 {
    30
}

/// The default SMTP password variable.
const DEFAULT_PASSWORD_ENV: &str = "MAILER_SMTP_PASSWORD";

/// `[smtp]`, validated: never clear text to a remote host, one password source.
pub(super) fn smtp_from_raw(
    s: RawSmtp,
    dir: &Path,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Smtp> {
    let host_at = at(s.host.span());
    let host = s.host.into_inner();
    if host.trim().is_empty() {
        bail!("{host_at}: [smtp] host is empty");
    }
    if s.security == Security::None && !s.allow_insecure && !is_loopback(&host) {
        bail!(
            "{host_at}: security = \"none\" would send the password and letters in clear text \
             to `{host}`\n\nhint: use security = \"starttls\" or \"tls\"; set allow_insecure = true \
             only for a relay on a network you trust"
        );
    }
    let password = password_source(
        &format!("{host_at}: [smtp]"),
        s.password_env,
        s.password_command,
        s.password,
        DEFAULT_PASSWORD_ENV,
        dir,
    )?;
    if s.timeout_secs == 0 {
        bail!("{host_at}: [smtp] timeout_secs must be at least 1");
    }
    // The transport refuses AUTH outside TLS, so this pair could never send.
    if let Some(user) = &s.username
        && s.security == Security::None
    {
        bail!(
            "{}: [smtp] username `{}` with security = \"none\": mailer never sends a password \
             without TLS, so it could not log in\n\nhint: remove `username` for a relay that \
             needs no login, or use security = \"starttls\" or \"tls\"",
            at(user.span()),
            user.get_ref().escape_default()
        );
    }
    Ok(Smtp {
        port: s.port.unwrap_or(s.security.default_port()),
        host,
        security: s.security,
        username: s.username.map(Spanned::into_inner),
        password,
        ca_file: s.ca_file.map(|p| dir.join(p)),
        timeout: Duration::from_secs(s.timeout_secs),
    })
}

/// A section's password source: at most one of `password_env`, `password_command`
/// (run in `dir`) and `password`; none is the environment variable `default_env`.
/// `where_` (`FILE:LINE: [smtp]`) starts the error when more than one is given.
pub(super) fn password_source(
    where_: &str,
    env: Option<String>,
    command: Option<String>,
    literal: Option<String>,
    default_env: &str,
    dir: &Path,
) -> Result<Secret> {
    let chosen = [env.is_some(), command.is_some(), literal.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if chosen > 1 {
        bail!("{where_} takes one of password_env, password_command or password");
    }
    Ok(if let Some(cmd) = command {
        Secret::Command {
            command: cmd,
            dir: dir.to_path_buf(),
        }
    } else if let Some(literal) = literal {
        Secret::Literal(Password::new(literal))
    } else {
        Secret::Env(env.unwrap_or_else(|| default_env.to_string()))
    })
}

/// Whether `host` names this machine (`localhost`, 127.0.0.0/8, `::1`).
#[must_use]
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{MINIMAL, parse};

    #[test]
    fn insecure_remote_is_refused_but_loopback_is_fine() {
        let smtp = |host: &str, extra: &str| {
            format!("{MINIMAL}\n[smtp]\nhost = \"{host}\"\nsecurity = \"none\"\n{extra}")
        };
        let err = parse(&smtp("smtp.example.org", "")).unwrap_err().to_string();
        assert!(err.contains("clear text"), "{err}");
        assert!(parse(&smtp("smtp.example.org", "allow_insecure = true")).is_ok());
        let c = parse(&smtp("127.0.0.1", "")).unwrap();
        assert_eq!(c.smtp.unwrap().port, 25);
    }

    #[test]
    fn username_without_tls_is_refused_at_its_line() {
        let text = format!(
            "{MINIMAL}\n[smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\nusername = \"u@org.example\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "camp/mailer.toml:20: [smtp] username `u@org.example` with security = \"none\": \
                 mailer never sends a password without TLS"
            ),
            "{err}"
        );
        assert!(err.contains("hint: remove `username`"), "{err}");
        let ok = text.replace("security = \"none\"", "security = \"tls\"");
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn smtp_defaults() {
        let c = parse(&format!("{MINIMAL}\n[smtp]\nhost = \"smtp.example.org\"\n")).unwrap();
        let s = c.smtp.unwrap();
        assert_eq!((s.port, s.security), (587, Security::Starttls));
        assert_eq!(s.password, Secret::Env(DEFAULT_PASSWORD_ENV.into()));
        assert_eq!(s.timeout, Duration::from_secs(30));
    }

    #[test]
    fn each_section_takes_one_password_source() {
        let smtp = |keys: &str| {
            parse(&format!("{MINIMAL}\n[smtp]\nhost = \"smtp.example.org\"\n{keys}"))
                .map(|c| c.smtp.unwrap().password)
        };
        assert_eq!(
            smtp("password_env = \"RELAY_PW\"\n").unwrap(),
            Secret::Env("RELAY_PW".into())
        );
        assert_eq!(
            smtp("password_command = \"pass relay\"\n").unwrap(),
            Secret::Command {
                command: "pass relay".into(),
                dir: PathBuf::from("camp"),
            }
        );
        assert_eq!(
            smtp("password = \"hunter2\"\n").unwrap(),
            Secret::Literal(Password::new("hunter2".into()))
        );
        let err = smtp("password_env = \"A\"\npassword = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "camp/mailer.toml:18: [smtp] takes one of password_env, password_command or password"
        );
        let bounces = |keys: &str| {
            parse(&format!("{MINIMAL}\n[bounces]\nmailbox = \"Maildir\"\n{keys}"))
                .map(|c| c.bounces.unwrap().password)
        };
        assert_eq!(
            bounces("password_command = \"pass imap\"\n").unwrap(),
            Secret::Command {
                command: "pass imap".into(),
                dir: PathBuf::from("camp"),
            }
        );
        let err = bounces("password_command = \"a\"\npassword = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "camp/mailer.toml:17: [bounces] takes one of password_env, password_command or password"
        );
    }
}
