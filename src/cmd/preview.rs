//! `mailer preview`: `send` without the transport — the same pipeline,
//! printed (or written as .eml files) instead of delivered.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::campaign::{Campaign, Prepared};
use crate::exit::Exit;
use crate::message::Built;
use crate::report::{out, preview_text, thousands};
use crate::roster::{Duplicate, Skipped};
use crate::ui::Ui;

/// `preview` flags, free of clap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Only this supporter (case-insensitive).
    pub(crate) supporter: Option<String>,
    /// Only this target (case-insensitive).
    pub(crate) target: Option<String>,
    /// At most this many messages.
    pub(crate) limit: Option<u64>,
    /// Write .eml files here.
    pub(crate) out: Option<std::path::PathBuf>,
    /// Every message, even at a terminal.
    pub(crate) all: bool,
    /// One letter per (letter file, language, subject variant), with counts.
    pub(crate) variants: bool,
    /// The HTML part instead of the text (`.html` files with `out`).
    pub(crate) html: bool,
}

/// Messages shown at a terminal without `--limit` or `--all`.
pub(crate) const TERMINAL_DEFAULT: u64 = 3;

/// Runs `mailer preview`.
pub(crate) fn run(campaign: &Campaign, opts: &Options, ui: &Ui) -> Result<Exit> {
    let file = campaign.config.supporters_file.display().to_string();
    let (want_s, want_t) = filters(campaign, opts)?;
    if opts.variants {
        return variants(campaign, opts, want_s.as_deref(), want_t.as_deref());
    }
    if let Some(dir) = &opts.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    // At a terminal, a few letters and a count, not thousands scrolling by.
    let at_terminal = opts.out.is_none() && ui.stdout_is_terminal();
    let default_limit = opts.limit.is_none() && !opts.all && at_terminal;
    let limit = if default_limit {
        Some(TERMINAL_DEFAULT)
    } else {
        opts.limit
    };
    let total = if at_terminal {
        count(campaign, want_s.as_deref(), want_t.as_deref())?
    } else {
        0
    };
    let mut shown = 0u64;
    let mut found_supporter = want_s.is_none();
    // The HTML part is rendered only with the MIME encoding.
    'rows: for prepared in campaign.prepared(opts.out.is_some() || opts.html)? {
        let (supporter, letters) = match prepared? {
            Prepared::Letters { supporter, letters } => (supporter, letters),
            Prepared::Skipped(Skipped { line, key, reason }) => {
                if want_s.as_ref().is_none_or(|s| *s == key) {
                    ui.problem(&format!("{file}:{line}: {reason} (skipped)"));
                }
                continue;
            }
            Prepared::Duplicate(Duplicate { .. }) | Prepared::Unmatched { .. } => continue,
        };
        if want_s.as_ref().is_some_and(|s| *s != supporter.key) {
            continue;
        }
        found_supporter = true;
        for (target, built) in letters {
            if want_t.as_ref().is_some_and(|t| *t != target.key()) {
                continue;
            }
            if limit.is_some_and(|l| shown >= l) {
                break 'rows;
            }
            let html = html_part(opts.html, &built, &file, supporter.line)?;
            shown += 1;
            if let Some(dir) = &opts.out {
                let (ext, bytes) = html.map_or(("eml", built.bytes.as_slice()), |h| ("html", h.as_bytes()));
                let name = format!(
                    "{shown:05}-{}-to-{}.{ext}",
                    safe(&supporter.key),
                    safe(&target.key())
                );
                write_private(&dir.join(name), bytes)?;
            } else {
                if shown > 1 {
                    out(&format!("{}\n", "-".repeat(72)))?;
                }
                if at_terminal {
                    out(&format!(
                        "# {}/{}  {file}:{} → {}\n",
                        thousands(shown),
                        thousands(total),
                        supporter.line,
                        target.name.clone().unwrap_or_else(|| target.key())
                    ))?;
                }
                match html {
                    Some(html) => out(&preview_html(&built, html))?,
                    None => out(&preview_text(&built))?,
                }
            }
        }
    }
    if !found_supporter {
        anyhow::bail!(
            "no valid row for supporter `{}` in `{file}`",
            opts.supporter.as_deref().unwrap_or_default()
        );
    }
    if default_limit && total > shown {
        ui.note(&format!(
            "… {} more: --limit N or --all",
            thousands(total - shown)
        ));
    }
    if let Some(dir) = &opts.out {
        ui.note(&format!(
            "wrote {shown} .{} file{} to `{}`",
            if opts.html { "html" } else { "eml" },
            if shown == 1 { "" } else { "s" },
            dir.display()
        ));
    }
    Ok(Exit::Done)
}

