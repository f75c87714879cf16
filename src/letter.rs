//! The letter and the config's header templates, compiled with Tera 2.
//!
//! Owns: loading templates (each letter file's folder, so includes work),
//! the context SPEC.md defines, the text / HTML renditions, and which
//! variant a letter gets: its letter file (stably per supporter), its
//! subject (stably per letter) and every `one_of(...)` choice. Supporter
//! values only ever enter as context data, never as template source.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, Result, anyhow, bail};
use pulldown_cmark::{Event, Options, Parser};
use sha2::{Digest as _, Sha256};
use tera::{Context, ErrorKind, Kwargs, State, Tera, TeraResult, Value};

use crate::config::{Config, Source, Target};
use crate::roster::Supporter;

/// Template names for the config's header fields (never file names). The
/// subject variants after the first are `config:subject.2`, `.3`, …
const SUBJECT: &str = "config:subject";
const FROM_NAME: &str = "config:from.name";
const FROM_ADDR: &str = "config:from.address";
const REPLY_NAME: &str = "config:reply_to.name";
const REPLY_ADDR: &str = "config:reply_to.address";

/// Which header part a config template fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `[campaign] subject`.
    Subject,
    /// The display name of `[sender] from`.
    FromName,
    /// The address of `[sender] from`.
    FromAddress,
    /// The display name of `[sender] reply_to`.
    ReplyToName,
    /// The address of `[sender] reply_to`.
    ReplyToAddress,
}

impl Part {
    /// The config key it comes from, for hints.
    #[must_use]
    pub(crate) fn config_key(self) -> &'static str {
        match self {
            Part::Subject => "[campaign] subject",
            Part::FromName | Part::FromAddress => "[sender] from",
            Part::ReplyToName | Part::ReplyToAddress => "[sender] reply_to",
        }
    }
}

/// The template name of subject variant `i` (0-based).
fn subject_key(i: usize) -> String {
    if i == 0 {
        SUBJECT.to_string()
    } else {
        format!("{SUBJECT}.{}", i + 1)
    }
}

/// One header template from the config.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTemplate {
    /// What it fills.
    pub(crate) part: Part,
    /// Its Tera source.
    pub(crate) text: String,
    /// `FILE:LINE` of the config value.
    pub(crate) location: String,
    /// The name it is compiled under.
    key: String,
}

/// How the letter is sent, chosen by its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `.txt`: text/plain only.
    Text,
    /// `.md`: text/plain as written, plus text/html rendered from Markdown.
    Markdown,
}

/// One letter file of `[campaign] letter`, compiled.
struct Body {
    /// The file as the config names it: what the ledger records.
    file: Arc<str>,
    /// Renders the text part unescaped.
    plain: Tera,
    /// `.md` only: renders the letter with values Markdown-escaped, for HTML.
    markdown: Option<Tera>,
    /// The letter's template name (its file name within its folder).
    name: String,
    dir: PathBuf,
    /// The letter folder's template texts by name, for error locations.
    texts: BTreeMap<String, String>,
    /// Its language (`es` for `letter.es.md`), empty for the file itself.
    language: Arc<str>,
    /// The name of its front matter `subject` template in `headers_tera`.
    subject: Option<String>,
    /// For a file the config names: its language files (language → body).
    languages: HashMap<String, usize>,
}

/// The compiled letter files and header templates.
pub(crate) struct Letter {
    /// The config's header templates (and the first letter's files, so a
    /// header may include one as it always could).
    headers_tera: Tera,
    /// `[campaign] letter`, in config order (one file, or a list).
    bodies: Vec<Body>,
    /// How many subject variants `[campaign] subject` lists.
    subjects: usize,
    /// The text version of each (letter file, subject variant), see [`Variant::version`].
    versions: Vec<Vec<Arc<str>>>,
    reply_to: bool,
    from_has_name: bool,
    reply_has_name: bool,
    /// Where each config template came from, for error messages.
    sources: BTreeMap<String, String>,
    /// The config's header templates, for load-time checks.
    headers: Vec<HeaderTemplate>,
    /// Whether any template calls `one_of` (else its seed is not computed).
    uses_one_of: bool,
    /// How many of `bodies` are `[campaign] letter` (the rest are targets'
    /// own letters and language files).
    campaign_bodies: usize,
    /// Per target (by index): its own letter's body.
    target_bodies: Vec<Option<usize>>,
    /// Per target (by index): its own subject's template name.
    target_subjects: Vec<Option<String>>,
    /// The version of a body with its front matter subject.
    own_versions: Vec<Option<Arc<str>>>,
    /// The version of (body, target) for targets with their own subject.
    target_versions: HashMap<(usize, usize), Arc<str>>,
    /// `[campaign] language_column`.
    language_column: Option<String>,
    /// Header templates (by name) that render the same for every supporter
    /// and every `one_of` seed: their slot in `fixed_values`.
    fixed: HashMap<String, usize>,
    /// Per fixed template and target (`slot * targets + index`): its
    /// rendering, made by the first letter to that target that needs it.
    fixed_values: Vec<OnceLock<String>>,
    /// How many targets `fixed_values` has room for.
    targets: usize,
}

/// Which text a letter used: recorded per handed-over letter in the ledger,
/// shown by `preview --variants`, exported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Variant {
    /// The letter file, as `[campaign] letter` names it.
    pub(crate) letter_file: Arc<str>,
    /// The letter file's language (`es` for `letter.es.md`); empty for a
    /// file without one (also when the supporter's language has no file).
    pub(crate) language: Arc<str>,
    /// The subject variant: its 1-based position in `[campaign] subject`;
    /// 0 when the letter file's front matter or the target gives the subject.
    pub(crate) subject: u32,
    /// A fingerprint of the templates this letter came from (the letter
    /// file and everything it includes, the subject variant, From and
    /// Reply-To): it changes when the organizer edits any of them.
    pub(crate) version: Arc<str>,
    /// A fingerprint of this letter's rendered text body; set when the
    /// message is encoded for sending (empty in `check`).
    pub(crate) fingerprint: String,
}

/// The per-letter values a template sees besides supporter and target.
#[derive(Debug, Clone)]
pub(crate) struct Globals {
    /// `campaign.id`, `campaign.name`, `campaign.org`.
    pub(crate) campaign: BTreeMap<&'static str, String>,
    /// `campaign.*`, `today` (YYYY-MM-DD), and each target's `target.*` (by index), as Tera values,
    /// made once: a context then shares them instead of serializing them
    /// again for every letter (`Value` is reference-counted).
    values: GlobalValues,
}

#[derive(Debug, Clone)]
struct GlobalValues {
    campaign: Value,
    today: Value,
    /// `target.fields` of each target of the config, by `Target::index`.
    targets: Vec<Value>,
}

impl Globals {
    /// The globals, and the `target.*` values of these targets (the
    /// config's, in index order).
    #[must_use]
    pub(crate) fn new(
        campaign: BTreeMap<&'static str, String>,
        today: &str,
        targets: &[Arc<Target>],
    ) -> Globals {
        let values = GlobalValues {
            campaign: Value::from_serializable(&campaign),
            today: Value::from_serializable(&today),
            targets: targets
                .iter()
                .map(|t| Value::from_serializable(&t.fields))
                .collect(),
        };
        Globals { campaign, values }
    }

