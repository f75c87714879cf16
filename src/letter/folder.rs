//! A letter's folder: the templates a letter reaches (`include`, `extends`,
//! `import`), never outside the folder; its `+++` front matter; and its
//! language files (`letter.es.md` beside `letter.md`).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};

/// The language files of letter `file` in `dir`: `letter.es.md` for
/// `letter.md`, as (language lower-cased, file name), sorted.
pub(super) fn language_files(dir: &Path, file: &str) -> Result<Vec<(String, String)>> {
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
pub(super) fn with_language(shown: &str, language: &str) -> String {
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
pub(super) fn template_files(
    dir: &Path,
    letter: &str,
) -> Result<(Vec<(String, String)>, Option<(String, String)>)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::letter::Letter;
    use crate::letter::tests::{fixture, globals, supporter};

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
