//! The pipeline every command shares: config + letter + supporters → messages.
//!
//! `check`, `preview` and `send` all walk [`Campaign::prepared`]; `send` alone
//! hands the result to a transport. Rows stream: nothing grows with the file
//! but the roster's duplicate set.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use anyhow::{Result, bail};
use lettre::message::dkim::DkimConfig;

use crate::config::{Config, Target};
use crate::ledger::Ledger;
use crate::letter::{self, Globals, Letter, Rendered};
use crate::message::{self, Built, Envelopes};
use crate::roster::{Duplicate, Roster, Row, Skipped, Supporter};
use crate::targets::Router;

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

/// Letters sent from a text that changed since ([`Campaign::changed_since_sent`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Changed {
    /// How many letters went with an older text.
    pub(crate) sent: u64,
    /// Their letter files, as the config named them.
    pub(crate) files: Vec<String>,
    /// The campaign has several letter files (name them in the warning).
    pub(crate) several_files: bool,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.several_files {
            format!("the letter (`{}`)", self.files.join("`, `"))
        } else {
            "the letter".to_string()
        };
        let n = self.sent;
        write!(
            f,
            "{what} changed since {} letter{} {} sent; the rest will get the new text\n\n\
             hint: `mailer export` lists which text each letter went with \
             (letter_file, subject_variant, letter_version)",
            crate::report::thousands(n),
            if n == 1 { "" } else { "s" },
            if n == 1 { "was" } else { "were" },
        )
    }
}

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
    /// Who writes to whom.
    router: Router,
    /// `[campaign] attachments`, read once.
    attachments: Vec<message::Attachment>,
}