    /// `target.*` for `target`: made once per config target.
    fn target_value(&self, target: &Target) -> Value {
        self.values
            .targets
            .get(target.index)
            .cloned()
            .unwrap_or_else(|| Value::from_serializable(&target.fields))
    }
}

/// A mailbox as rendered: optional display name and the address text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderedMailbox {
    /// Display name, if the template has one.
    pub(crate) name: Option<String>,
    /// The address, not yet validated.
    pub(crate) address: String,
}

/// One letter, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// Subject line.
    pub(crate) subject: String,
    /// From.
    pub(crate) from: RenderedMailbox,
    /// Reply-To.
    pub(crate) reply_to: Option<RenderedMailbox>,
    /// text/plain body.
    pub(crate) text: String,
    /// text/html body (`.md` letters).
    pub(crate) html: Option<String>,
    /// Which letter file and subject it used.
    pub(crate) variant: Variant,
}

/// A stable choice among `n` from a letter's identity: SHA-256 of the parts
/// (never row order, row count, the run or the Rust version), reduced mod `n`.
#[must_use]
pub(crate) fn pick(parts: &[&str], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (digest64(parts) % n as u64) as usize
}

/// The first 8 bytes of SHA-256 over `parts`, each ended by a NUL.
fn digest64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// 16 hex digits of SHA-256: the fingerprints the ledger records.
#[must_use]
pub(crate) fn fingerprint(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d[..8].iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

thread_local! {
    /// The letter being rendered on this thread, for `one_of`: set by
    /// [`Letter::render`] around each rendering.
    ///
    /// NOTE: a thread-local rather than a context variable, so `one_of`
    /// works the same inside includes and macros, and templates cannot
    /// read or overwrite it.
    static LETTER_SEED: Cell<u64> = const { Cell::new(0) };
}

/// `one_of(options=["…", "…"])`: one of the phrasings, the same one every
/// time for a given letter and call (its options), a different one across
/// letters. `key="…"` tells apart two calls with the same options.
#[allow(clippy::needless_pass_by_value)] // the signature Tera calls
fn one_of(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let usage = || {
        tera::Error::message(
            "one_of takes a list of phrasings: one_of(options=[\"I urge you\", \"I ask you\"])",
        )
    };
    let options: &[Value] = kwargs.get("options")?.ok_or_else(usage)?;
    if options.is_empty() {
        return Err(usage());
    }
    let key: Option<&str> = kwargs.get("key")?;
    let seed = LETTER_SEED.with(Cell::get).to_be_bytes();
    let mut h = Sha256::new();
    h.update(seed);
    h.update(key.unwrap_or_default().as_bytes());
    for o in options {
        h.update([0]);
        h.update(o.to_string().as_bytes());
    }
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    Ok(options[(n % options.len() as u64) as usize].clone())
}

/// Sets [`LETTER_SEED`] for one rendering, and back to 0 after.
struct Seeded;

impl Seeded {
    fn new(seed: u64) -> Seeded {
        LETTER_SEED.with(|s| s.set(seed));
        Seeded
    }
}

impl Drop for Seeded {
    fn drop(&mut self) {
        LETTER_SEED.with(|s| s.set(0));
    }
}

impl Letter {
    /// Loads every letter file named in the config (with its folder, for
    /// includes) and compiles the subject / from / reply-to templates.
    #[allow(clippy::too_many_lines)] // one pass over every letter source, in order
    pub(crate) fn load(config: &Config) -> Result<Letter> {
        let mut headers: Vec<HeaderTemplate> = Vec::new();
        let mut add = |part: Part, key: String, text: String, src: &Source| {
            headers.push(HeaderTemplate {
                part,
                text,
                location: src.location.clone(),
                key,
            });
        };
        for (i, s) in config.campaign.subjects.iter().enumerate() {
            add(Part::Subject, subject_key(i), s.text.clone(), s);
        }
        let (from_name, from_addr) = split_mailbox(&config.sender.from.text);
        let from_has_name = from_name.is_some();
        add(
            Part::FromAddress,
            FROM_ADDR.into(),
            from_addr,
            &config.sender.from,
        );
        if let Some(n) = from_name {
            add(Part::FromName, FROM_NAME.into(), n, &config.sender.from);
        }
        let mut reply_has_name = false;
        if let Some(reply) = &config.sender.reply_to {
            let (n, a) = split_mailbox(&reply.text);
            reply_has_name = n.is_some();
            add(Part::ReplyToAddress, REPLY_ADDR.into(), a, reply);
            if let Some(n) = n {
                add(Part::ReplyToName, REPLY_NAME.into(), n, reply);
            }
        }
        let many = config.campaign.subjects.len() > 1;
        let sources = headers
            .iter()
            .map(|h| {
                let loc = if many && h.part == Part::Subject {
                    format!("{} ({})", h.location, h.key.trim_start_matches("config:"))
                } else {
                    h.location.clone()
                };
                (h.key.clone(), loc)
            })
            .collect();

        let mut letter = Letter {
            headers_tera: Tera::new(),
            bodies: Vec::new(),
            subjects: config.campaign.subjects.len(),
            versions: Vec::new(),
            reply_to: config.sender.reply_to.is_some(),
            from_has_name,
            reply_has_name,
            sources,
            headers: Vec::new(),
            uses_one_of: false,
            campaign_bodies: config.campaign.letters.len(),
            target_bodies: vec![None; config.targets.len()],
            target_subjects: vec![None; config.targets.len()],
            own_versions: Vec::new(),
            target_versions: HashMap::new(),
            language_column: config.campaign.language_column.clone(),
            fixed: HashMap::new(),
            fixed_values: Vec::new(),
            targets: config.targets.len(),
        };
        let mut first_files = Vec::new();
        // Extra subject templates: front matter and targets' own, (key, text, location).
        let mut extra: Vec<(String, String, String)> = Vec::new();
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        let add_body = |letter: &mut Letter,
                        extra: &mut Vec<(String, String, String)>,
                        path: &Path,
                        name: &str,
                        at: &str,
                        language: &str|
         -> Result<(usize, Vec<(String, String)>)> {
            let (mut body, files, front) = letter.load_body(path, name, at)?;
            let index = letter.bodies.len();
            body.language = Arc::from(language);
            if let Some((text, location)) = front {
                let key = format!("letter:{index}:subject");
                letter.sources.insert(key.clone(), location.clone());
                extra.push((key.clone(), text, location));
                body.subject = Some(key);
            }
            letter.bodies.push(body);
            Ok((index, files))
        };
        let mut bases = Vec::new();
        for file in &config.campaign.letters {
            let (i, files) = add_body(
                &mut letter,
                &mut extra,
                &file.path,
                &file.name,
                &config.campaign.letter_at,
                "",
            )?;
            if first_files.is_empty() {
                first_files = files;
            }
            by_path.insert(file.path.clone(), i);
            bases.push(i);
        }
        for target in &config.targets {
            if let Some(file) = &target.letter {
                let i = if let Some(&i) = by_path.get(&file.path) {
                    i
                } else {
                    let at = target_at(config, target);
                    let (i, _) = add_body(&mut letter, &mut extra, &file.path, &file.name, &at, "")?;
                    by_path.insert(file.path.clone(), i);
                    bases.push(i);
                    i
                };
                letter.target_bodies[target.index] = Some(i);
            }
            if let Some(subject) = &target.subject {
                let key = format!("target:{}:subject", target.index);
                letter.sources.insert(key.clone(), subject.location.clone());
                extra.push((key.clone(), subject.text.clone(), subject.location.clone()));
                letter.target_subjects[target.index] = Some(key);
            }
        }
        if config.campaign.language_column.is_some() {
            for base in bases {
                let (dir, file, shown) = {
                    let b = &letter.bodies[base];
                    (b.dir.clone(), b.name.clone(), b.file.to_string())
                };
                for (language, name) in language_files(&dir, &file)? {
                    let shown = with_language(&shown, &language);
                    let (i, _) = add_body(
                        &mut letter,
                        &mut extra,
                        &dir.join(&name),
                        &shown,
                        &config.campaign.letter_at,
                        &language,
                    )?;
                    letter.bodies[base].languages.insert(language, i);
                }
            }
        }
        let mut compiled: Vec<(&str, String)> =
            headers.iter().map(|h| (h.key.as_str(), h.text.clone())).collect();
        compiled.extend(extra.iter().map(|(k, t, _)| (k.as_str(), t.clone())));
        letter.headers_tera =
            compile(&first_files, &compiled, false).map_err(|e| letter.explain(&e, &letter.bodies[0]))?;
        letter.versions = versions(&headers, &letter.bodies);
        let subject_text: HashMap<&str, &str> =
            extra.iter().map(|(k, t, _)| (k.as_str(), t.as_str())).collect();
        letter.own_versions = letter
            .bodies
            .iter()
            .map(|b| {
                b.subject
                    .as_deref()
                    .map(|k| version_with(&headers, b, subject_text.get(k).copied().unwrap_or("")))
            })
            .collect();
        for target in &config.targets {
            let Some(key) = &letter.target_subjects[target.index] else {
                continue;
            };
            let text = subject_text.get(key.as_str()).copied().unwrap_or("");
            for b in letter.bodies_of(target.index) {
                let v = version_with(&headers, &letter.bodies[b], text);
                letter.target_versions.insert((b, target.index), v);
            }
        }
        letter.uses_one_of = headers.iter().any(|h| h.text.contains("one_of"))
            || extra.iter().any(|(_, t, _)| t.contains("one_of"))
            || letter
                .bodies
                .iter()
                .any(|b| b.texts.values().any(|t| t.contains("one_of")));
        let fixed: Vec<&str> = compiled
            .iter()
            .filter(|(_, text)| same_for_every_supporter(text) && !mentions(text, "one_of"))
            .map(|(key, _)| *key)
            .collect();
        letter.fixed_values = (0..fixed.len() * letter.targets)
            .map(|_| OnceLock::new())
            .collect();
        letter.fixed = fixed
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), i))
            .collect();
        letter.headers = headers;
        Ok(letter)
    }

    /// Where the rendering of header template `name` for `target` is kept,
    /// when it is the same for every letter to that target.
    fn fixed_value(&self, name: &str, target: &Target) -> Option<&OnceLock<String>> {
        if target.index >= self.targets {
            return None;
        }
        let slot = *self.fixed.get(name)?;
        self.fixed_values.get(slot * self.targets + target.index)
    }

    /// The bodies a target's letters can come from: its own letter or the
    /// campaign's, each with its language files.
    fn bodies_of(&self, target: usize) -> Vec<usize> {
        let bases: Vec<usize> = match self.target_bodies[target] {
            Some(b) => vec![b],
            None => (0..self.campaign_bodies).collect(),
        };
        let mut out = bases.clone();
        for b in bases {
            out.extend(self.bodies[b].languages.values().copied());
        }
        out
    }

    /// Whether some letter file comes in this language (`letter.es.md`).
    #[must_use]
    pub(crate) fn has_language(&self, language: &str) -> bool {
        self.bodies.iter().any(|b| &*b.language == language)
    }

    /// `[campaign] language_column`, if set.
    #[must_use]
    pub(crate) fn language_column(&self) -> Option<&str> {
        self.language_column.as_deref()
    }

    /// Compiles one letter file; also returns its templates (name, text)
    /// and its front matter subject (text, `FILE:LINE`).
    #[allow(clippy::type_complexity)]
    fn load_body(
        &self,
        path: &Path,
        shown: &str,
        at: &str,
    ) -> Result<(Body, Vec<(String, String)>, Option<(String, String)>)> {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("md") => Format::Markdown,
            Some("txt") => Format::Text,
            _ => bail!(
                "{at}: letter `{}` must end in .md (text + HTML) or .txt (text only)",
                path.display()
            ),
        };
        if !path.is_file() {
            bail!(
                "{at}: cannot read letter `{}`: no such file\n\nhint: check [campaign] letter",
                path.display()
            );
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("letter name is not UTF-8")?
            .to_string();
        let (files, front) = template_files(&dir, &name)?;
        let mut body = Body {
            file: Arc::from(shown),
            plain: Tera::new(),
            markdown: None,
            name,
            dir,
            texts: files.iter().cloned().collect(),
            language: Arc::from(""),
            subject: None,
            languages: HashMap::new(),
        };
        body.plain = compile(&files, &[], false).map_err(|e| self.explain(&e, &body))?;
        if format == Format::Markdown {
            body.markdown = Some(compile(&files, &[], true).map_err(|e| self.explain(&e, &body))?);
        }
        Ok((body, files, front))
    }

    /// Turns a Tera error into `FILE:LINE:COL: message`.
    fn explain(&self, err: &tera::Error, body: &Body) -> anyhow::Error {
        let place = |template: &str| -> String {
            self.sources.get(template).map_or_else(
                || body.dir.join(template).display().to_string(),
                |loc| {
                    if loc.ends_with(')') {
                        loc.clone()
                    } else {
                        format!("{loc} ({})", template.trim_start_matches("config:"))
                    }
                },
            )
        };
        match err.kind() {
            ErrorKind::SyntaxError(r) | ErrorKind::RenderingError(r) => {
                let span = r.span();
                if r.message().contains("end of input")
                    && let Some((line, col, tag)) =
                        body.texts.get(r.filename()).and_then(|t| unclosed_block(t))
                {
                    return anyhow!(
                        "{}:{line}:{col}: `{{% {tag} %}}` is never closed: add `{{% end{tag} %}}`",
                        place(r.filename())
                    );
                }
                let at = if self.sources.contains_key(r.filename()) {
                    place(r.filename())
                } else {
                    format!(
                        "{}:{}:{}",
                        place(r.filename()),
                        span.start_line,
                        span.start_col + 1
                    )
                };
                anyhow!("{at}: {}", r.message())
            }
            ErrorKind::CircularInclude { include_chain, .. } => {
                anyhow!(
                    "{}: templates include each other in a loop: {}",
                    place(&body.name),
                    include_chain.join(" → ")
                )
            }
            ErrorKind::TemplateNotFound(name) => {
                anyhow!(
                    "{}: includes `{name}`, which is not in `{}`",
                    place(&body.name),
                    body.dir.display()
                )
            }
            // Load-time checks (unknown filters, functions, includes) come as
            // a rendered report: lead with its `NAME:LINE:COL`.
            ErrorKind::Msg(report) if report.contains(" --> ") => {
                let first = report.lines().next().unwrap_or("").trim_start_matches("error: ");
                let at = report
                    .lines()
                    .find_map(|l| l.trim_start().strip_prefix("--> "))
                    .and_then(|loc| loc.split_once(':'))
                    .map_or_else(|| place(&body.name), |(name, lc)| format!("{}:{lc}", place(name)));
                anyhow!("{at}: {first}")
            }
            _ => {
                let mut msg = err.to_string();
                let mut source = std::error::Error::source(err);
                while let Some(s) = source {
                    let _ = write!(msg, ": {s}");
                    source = s.source();
                }
                anyhow!("{}: {msg}", place(&body.name))
            }
        }
    }

    /// The config's header templates (subject variants, from and reply-to parts).
    #[must_use]
    pub(crate) fn header_templates(&self) -> &[HeaderTemplate] {
        &self.headers
    }

    /// How many letter files `[campaign] letter` lists.
    #[must_use]
    pub(crate) fn files(&self) -> usize {
        self.bodies.len()
    }

    /// The text version of each letter file and subject variant:
    /// `(letter file, subject variant (1-based), version)`.
    #[must_use]
    pub(crate) fn versions(&self) -> Vec<(Arc<str>, u32, Arc<str>)> {
        let mut all: Vec<(Arc<str>, u32, Arc<str>)> = self
            .bodies
            .iter()
            .zip(&self.versions)
            .flat_map(|(b, vs)| {
                vs.iter()
                    .enumerate()
                    .map(|(i, v)| (Arc::clone(&b.file), i as u32 + 1, Arc::clone(v)))
            })
            .collect();
        for (b, v) in self.bodies.iter().zip(&self.own_versions) {
            if let Some(v) = v {
                all.push((Arc::clone(&b.file), 0, Arc::clone(v)));
            }
        }
        for ((b, _), v) in &self.target_versions {
            all.push((Arc::clone(&self.bodies[*b].file), 0, Arc::clone(v)));
        }
        all
    }

    /// Renders one header template with no supporter values at all (every
    /// `supporter.*` undefined): for templates that never mention them.
    pub(crate) fn render_header(
        &self,
        h: &HeaderTemplate,
        target: &Target,
        globals: &Globals,
    ) -> Result<String> {
        let ctx = context_with(&BTreeMap::new(), target, globals);
        Ok(self
            .headers_tera
            .render(&h.key, &ctx)
            .map_err(|e| self.explain(&e, &self.bodies[0]))?
            .trim()
            .to_string())
    }

    /// Renders one letter. Errors are template errors (the caller adds the row).
    /// `html`: also render the HTML part of a `.md` letter (same template and
    /// values, so it cannot fail where the text part did not).
    ///
    /// The letter file is chosen from (campaign id, supporter), so a
    /// supporter writes the same letter to every target; the subject and
    /// every `one_of` from (campaign id, supporter, target).
    pub(crate) fn render(
        &self,
        supporter: &Supporter,
        target: &Target,
        globals: &Globals,
        html: bool,
    ) -> Result<Rendered> {
        let id = globals.campaign.get("id").map_or("", String::as_str);
        // Only computed when there is a choice to make (check renders millions).
        let target_key = if self.subjects > 1 || self.uses_one_of {
            target.key()
        } else {
            String::new()
        };
        let base = match self.target_bodies.get(target.index).copied().flatten() {
            Some(b) => b,
            None => pick(&[id, &supporter.key, "letter"], self.campaign_bodies),
        };
        let b = match &self.language_column {
            Some(column) => {
                let languages = &self.bodies[base].languages;
                match supporter.get(column).map(str::trim) {
                    Some(l) if !l.is_empty() && !languages.is_empty() => {
                        languages.get(&l.to_lowercase()).copied().unwrap_or(base)
                    }
                    _ => base,
                }
            }
            None => base,
        };
        let s = pick(&[id, &supporter.key, &target_key, "subject"], self.subjects);
        let body = &self.bodies[b];
        let own_subject = self.target_subjects.get(target.index).and_then(Option::as_ref);
        let (subject_name, subject_no, version) = if let Some(key) = &body.subject {
            (key.clone(), 0, self.own_versions[b].clone().unwrap_or_default())
        } else if let Some(key) = own_subject {
            let v = self
                .target_versions
                .get(&(b, target.index))
                .cloned()
                .unwrap_or_default();
            (key.clone(), 0, v)
        } else {
            (subject_key(s), s as u32 + 1, Arc::clone(&self.versions[b][s]))
        };
        let _seed = Seeded::new(if self.uses_one_of {
            digest64(&[id, &supporter.key, &target_key, "one_of"])
        } else {
            0
        });
        let ctx = context(supporter, target, globals);
        let r = |name: &str| -> Result<String> {
            let fixed = self.fixed_value(name, target);
            if let Some(v) = fixed.and_then(OnceLock::get) {
                return Ok(v.clone());
            }
            let v = self
                .headers_tera
                .render(name, &ctx)
                .map_err(|e| self.explain(&e, body))?;
            if let Some(cell) = fixed {
                let _ = cell.set(v.clone());
            }
            Ok(v)
        };
        let mailbox = |name: bool, name_key, addr_key| -> Result<RenderedMailbox> {
            Ok(RenderedMailbox {
                name: if name {
                    Some(r(name_key)?.trim().to_string())
                } else {
                    None
                },
                address: r(addr_key)?.trim().to_string(),
            })
        };
        let text = body
            .plain
            .render(&body.name, &ctx)
            .map_err(|e| self.explain(&e, body))?;
        let html = match body.markdown.as_ref().filter(|_| html) {
            Some(md) => Some(markdown_to_html(
                &md.render(&body.name, &ctx).map_err(|e| self.explain(&e, body))?,
            )),
            None => None,
        };
        Ok(Rendered {
            subject: r(&subject_name)?.trim().to_string(),
            from: mailbox(self.from_has_name, FROM_NAME, FROM_ADDR)?,
            reply_to: if self.reply_to {
                Some(mailbox(self.reply_has_name, REPLY_NAME, REPLY_ADDR)?)
            } else {
                None
            },
            text,
            html,
            variant: Variant {
                letter_file: Arc::clone(&body.file),
                language: Arc::clone(&body.language),
                subject: subject_no,
                version,
                fingerprint: String::new(),
            },
        })
    }
}

