//! The campaign config (`mailer.toml`): schema, defaults and validation.
//!
//! [`Config::load`] does the I/O (reading, permissions, path resolution);
//! [`Config::from_toml`] is pure. Every value is typed here, once; templates
//! stay strings with their source line and are compiled by `letter.rs`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use lettre::Address;
use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::secret::{Password, Secret};

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
    /// (added when the campaign loads, see `targets::load_routed`).
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

/// `[campaign]`
#[derive(Debug, Clone)]
pub(crate) struct CampaignSection {
    /// Keys the ledger; `[a-z0-9-]+`.
    pub(crate) id: String,
    /// Human name (`campaign.name`).
    pub(crate) name: String,
    /// Organization (`campaign.org`).
    pub(crate) org: String,
    /// The letter template, resolved (the first of `letters`).
    pub(crate) letter: PathBuf,
    /// `FILE:LINE` of the `letter` key, for error messages.
    pub(crate) letter_at: String,
    /// Every letter file: `letter` is one path or a list; each supporter
    /// gets one of them, stably.
    pub(crate) letters: Vec<LetterFile>,
    /// Every subject template: `subject` is one or a list; each letter gets
    /// one of them, stably.
    pub(crate) subjects: Vec<Source>,
    /// `language_column`: the supporters column naming each one's language
    /// (normalized like a header); absent = no languages.
    pub(crate) language_column: Option<String>,
    /// `attachments`: files attached to every letter (default none).
    pub(crate) attachments: Vec<AttachmentFile>,
}

/// One file of `[campaign] attachments`.
#[derive(Debug, Clone)]
pub(crate) struct AttachmentFile {
    /// Resolved against the config's folder.
    pub(crate) path: PathBuf,
    /// `FILE:LINE` of its config value.
    pub(crate) at: String,
}

/// `[routing]`: one target per row of a CSV file.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    /// `targets`, resolved.
    pub(crate) file: PathBuf,
    /// `match`: the columns a row and a supporter must agree on (normalized).
    pub(crate) columns: Vec<String>,
    /// `FILE:LINE` of `[routing]`, for errors.
    pub(crate) at: String,
}

/// How a CSV file is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The column holding addresses, normalized like a header (default `email`).
    pub(crate) email_column: String,
    /// The field separator; `None` = detected from the header line.
    pub(crate) delimiter: Option<u8>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            email_column: "email".into(),
            delimiter: None,
        }
    }
}

/// One file of `[campaign] letter`.
#[derive(Debug, Clone)]
pub(crate) struct LetterFile {
    /// Resolved against the config's folder.
    pub(crate) path: PathBuf,
    /// As the config writes it: what the ledger records.
    pub(crate) name: String,
}

/// A value that may be given once or as a list (`letter`, `subject`).
#[derive(Debug)]
enum OneOrList {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OneOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrList, E> {
                Ok(OneOrList::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(OneOrList::List(items))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A template string from the config, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The template text.
    pub(crate) text: String,
    /// `FILE:LINE` of the value, for error messages.
    pub(crate) location: String,
}

/// `[sender]`
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    /// From template, e.g. `{{ supporter.name }} via Org <letters@org.example>`.
    pub(crate) from: Source,
    /// Reply-To template (optional).
    pub(crate) reply_to: Option<Source>,
    /// Cc the supporter (default false).
    pub(crate) cc_supporter: bool,
    /// Extra Bcc recipients (default none).
    pub(crate) bcc: Vec<Mailbox>,
}

/// One `[[targets]]` entry, or one row of `[routing] targets`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Display name, if given.
    pub(crate) name: Option<String>,
    /// Where the letter goes.
    pub(crate) email: Address,
    /// Every key of the entry (but `match`), or every column of the row,
    /// for the template's `target.*`.
    pub(crate) fields: toml::Table,
    /// Its position in [`Config::targets`].
    pub(crate) index: usize,
    /// `letter`: its own letter instead of `[campaign] letter`.
    pub(crate) letter: Option<LetterFile>,
    /// `subject`: its own subject instead of `[campaign] subject`.
    pub(crate) subject: Option<Source>,
    /// `match = { column = ["value", …] }`, columns and values normalized
    /// (lower-case, trimmed); empty = every supporter.
    pub(crate) matcher: Vec<(String, Vec<String>)>,
    /// For a row of `[routing] targets`: its line there.
    pub(crate) routed: Option<u64>,
    /// Its own time zone (`timezone`), for `[schedule]`.
    pub(crate) timezone: Option<jiff::tz::TimeZone>,
}

