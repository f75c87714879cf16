//! [`Letter::load`]: reads every letter file the config names (the campaign's,
//! targets' own and their language files) and compiles them with the header
//! templates, each Tera instance set up the same way.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, Result, bail};
use tera::Tera;

use super::folder::{language_files, template_files, with_language};
use super::headers::{
    FROM_ADDR, FROM_NAME, REPLY_ADDR, REPLY_NAME, mentions, same_for_every_supporter, split_mailbox,
    subject_key,
};
use super::variant::{one_of, version_with, versions};
use super::{Body, HeaderTemplate, Letter, Part};
use crate::config::{Config, Source, Target};

/// How the letter is sent, chosen by its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `.txt`: text/plain only.
    Text,
    /// `.md`: text/plain as written, plus text/html rendered from Markdown.
    Markdown,
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
}

/// Where a target is configured, for errors about its letter.
fn target_at(config: &Config, target: &Target) -> String {
    match (&config.routing, target.routed) {
        (Some(r), Some(line)) => format!("{}:{line}", r.file.display()),
        _ => format!("{}: [[targets]] `{}`", config.path.display(), target.email),
    }
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

#[cfg(test)]
mod tests {
    use crate::letter::Letter;
    use crate::letter::tests::fixture;

    #[test]
    fn no_function_reads_the_environment() {
        let f = fixture("l.txt", "{{ get_env(name=\"HOME\") }}", &[], "s");
        let msg = Letter::load(&f.config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("get_env"), "get_env must be unknown: {msg}");
    }
}