/// The text version of each (letter file, subject variant): SHA-256 over
/// the letter file and every template it includes, the subject variant's
/// template, and the From / Reply-To templates (16 hex digits).
fn versions(headers: &[HeaderTemplate], bodies: &[Body]) -> Vec<Vec<Arc<str>>> {
    let mut common = Sha256::new();
    for h in headers.iter().filter(|h| h.part != Part::Subject) {
        common.update(h.key.as_bytes());
        common.update([0]);
        common.update(h.text.as_bytes());
        common.update([0]);
    }
    bodies
        .iter()
        .map(|b| {
            let mut h = common.clone();
            for (name, text) in &b.texts {
                h.update(name.as_bytes());
                h.update([0]);
                h.update(text.as_bytes());
                h.update([0]);
            }
            headers
                .iter()
                .filter(|s| s.part == Part::Subject)
                .map(|s| {
                    let mut h = h.clone();
                    h.update(s.text.as_bytes());
                    let d = h.finalize();
                    Arc::from(d[..8].iter().fold(String::new(), |mut s, b| {
                        let _ = write!(s, "{b:02x}");
                        s
                    }))
                })
                .collect()
        })
        .collect()
}

/// The version of one body with a subject of its own (front matter or the
/// target's), as [`versions`] computes it for the campaign's subjects.
fn version_with(headers: &[HeaderTemplate], body: &Body, subject: &str) -> Arc<str> {
    let mut h = Sha256::new();
    for t in headers.iter().filter(|h| h.part != Part::Subject) {
        h.update(t.key.as_bytes());
        h.update([0]);
        h.update(t.text.as_bytes());
        h.update([0]);
    }
    for (name, text) in &body.texts {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.update(subject.as_bytes());
    let d = h.finalize();
    Arc::from(d[..8].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Where a target is configured, for errors about its letter.
fn target_at(config: &Config, target: &Target) -> String {
    match (&config.routing, target.routed) {
        (Some(r), Some(line)) => format!("{}:{line}", r.file.display()),
        _ => format!("{}: [[targets]] `{}`", config.path.display(), target.email),
    }
}

/// The language files of letter `file` in `dir`: `letter.es.md` for
/// `letter.md`, as (language lower-cased, file name), sorted.
fn language_files(dir: &Path, file: &str) -> Result<Vec<(String, String)>> {
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return Ok(Vec::new());
    };
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the letters folder `{}`", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(language) = name
            .strip_prefix(stem)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(ext))
            .and_then(|r| r.strip_suffix('.'))
        else {
            continue;
        };
        let valid = !language.is_empty()
            && language.len() <= 35
            && language
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid && entry.path().is_file() {
            out.push((language.to_lowercase(), name));
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// `letters/letter.md` → `letters/letter.es.md`.
fn with_language(shown: &str, language: &str) -> String {
    match shown.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') => format!("{stem}.{language}.{ext}"),
        _ => format!("{shown}.{language}"),
    }
}

/// A letter file's text without a UTF-8 BOM, and without its front matter:
/// a first line `+++`, TOML up to the next `+++` line. The block becomes a
/// Tera comment over as many lines, so line numbers in errors stay right.
/// Returns the text and the front matter's `subject` with its line.
fn front_matter(path: &Path, text: &str) -> Result<(String, Option<(String, String)>)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Front {
        subject: Option<String>,
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().next().unwrap_or("");
    if first.trim_end() != "+++" {
        return Ok((text.to_string(), None));
    }
    let after_open = text.find('\n').map_or(text.len(), |i| i + 1);
    let mut offset = after_open;
    let mut close = None;
    for line in text[after_open..].split_inclusive('\n') {
        if line.trim_end() == "+++" {
            close = Some((offset, offset + line.len()));
            break;
        }
        offset += line.len();
    }
    let Some((toml_end, end)) = close else {
        bail!(
            "{}:1: the front matter opened by `+++` is never closed: end it with a line `+++`",
            path.display()
        );
    };
    let front: Front = toml::from_str(&text[after_open..toml_end]).map_err(|e| {
        let line = e.span().map_or(2, |s| {
            text[after_open..after_open + s.start].matches('\n').count() + 2
        });
        anyhow!(
            "{}:{line}: front matter: {}",
            path.display(),
            e.message().trim_end()
        )
    })?;
    let block = &text[..end];
    let subject = front.subject.map(|s| {
        let line = 2 + text[after_open..toml_end]
            .lines()
            .position(|l| l.trim_start().starts_with("subject"))
            .unwrap_or(0);
        (s, format!("{}:{line}", path.display()))
    });
    let body = &text[end..];
    let stripped = if block.contains("#}") {
        body.to_string()
    } else {
        // `{#` + the block's line ends + `#}`: the body keeps its line numbers.
        let newlines = block.matches('\n').count();
        let mut t = String::with_capacity(body.len() + newlines + 4);
        t.push_str("{#");
        t.push_str(&"\n".repeat(newlines));
        t.push_str("#}");
        t.push_str(body);
        t
    };
    Ok((stripped, subject))
}

/// A Tera instance with our settings, `one_of`, and these templates.
fn compile(files: &[(String, String)], headers: &[(&str, String)], md: bool) -> tera::TeraResult<Tera> {
    let mut tera = Tera::new();
    if md {
        tera.autoescape_on(vec![".md"]);
        tera.set_escape_fn(escape_markdown);
    } else {
        tera.autoescape_on(Vec::<&str>::new());
    }
    tera.register_function("one_of", one_of);
    for (key, text) in headers {
        tera.add_raw_template(key, text)?;
    }
    tera.add_raw_templates(files.iter().cloned())?;
    Ok(tera)
}

/// The letter and every template it reaches through `include`, `extends`
/// or `import`, read from its folder and named by their file names. Other
/// files there (drafts, notes) are not compiled, so they cannot break a
/// campaign. A name that is not a file is left for Tera to report, with its
/// line.
///
/// NOTE: every name must resolve inside the letters folder: an absolute
/// path, a `..` step or a symlink leading out of it is an error at the
/// including tag (`FILE:LINE:COL`), and files are read through the checked
/// canonical path. Otherwise `dir.join("/proc/self/environ")` would put any
/// file the user can read into every letter.
#[allow(clippy::type_complexity)]
fn template_files(dir: &Path, letter: &str) -> Result<(Vec<(String, String)>, Option<(String, String)>)> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("cannot read the letters folder `{}`", dir.display()))?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut front = None;
    let mut todo = vec![letter.to_string()];
    while let Some(name) = todo.pop() {
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let Ok(path) = dir.join(&name).canonicalize() else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read template `{}`", dir.join(&name).display()))?;
        // The letter itself may carry a front matter; any file may start with a BOM.
        let text = if name == letter {
            let (text, subject) = front_matter(&dir.join(&name), &text)?;
            front = subject;
            text
        } else {
            text.strip_prefix('\u{feff}').map_or(text.clone(), str::to_string)
        };
        for r in referenced_templates(&text) {
            if let Some(why) = outside_folder(&root, dir, &r.name) {
                let (line, col) = line_col(&text, r.offset);
                bail!(
                    "{}:{line}:{col}: cannot {} `{}`: {why}; a letter may use only files inside \
                     its folder `{}`\n\nhint: copy the file into `{}` and name it relative to \
                     that folder",
                    dir.join(&name).display(),
                    r.tag.trim_end_matches('s'),
                    r.name.escape_default(),
                    dir.display(),
                    dir.display(),
                );
            }
            todo.push(r.name);
        }
        out.push((name, text));
    }
    Ok((out, front))
}

