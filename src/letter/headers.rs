//! The config's header templates: `[campaign] subject` (one or a list) and
//! the display-name and address parts of `[sender] from` and `reply_to`.
//!
//! Also what `check` can tell about one without rendering it: whether it is
//! the same for every supporter, and which text every rendering keeps.

/// Template names for the config's header fields (never file names). The
/// subject variants after the first are `config:subject.2`, `.3`, …
const SUBJECT: &str = "config:subject";
pub(super) const FROM_NAME: &str = "config:from.name";
pub(super) const FROM_ADDR: &str = "config:from.address";
pub(super) const REPLY_NAME: &str = "config:reply_to.name";
pub(super) const REPLY_ADDR: &str = "config:reply_to.address";

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
pub(super) fn subject_key(i: usize) -> String {
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
    pub(super) key: String,
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
pub(super) fn split_mailbox(text: &str) -> (Option<String>, String) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
