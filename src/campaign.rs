//! The pipeline every command shares: config + letter + supporters → messages.
//!
//! `check`, `preview` and `send` all walk [`Campaign::prepared`]; `send` alone
//! hands the result to a transport. Rows stream: nothing grows with the file
//! but the roster's duplicate set.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Result, bail};
use lettre::message::dkim::DkimConfig;

use crate::config::Config;
use crate::letter::{self, Globals, Letter};
use crate::message::{self, Built, Envelopes};
use crate::roster::{Duplicate, Roster, Row, Skipped, Supporter};

/// A letter template failed to render for a row: a bug in the letter or
/// config, not in the data. Typed so `check` can list each and go on.
#[derive(Debug)]
pub(crate) struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

/// A loaded campaign, ready to prepare letters.
pub(crate) struct Campaign {
    /// The validated config.
    pub(crate) config: Config,
    /// The compiled templates.
    pub(crate) letter: Letter,
    globals: Globals,
    dkim: Option<Arc<DkimConfig>>,
    /// The `Date` of messages built here; `send` dates each again at hand-over.
    date: SystemTime,
}

/// What one CSV row yields.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// The supporter's letters, one per target in config order.
    Letters {
        /// The supporter.
        supporter: Supporter,
        /// One finished message per target.
        letters: Vec<Built>,
    },
    /// A row that cannot be sent: invalid in the file, or its letter
    /// cannot be built (a header-bound value); recorded as skipped by `send`.
    Skipped(Skipped),
    /// A repeated email; only its first row counts.
    Duplicate(Duplicate),
}

impl Campaign {
    /// Loads the config file, the letter and the DKIM key.
    pub(crate) fn load(config_path: &Path, now: SystemTime) -> Result<Campaign> {
        let config = Config::load(config_path)?;
        Campaign::new(config, now)
    }

    /// Compiles the letter for an already loaded config.
    pub(crate) fn new(config: Config, now: SystemTime) -> Result<Campaign> {
        let letter = Letter::load(&config)?;
        let dkim = config
            .dkim
            .as_ref()
            .map(crate::dkim::load)
            .transpose()?
            .map(Arc::new);
        let globals = Globals {
            campaign: BTreeMap::from([
                ("id", config.campaign.id.clone()),
                ("name", config.campaign.name.clone()),
                ("org", config.campaign.org.clone()),
            ]),
            today: local_date(now),
        };
        let campaign = Campaign {
            config,
            letter,
            globals,
            dkim,
            date: now,
        };
        campaign.check_headers()?;
        Ok(campaign)
    }

    /// Refuses, as a config error, a header that no supporter's letter could
    /// carry: blamed on every row, it would skip the whole campaign and exit 0.
    ///
    /// NOTE: "does not depend on the row" is decided from the template text,
    /// never from one probe's values (a probe with empty values cannot tell
    /// `{% if supporter.note %}short{% else %}long{% endif %}` apart):
    /// - a header template that never mentions `supporter` (see
    ///   [`letter::same_for_every_supporter`]) renders the same for every row:
    ///   it is rendered once per target and checked as `message::build` would;
    /// - a template without `{% %}` tags outputs all of its literal text for
    ///   every row (its `{{ }}` only add text): a control character or an
    ///   encoded word in that text, or that text alone over the length limit,
    ///   fails every row.
    ///
    /// Anything else (an address from `{{ supporter.email }}`, a subject
    /// made long by a column) stays that row's problem, reported and skipped.
    fn check_headers(&self) -> Result<()> {
        let many = self.config.targets.len() > 1;
        for h in self.letter.header_templates() {
            let problem = if letter::same_for_every_supporter(&h.text) {
                self.config.targets.iter().find_map(|target| {
                    let value = match self.letter.render_header(h.part, target, &self.globals) {
                        Ok(v) => v,
                        Err(e) => return Some(Err(e)),
                    };
                    let for_target = if many {
                        format!(" (for target `{}`)", target.email)
                    } else {
                        String::new()
                    };
                    message::check_part(h.part, &value)
                        .err()
                        .map(|why| Ok(format!("{why}{for_target}")))
                })
            } else {
                letter::always_rendered(&h.text)
                    .and_then(|pieces| message::check_part_floor(h.part, &pieces).err())
                    .map(Ok)
            };
            match problem {
                None => {}
                Some(Err(e)) => return Err(e),
                Some(Ok(why)) => bail!(
                    "{}: {why}; this holds for every supporter, so no letter could be sent\n\n\
                     hint: fix {} in `{}`",
                    h.location,
                    h.part.config_key(),
                    self.config.path.display()
                ),
            }
        }
        Ok(())
    }

    /// Opens the supporters file.
    pub(crate) fn roster(&self) -> Result<Roster> {
        Roster::open(&self.config.supporters_file)
    }

    /// Streams every row, prepared. An `Err` is fatal: the file is unreadable
    /// or the letter cannot render (a template bug, not a data problem).
    /// `encode`: also MIME-encode each message (`Built::bytes`); validation,
    /// Message-IDs and previews of headers and text do not need it.
    pub(crate) fn prepared(&self, encode: bool) -> Result<impl Iterator<Item = Result<Prepared>> + '_> {
        let roster = self.roster()?;
        let file = roster.path().display().to_string();
        Ok(roster.map(move |row| self.prepare(row?, &file, encode)))
    }

    /// Renders and builds one row's letters.
    pub(crate) fn prepare(&self, row: Row, file: &str, encode: bool) -> Result<Prepared> {
        let supporter = match row {
            Row::Valid(s) => s,
            Row::Skipped(skip) => return Ok(Prepared::Skipped(skip)),
            Row::Duplicate(repeat) => return Ok(Prepared::Duplicate(repeat)),
        };
        let settings = Envelopes {
            campaign_id: &self.config.campaign.id,
            cc_supporter: self.config.sender.cc_supporter,
            bcc: &self.config.sender.bcc,
            dkim: self.dkim.as_deref(),
            encode,
        };
        let mut letters = Vec::with_capacity(self.config.targets.len());
        for target in &self.config.targets {
            let rendered = self
                .letter
                .render(&supporter, target, &self.globals, encode)
                .map_err(|e| {
                    anyhow::Error::new(TemplateError(format!(
                        "{e:#} (rendering the letter for {file}:{})",
                        supporter.line
                    )))
                })?;
            match message::build(&rendered, &supporter, target, &settings, self.date) {
                Ok(built) => letters.push(built),
                Err(reason) => {
                    return Ok(Prepared::Skipped(Skipped {
                        line: supporter.line,
                        key: supporter.key,
                        reason,
                    }));
                }
            }
        }
        Ok(Prepared::Letters { supporter, letters })
    }

    /// The DKIM signing key, if configured (`send` signs again at hand-over).
    #[must_use]
    pub(crate) fn dkim(&self) -> Option<Arc<DkimConfig>> {
        self.dkim.clone()
    }

    /// The number of targets (letters per supporter).
    #[must_use]
    pub(crate) fn target_count(&self) -> usize {
        self.config.targets.len()
    }
}

/// YYYY-MM-DD in the machine's time zone.
fn local_date(now: SystemTime) -> String {
    jiff::Timestamp::try_from(now).map_or_else(
        |_| "1970-01-01".into(),
        |t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .date()
                .to_string()
        },
    )
}