/// Why template `name` is not inside the letters folder `root` (canonical),
/// or `None` when it is, or does not exist (Tera then says it is missing).
fn outside_folder(root: &Path, dir: &Path, name: &str) -> Option<&'static str> {
    let path = Path::new(name);
    if path.is_absolute() || name.starts_with(['/', '\\']) {
        return Some("it is an absolute path");
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Some("`..` leads out of the letters folder");
    }
    match dir.join(path).canonicalize() {
        Ok(real) if !real.starts_with(root) => Some("it is a symlink that leads out of the letters folder"),
        _ => None,
    }
}

/// A template named by `{% include "x" %}`, `{% extends "x" %}` or `{% import "x" … %}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// `include`, `extends` or `import`.
    tag: &'static str,
    /// The quoted name.
    name: String,
    /// Byte offset of the opening quote, for `LINE:COL`.
    offset: usize,
}

/// Template names in `{% include "x" %}`, `{% extends "x" %}`, `{% import "x" … %}`.
fn referenced_templates(text: &str) -> Vec<Reference> {
    let mut names = Vec::new();
    for (i, _) in text.match_indices("{%") {
        let rest = text[i + 2..].trim_start_matches('-').trim_start();
        let Some((tag, rest)) = ["include", "extends", "import"]
            .iter()
            .find_map(|k| rest.strip_prefix(k).map(|r| (*k, r)))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(quote) = rest
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'' || *c == '`')
        else {
            continue;
        };
        if let Some(end) = rest[1..].find(quote) {
            names.push(Reference {
                tag,
                name: rest[1..=end].to_string(),
                offset: text.len() - rest.len(),
            });
        }
    }
    names
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The innermost block tag opened in `source` and never closed:
/// `(line, column, tag)`, for "unexpected end of input" errors.
fn unclosed_block(source: &str) -> Option<(usize, usize, String)> {
    const BLOCKS: [&str; 6] = ["if", "for", "macro", "block", "filter", "raw"];
    let mut open: Vec<(usize, String)> = Vec::new();
    let mut at = 0;
    while let Some(i) = source[at..].find("{%") {
        let start = at + i;
        let tag: String = source[start + 2..]
            .trim_start_matches('-')
            .trim_start()
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        if BLOCKS.contains(&tag.as_str()) {
            open.push((start, tag));
        } else if let Some(closed) = tag.strip_prefix("end")
            && open.last().is_some_and(|(_, t)| t == closed)
        {
            open.pop();
        }
        at = start + 2;
    }
    let (offset, tag) = open.pop()?;
    let line = source[..offset].matches('\n').count() + 1;
    let col = offset - source[..offset].rfind('\n').map_or(0, |n| n + 1) + 1;
    Some((line, col, tag))
}

