//! `[bounces]`: the VERP return path that ties a bounce to its letter, and the
//! mailbox (IMAP over TLS, Maildir or mbox) where delivery status notifications land.
//!
//! `crate::bounces` reads that mailbox and matches each notification.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use lettre::Address;
use serde::Deserialize;
use toml::Spanned;

use super::smtp::password_source;
use crate::secret::Secret;

/// `[bounces]`: VERP return paths and the mailbox their DSNs land in.
#[derive(Debug, Clone)]
pub(crate) struct Bounces {
    /// The envelope sender with `{token}` in it (absent: MAIL FROM stays From).
    pub(crate) return_path: Option<ReturnPath>,
    /// Where DSNs arrive (needed by `mailer bounces` only).
    pub(crate) mailbox: Option<BounceMailbox>,
    /// `FILE:LINE` of `[bounces]`, for errors.
    pub(crate) at: String,
    /// IMAP login name (default: the `return_path` address without its token).
    pub(crate) username: Option<String>,
    /// The IMAP password's source (default env `MAILER_BOUNCES_PASSWORD`).
    pub(crate) password: Secret,
    /// IMAP folder (default `INBOX`).
    pub(crate) folder: String,
    /// Extra trusted root(s) for the IMAP server, PEM.
    pub(crate) ca_file: Option<PathBuf>,
    /// Connect and per-reply timeout for IMAP (default 30 s).
    pub(crate) timeout: Duration,
}

/// `[bounces] return_path`, split around its `{token}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReturnPath {
    /// The text before `{token}` (e.g. `bounces+`).
    pub(crate) prefix: String,
    /// The text after it (e.g. `@org.example`).
    pub(crate) suffix: String,
}

impl ReturnPath {
    /// The address for one letter's token.
    #[must_use]
    pub(crate) fn with_token(&self, token: &str) -> String {
        format!("{}{token}{}", self.prefix, self.suffix)
    }

    /// The token in `address`, if it is one of ours (compared ignoring case).
    #[must_use]
    pub(crate) fn token_of(&self, address: &str) -> Option<String> {
        let a = address.trim().to_ascii_lowercase();
        let rest = a.strip_prefix(&self.prefix.to_ascii_lowercase())?;
        let token = rest.strip_suffix(&self.suffix.to_ascii_lowercase())?;
        (!token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| token.to_string())
    }

