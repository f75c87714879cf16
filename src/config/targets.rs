//! `[[targets]]` and `[routing]`: who the letters go to.
//!
//! Each `[[targets]]` entry becomes a [`Target`] (address, name, fields for the
//! template, its own letter, subject, time zone and `match`); `[routing]` names
//! a CSV file whose rows `crate::targets` turns into more of them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use lettre::Address;
use lettre::message::Mailbox;
use serde::Deserialize;
use toml::Spanned;

use super::{LetterFile, Source, time_zone};

/// One `[[targets]]` entry, or one row of `[routing] targets`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Display name, if given.
    pub(crate) name: Option<String>,
    /// Where the letter goes.
    pub(crate) email: Address,
    /// Every key of the entry (but `match`), or every column of the row,
    /// for the template's `target.*`.
    pub(crate) fields: toml::Table,
    /// Its position in [`Config::targets`](super::Config::targets).
    pub(crate) index: usize,
    /// `letter`: its own letter instead of `[campaign] letter`.
    pub(crate) letter: Option<LetterFile>,
    /// `subject`: its own subject instead of `[campaign] subject`.
    pub(crate) subject: Option<Source>,
    /// `match = { column = ["value", …] }`, columns and values normalized
    /// (lower-case, trimmed); empty = every supporter.
    pub(crate) matcher: Vec<(String, Vec<String>)>,
    /// For a row of `[routing] targets`: its line there.
    pub(crate) routed: Option<u64>,
    /// Its own time zone (`timezone`), for `[schedule]`.
    pub(crate) timezone: Option<jiff::tz::TimeZone>,
}

impl Target {
    /// The target's address, lower-cased: its identity in the ledger.
    #[must_use]
    pub(crate) fn key(&self) -> String {
        self.email.to_string().to_lowercase()
    }

    /// The `To` mailbox.
    #[must_use]
    pub(crate) fn mailbox(&self) -> Mailbox {
        Mailbox::new(self.name.clone(), self.email.clone())
    }
}

/// `[routing]`: one target per row of a CSV file.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    /// `targets`, resolved.
    pub(crate) file: PathBuf,
    /// `match`: the columns a row and a supporter must agree on (normalized).
    pub(crate) columns: Vec<String>,
    /// `FILE:LINE` of `[routing]`, for errors.
    pub(crate) at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    targets: PathBuf,
    #[serde(rename = "match")]
    columns: Spanned<Vec<String>>,
}

/// `[[targets]]`, validated; none is an error unless `[routing]` adds them.
pub(super) fn targets_from_raw(
    raw: Vec<Spanned<toml::Table>>,
    file: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    routed: bool,
) -> Result<Vec<Arc<Target>>> {
    if raw.is_empty() && !routed {
        bail!(
            "{file}: no [[targets]]: add at least one with `name` and `email`, or a [routing] \
             section with a targets file"
        );
    }
    let mut targets: Vec<Arc<Target>> = Vec::with_capacity(raw.len());
    for (i, spanned) in raw.into_iter().enumerate() {
        let line_at = at(spanned.span());
        let where_ = format!("{line_at}: [[targets]] #{}", i + 1);
        let mut fields = spanned.into_inner();
        let email = match fields.get("email") {
            Some(toml::Value::String(s)) => s
                .trim()
                .parse::<Address>()
                .map_err(|e| anyhow!("{where_}: invalid email `{s}`: {e}"))?,
            Some(_) => bail!("{where_}: `email` must be a string"),
            None => bail!("{where_}: `email` is missing"),
        };
        let name = match fields.get("name") {
            Some(toml::Value::String(s)) if s.chars().any(char::is_control) => {
                bail!("{where_}: `name` holds a control character")
            }
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("{where_}: `name` must be a string"),
            None => None,
        };
        let key = email.to_string().to_lowercase();
        if targets.iter().any(|t| t.key() == key) {
            bail!("{where_}: `{email}` is listed twice");
        }
        let timezone = match fields.get("timezone") {
            Some(toml::Value::String(s)) => Some(time_zone(s).map_err(|e| anyhow!("{where_}: {e}"))?),
            Some(_) => bail!("{where_}: `timezone` must be a string, e.g. \"America/New_York\""),
            None => None,
        };
        let letter = match fields.get("letter") {
            Some(toml::Value::String(s)) => Some(LetterFile {
                path: resolve(PathBuf::from(s)),
                name: s.clone(),
            }),
            Some(_) => bail!("{where_}: `letter` must be a string (a letter file)"),
            None => None,
        };
        let subject = match fields.get("subject") {
            Some(toml::Value::String(s)) => Some(Source {
                text: s.clone(),
                location: line_at.clone(),
            }),
            Some(_) => bail!("{where_}: `subject` must be a string (a Tera template)"),
            None => None,
        };
        let matcher = match fields.remove("match") {
            Some(value) => matcher_from(value).map_err(|why| {
                anyhow!(
                    "{where_}: {why}\n\nhint: match = {{ country = [\"US\", \"CA\"] }} (a supporters column and the values that select this target)"
                )
            })?,
            None => Vec::new(),
        };
        let fields = fields.into_iter().map(|(k, v)| (k, dates_as_text(v))).collect();
        targets.push(Arc::new(Target {
            name,
            email,
            fields,
            index: i,
            letter,
            subject,
            matcher,
            routed: None,
            timezone,
        }));
    }
    Ok(targets)
}