/// Whether a header template renders the same for every supporter: it never
/// names `supporter`, nor anything that could reach it indirectly (the
/// whole context, a component, another template). Conservative: the word
/// `supporter` anywhere, even in plain text, counts as a mention.
#[must_use]
pub(crate) fn same_for_every_supporter(text: &str) -> bool {
    !text.contains("{{<")
        && ![
            "supporter",
            "__tera_context",
            "include",
            "import",
            "extends",
            "component",
        ]
        .iter()
        .any(|w| mentions(text, w))
}

/// Whether `word` appears in `text` as a whole word (letters, digits, `_`),
/// in a tag or in plain text alike.
#[must_use]
pub(crate) fn mentions(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == word)
}

/// The literal pieces every rendering of `text` contains, in order. Known
/// only for a template without `{% %}` tags: then every piece of plain text
/// is output whatever its `{{ }}` expressions give (they only add text),
/// less the whitespace that `{{-` / `-}}` or the final trim may remove.
#[must_use]
pub(crate) fn always_rendered(text: &str) -> Option<Vec<&str>> {
    if text.contains("{%") {
        return None;
    }
    // (piece, trimmed at its start by `-}}`, trimmed at its end by `{{-`)
    let mut pieces: Vec<(&str, bool, bool)> = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(open) = ["{{", "{#"].iter().filter_map(|o| rest.find(o)).min() {
        let inner = &rest[open + 2..];
        pieces.push((&rest[..open], trim_next, inner.starts_with('-')));
        let end = if rest[open..].starts_with("{{") {
            expression_end(inner)?
        } else {
            inner.find("#}")?
        };
        trim_next = inner[..end].ends_with('-');
        rest = &inner[end + 2..];
    }
    pieces.push((rest, trim_next, false));
    let mut pieces: Vec<&str> = pieces
        .into_iter()
        .map(|(p, start, end)| {
            let p = if start { p.trim_start() } else { p };
            if end { p.trim_end() } else { p }
        })
        .collect();
    // The rendered value is trimmed: leading pieces lose their leading
    // whitespace up to the first one with text (expressions between may
    // render empty), and the same at the end.
    for p in &mut pieces {
        *p = p.trim_start();
        if !p.is_empty() {
            break;
        }
    }
    for p in pieces.iter_mut().rev() {
        *p = p.trim_end();
        if !p.is_empty() {
            break;
        }
    }
    pieces.retain(|p| !p.is_empty());
    Some(pieces)
}