impl Target {
    /// The target's address, lower-cased: its identity in the ledger.
    #[must_use]
    pub(crate) fn key(&self) -> String {
        self.email.to_string().to_lowercase()
    }

    /// The `To` mailbox.
    #[must_use]
    pub(crate) fn mailbox(&self) -> Mailbox {
        Mailbox::new(self.name.clone(), self.email.clone())
    }
}

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

/// `[delivery]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Spacing between letters (absent = as fast as allowed).
    pub(crate) rate: Option<Rate>,
    /// Letters per rolling 24 h, counted from the ledger.
    pub(crate) daily_limit: Option<u64>,
    /// Letters per run (`send --limit` overrides).
    pub(crate) max_per_run: Option<u64>,
    /// SMTP connections at once (default 1).
    pub(crate) concurrency: usize,
    /// Immediate retries of a transient failure within a run (default 3).
    pub(crate) retries: u32,
}

/// `[dkim]`
#[derive(Debug, Clone)]
pub(crate) struct Dkim {
    /// The signing domain (`d=`).
    pub(crate) domain: String,
    /// The selector (`s=`).
    pub(crate) selector: String,
    /// The private key PEM file, resolved.
    pub(crate) private_key_file: PathBuf,
}

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

/// A sending rate such as `30/minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Letters per `per`.
    pub(crate) count: u32,
    /// The period.
    pub(crate) per: Duration,
}

impl Rate {
    /// The spacing between two letters.
    #[must_use]
    pub(crate) fn interval(self) -> Duration {
        self.per / self.count
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate `{s}`: expected N/second, N/minute, N/hour or N/day");
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate `{s}`: N must be at least 1"));
        }
        let secs = match unit.trim() {
            "second" | "sec" | "s" => 1,
            "minute" | "min" | "m" => 60,
            "hour" | "h" => 3600,
            "day" | "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    targets: PathBuf,
    #[serde(rename = "match")]
    columns: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    org: String,
    letter: Spanned<OneOrList>,
    subject: Spanned<OneOrList>,
    language_column: Option<String>,
    #[serde(default)]
    attachments: Vec<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSender {
    from: Spanned<String>,
    reply_to: Option<Spanned<String>>,
    #[serde(default)]
    cc_supporter: bool,
    #[serde(default)]
    bcc: Vec<Mailbox>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupporters {
    file: PathBuf,
    email_column: Option<String>,
    delimiter: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
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

fn default_timeout() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    rate: Option<Rate>,
    daily_limit: Option<u64>,
    max_per_run: Option<u64>,
    #[serde(default = "default_concurrency")]
    concurrency: Spanned<usize>,
    #[serde(default = "default_retries")]
    retries: u32,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            rate: None,
            daily_limit: None,
            max_per_run: None,
            concurrency: default_concurrency(),
            retries: default_retries(),
        }
    }
}

fn default_concurrency() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}

fn default_retries() -> u32 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    start: Option<Spanned<toml::value::Datetime>>,
    end: Option<Spanned<toml::value::Datetime>>,
    hours: Option<Spanned<String>>,
    days: Option<Spanned<Vec<Spanned<String>>>>,
    timezone: Option<Spanned<String>>,
    per_target_hourly: Option<Spanned<u64>>,
    jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domain: String,
    selector: String,
    private_key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounces {
    return_path: Option<Spanned<String>>,
    mailbox: Option<Spanned<String>>,
    username: Option<String>,
    password_env: Option<String>,
    password_command: Option<String>,
    password: Option<String>,
    #[serde(default = "default_folder")]
    folder: String,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
}

