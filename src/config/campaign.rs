//! `[campaign]`: the campaign's id and names, its letter files and subjects
//! (one or a list of each), the supporters' language column and attachments.
//!
//! The files are only resolved here; `letter.rs` reads and compiles them.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::Source;

/// `[campaign]`
#[derive(Debug, Clone)]
pub(crate) struct CampaignSection {
    /// Keys the ledger; `[a-z0-9-]+`.
    pub(crate) id: String,
    /// Human name (`campaign.name`).
    pub(crate) name: String,
    /// Organization (`campaign.org`).
    pub(crate) org: String,
    /// The letter template, resolved (the first of `letters`).
    pub(crate) letter: PathBuf,
    /// `FILE:LINE` of the `letter` key, for error messages.
    pub(crate) letter_at: String,
    /// Every letter file: `letter` is one path or a list; each supporter
    /// gets one of them, stably.
    pub(crate) letters: Vec<LetterFile>,
    /// Every subject template: `subject` is one or a list; each letter gets
    /// one of them, stably.
    pub(crate) subjects: Vec<Source>,
    /// `language_column`: the supporters column naming each one's language
    /// (normalized like a header); absent = no languages.
    pub(crate) language_column: Option<String>,
    /// `attachments`: files attached to every letter (default none).
    pub(crate) attachments: Vec<AttachmentFile>,
}

/// One file of `[campaign] attachments`.
#[derive(Debug, Clone)]
pub(crate) struct AttachmentFile {
    /// Resolved against the config's folder.
    pub(crate) path: PathBuf,
    /// `FILE:LINE` of its config value.
    pub(crate) at: String,
}

/// One file of `[campaign] letter`.
#[derive(Debug, Clone)]
pub(crate) struct LetterFile {
    /// Resolved against the config's folder.
    pub(crate) path: PathBuf,
    /// As the config writes it: what the ledger records.
    pub(crate) name: String,
}

/// A value that may be given once or as a list (`letter`, `subject`).
#[derive(Debug)]
enum OneOrList {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OneOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrList, E> {
                Ok(OneOrList::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(OneOrList::List(items))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCampaign {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    org: String,
    letter: Spanned<OneOrList>,
    subject: Spanned<OneOrList>,
    language_column: Option<String>,
    #[serde(default)]
    attachments: Vec<Spanned<PathBuf>>,
}

/// `letter` / `subject`: one value or a non-empty list, each with its line.
fn one_or_list(
    raw: Spanned<OneOrList>,
    key: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Vec<Source>> {
    let whole = raw.span();
    let items = match raw.into_inner() {
        OneOrList::One(text) => vec![Source {
            text,
            location: at(whole.clone()),
        }],
        OneOrList::List(items) => items
            .into_iter()
            .map(|s| Source {
                location: at(s.span()),
                text: s.into_inner(),
            })
            .collect(),
    };
    if items.is_empty() {
        bail!(
            "{}: `{key}` is an empty list: give one value or a list of them\n\nhint: {key} = [\"…\", \"…\"]",
            at(whole)
        );
    }
    Ok(items)
}

/// `[campaign]`, validated.
pub(super) fn campaign_from_raw(
    c: RawCampaign,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<CampaignSection> {
    let id_at = at(c.id.span());
    let id = c.id.into_inner();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("{id_at}: campaign id `{id}` may hold only a-z, 0-9 and `-`");
    }
    let letter_at = at(c.letter.span());
    let letters: Vec<LetterFile> = one_or_list(c.letter, "letter", at)?
        .into_iter()
        .map(|s| LetterFile {
            path: resolve(PathBuf::from(&s.text)),
            name: s.text,
        })
        .collect();
    let subjects = one_or_list(c.subject, "subject", at)?;
    let attachments = c
        .attachments
        .into_iter()
        .map(|a| AttachmentFile {
            at: at(a.span()),
            path: resolve(a.into_inner()),
        })
        .collect();
    let language_column = language_column(c.language_column);
    Ok(CampaignSection {
        language_column,
        attachments,
        id,
        name: c.name,
        org: c.org,
        letter_at,
        letter: letters[0].path.clone(),
        letters,
        subjects,
    })
}

/// `[campaign] language_column`, normalized like a header.
fn language_column(raw: Option<String>) -> Option<String> {
    raw.map(|c| crate::roster::normalize_header(&c))
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MINIMAL, parse};

    #[test]
    fn campaign_id_is_checked() {
        let err = parse(&MINIMAL.replace("test-1", "Test 1"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("camp/mailer.toml:3: campaign id"), "{err}");
    }
}
