//! The campaign config (`mailer.toml`): schema, defaults and validation.
//!
//! [`Config::load`] does the I/O (reading, permissions, path resolution);
//! [`Config::from_toml`] is pure. Every value is typed here, once; templates
//! stay strings with their source line and are compiled by `letter.rs`.
//!
//! This file holds the whole [`Config`], its loading, and the `FILE:LINE`
//! machinery every error uses; each section is read and checked in its own file:
//! - `campaign`: `[campaign]`: id, letters, subjects, languages, attachments.
//! - `sender`: `[sender]` (From, Reply-To, Cc, Bcc) and `[dkim]`.
//! - `targets`: `[[targets]]` (address, fields, `match`) and `[routing]`.
//! - `supporters`: `[supporters]`: the CSV's address column and delimiter.
//! - `smtp`: `[smtp]`: relay, security, where the password comes from.
//! - `delivery`: `[delivery]`: rate, limits, concurrency, retries.
//! - `schedule`: `[schedule]`: window, hours, days, time zones.
//! - `bounces`: `[bounces]`: VERP return path and the DSN mailbox.

mod bounces;
mod campaign;
mod delivery;
mod schedule;
mod sender;
mod smtp;
mod supporters;
mod targets;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use toml::Spanned;

use crate::secret::Secret;

pub(crate) use bounces::{BounceMailbox, Bounces, ReturnPath};
pub(crate) use campaign::{AttachmentFile, LetterFile};
pub(crate) use delivery::Rate;
pub(crate) use schedule::time_zone;
pub(crate) use sender::Dkim;
pub(crate) use smtp::{Security, Smtp, is_loopback};
pub(crate) use supporters::Layout;
pub(crate) use targets::Target;

use bounces::{RawBounces, bounces_from_raw};
use campaign::{CampaignSection, RawCampaign, campaign_from_raw};
use delivery::{Delivery, RawDelivery, delivery_from_raw};
use schedule::{RawSchedule, schedule_from_raw};
use sender::{RawDkim, RawSender, Sender, dkim_from_raw, sender_from_raw};
use smtp::{RawSmtp, smtp_from_raw};
use supporters::{RawSupporters, supporters_from_raw};
use targets::{RawRouting, Routing, routing_from_raw, targets_from_raw};

/// A validated campaign config.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The config file, as given.
    pub(crate) path: PathBuf,
    /// `[campaign]`
    pub(crate) campaign: CampaignSection,
    /// `[sender]`
    pub(crate) sender: Sender,
    /// `[[targets]]` in config order, then one per row of `[routing] targets`
    /// (added when the campaign loads, see `crate::targets::load_routed`).
    pub(crate) targets: Vec<Arc<Target>>,
    /// `[routing]`: more targets from a CSV file, matched by column.
    pub(crate) routing: Option<Routing>,
    /// `[supporters] file`, resolved.
    pub(crate) supporters_file: PathBuf,
    /// How the supporters file is laid out (`email_column`, `delimiter`).
    pub(crate) supporters_layout: Layout,
    /// `[smtp]`, needed only to send.
    pub(crate) smtp: Option<Smtp>,
    /// `[delivery]`
    pub(crate) delivery: Delivery,
    /// `[ledger] path`, resolved (default `.mailer/<id>.sqlite3`).
    pub(crate) ledger_path: PathBuf,
    /// `[dkim]`
    pub(crate) dkim: Option<Dkim>,
    /// `[bounces]`
    pub(crate) bounces: Option<Bounces>,
    /// `[schedule]`: when each target's letters may go.
    pub(crate) schedule: Option<crate::schedule::Schedule>,
}

/// A template string from the config, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The template text.
    pub(crate) text: String,
    /// `FILE:LINE` of the value, for error messages.
    pub(crate) location: String,
}

