//! Rendering one letter: the context SPEC.md defines (supporter, target,
//! campaign, today), the headers, the text part and, for `.md` letters, the
//! HTML part.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use anyhow::Result;
use pulldown_cmark::{Event, Options, Parser};
use tera::{Context, Value};

use super::headers::{FROM_ADDR, FROM_NAME, REPLY_ADDR, REPLY_NAME, subject_key};
use super::variant::{Seeded, digest64, pick};
use super::{HeaderTemplate, Letter, Variant};
use crate::config::Target;
use crate::roster::Supporter;

/// The per-letter values a template sees besides supporter and target.
#[derive(Debug, Clone)]
pub(crate) struct Globals {
    /// `campaign.id`, `campaign.name`, `campaign.org`.
    pub(crate) campaign: BTreeMap<&'static str, String>,
    /// `campaign.*`, `today` (YYYY-MM-DD), and each target's `target.*` (by
    /// index), as Tera values, made once: a context then shares them
    /// instead of serializing them again for every letter (`Value` is
    /// reference-counted).
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

impl Letter {
    /// Renders one header template with no supporter values at all (every
    /// `supporter.*` undefined): for templates that never mention them.
    pub(crate) fn render_header(
        &self,
        h: &HeaderTemplate,
        target: &Target,
        globals: &Globals,
        seed: u64,
    ) -> Result<String> {
        let _seed = Seeded::new(seed);
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

/// Markdown → HTML, with raw HTML in the source shown as text, not passed through.
#[must_use]
fn markdown_to_html(md: &str) -> String {
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
    use crate::letter::tests::{fixture, globals, supporter};

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
        let config = crate::config::Config::from_toml(toml, &path).unwrap();
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
}