    /// The domain after `@`.
    #[must_use]
    pub(crate) fn domain(&self) -> &str {
        self.suffix.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// `[bounces] mailbox`
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BounceMailbox {
    /// `imaps://host[:port]` (port 993 by default).
    Imap {
        /// Server host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Maildir folder or an mbox file, resolved.
    Local(PathBuf),
}

impl fmt::Display for BounceMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BounceMailbox::Imap { host, port } => write!(f, "imaps://{host}:{port}"),
            BounceMailbox::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBounces {
    return_path: Option<Spanned<String>>,
    mailbox: Option<Spanned<String>>,
    username: Option<String>,
    password_env: Option<String>,
    password_command: Option<String>,
    password: Option<String>,
    #[serde(default = "default_folder")]
    folder: String,
    ca_file: Option<PathBuf>,
    #[serde(default = "super::smtp::default_timeout")]
    timeout_secs: u64,
}

fn default_folder() -> String {
    "INBOX".into()
}

/// The default bounce mailbox password variable.
const DEFAULT_BOUNCES_PASSWORD_ENV: &str = "MAILER_BOUNCES_PASSWORD";

/// `[bounces]`, validated: a return path with one `{token}`, one password source.
pub(super) fn bounces_from_raw(
    raw: Spanned<RawBounces>,
    dir: &Path,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Bounces> {
    let section_at = at(raw.span());
    let b = raw.into_inner();
    let return_path = match b.return_path {
        Some(rp) => {
            let rp_at = at(rp.span());
            let text = rp.into_inner();
            let Some((prefix, suffix)) = text.split_once("{token}") else {
                bail!(
                    "{rp_at}: [bounces] return_path `{text}` has no `{{token}}`: without it a bounce \
                     cannot be traced to its letter\n\nhint: return_path = \"bounces+{{token}}@your-org.example\""
                );
            };
            if suffix.contains("{token}") || !suffix.contains('@') || prefix.contains('@') {
                bail!(
                    "{rp_at}: [bounces] return_path `{text}` must be one address with `{{token}}` once, \
                     before the `@`\n\nhint: return_path = \"bounces+{{token}}@your-org.example\""
                );
            }
            if format!("{prefix}x{suffix}").parse::<Address>().is_err() {
                bail!("{rp_at}: [bounces] return_path `{text}` is not a valid address");
            }
            Some(ReturnPath {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            })
        }
        None => None,
    };
    let mailbox = match b.mailbox {
        Some(m) => {
            let m_at = at(m.span());
            let text = m.into_inner();
            Some(parse_mailbox(&text, dir).map_err(|e| anyhow!("{m_at}: {e}"))?)
        }
        None => None,
    };
    let password = password_source(
        &format!("{section_at}: [bounces]"),
        b.password_env,
        b.password_command,
        b.password,
        DEFAULT_BOUNCES_PASSWORD_ENV,
        dir,
    )?;
    if b.timeout_secs == 0 {
        bail!("{section_at}: [bounces] timeout_secs must be at least 1");
    }
    Ok(Bounces {
        return_path,
        mailbox,
        at: section_at,
        username: b.username,
        password,
        folder: b.folder,
        ca_file: b.ca_file.map(|p| dir.join(p)),
        timeout: Duration::from_secs(b.timeout_secs),
    })
}

/// `imaps://host[:port]`, or a path (Maildir folder or mbox file).
fn parse_mailbox(text: &str, dir: &Path) -> Result<BounceMailbox> {
    if let Some(rest) = text.strip_prefix("imaps://") {
        let rest = rest.trim_end_matches('/');
        // `[::1]:993` keeps its brackets until the port is split off.
        let split = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => Some((&rest[..i], &rest[i + 1..])),
            _ => None,
        };
        let (host, port) = match split {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| anyhow!("[bounces] mailbox `{text}`: invalid port `{p}`"))?,
            ),
            None => (rest, 993),
        };
        if host.is_empty() || host.contains(['/', '@', '?']) {
            bail!("[bounces] mailbox `{text}`: expected imaps://host[:port]");
        }
        return Ok(BounceMailbox::Imap {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
        });
    }
    if text.contains("://") {
        bail!(
            "[bounces] mailbox `{text}`: only imaps:// (IMAP over TLS) is supported, never plain IMAP\n\n\
             hint: mailbox = \"imaps://imap.your-org.example\", or a Maildir folder or mbox file"
        );
    }
    if text.trim().is_empty() {
        bail!("[bounces] mailbox is empty");
    }
    let p = PathBuf::from(text);
    Ok(BounceMailbox::Local(if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    #[test]
    fn bounces_section() {
        let parse =
            |extra: &str| Config::from_toml(&format!("{MINIMAL}\n{extra}"), Path::new("c/mailer.toml"));
        let c = parse(
            "[bounces]\nreturn_path = \"bounces+{token}@org.example\"\nmailbox = \"imaps://imap.org.example\"\n\
             username = \"b@org.example\"\n",
        )
        .unwrap();
        let b = c.bounces.unwrap();
        let rp = b.return_path.unwrap();
        assert_eq!(rp.with_token("abc"), "bounces+abc@org.example");
        assert_eq!(rp.token_of("Bounces+ABC@Org.Example").as_deref(), Some("abc"));
        assert_eq!(rp.token_of("letters@org.example"), None);
        assert_eq!(rp.domain(), "org.example");
        assert_eq!(
            b.mailbox,
            Some(BounceMailbox::Imap {
                host: "imap.org.example".into(),
                port: 993
            })
        );
        assert_eq!(
            (b.folder.as_str(), b.password),
            ("INBOX", Secret::Env("MAILER_BOUNCES_PASSWORD".into()))
        );
        let m = |s: &str| {
            parse(&format!("[bounces]\nmailbox = \"{s}\"\n")).map(|c| c.bounces.unwrap().mailbox.unwrap())
        };
        assert_eq!(
            m("imaps://[::1]:10993").unwrap(),
            BounceMailbox::Imap {
                host: "::1".into(),
                port: 10993
            }
        );
        assert_eq!(
            m("Maildir").unwrap(),
            BounceMailbox::Local(PathBuf::from("c/Maildir"))
        );
        assert!(m("imap://x").unwrap_err().to_string().contains("only imaps://"));
        let err = parse("[bounces]\nreturn_path = \"bounces@org.example\"\n").unwrap_err();
        assert!(err.to_string().starts_with("c/mailer.toml:18: "), "{err}");
        assert!(
            parse("[bounces]\nmailbx = \"x\"\n")
                .unwrap_err()
                .to_string()
                .contains("mailbx")
        );
    }
}