// ---- The file's shape, as serde reads it. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    campaign: RawCampaign,
    sender: RawSender,
    #[serde(default)]
    targets: Vec<Spanned<toml::Table>>,
    supporters: RawSupporters,
    smtp: Option<RawSmtp>,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    ledger: RawLedger,
    dkim: Option<RawDkim>,
    bounces: Option<Spanned<RawBounces>>,
    schedule: Option<Spanned<RawSchedule>>,
    routing: Option<Spanned<RawRouting>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    path: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a config file. Relative paths resolve against its folder.
    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "\n\nhint: run `mailer init` to create one, or pass --config PATH"
            } else {
                ""
            };
            anyhow!("cannot read config `{}`: {e}{hint}", path.display())
        })?;
        let config = Config::from_toml(&text, path)?;
        let literal = |s: &Secret| matches!(s, Secret::Literal(_));
        let sections: Vec<&str> = [
            config
                .smtp
                .as_ref()
                .is_some_and(|s| literal(&s.password))
                .then_some("[smtp]"),
            config
                .bounces
                .as_ref()
                .is_some_and(|b| literal(&b.password))
                .then_some("[bounces]"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !sections.is_empty() {
            ensure_private(path, &sections)?;
        }
        Ok(config)
    }

    /// Parses config text. `path` names the file in errors and anchors relative paths.
    pub(crate) fn from_toml(text: &str, path: &Path) -> Result<Config> {
        let file = path.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map_or_else(|| file.clone(), |s| format!("{file}:{}", line_col(text, s.start)));
            anyhow!("{at}: {}", e.message().trim_end())
        })?;
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        // A config in the current folder: keep paths short (`letters/x`, not `./letters/x`).
        let resolve = |p: PathBuf| {
            if dir == Path::new(".") || p.is_absolute() {
                p
            } else {
                dir.join(p)
            }
        };
        let at = |span: std::ops::Range<usize>| format!("{file}:{}", line_of(text, span.start));
        let campaign = campaign_from_raw(raw.campaign, &at, &resolve)?;
        let id = campaign.id.clone();
        let sender = sender_from_raw(raw.sender, &at);

        let targets = targets_from_raw(raw.targets, &file, &at, &resolve, raw.routing.is_some())?;
        let routing = raw
            .routing
            .map(|r| routing_from_raw(r, &at, &resolve))
            .transpose()?;
        let (supporters_file, supporters_layout) = supporters_from_raw(raw.supporters, &at, &resolve)?;

        let smtp = raw.smtp.map(|s| smtp_from_raw(s, &dir, &at)).transpose()?;

        let delivery = delivery_from_raw(raw.delivery, &at)?;
        let ledger_path = resolve(
            raw.ledger
                .path
                .unwrap_or_else(|| PathBuf::from(format!(".mailer/{id}.sqlite3"))),
        );
        let dkim = raw.dkim.map(|k| dkim_from_raw(k, &resolve));
        Ok(Config {
            bounces: raw.bounces.map(|b| bounces_from_raw(b, &dir, &at)).transpose()?,
            schedule: raw.schedule.map(|s| schedule_from_raw(s, &at)).transpose()?,
            path: path.to_path_buf(),
            campaign,
            sender,
            targets,
            routing,
            supporters_layout,
            supporters_file,
            smtp,
            delivery,
            ledger_path,
            dkim,
        })
    }

    /// `[smtp]`, or an error saying it is needed.
    pub(crate) fn smtp(&self) -> Result<&Smtp> {
        self.smtp.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: no [smtp] section: add host, security and username to send",
                self.path.display()
            )
        })
    }
}

/// Refuses a literal password in a file others can read (`sections`: those
/// that hold one, `[smtp]` and/or `[bounces]`).
#[cfg(unix)]
fn ensure_private(path: &Path, sections: &[&str]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read permissions of `{}`", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "`{}` holds {} in {} but is readable by others (mode {:o})\n\n\
             hint: run `chmod 600 {}`, or use password_env / password_command",
            path.display(),
            if sections.len() == 1 {
                "a literal password"
            } else {
                "literal passwords"
            },
            sections.join(" and "),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn ensure_private(_: &Path, _: &[&str]) -> Result<()> {
    Ok(())
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn line_col(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    format!(
        "{}:{}",
        line_of(text, offset),
        text[line_start..offset].chars().count() + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest config that loads; each section's tests add to it.
    pub(super) const MINIMAL: &str = r#"
[campaign]
id = "test-1"
letter = "letters/letter.txt"
subject = "Hello"

[sender]
from = "Org <letters@org.example>"

[[targets]]
name = "CEO"
email = "ceo@corp.example"

[supporters]
file = "supporters.csv"
"#;

    /// Parses `text` as `camp/mailer.toml`.
    pub(super) fn parse(text: &str) -> Result<Config> {
        Config::from_toml(text, Path::new("camp/mailer.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.campaign.letter, Path::new("camp/letters/letter.txt"));
        assert_eq!(c.supporters_file, Path::new("camp/supporters.csv"));
        assert_eq!(c.ledger_path, Path::new("camp/.mailer/test-1.sqlite3"));
        assert_eq!(c.delivery.concurrency, 1);
        assert_eq!(c.delivery.retries, 3);
        assert!(c.smtp.is_none());
        assert_eq!(c.campaign.subjects[0].location, "camp/mailer.toml:5");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = MINIMAL.replace("[supporters]\n", "[supporters]\nfiel = 1\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("camp/mailer.toml:15:1: unknown field `fiel`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_column() {
        let text = format!("{MINIMAL}\n[delivery]\nretries = \"three\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("camp/mailer.toml:18:11: invalid type"), "{err}");
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../config.example.toml");
        let c = Config::from_toml(text, Path::new("config.example.toml")).unwrap();
        assert_eq!(c.campaign.id, "microsoft-ice-2018");
        assert!(c.smtp.is_some());
    }
}
