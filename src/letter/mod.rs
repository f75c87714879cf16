//! The letter and the config's header templates, compiled with Tera 2.
//!
//! Owns: loading templates (each letter file's folder, so includes work),
//! the context SPEC.md defines, the text / HTML renditions, and which
//! variant a letter gets: its letter file (stably per supporter), its
//! subject (stably per letter) and every `one_of(...)` choice. Supporter
//! values only ever enter as context data, never as template source.
//!
//! This file holds the compiled [`Letter`] and what it answers about itself;
//! the rest is one concern a file:
//! - `load`: [`Letter::load`]: every letter file and header template, compiled.
//! - `folder`: a letter's folder: includes kept inside it, front matter,
//!   language files (`letter.es.md`).
//! - `headers`: the config's Subject / From / Reply-To templates, and what
//!   `check` can tell about them without rendering.
//! - `variant`: which letter file, subject and `one_of` phrasing a letter
//!   gets, stably, and the version fingerprints the ledger records.
//! - `render`: [`Letter::render`]: the context, text and HTML renditions.
//! - `explain`: Tera errors as `FILE:LINE:COL: message`.

mod explain;
mod folder;
mod headers;
mod load;
mod render;
mod variant;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tera::Tera;

use crate::config::Target;

pub(crate) use headers::{HeaderTemplate, Part, always_rendered, mentions, same_for_every_supporter};
pub(crate) use render::{Globals, Rendered, RenderedMailbox};
pub(crate) use variant::{Variant, fingerprint};

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

impl Letter {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::roster::Supporter;

    /// A campaign folder with one letter (and `extra` files beside it).
    pub(super) struct Fixture {
        _dir: tempfile::TempDir,
        pub(super) config: Config,
    }

    /// `letters/<letter_name>` holding `letter`, in a config with `subject`.
    pub(super) fn fixture(letter_name: &str, letter: &str, extra: &[(&str, &str)], subject: &str) -> Fixture {
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

    /// Ana, with these column values.
    pub(super) fn supporter(values: &[(&str, &str)]) -> Supporter {
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

    /// `campaign.*` and `today` for campaign `t`.
    pub(super) fn globals() -> Globals {
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
}