/// `--supporter` and `--target`, lower-cased; an unknown target is an error.
fn filters(campaign: &Campaign, opts: &Options) -> Result<(Option<String>, Option<String>)> {
    let want_s = opts.supporter.as_deref().map(str::to_lowercase);
    let want_t = opts.target.as_deref().map(str::to_lowercase);
    if let Some(t) = &want_t
        && !campaign.config.targets.iter().any(|x| &x.key() == t)
    {
        anyhow::bail!("no target `{t}` in the config\n\nhint: --target takes one of the [[targets]] emails");
    }
    Ok((want_s, want_t))
}

/// How many messages the filters select.
fn count(campaign: &Campaign, supporter: Option<&str>, target: Option<&str>) -> Result<u64> {
    let mut n = 0;
    for prepared in campaign.prepared(false)? {
        if let Prepared::Letters {
            supporter: s,
            letters,
        } = prepared?
            && supporter.is_none_or(|w| w == s.key)
        {
            n += letters
                .iter()
                .filter(|(t, _)| target.is_none_or(|w| w == t.key()))
                .count() as u64;
        }
    }
    Ok(n)
}

/// (letter file, language, subject variant).
type Combination = (Arc<str>, Arc<str>, u32);

/// `preview --variants`: the first letter of every distinct (letter file,
/// language, subject variant), in that order, each headed by how many
/// letters use it. `--supporter`/`--target` narrow the letters counted;
/// `--limit` caps the variants shown.
fn variants(campaign: &Campaign, opts: &Options, want_s: Option<&str>, want_t: Option<&str>) -> Result<Exit> {
    let mut seen: BTreeMap<Combination, (u64, Built)> = BTreeMap::new();
    for prepared in campaign.prepared(false)? {
        let Prepared::Letters { supporter, letters } = prepared? else {
            continue;
        };
        if want_s.is_some_and(|s| s != supporter.key) {
            continue;
        }
        for (target, built) in letters {
            if want_t.is_some_and(|t| t != target.key()) {
                continue;
            }
            let v = &built.variant;
            let key = (Arc::clone(&v.letter_file), Arc::clone(&v.language), v.subject);
            seen.entry(key).or_insert((0, built)).0 += 1;
        }
    }
    let subjects = campaign.config.campaign.subjects.len();
    let limit = opts.limit.unwrap_or(u64::MAX);
    for (i, ((file, language, subject), (n, built))) in seen.iter().enumerate() {
        if i as u64 >= limit {
            break;
        }
        if i > 0 {
            out(&format!("{}\n", "-".repeat(72)))?;
        }
        let language = if language.is_empty() {
            String::new()
        } else {
            format!(", language `{language}`")
        };
        out(&format!(
            "# variant {}: letter `{file}`{language}, subject {subject} of {subjects} — used by {} letter{}\n",
            i + 1,
            thousands(*n),
            if *n == 1 { "" } else { "s" }
        ))?;
        out(&preview_text(built))?;
    }
    Ok(Exit::Done)
}

/// With `--html`, the letter's HTML part (an error for a `.txt` letter).
fn html_part<'a>(
    wanted: bool,
    built: &'a crate::message::Built,
    file: &str,
    line: u64,
) -> Result<Option<&'a str>> {
    match (wanted, &built.html) {
        (false, _) => Ok(None),
        (true, Some(html)) => Ok(Some(html.as_str())),
        (true, None) => anyhow::bail!(
            "the letter for {file}:{line} has no HTML part: a `.txt` letter is sent as text only\n\n\
             hint: name the letter `.md` to send an HTML part too, or preview without --html"
        ),
    }
}

/// The headers, then the HTML part as it is sent.
fn preview_html(b: &crate::message::Built, html: &str) -> String {
    let text = preview_text(b);
    let headers = text.split_once("\n\n").map_or(text.as_str(), |(h, _)| h);
    let mut page = format!("{headers}\n\n{html}");
    if !page.ends_with('\n') {
        page.push('\n');
    }
    page
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Previews hold supporters' data: keep them private like the ledger, and
/// never write through a symlink planted where a preview goes.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    super::create_private(path)?
        .write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))
}