/// What one CSV row yields.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// The supporter's letters, one per target of theirs, in config order.
    Letters {
        /// The supporter.
        supporter: Supporter,
        /// Each of their targets with its finished message.
        letters: Vec<(Arc<Target>, Built)>,
    },
    /// A valid supporter who matches no target: no letter.
    Unmatched {
        /// The supporter.
        supporter: Supporter,
        /// The values that matched nothing (`state PR`), for grouping.
        label: String,
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

    /// Reads the routing rows, compiles the letters for an already loaded config.
    pub(crate) fn new(mut config: Config, now: SystemTime) -> Result<Campaign> {
        crate::targets::load_routed(&mut config)?;
        let router = Router::new(&config);
        let attachments = message::read_attachments(&config.campaign.attachments)?;
        let letter = Letter::load(&config)?;
        let dkim = config
            .dkim
            .as_ref()
            .map(crate::dkim::load)
            .transpose()?
            .map(Arc::new);
        let globals = Globals::new(
            BTreeMap::from([
                ("id", config.campaign.id.clone()),
                ("name", config.campaign.name.clone()),
                ("org", config.campaign.org.clone()),
            ]),
            &local_date(now),
            &config.targets,
        );
        let campaign = Campaign {
            config,
            letter,
            globals,
            dkim,
            date: now,
            router,
            attachments,
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
    ///   it is rendered once per target (once in all when it never mentions
    ///   `target` either) and checked as `message::build` would;
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
            // With `one_of`, each letter gets one of the choices: every
            // choice is checked (rendered under enough letter seeds to meet
            // each), since a bad one would fail the letters that draw it.
            let choices = letter::mentions(&h.text, "one_of");
            let seeds = if choices { ONE_OF_SEEDS } else { 1 };
            let problem = if letter::same_for_every_supporter(&h.text) {
                // Nor target: the same for every letter, rendered once
                // (not once per row of a 535-row targets file).
                let targets = if letter::mentions(&h.text, "target") {
                    self.config.targets.len()
                } else {
                    1
                };
                self.config.targets.iter().take(targets).find_map(|target| {
                    let mut seen = std::collections::HashSet::new();
                    (0..seeds).find_map(|seed| {
                        let value = match self.letter.render_header(h, target, &self.globals, seed) {
                            Ok(v) => v,
                            Err(e) => return Some(Err(e)),
                        };
                        if !seen.insert(value.clone()) {
                            return None;
                        }
                        let for_target = if many {
                            format!(" (for target `{}`)", target.email)
                        } else {
                            String::new()
                        };
                        message::check_part(h.part, &value).err().map(|why| {
                            Ok(if choices {
                                format!(
                                    "{why}{for_target}; it is one of the template's `one_of` choices, \
                                     so every letter that draws it would fail"
                                )
                            } else {
                                format!("{why}{for_target}; this holds for every supporter, so no letter could be sent")
                            })
                        })
                    })
                })
            } else {
                letter::always_rendered(&h.text)
                    .and_then(|pieces| message::check_part_floor(h.part, &pieces).err())
                    .map(|why| {
                        Ok(format!(
                            "{why}; this holds for every supporter, so no letter could be sent"
                        ))
                    })
            };
            match problem {
                None => {}
                Some(Err(e)) => return Err(e),
                Some(Ok(why)) => bail!(
                    "{}: {why}\n\n\
                     hint: fix {} in `{}`",
                    h.location,
                    h.part.config_key(),
                    self.config.path.display()
                ),
            }
        }
        Ok(())
    }

    /// Opens the supporters file (and checks it has every column a
    /// `match` names).
    pub(crate) fn roster(&self) -> Result<Roster> {
        let roster = Roster::open(&self.config.supporters_file, &self.config.supporters_layout)?;
        self.router.check_columns(
            roster.headers(),
            &self.config.supporters_file.display().to_string(),
        )?;
        Ok(roster)
    }

    /// Streams every row, prepared. An `Err` is fatal: the file is unreadable
    /// or the letter cannot render (a template bug, not a data problem).
    /// `encode`: also MIME-encode each message (`Built::bytes`); validation,
    /// Message-IDs and previews of headers and text do not need it.
    ///
    /// Without `encode` (check, status, plans: millions of rows, small
    /// results), rows are prepared on every core, a batch at a time, and
    /// come out in file order exactly as one thread would give them (see
    /// [`Batches`]). With it (`preview --out`, messages carrying
    /// attachments) one row at a time: a batch of encoded messages could
    /// hold gigabytes.
    pub(crate) fn prepared(&self, encode: bool) -> Result<Box<dyn Iterator<Item = Result<Prepared>> + '_>> {
        let roster = self.roster()?;
        let file = roster.path().display().to_string();
        if encode {
            return Ok(Box::new(roster.map(move |row| self.prepare(row?, &file, encode))));
        }
        Ok(Box::new(Batches {
            campaign: self,
            roster,
            file,
            helpers: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .clamp(1, MAX_THREADS)
                - 1,
            read: Vec::new(),
            ready: Vec::new().into_iter(),
            ended: false,
        }))
    }

    /// Renders and builds one row's letters.
    pub(crate) fn prepare(&self, row: Row, file: &str, encode: bool) -> Result<Prepared> {
        self.prepare_signed(row, file, encode, self.dkim.as_deref())
    }

    /// Renders and builds one row's letters to send: encoded but not yet
    /// signed, since [`Built::stamp`] dates and signs each as it is handed
    /// over (signing here too would do it twice).
    pub(crate) fn prepare_to_send(&self, row: Row, file: &str) -> Result<Prepared> {
        self.prepare_signed(row, file, true, None)
    }

    fn prepare_signed(
        &self,
        row: Row,
        file: &str,
        encode: bool,
        dkim: Option<&DkimConfig>,
    ) -> Result<Prepared> {
        let supporter = match row {
            Row::Valid(s) => s,
            Row::Skipped(skip) => return Ok(Prepared::Skipped(skip)),
            Row::Duplicate(repeat) => return Ok(Prepared::Duplicate(repeat)),
        };
        let settings = Envelopes {
            campaign_id: &self.config.campaign.id,
            cc_supporter: self.config.sender.cc_supporter,
            bcc: &self.config.sender.bcc,
            dkim,
            encode,
            attachments: &self.attachments,
        };
        let routed = self.router.route(&supporter);
        if routed.is_empty() {
            let label = self.router.unmatched_label(&supporter);
            return Ok(Prepared::Unmatched { supporter, label });
        }
        let mut letters = Vec::with_capacity(routed.len());
        for i in routed {
            let target = &self.config.targets[i];
            let rendered = self.render(&supporter, target, file, encode)?;
            match message::build(&rendered, &supporter, target, &settings, self.date) {
                Ok(built) => letters.push((Arc::clone(target), built)),
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

    /// Renders one (supporter, target) letter. A template error, or a body
    /// with nothing but whitespace in it, is a [`TemplateError`]: never sent.
    pub(crate) fn render(
        &self,
        supporter: &Supporter,
        target: &Target,
        file: &str,
        html: bool,
    ) -> Result<Rendered> {
        let rendered = self
            .letter
            .render(supporter, target, &self.globals, html)
            .map_err(|e| {
                anyhow::Error::new(TemplateError(format!(
                    "{e:#} (rendering the letter for {file}:{})",
                    supporter.line
                )))
            })?;
        if rendered.text.trim().is_empty() {
            return Err(anyhow::Error::new(TemplateError(format!(
                "{}: the letter to `{}` is empty (nothing but whitespace), and an empty letter \
                 is never sent (rendering the letter for {file}:{})\n\nhint: to leave a target \
                 out for some supporters, give it `match = {{ column = [\"value\"] }}` instead of \
                 an `{{% if %}}` around the whole letter",
                rendered.variant.letter_file,
                target.key(),
                supporter.line
            ))));
        }
        Ok(rendered)
    }

    /// The letter `supporter` writes to `target`, addressed to `to` alone
    /// for `send --test`: `[TEST] ` before the subject, no Cc or Bcc,
    /// encoded and DKIM-signed. The inner `Err` is why it cannot be built.
    pub(crate) fn test_letter(
        &self,
        supporter: &Supporter,
        target: &Target,
        to: &lettre::Address,
        file: &str,
    ) -> Result<std::result::Result<Built, String>> {
        let mut rendered = self.render(supporter, target, file, true)?;
        rendered.subject = format!("[TEST] {}", rendered.subject);
        let inbox = Target {
            name: None,
            email: to.clone(),
            ..target.clone()
        };
        let settings = Envelopes {
            campaign_id: &self.config.campaign.id,
            cc_supporter: false,
            bcc: &[],
            dkim: self.dkim.as_deref(),
            encode: true,
            attachments: &self.attachments,
        };
        Ok(message::build(&rendered, supporter, &inbox, &settings, self.date))
    }

    /// The targets a row that cannot be read counts for (status, ledger):
    /// every `[[targets]]` entry without `match`.
    #[must_use]
    pub(crate) fn unconditional_targets(&self) -> Vec<Arc<Target>> {
        self.router
            .unconditional()
            .into_iter()
            .map(|i| Arc::clone(&self.config.targets[i]))
            .collect()
    }

    /// The attachments, read.
    #[must_use]
    pub(crate) fn attachments(&self) -> &[message::Attachment] {
        &self.attachments
    }

    /// The DKIM signing key, if configured (`send` signs again at hand-over).
    #[must_use]
    pub(crate) fn dkim(&self) -> Option<Arc<DkimConfig>> {
        self.dkim.clone()
    }

    /// Letters already sent from a text that has changed since: the letter
    /// file (or what it includes) or one of the config's templates (the
    /// subject variant, From, Reply-To) was edited, or the file is no
    /// longer in `[campaign] letter`. `None` when every sent letter's text
    /// is still the current one (letters sent before texts were recorded
    /// are not counted).
    pub(crate) fn changed_since_sent(&self, ledger: &Ledger) -> Result<Option<Changed>> {
        let current = self.letter.versions();
        let mut changed = Changed::default();
        for sent in ledger.sent_versions()? {
            let same = current.iter().any(|(file, subject, version)| {
                **file == *sent.letter_file && *subject == sent.subject && **version == *sent.version
            });
            if !same {
                changed.sent += sent.letters;
                if !changed.files.contains(&sent.letter_file) {
                    changed.files.push(sent.letter_file);
                }
            }
        }
        changed.several_files = self.letter.files() > 1;
        Ok((changed.sent > 0).then_some(changed))
    }

    /// Whether supporters write to different targets (`match`, `[routing]`).
    #[must_use]
    pub(crate) fn is_routed(&self) -> bool {
        self.router.is_conditional()
    }

    /// The number of targets (letters per supporter).
    #[must_use]
    pub(crate) fn target_count(&self) -> usize {
        self.config.targets.len()
    }
}

/// Letter seeds a header with `one_of` is rendered under by `check`, to
/// meet each of its choices (a choice among 16 is missed with odds of about
/// one in a million).
const ONE_OF_SEEDS: u64 = 256;

/// Rows read and prepared together by [`Batches`].
const BATCH_ROWS: usize = 1024;
/// Rows one thread takes at a time within a batch.
const UNIT_ROWS: usize = 64;
/// At most this many threads prepare rows.
const MAX_THREADS: usize = 4;

/// [`Campaign::prepared`] without encoding, on several threads.
///
/// NOTE: the roster (reading, validation, duplicates) stays on the calling
/// thread, in file order: only `prepare` (render and validate), the costly
/// part, runs in parallel. Each batch is read while the previous one is
/// being prepared, and every helper thread is joined before the batch's
/// results are given out in row order, so the caller sees exactly what the
/// one-thread iterator gives, and memory stays bounded by two batches.
/// Reading stops at the first error the roster gives (every caller stops
/// there too).
struct Batches<'a> {
    campaign: &'a Campaign,
    roster: Roster,
    /// The supporters file, for template errors.
    file: String,
    /// Threads besides the caller's (0 on one core).
    helpers: usize,
    /// Rows read for the next batch.
    read: Vec<Result<Row>>,
    /// The current batch, prepared, in row order.
    ready: std::vec::IntoIter<Result<Prepared>>,
    /// The roster gave its last row (or an error).
    ended: bool,
}

impl Batches<'_> {
    /// Reads up to [`BATCH_ROWS`] rows.
    fn read_batch(roster: &mut Roster, ended: &mut bool) -> Vec<Result<Row>> {
        let mut rows = Vec::with_capacity(BATCH_ROWS);
        while !*ended && rows.len() < BATCH_ROWS {
            match roster.next() {
                Some(Ok(row)) => rows.push(Ok(row)),
                Some(Err(e)) => {
                    rows.push(Err(e));
                    *ended = true;
                }
                None => *ended = true,
            }
        }
        rows
    }

    /// Prepares `rows` on the helpers and this thread, while this thread
    /// also reads the next batch; the results in row order.
    fn prepare_batch(&mut self, rows: Vec<Result<Row>>) -> Vec<Result<Prepared>> {
        let mut units: Vec<Vec<Result<Row>>> = Vec::with_capacity(rows.len().div_ceil(UNIT_ROWS));
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            units.push(rows.by_ref().take(UNIT_ROWS).collect());
        }
        let count = units.len();
        let queue = Mutex::new(units.into_iter().enumerate());
        let done: Mutex<Vec<Option<Vec<Result<Prepared>>>>> = Mutex::new((0..count).map(|_| None).collect());
        let (campaign, file) = (self.campaign, self.file.as_str());
        let work = || {
            loop {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((i, unit)) = next else {
                    break;
                };
                let prepared: Vec<Result<Prepared>> = unit
                    .into_iter()
                    .map(|row| campaign.prepare(row?, file, false))
                    .collect();
                done.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(prepared);
            }
        };
        let (roster, ended) = (&mut self.roster, &mut self.ended);
        let next = std::thread::scope(|scope| {
            for _ in 0..self.helpers.min(count.saturating_sub(1)) {
                scope.spawn(work);
            }
            let next = Self::read_batch(roster, ended);
            work();
            next
        });
        self.read = next;
        done.into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Prepared>;

    fn next(&mut self) -> Option<Result<Prepared>> {
        loop {
            if let Some(p) = self.ready.next() {
                return Some(p);
            }
            if self.read.is_empty() {
                self.read = Self::read_batch(&mut self.roster, &mut self.ended);
                if self.read.is_empty() {
                    return None;
                }
            }
            let rows = std::mem::take(&mut self.read);
            self.ready = self.prepare_batch(rows).into_iter();
        }
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