/// Where the `}}` closing an expression is, skipping string literals.
fn expression_end(inner: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in inner.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if inner[i..].starts_with("}}") => return Some(i),
            Some(_) | None => {}
        }
    }
    None
}

/// Splits `Name <addr>` into its display-name and address templates.
fn split_mailbox(text: &str) -> (Option<String>, String) {
    let t = text.trim();
    if let Some(open) = t.rfind('<')
        && t.ends_with('>')
    {
        let name = t[..open].trim().trim_matches('"').trim();
        let addr = t[open + 1..t.len() - 1].trim().to_string();
        return ((!name.is_empty()).then(|| name.to_string()), addr);
    }
    (None, t.to_string())
}

/// The context SPEC.md defines: supporter.*, target.*, campaign.*, today.
fn context(supporter: &Supporter, target: &Target, globals: &Globals) -> Context {
    let mut s: BTreeMap<&str, &str> = supporter
        .headers
        .iter()
        .map(String::as_str)
        .zip(supporter.values.iter().map(String::as_str))
        .collect();
    let email = supporter.email.to_string();
    s.insert("email", &email);
    s.insert("name", &supporter.name);
    context_with(&s, target, globals)
}

/// The context with these supporter values.
fn context_with(supporter: &BTreeMap<&str, &str>, target: &Target, globals: &Globals) -> Context {
    let mut ctx = Context::new();
    ctx.insert("supporter", supporter);
    ctx.insert_value("target", globals.target_value(target));
    ctx.insert_value("campaign", globals.values.campaign.clone());
    ctx.insert_value("today", globals.values.today.clone());
    ctx
}

