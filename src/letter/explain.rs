//! Tera's errors as this project prints them: `FILE:LINE:COL: message`, with
//! the config's `FILE:LINE` for a header template and the opening tag's place
//! for a block never closed.

use std::fmt::Write as _;

use anyhow::anyhow;
use tera::ErrorKind;

use super::{Body, Letter};

impl Letter {
    /// Turns a Tera error into `FILE:LINE:COL: message`.
    pub(super) fn explain(&self, err: &tera::Error, body: &Body) -> anyhow::Error {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::letter::Letter;
    use crate::letter::tests::{fixture, globals, supporter};

    #[test]
    fn syntax_error_is_found_at_load() {
        let f = fixture("l.txt", "Hello\n{% if x %}never closed", &[], "s");
        let msg = Letter::load(&f.config).err().unwrap().to_string();
        assert!(msg.contains("letters/l.txt:"), "{msg}");
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
}
