//! `[supporters]`: the supporters CSV file and how it is laid out.
//!
//! Only the file's place, its address column and its delimiter are read here;
//! `roster.rs` reads and validates the rows.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use serde::Deserialize;
use toml::Spanned;

/// How a CSV file is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The column holding addresses, normalized like a header (default `email`).
    pub(crate) email_column: String,
    /// The field separator; `None` = detected from the header line.
    pub(crate) delimiter: Option<u8>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            email_column: "email".into(),
            delimiter: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupporters {
    file: PathBuf,
    email_column: Option<String>,
    delimiter: Option<Spanned<String>>,
}

/// `[supporters]`: its file, resolved, and its layout, validated.
pub(super) fn supporters_from_raw(
    raw: RawSupporters,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<(PathBuf, Layout)> {
    let layout = layout_from_raw(raw.email_column, raw.delimiter, at)?;
    Ok((resolve(raw.file), layout))
}

/// `[supporters] email_column` and `delimiter`, validated.
fn layout_from_raw(
    email_column: Option<String>,
    delimiter_text: Option<Spanned<String>>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Layout> {
    Ok(Layout {
        email_column: email_column.map_or_else(|| "email".into(), |c| crate::roster::normalize_header(&c)),
        delimiter: match delimiter_text {
            None => None,
            Some(d) => Some(delimiter(d.get_ref()).ok_or_else(|| {
                anyhow!(
                    "{}: [supporters] delimiter `{}` must be one character: `,`, `;`, `|` or a tab (\"\\t\")",
                    at(d.span()),
                    d.get_ref().escape_default()
                )
            })?),
        },
    })
}

/// `delimiter = ";"`: one ASCII character that can separate fields.
fn delimiter(text: &str) -> Option<u8> {
    let t = if text == "tab" { "\t" } else { text };
    match t.as_bytes() {
        [b] if b.is_ascii()
            && !matches!(b, b'"' | b'\n' | b'\r')
            && (b.is_ascii_punctuation() || *b == b'\t') =>
        {
            Some(*b)
        }
        _ => None,
    }
}