/// Tera escape function for the HTML rendition of `.md` letters: every ASCII
/// punctuation mark in a value is backslash-escaped, so supporter data stays
/// literal text (no links, headings or HTML) once Markdown is rendered.
fn escape_markdown(value: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_ascii_punctuation() {
            buf.push('\\');
        }
        buf.push(c);
    }
    out.write_all(buf.as_bytes())
}

/// Markdown → HTML, with raw HTML in the source shown as text, not passed through.
#[must_use]
pub(crate) fn markdown_to_html(md: &str) -> String {
    let parser = Parser::new_ext(md, Options::ENABLE_STRIKETHROUGH).map(|event| match event {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        other => other,
    });
    let mut html = String::with_capacity(md.len() * 2);
    pulldown_cmark::html::push_html(&mut html, parser);
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Fixture {
        _dir: tempfile::TempDir,
        config: Config,
    }

    fn fixture(letter_name: &str, letter: &str, extra: &[(&str, &str)], subject: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("letters")).unwrap();
        std::fs::write(dir.path().join("letters").join(letter_name), letter).unwrap();
        for (name, text) in extra {
            std::fs::write(dir.path().join("letters").join(name), text).unwrap();
        }
        let toml = format!(
            r#"[campaign]
id = "t"
name = "Drop ICE"
org = "Org"
letter = "letters/{letter_name}"
subject = "{subject}"
[sender]
from = "{{{{ supporter.name }}}} via Org <letters@org.example>"
reply_to = "{{{{ supporter.email }}}}"
[[targets]]
name = "Satya"
email = "ceo@corp.example"
[supporters]
file = "s.csv"
"#
        );
        let path = dir.path().join("mailer.toml");
        std::fs::write(&path, &toml).unwrap();
        let config = Config::from_toml(&toml, &path).unwrap();
        Fixture { _dir: dir, config }
    }

    fn supporter(values: &[(&str, &str)]) -> Supporter {
        let headers: Arc<[String]> = values.iter().map(|(h, _)| (*h).to_string()).collect();
        Supporter {
            line: 7,
            email: "ana@x.org".parse().unwrap(),
            key: "ana@x.org".into(),
            name: "Ana López".into(),
            headers,
            values: values.iter().map(|(_, v)| (*v).to_string()).collect(),
        }
    }

    #[test]
    fn headers_the_same_for_every_supporter_are_kept_per_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("letters")).unwrap();
        std::fs::write(dir.path().join("letters/l.txt"), "Hi {{ target.name }}").unwrap();
        let toml = r#"[campaign]