/// `[routing]`, validated.
pub(super) fn routing_from_raw(
    r: Spanned<RawRouting>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Routing> {
    let section_at = at(r.span());
    let r = r.into_inner();
    let columns_at = at(r.columns.span());
    let columns: Vec<String> = r
        .columns
        .into_inner()
        .iter()
        .map(|c| crate::roster::normalize_header(c))
        .collect();
    if columns.is_empty() || columns.iter().any(String::is_empty) {
        bail!("{columns_at}: [routing] match needs at least one column name\n\nhint: match = [\"state\"]");
    }
    Ok(Routing {
        file: resolve(r.targets),
        columns,
        at: section_at,
    })
}

/// `match = { column = ["value", …] }`, normalized: columns like headers,
/// values trimmed and lower-cased (comparisons ignore case and spaces).
fn matcher_from(value: toml::Value) -> std::result::Result<Vec<(String, Vec<String>)>, String> {
    let toml::Value::Table(table) = value else {
        return Err("`match` must be a table of column = [values]".into());
    };
    let mut out = Vec::with_capacity(table.len());
    for (column, values) in table {
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.trim().to_lowercase()),
            toml::Value::Integer(n) => Some(n.to_string()),
            _ => None,
        };
        let list: Vec<String> = match &values {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<_>>(),
            other => scalar(other).map(|v| vec![v]),
        }
        .ok_or_else(|| format!("`match.{column}` must be a list of values"))?;
        if list.is_empty() {
            return Err(format!(
                "`match.{column}` is an empty list: no supporter could match"
            ));
        }
        out.push((crate::roster::normalize_header(&column), list));
    }
    if out.is_empty() {
        return Err("`match` is empty".into());
    }
    Ok(out)
}

/// TOML dates and times become the text they were written as (`2018-06-01`),
/// also inside arrays and tables.
///
/// NOTE: serde gives a `toml::Value::Datetime` to Tera as a private map,
/// `{"$__toml_private_datetime": "2018-06-01"}`, which a letter would print.
fn dates_as_text(value: toml::Value) -> toml::Value {
    match value {
        toml::Value::Datetime(d) => toml::Value::String(d.to_string()),
        toml::Value::Array(items) => toml::Value::Array(items.into_iter().map(dates_as_text).collect()),
        toml::Value::Table(table) => {
            toml::Value::Table(table.into_iter().map(|(k, v)| (k, dates_as_text(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MINIMAL, parse};

    #[test]
    fn target_dates_become_text_as_written() {
        let text = MINIMAL.replace(
            "email = \"ceo@corp.example\"\n",
            "email = \"ceo@corp.example\"\nsince = 2018-06-01\nterms = [1979-05-27T07:32:00Z]\n\
             board = { at = 07:32:00 }\n",
        );
        let fields = &parse(&text).unwrap().targets[0].fields;
        assert_eq!(fields["since"], toml::Value::String("2018-06-01".into()));
        assert_eq!(
            fields["terms"],
            toml::Value::Array(vec![toml::Value::String("1979-05-27T07:32:00Z".into())])
        );
        assert_eq!(fields["board"]["at"], toml::Value::String("07:32:00".into()));
    }

    #[test]
    fn target_needs_a_valid_email() {
        let err = parse(&MINIMAL.replace("ceo@corp.example", "not-an-address"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[[targets]] #1: invalid email `not-an-address`"),
            "{err}"
        );
        assert!(err.starts_with("camp/mailer.toml:10: [[targets]] #1"), "{err}");
    }

    #[test]
    fn a_target_time_zone_is_checked_and_kept() {
        let c = parse(&MINIMAL.replace(
            "email = \"ceo@corp.example\"",
            "email = \"ceo@corp.example\"\ntimezone = \"Europe/Berlin\"",
        ))
        .unwrap();
        assert_eq!(
            c.targets[0].timezone.as_ref().and_then(|t| t.iana_name()),
            Some("Europe/Berlin")
        );
        let err = parse(&MINIMAL.replace(
            "email = \"ceo@corp.example\"",
            "email = \"ceo@corp.example\"\ntimezone = \"Europe/Atlantis\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("camp/mailer.toml:10: [[targets]] #1: unknown time zone `Europe/Atlantis`"),
            "{err}"
        );
    }
}