fn default_folder() -> String {
    "INBOX".into()
}

/// The default bounce mailbox password variable.
pub(crate) const DEFAULT_BOUNCES_PASSWORD_ENV: &str = "MAILER_BOUNCES_PASSWORD";

/// The default SMTP password variable.
pub(crate) const DEFAULT_PASSWORD_ENV: &str = "MAILER_SMTP_PASSWORD";

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
        if matches!(
            config.smtp,
            Some(Smtp {
                password: Secret::Literal(_),
                ..
            })
        ) || matches!(
            config.bounces,
            Some(Bounces {
                password: Secret::Literal(_),
                ..
            })
        ) {
            ensure_private(path)?;
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
        let source = |s: Spanned<String>| Source {
            location: at(s.span()),
            text: s.into_inner(),
        };

        let campaign = campaign_from_raw(raw.campaign, &at, &resolve)?;
        let id = campaign.id.clone();
        let sender = Sender {
            from: source(raw.sender.from),
            reply_to: raw.sender.reply_to.map(source),
            cc_supporter: raw.sender.cc_supporter,
            bcc: raw.sender.bcc,
        };

        let targets = targets_from_raw(raw.targets, &file, &at, &resolve, raw.routing.is_some())?;
        let routing = raw
            .routing
            .map(|r| routing_from_raw(r, &at, &resolve))
            .transpose()?;
        let supporters_layout = layout_from_raw(raw.supporters.email_column, raw.supporters.delimiter, &at)?;

        let smtp = raw.smtp.map(|s| smtp_from_raw(s, &dir, &at)).transpose()?;

        let d = raw.delivery;
        if *d.concurrency.get_ref() == 0 || *d.concurrency.get_ref() > 64 {
            bail!(
                "{}: concurrency must be between 1 and 64",
                at(d.concurrency.span())
            );
        }
        let delivery = Delivery {
            rate: d.rate,
            daily_limit: d.daily_limit,
            max_per_run: d.max_per_run,
            concurrency: d.concurrency.into_inner(),
            retries: d.retries,
        };
        let ledger_path = resolve(
            raw.ledger
                .path
                .unwrap_or_else(|| PathBuf::from(format!(".mailer/{id}.sqlite3"))),
        );
        let dkim = raw.dkim.map(|k| Dkim {
            domain: k.domain,
            selector: k.selector,
            private_key_file: resolve(k.private_key_file),
        });
        Ok(Config {
            bounces: raw.bounces.map(|b| bounces_from_raw(b, &dir, &at)).transpose()?,
            schedule: raw.schedule.map(|s| schedule_from_raw(s, &at)).transpose()?,
            path: path.to_path_buf(),
            campaign,
            sender,
            targets,
            routing,
            supporters_layout,
            supporters_file: resolve(raw.supporters.file),
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

/// `letter` / `subject`: one value or a non-empty list, each with its line.
fn one_or_list(
    raw: Spanned<OneOrList>,
    key: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Vec<Source>> {
    let whole = raw.span();
    let items = match raw.into_inner() {
        OneOrList::One(text) => vec![Source {
            text,
            location: at(whole.clone()),
        }],
        OneOrList::List(items) => items
            .into_iter()
            .map(|s| Source {
                location: at(s.span()),
                text: s.into_inner(),
            })
            .collect(),
    };
    if items.is_empty() {
        bail!(
            "{}: `{key}` is an empty list: give one value or a list of them\n\nhint: {key} = [\"…\", \"…\"]",
            at(whole)
        );
    }
    Ok(items)
}

fn targets_from_raw(
    raw: Vec<Spanned<toml::Table>>,
    file: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    routed: bool,
) -> Result<Vec<Arc<Target>>> {
    if raw.is_empty() && !routed {
        bail!(
            "{file}: no [[targets]]: add at least one with `name` and `email`, or a [routing] \
             section with a targets file"
        );
    }
    let mut targets: Vec<Arc<Target>> = Vec::with_capacity(raw.len());
    for (i, spanned) in raw.into_iter().enumerate() {
        let line_at = at(spanned.span());
        let where_ = format!("{line_at}: [[targets]] #{}", i + 1);
        let mut fields = spanned.into_inner();
        let email = match fields.get("email") {
            Some(toml::Value::String(s)) => s
                .trim()
                .parse::<Address>()
                .map_err(|e| anyhow!("{where_}: invalid email `{s}`: {e}"))?,
            Some(_) => bail!("{where_}: `email` must be a string"),
            None => bail!("{where_}: `email` is missing"),
        };
        let name = match fields.get("name") {
            Some(toml::Value::String(s)) if s.chars().any(char::is_control) => {
                bail!("{where_}: `name` holds a control character")
            }
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("{where_}: `name` must be a string"),
            None => None,
        };
        let key = email.to_string().to_lowercase();
        if targets.iter().any(|t| t.key() == key) {
            bail!("{where_}: `{email}` is listed twice");
        }
        let timezone = match fields.get("timezone") {
            Some(toml::Value::String(s)) => Some(time_zone(s).map_err(|e| anyhow!("{where_}: {e}"))?),
            Some(_) => bail!("{where_}: `timezone` must be a string, e.g. \"America/New_York\""),
            None => None,
        };
        let letter = match fields.get("letter") {
            Some(toml::Value::String(s)) => Some(LetterFile {
                path: resolve(PathBuf::from(s)),
                name: s.clone(),
            }),
            Some(_) => bail!("{where_}: `letter` must be a string (a letter file)"),
            None => None,
        };
        let subject = match fields.get("subject") {
            Some(toml::Value::String(s)) => Some(Source {
                text: s.clone(),
                location: line_at.clone(),
            }),
            Some(_) => bail!("{where_}: `subject` must be a string (a Tera template)"),
            None => None,
        };
        let matcher = match fields.remove("match") {
            Some(value) => matcher_from(value).map_err(|why| {
                anyhow!(
                    "{where_}: {why}\n\nhint: match = {{ country = [\"US\", \"CA\"] }} (a supporters column and the values that select this target)"
                )
            })?,
            None => Vec::new(),
        };
        let fields = fields.into_iter().map(|(k, v)| (k, dates_as_text(v))).collect();
        targets.push(Arc::new(Target {
            name,
            email,
            fields,
            index: i,
            letter,
            subject,
            matcher,
            routed: None,
            timezone,
        }));
    }
    Ok(targets)
}

/// An IANA time zone, or an error that says how to name one.
pub(crate) fn time_zone(name: &str) -> std::result::Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
        format!(
            "unknown time zone `{name}`\n\nhint: use an IANA name such as `America/New_York`, \
             `Europe/Berlin` or `UTC`"
        )
    })
}

/// `start` / `end`: a date, a local date-time, or one with an offset.
fn bound(
    d: &Spanned<toml::value::Datetime>,
    key: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<crate::schedule::Bound> {
    use crate::schedule::Bound;
    let v = d.get_ref();
    let bad = |why: &str| {
        anyhow!(
            "{}: `{key}` {why}\n\nhint: {key} = 2026-12-01 (a day) or {key} = 2026-12-01T09:00 \
             (a local time in each target's zone)",
            at(d.span())
        )
    };
    let date = v
        .date
        .map(|x| jiff::civil::Date::new(x.year as i16, x.month as i8, x.day as i8));
    let date = match date {
        Some(Ok(x)) => x,
        Some(Err(_)) => return Err(bad("is not a valid date")),
        None => return Err(bad("needs a date")),
    };
    let Some(t) = v.time else {
        return Ok(Bound::Date(date));
    };
    let time = jiff::civil::Time::new(t.hour as i8, t.minute as i8, t.second.unwrap_or(0) as i8, 0)
        .map_err(|_| bad("is not a valid time"))?;
    let local = date.to_datetime(time);
    Ok(match v.offset {
        None => Bound::Local(local),
        Some(_) => Bound::Instant(
            v.to_string()
                .parse::<jiff::Timestamp>()
                .map_err(|_| bad("is not a valid date-time"))?,
        ),
    })
}

/// `days = ["mon", …]`: at least one, each a day's name.
fn days(
    list: &Spanned<Vec<Spanned<String>>>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<[bool; 7]> {
    let mut days = [false; 7];
    for d in list.get_ref() {
        let name = d.get_ref().trim().to_lowercase();
        let Some(i) = crate::schedule::DAY_NAMES
            .iter()
            .position(|n| name.starts_with(n) && name.len() >= 3)
        else {
            bail!(
                "{}: unknown day `{}`\n\nhint: days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
                at(d.span()),
                d.get_ref()
            );
        };
        days[i] = true;
    }
    if !days.contains(&true) {
        bail!(
            "{}: `days` is empty: the window would never open\n\nhint: days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
            at(list.span())
        );
    }
    Ok(days)
}

/// `[schedule]`: typed, and checked to open some time.
fn schedule_from_raw(
    raw: Spanned<RawSchedule>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<crate::schedule::Schedule> {
    use crate::schedule::{Hours, Schedule};
    let section = at(raw.span());
    let raw = raw.into_inner();
    let timezone = match &raw.timezone {
        Some(tz) => time_zone(tz.get_ref()).map_err(|e| anyhow!("{}: {e}", at(tz.span())))?,
        None => jiff::tz::TimeZone::system(),
    };
    let start = raw.start.as_ref().map(|d| bound(d, "start", at)).transpose()?;
    let end = raw.end.as_ref().map(|d| bound(d, "end", at)).transpose()?;
    let hours = match &raw.hours {
        Some(h) => h
            .get_ref()
            .parse::<Hours>()
            .map_err(|e| anyhow!("{}: {e}", at(h.span())))?,
        None => Hours::ALL_DAY,
    };
    let days = raw.days.as_ref().map_or(Ok([true; 7]), |d| days(d, at))?;
    let per_target_hourly = match raw.per_target_hourly {
        Some(n) if *n.get_ref() == 0 => bail!(
            "{}: `per_target_hourly` must be at least 1 (leave it out for no hourly cap)",
            at(n.span())
        ),
        Some(n) => Some(n.into_inner()),
        None => None,
    };
    let jitter = match raw.jitter {
        Some(j) if !(0.0..=0.5).contains(j.get_ref()) => bail!(
            "{}: `jitter` must be between 0 and 0.5 (a share of the spacing between letters), not `{}`",
            at(j.span()),
            j.get_ref()
        ),
        Some(j) => j.into_inner(),
        None => 0.0,
    };
    let schedule = Schedule {
        start,
        end,
        hours,
        days,
        timezone,
        per_target_hourly,
        jitter,
    };
    let w = schedule.window(None, "");
    if let (Some(s), Some(e)) = (w.start(), w.end()) {
        let where_ = raw.end.as_ref().map_or_else(|| section.clone(), |e| at(e.span()));
        if e <= s {
            bail!(
                "{where_}: `end` ({}) comes before `start` ({})",
                schedule.end.map(|b| b.to_string()).unwrap_or_default(),
                schedule.start.map(|b| b.to_string()).unwrap_or_default()
            );
        }
        if w.open_between(s, e) == 0 {
            bail!(
                "{where_}: the window from `start` to `end` has no open hours ({} on {}): \
                 no letter could go\n\nhint: widen `hours` or `days`, or move `end`",
                schedule.hours,
                schedule.days_text()
            );
        }
    }
    Ok(schedule)
}

/// `[campaign]`, validated.
fn campaign_from_raw(
    c: RawCampaign,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<CampaignSection> {
    let id_at = at(c.id.span());
    let id = c.id.into_inner();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("{id_at}: campaign id `{id}` may hold only a-z, 0-9 and `-`");
    }
    let letter_at = at(c.letter.span());
    let letters: Vec<LetterFile> = one_or_list(c.letter, "letter", at)?
        .into_iter()
        .map(|s| LetterFile {
            path: resolve(PathBuf::from(&s.text)),
            name: s.text,
        })
        .collect();
    let subjects = one_or_list(c.subject, "subject", at)?;
    let attachments = c
        .attachments
        .into_iter()
        .map(|a| AttachmentFile {
            at: at(a.span()),
            path: resolve(a.into_inner()),
        })
        .collect();
    let language_column = language_column(c.language_column);
    Ok(CampaignSection {
        language_column,
        attachments,
        id,
        name: c.name,
        org: c.org,
        letter_at,
        letter: letters[0].path.clone(),
        letters,
        subjects,
    })
}

/// `[campaign] language_column`, normalized like a header.
fn language_column(raw: Option<String>) -> Option<String> {
    raw.map(|c| crate::roster::normalize_header(&c))
        .filter(|c| !c.is_empty())
}

/// `[routing]`, validated.
fn routing_from_raw(
    r: Spanned<RawRouting>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Routing> {
    let section_at = at(r.span());
    let r = r.into_inner();
    let columns_at = at(r.columns.span());
    let columns: Vec<String> = r
        .columns
        .into_inner()
        .iter()
        .map(|c| crate::roster::normalize_header(c))
        .collect();
    if columns.is_empty() || columns.iter().any(String::is_empty) {
        bail!("{columns_at}: [routing] match needs at least one column name\n\nhint: match = [\"state\"]");
    }
    Ok(Routing {
        file: resolve(r.targets),
        columns,
        at: section_at,
    })
}

/// `[supporters] email_column` and `delimiter`, validated.
fn layout_from_raw(
    email_column: Option<String>,
    delimiter_text: Option<Spanned<String>>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Layout> {
    Ok(Layout {
        email_column: email_column.map_or_else(|| "email".into(), |c| crate::roster::normalize_header(&c)),
        delimiter: match delimiter_text {
            None => None,
            Some(d) => Some(delimiter(d.get_ref()).ok_or_else(|| {
                anyhow!(
                    "{}: [supporters] delimiter `{}` must be one character: `,`, `;`, `|` or a tab (\"\\t\")",
                    at(d.span()),
                    d.get_ref().escape_default()
                )
            })?),
        },
    })
}

/// `match = { column = ["value", …] }`, normalized: columns like headers,
/// values trimmed and lower-cased (comparisons ignore case and spaces).
fn matcher_from(value: toml::Value) -> std::result::Result<Vec<(String, Vec<String>)>, String> {
    let toml::Value::Table(table) = value else {
        return Err("`match` must be a table of column = [values]".into());
    };
    let mut out = Vec::with_capacity(table.len());
    for (column, values) in table {
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.trim().to_lowercase()),
            toml::Value::Integer(n) => Some(n.to_string()),
            _ => None,
        };
        let list: Vec<String> = match &values {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<_>>(),
            other => scalar(other).map(|v| vec![v]),
        }
        .ok_or_else(|| format!("`match.{column}` must be a list of values"))?;
        if list.is_empty() {
            return Err(format!(
                "`match.{column}` is an empty list: no supporter could match"
            ));
        }
        out.push((crate::roster::normalize_header(&column), list));
    }
    if out.is_empty() {
        return Err("`match` is empty".into());
    }
    Ok(out)
}

/// `delimiter = ";"`: one ASCII character that can separate fields.
fn delimiter(text: &str) -> Option<u8> {
    let t = if text == "tab" { "\t" } else { text };
    match t.as_bytes() {
        [b] if b.is_ascii()
            && !matches!(b, b'"' | b'\n' | b'\r')
            && (b.is_ascii_punctuation() || *b == b'\t') =>
        {
            Some(*b)
        }
        _ => None,
    }
}

/// TOML dates and times become the text they were written as (`2018-06-01`),
/// also inside arrays and tables.
///
/// NOTE: serde gives a `toml::Value::Datetime` to Tera as a private map,
/// `{"$__toml_private_datetime": "2018-06-01"}`, which a letter would print.
fn dates_as_text(value: toml::Value) -> toml::Value {
    match value {
        toml::Value::Datetime(d) => toml::Value::String(d.to_string()),
        toml::Value::Array(items) => toml::Value::Array(items.into_iter().map(dates_as_text).collect()),
        toml::Value::Table(table) => {
            toml::Value::Table(table.into_iter().map(|(k, v)| (k, dates_as_text(v))).collect())
        }
        other => other,
    }
}

fn smtp_from_raw(s: RawSmtp, dir: &Path, at: &dyn Fn(std::ops::Range<usize>) -> String) -> Result<Smtp> {
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
    let chosen = [
        s.password_env.is_some(),
        s.password_command.is_some(),
        s.password.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen > 1 {
        bail!("{host_at}: [smtp] takes one of password_env, password_command or password");
    }
    let password = if let Some(cmd) = s.password_command {
        Secret::Command {
            command: cmd,
            dir: dir.to_path_buf(),
        }
    } else if let Some(literal) = s.password {
        Secret::Literal(Password::new(literal))
    } else {
        Secret::Env(s.password_env.unwrap_or_else(|| DEFAULT_PASSWORD_ENV.to_string()))
    };
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

fn bounces_from_raw(
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
    let chosen = [
        b.password_env.is_some(),
        b.password_command.is_some(),
        b.password.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen > 1 {
        bail!("{section_at}: [bounces] takes one of password_env, password_command or password");
    }
    let password = if let Some(cmd) = b.password_command {
        Secret::Command {
            command: cmd,
            dir: dir.to_path_buf(),
        }
    } else if let Some(literal) = b.password {
        Secret::Literal(Password::new(literal))
    } else {
        Secret::Env(
            b.password_env
                .unwrap_or_else(|| DEFAULT_BOUNCES_PASSWORD_ENV.to_string()),
        )
    };
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

/// Whether `host` names this machine (`localhost`, 127.0.0.0/8, `::1`).
#[must_use]
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a literal password in a file others can read.
#[cfg(unix)]
fn ensure_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read permissions of `{}`", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "`{}` holds a literal SMTP password but is readable by others (mode {:o})\n\n\
             hint: run `chmod 600 {}`, or use password_env / password_command",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn ensure_private(_: &Path) -> Result<()> {
    Ok(())
}

/// 1-based line of byte `offset` in `text`.
#[must_use]
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
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

    const MINIMAL: &str = r#"
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

    fn parse(text: &str) -> Result<Config> {
        Config::from_toml(text, Path::new("camp/mailer.toml"))
    }

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
    fn rates_parse() {
        assert_eq!(
            "30/minute".parse::<Rate>().unwrap().interval(),
            Duration::from_secs(2)
        );
        assert_eq!(
            "10/second".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(100)
        );
        assert!("0/minute".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        let text = format!("{MINIMAL}\n[delivery]\nrate = \"5/fortnight\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("camp/mailer.toml:18:8: invalid rate `5/fortnight`"),
            "{err}"
        );
    }

    #[test]
    fn campaign_id_is_checked() {
        let err = parse(&MINIMAL.replace("test-1", "Test 1"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("camp/mailer.toml:3: campaign id"), "{err}");
    }

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
    fn target_dates_become_text_as_written() {
        let text = MINIMAL.replace(
            "email = \"ceo@corp.example\"\n",
            "email = \"ceo@corp.example\"\nsince = 2018-06-01\nterms = [1979-05-27T07:32:00Z]\n\
             board = { at = 07:32:00 }\n",
        );
        let fields = &parse(&text).unwrap().targets[0].fields;
        assert_eq!(fields["since"], toml::Value::String("2018-06-01".into()));
        assert_eq!(
            fields["terms"],
            toml::Value::Array(vec![toml::Value::String("1979-05-27T07:32:00Z".into())])
        );
        assert_eq!(fields["board"]["at"], toml::Value::String("07:32:00".into()));
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
    fn target_needs_a_valid_email() {
        let err = parse(&MINIMAL.replace("ceo@corp.example", "not-an-address"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[[targets]] #1: invalid email `not-an-address`"),
            "{err}"
        );
        assert!(err.starts_with("camp/mailer.toml:10: [[targets]] #1"), "{err}");
    }

    /// `MINIMAL` plus `extra`; the error and the line of `needle` in the text.
    fn schedule_error(extra: &str, needle: &str) -> (String, usize) {
        let text = format!("{MINIMAL}\n{extra}");
        let line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        (format!("{:#}", parse(&text).unwrap_err()), line)
    }

    #[test]
    fn schedule_parses_into_typed_values() {
        let c = parse(&format!(
            "{MINIMAL}\n[schedule]\nstart = 2026-12-01\nend = 2026-12-05T17:30\nhours = \"09:00-17:00\"\n\
             days = [\"mon\", \"Tuesday\", \"fri\"]\ntimezone = \"America/New_York\"\n\
             per_target_hourly = 60\njitter = 0.25\n"
        ))
        .unwrap();
        let s = c.schedule.unwrap();
        assert_eq!(s.start.unwrap().to_string(), "2026-12-01");
        assert_eq!(s.end.unwrap().to_string(), "2026-12-05 17:30");
        assert_eq!(s.hours.to_string(), "09:00-17:00");
        assert_eq!(s.days_text(), "mon, tue, fri");
        assert_eq!(s.timezone.iana_name(), Some("America/New_York"));
        assert_eq!((s.per_target_hourly, s.jitter), (Some(60), 0.25));
        assert!(parse(MINIMAL).unwrap().schedule.is_none());
    }

    #[test]
    fn schedule_errors_name_file_and_line() {
        let cases = [
            (
                "[schedule]\ntimezone = \"Mars/Olympus\"\n",
                "timezone =",
                "unknown time zone `Mars/Olympus`",
            ),
            (
                "[schedule]\nstart = 2026-12-05\nend = 2026-12-01\n",
                "end =",
                "`end` (2026-12-01) comes before `start` (2026-12-05)",
            ),
            (
                "[schedule]\nstart = 2026-12-05\nend = 2026-12-06\ndays = [\"mon\"]\n",
                "end =",
                "has no open hours (00:00-24:00 on mon)",
            ),
            (
                "[schedule]\nhours = \"9am-5pm\"\n",
                "hours =",
                "hours `9am-5pm` must look like `09:00-17:00`",
            ),
            ("[schedule]\nhours = \"17:00-09:00\"\n", "hours =", "open no time"),
            (
                "[schedule]\ndays = [\"mon\", \"someday\"]\n",
                "days =",
                "unknown day `someday`",
            ),
            ("[schedule]\ndays = []\n", "days =", "`days` is empty"),
            (
                "[schedule]\njitter = 0.9\n",
                "jitter =",
                "`jitter` must be between 0 and 0.5",
            ),
            (
                "[schedule]\nper_target_hourly = 0\n",
                "per_target_hourly",
                "at least 1",
            ),
            ("[schedule]\nhourly = 5\n", "hourly =", "unknown field `hourly`"),
        ];
        for (extra, needle, says) in cases {
            let (err, line) = schedule_error(extra, needle);
            assert!(
                err.starts_with(&format!("camp/mailer.toml:{line}")),
                "{extra}: {err}"
            );
            assert!(err.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn a_target_time_zone_is_checked_and_kept() {
        let c = parse(&MINIMAL.replace(
            "email = \"ceo@corp.example\"",
            "email = \"ceo@corp.example\"\ntimezone = \"Europe/Berlin\"",
        ))
        .unwrap();
        assert_eq!(
            c.targets[0].timezone.as_ref().and_then(|t| t.iana_name()),
            Some("Europe/Berlin")
        );
        let err = parse(&MINIMAL.replace(
            "email = \"ceo@corp.example\"",
            "email = \"ceo@corp.example\"\ntimezone = \"Europe/Atlantis\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("camp/mailer.toml:10: [[targets]] #1: unknown time zone `Europe/Atlantis`"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../config.example.toml");
        let c = Config::from_toml(text, Path::new("config.example.toml")).unwrap();
        assert_eq!(c.campaign.id, "microsoft-ice-2018");
        assert!(c.smtp.is_some());
    }
}