id = "t"
name = "Drop ICE"
org = "Org"
letter = "letters/l.txt"
subject = "To {{ target.name }}: act"
[sender]
from = "{{ supporter.first_name }} via Org <{{ target.box }}@org.example>"
reply_to = "{{ one_of(options=['a@org.example', 'b@org.example', 'c@org.example', 'd@org.example']) }}"
[[targets]]
name = "Satya"
email = "ceo@corp.example"
box = "ceo"
[[targets]]
name = "Amy"
email = "cfo@corp.example"
box = "cfo"
[supporters]
file = "s.csv"
"#;
        let path = dir.path().join("mailer.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::from_toml(toml, &path).unwrap();
        let letter = Letter::load(&config).unwrap();
        let globals = Globals::new(BTreeMap::new(), "2026-11-28", &config.targets);
        let mut replies = std::collections::BTreeSet::new();
        for round in 0..2 {
            for (t, name, addr) in [(0, "Satya", "ceo@org.example"), (1, "Amy", "cfo@org.example")] {
                for i in 0..8 {
                    let mut s = supporter(&[("first_name", &format!("Ana{i}"))]);
                    s.key = format!("ana{i}@x.org");
                    let r = letter.render(&s, &config.targets[t], &globals, false).unwrap();
                    assert_eq!(r.subject, format!("To {name}: act"), "round {round}");
                    assert_eq!(r.from.address, addr);
                    assert_eq!(r.from.name.as_deref(), Some(format!("Ana{i} via Org").as_str()));
                    replies.insert(r.reply_to.unwrap().address);
                }
            }
        }
        // `one_of` is never kept: it is chosen per letter.
        assert!(replies.len() > 1, "{replies:?}");
    }

    fn globals() -> Globals {
        Globals::new(
            BTreeMap::from([
                ("id", "t".into()),
                ("name", "Drop ICE".into()),
                ("org", "Org".into()),
            ]),
            "2026-11-28",
            &[],
        )
    }

    #[test]
    fn renders_context_and_headers() {
        let f = fixture(
            "l.txt",
            "Dear {{ target.name }}, from {{ supporter.name }} of {{ supporter.city }} ({{ campaign.org }}, {{ today }})",
            &[],
            "{{ supporter.city }}: cancel",
        );
        let letter = Letter::load(&f.config).unwrap();
        let r = letter
            .render(
                &supporter(&[("city", "Oslo")]),
                &f.config.targets[0],
                &globals(),
                true,
            )
            .unwrap();
        assert_eq!(r.text, "Dear Satya, from Ana López of Oslo (Org, 2026-11-28)");
        assert_eq!(r.subject, "Oslo: cancel");
        assert_eq!(r.from.name.as_deref(), Some("Ana López via Org"));
        assert_eq!(r.from.address, "letters@org.example");
        assert_eq!(r.reply_to.unwrap().address, "ana@x.org");
        assert!(r.html.is_none());
    }

    #[test]
    fn supporter_values_are_data_not_code() {
        let f = fixture("l.txt", "Note: {{ supporter.note }}", &[], "s");
        let letter = Letter::load(&f.config).unwrap();
        let s = supporter(&[("note", "{{ 7*7 }} {% include \"l.txt\" %}")]);
        let r = letter.render(&s, &f.config.targets[0], &globals(), true).unwrap();
        assert_eq!(r.text, "Note: {{ 7*7 }} {% include \"l.txt\" %}");
    }

    #[test]
    fn undefined_variable_names_file_line_and_column() {
        let f = fixture("l.txt", "Hello\n\nfrom {{ supporter.cty }}", &[], "s");
        let letter = Letter::load(&f.config).unwrap();
        let err = letter
            .render(
                &supporter(&[("city", "Oslo")]),
                &f.config.targets[0],
                &globals(),
                true,
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("letters/l.txt:3:"), "{msg}");
        assert!(msg.contains("cty"), "{msg}");
    }

    #[test]
    fn syntax_error_is_found_at_load() {
        let f = fixture("l.txt", "Hello\n{% if x %}never closed", &[], "s");
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(msg.contains("letters/l.txt:"), "{msg}");
    }

    #[test]
    fn no_function_reads_the_environment() {
        let f = fixture("l.txt", "{{ get_env(name=\"HOME\") }}", &[], "s");
        let msg = Letter::load(&f.config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("get_env"), "get_env must be unknown: {msg}");
    }

    #[test]
    fn include_cycle_is_an_error_not_a_crash() {
        let f = fixture(
            "a.txt",
            "A {% include \"b.txt\" %}",
            &[("b.txt", "B {% include \"a.txt\" %}")],
            "s",
        );
        let msg = match Letter::load(&f.config) {
            Err(e) => e.to_string(),
            Ok(l) => l
                .render(&supporter(&[]), &f.config.targets[0], &globals(), true)
                .unwrap_err()
                .to_string(),
        };
        assert!(
            msg.contains("loop") || msg.to_lowercase().contains("circular"),
            "{msg}"
        );
    }

    #[test]
    fn markdown_html_escapes_values_and_raw_html() {
        let f = fixture(
            "l.md",
            "# Dear {{ target.name }}\n\n<b>bold</b> {{ supporter.note }}",
            &[],
            "s",
        );
        let letter = Letter::load(&f.config).unwrap();
        let s = supporter(&[("note", "[click](http://evil.example) <script>x</script> *wow*")]);
        let r = letter.render(&s, &f.config.targets[0], &globals(), true).unwrap();
        let html = r.html.unwrap();
        assert!(html.contains("<h1>Dear Satya</h1>"), "{html}");
        assert!(!html.contains("<a "), "{html}");
        assert!(!html.contains("<script>") && !html.contains("<b>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;") && html.contains("*wow*"),
            "{html}"
        );
        assert!(
            r.text
                .contains("[click](http://evil.example) <script>x</script> *wow*")
        );
    }

    #[test]
    fn unclosed_blocks_are_found_where_they_open() {
        assert_eq!(unclosed_block("a\n  {% if x %}\nb"), Some((2, 3, "if".into())));
        assert_eq!(
            unclosed_block("{% if x %}{% for y in z %}{% endfor %}"),
            Some((1, 1, "if".into()))
        );
        assert_eq!(unclosed_block("{% if x %}{% endif %}"), None);
    }

    #[test]
    fn load_errors_lead_with_line_and_column() {
        let f = fixture("l.txt", "Hi\n{{ supporter.name | shout }}", &[], "s");
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(msg.contains("letters/l.txt:2:"), "{msg}");
        let f = fixture("l.txt", "Hi\n\n{% if supporter.name %}open\n", &[], "s");
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(
            msg.contains("letters/l.txt:3:1: `{% if %}` is never closed"),
            "{msg}"
        );
    }

    #[test]
    fn only_reachable_templates_are_compiled() {
        let f = fixture(
            "l.txt",
            "A {% include \"sig.txt\" %}",
            &[("sig.txt", "signed"), ("draft.txt", "{% if broken")],
            "s",
        );
        let letter = Letter::load(&f.config).unwrap();
        let r = letter
            .render(&supporter(&[]), &f.config.targets[0], &globals(), true)
            .unwrap();
        assert_eq!(r.text, "A signed");
    }

    #[test]
    fn includes_outside_the_letters_folder_are_refused_at_their_tag() {
        let f = fixture("l.txt", "Hi\n  {% include \"/etc/hostname\" %}", &[], "s");
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(
            msg.contains("letters/l.txt:2:14: cannot include `/etc/hostname`: it is an absolute path"),
            "{msg}"
        );
        let f = fixture("l.txt", "{% extends '../mailer.toml' %}", &[], "s");
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(
            msg.contains("letters/l.txt:1:12: cannot extend `../mailer.toml`: `..` leads out"),
            "{msg}"
        );
        let f = fixture("l.txt", "{% include \"out.txt\" %}", &[], "s");
        let letters = f.config.campaign.letter.parent().unwrap();
        std::os::unix::fs::symlink("../mailer.toml", letters.join("out.txt")).unwrap();
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(msg.contains("`out.txt`: it is a symlink that leads out"), "{msg}");
    }

    #[test]
    fn references_carry_their_tag_and_place() {
        let refs = referenced_templates("a\n{%- include 'x.txt' %}{% import \"m.txt\" as m %}");
        let got: Vec<_> = refs
            .iter()
            .map(|r| {
                (
                    r.tag,
                    r.name.as_str(),
                    line_col("a\n{%- include 'x.txt' %}{% import \"m.txt\" as m %}", r.offset),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("include", "x.txt", (2, 13)), ("import", "m.txt", (2, 33))]
        );
    }

    #[test]
    fn which_header_templates_are_the_same_for_every_supporter() {
        for same in [
            "Org <letters@org.example>",
            "{{ target.name }}: drop it",
            "A {{ campaign.org }} letter",
        ] {
            assert!(same_for_every_supporter(same), "{same}");
        }
        for differs in [
            "{{ supporter.name }}",
            "{% set s = supporter %}{{ s.name }}",
            "{{ __tera_context }}",
            "{{<sig />}}",
            "{% include \"x.txt\" %}",
            // Conservative: the word alone is enough.
            "A supporter writes",
        ] {
            assert!(!same_for_every_supporter(differs), "{differs}");
        }
    }

    #[test]
    fn always_rendered_keeps_what_no_value_can_remove() {
        assert_eq!(
            always_rendered("{{ supporter.first_name }}: cancel {{ x }} now"),
            Some(vec![": cancel ", " now"])
        );
        // `{{-` / `-}}` trim the neighbouring whitespace, comments render nothing.
        assert_eq!(
            always_rendered("a \n{{- x -}}\n b{# note #} c"),
            Some(vec!["a", "b", " c"])
        );
        // A `}}` inside a string does not end the expression.
        assert_eq!(always_rendered("{{ \"}}\" ~ x }}tail"), Some(vec!["tail"]));
        // The value is trimmed: a line break next to an empty expression at
        // the end may go, one between two pieces of text may not.
        assert_eq!(always_rendered("Hi\n{{ x }}"), Some(vec!["Hi"]));
        assert_eq!(always_rendered("Hi\n{{ x }} there"), Some(vec!["Hi\n", " there"]));
        assert_eq!(always_rendered("{% if x %}long{% endif %}"), None);
    }

    #[test]
    fn split_mailbox_forms() {
        assert_eq!(
            split_mailbox("A via B <x@y.org>"),
            (Some("A via B".into()), "x@y.org".into())
        );
        assert_eq!(
            split_mailbox("\"Q\" <x@y.org>"),
            (Some("Q".into()), "x@y.org".into())
        );
        assert_eq!(
            split_mailbox("{{ supporter.email }}"),
            (None, "{{ supporter.email }}".into())
        );
    }

    #[test]
    fn front_matter_gives_the_subject_and_keeps_body_line_numbers() {
        let path = Path::new("letters/letter.es.md");
        let (body, subject) =
            front_matter(path, "\u{feff}+++\nsubject = \"Hola\"\n+++\nEstimado\n{{ x }}\n").unwrap();
        assert_eq!(
            subject,
            Some(("Hola".to_string(), "letters/letter.es.md:2".to_string()))
        );
        assert_eq!(body, "{#\n\n\n#}Estimado\n{{ x }}\n");
        assert_eq!(
            body.lines().position(|l| l == "{{ x }}"),
            Some(4),
            "still on line 5"
        );
        let (plain, none) = front_matter(path, "\u{feff}Dear\n").unwrap();
        assert_eq!((plain.as_str(), none), ("Dear\n", None));
        let open = front_matter(path, "+++\nsubject = \"x\"\nDear\n").unwrap_err();
        assert!(
            format!("{open:#}").contains("letters/letter.es.md:1: the front matter"),
            "{open:#}"
        );
    }
}
