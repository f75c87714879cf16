//! Who writes to whom: the targets of `[routing] targets` (one a CSV row)
//! and the [`Router`] that gives each supporter their targets.
//!
//! Owns: reading the targets CSV into [`Target`]s, and matching — a
//! `[[targets]]` entry's `match` and the routing rows' `match` columns,
//! compared ignoring case and surrounding spaces. The routing rows are
//! indexed by their match key once, so routing a supporter is one lookup,
//! not a scan of the rows. What a target's letter says is `letter.rs`'s.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};

use crate::config::{Config, Layout, LetterFile, Source, Target};
use crate::roster::{Roster, Row, Supporter};

/// Adds one target per row of `[routing] targets` to `config.targets`.
/// Every column reaches `target.*`; `letter` and `subject` (when not empty)
/// replace the campaign's for that target.
pub(crate) fn load_routed(config: &mut Config) -> Result<()> {
    let Some(routing) = config.routing.clone() else {
        return Ok(());
    };
    let shown = routing.file.display().to_string();
    let roster = Roster::open(&routing.file, &Layout::default())
        .map_err(|e| anyhow!("{e:#}").context(format!("{}: [routing] targets `{shown}`", routing.at)))?;
    for column in &routing.columns {
        if !roster.headers().iter().any(|h| h == column) {
            bail!(
                "{shown}:1: no `{column}` column, which [routing] match names (found: {})\n\n\
                 hint: add the column to `{shown}`, or fix `match` at {}",
                roster.headers().join(", "),
                routing.at
            );
        }
    }
    let dir = config
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(std::path::Path::to_path_buf);
    let resolve = |p: &str| match &dir {
        Some(d) if !std::path::Path::new(p).is_absolute() => d.join(p),
        _ => PathBuf::from(p),
    };
    for row in roster {
        let s = match row? {
            Row::Valid(s) => s,
            Row::Skipped(skip) => bail!("{shown}:{}: {}", skip.line, skip.reason),
            Row::Duplicate(r) => bail!(
                "{shown}:{}: `{}` is listed twice (first on line {}): one row per target",
                r.line,
                r.email,
                r.first_line
            ),
        };
        let key = s.key.clone();
        if let Some(t) = config.targets.iter().find(|t| t.key() == key) {
            let at = t
                .routed
                .map_or_else(|| "[[targets]]".to_string(), |l| format!("line {l}"));
            bail!("{shown}:{}: `{}` is already a target ({at})", s.line, s.email);
        }
        let cell = |name: &str| s.get(name).filter(|v| !v.is_empty()).map(str::to_string);
        let fields: toml::Table = s
            .headers
            .iter()
            .zip(&s.values)
            .map(|(h, v)| (h.clone(), toml::Value::String(v.clone())))
            .chain(std::iter::once((
                "email".to_string(),
                toml::Value::String(s.email.to_string()),
            )))
            .collect();
        let timezone = cell("timezone")
            .map(|z| crate::config::time_zone(&z))
            .transpose()
            .map_err(|e| anyhow!("{shown}:{}: {e}", s.line))?;
        let index = config.targets.len();
        config.targets.push(Arc::new(Target {
            name: (!s.name.is_empty()).then(|| s.name.clone()),
            letter: cell("letter").map(|l| LetterFile {
                path: resolve(&l),
                name: l,
            }),
            subject: cell("subject").map(|text| Source {
                text,
                location: format!("{shown}:{}", s.line),
            }),
            email: s.email,
            fields,
            index,
            matcher: Vec::new(),
            routed: Some(s.line),
            timezone,
        }));
    }
    Ok(())
}

/// A `match`: (column, values) pairs, normalized.
type Matcher = Vec<(String, Vec<String>)>;

/// Gives each supporter their targets.
#[derive(Debug, Default)]
pub(crate) struct Router {
    /// `[[targets]]` entries: (index, match), in config order.
    entries: Vec<(usize, Matcher)>,
    /// `[routing] match`, normalized.
    columns: Vec<String>,
    /// Routing rows by match key, each list in file order.
    rows: HashMap<String, Vec<usize>>,
    /// Every column any match names (routing first), for grouping supporters
    /// who match nothing.
    matched_columns: Vec<String>,
    /// The targets CSV, for messages.
    routing_file: Option<String>,
}

impl Router {
    /// Indexes the targets of this config (with its routing rows loaded).
    #[must_use]
    pub(crate) fn new(config: &Config) -> Router {
        let mut router = Router::default();
        if let Some(r) = &config.routing {
            router.columns.clone_from(&r.columns);
            router.routing_file = Some(r.file.display().to_string());
        }
        for t in &config.targets {
            if t.routed.is_some() {
                let values: Vec<&str> = router
                    .columns
                    .iter()
                    .map(|c| t.fields.get(c).and_then(toml::Value::as_str).unwrap_or(""))
                    .collect();
                let key = match_key(values.into_iter());
                router.rows.entry(key).or_default().push(t.index);
            } else {
                router.entries.push((t.index, t.matcher.clone()));
            }
        }
        let mut columns = router.columns.clone();
        for (_, m) in &router.entries {
            for (c, _) in m {
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
        }
        router.matched_columns = columns;
        router
    }

    /// Whether any target depends on the supporter's columns.
    #[must_use]
    pub(crate) fn is_conditional(&self) -> bool {
        !self.matched_columns.is_empty()
    }

    /// Every column a match names must be a supporters column.
    pub(crate) fn check_columns(&self, headers: &[String], file: &str) -> Result<()> {
        for c in &self.matched_columns {
            if !headers.iter().any(|h| h == c) {
                let whose = if self.columns.contains(c) {
                    "[routing] match"
                } else {
                    "a [[targets]] match"
                };
                bail!(
                    "{file}:1: no `{c}` column, which {whose} names (found: {})\n\n\
                     hint: add the column to the supporters file, or fix the match in the config",
                    headers.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The indexes of the supporter's targets, in `config.targets` order.
    #[must_use]
    pub(crate) fn route(&self, supporter: &Supporter) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, m)| {
                m.iter().all(|(column, values)| {
                    let v = normalized(supporter.get(column).unwrap_or(""));
                    values.contains(&v)
                })
            })
            .map(|(i, _)| *i)
            .collect();
        if !self.columns.is_empty() {
            let key = match_key(self.columns.iter().map(|c| supporter.get(c).unwrap_or("")));
            if let Some(rows) = self.rows.get(&key) {
                out.extend_from_slice(rows);
            }
        }
        out
    }

    /// The targets a row that cannot be read still counts for: the entries
    /// without `match` (its columns cannot be trusted to route it).
    #[must_use]
    pub(crate) fn unconditional(&self) -> Vec<usize> {
        self.entries
            .iter()
            .filter(|(_, m)| m.is_empty())
            .map(|(i, _)| *i)
            .collect()
    }

    /// `state PR`: the supporter's values of the matched columns, to group
    /// the supporters who match no target.
    #[must_use]
    pub(crate) fn unmatched_label(&self, supporter: &Supporter) -> String {
        self.matched_columns
            .iter()
            .map(|c| {
                let v = supporter.get(c).unwrap_or("").trim();
                if v.is_empty() {
                    format!("{c} (empty)")
                } else {
                    format!("{c} {}", shown(v))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Supporters who match no target, grouped by their matched values.
#[derive(Debug, Default, Clone)]
pub(crate) struct Unmatched {
    /// Label lower-cased → (the label as first seen, supporters): values
    /// that differ only in case are one group, as they match alike.
    pub(crate) groups: BTreeMap<String, (String, u64)>,
    /// Their total.
    pub(crate) total: u64,
}

impl Unmatched {
    /// Counts one supporter under `label`.
    pub(crate) fn add(&mut self, label: String) {
        self.groups
            .entry(label.to_lowercase())
            .or_insert_with(|| (label, 0))
            .1 += 1;
        self.total += 1;
    }
}

impl std::fmt::Display for Unmatched {
    /// `37 supporters match no target: state PR 30, GU 7` (the largest
    /// groups first, at most 10, then how many more).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut groups: Vec<(&String, &u64)> = self.groups.values().map(|(l, n)| (l, n)).collect();
        groups.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let n = self.total;
        write!(
            f,
            "{} supporter{} match{} no target: ",
            crate::report::thousands(n),
            if n == 1 { "" } else { "s" },
            if n == 1 { "es" } else { "" }
        )?;
        let mut prev_column: Option<&str> = None;
        for (i, (label, count)) in groups.iter().take(10).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            // `state PR 30, GU 7`: the column is said once while it repeats.
            let (column, value) = label.split_once(' ').unwrap_or((label.as_str(), ""));
            if !label.contains(", ") && prev_column == Some(column) {
                write!(f, "{value} {count}")?;
            } else {
                write!(f, "{label} {count}")?;
            }
            prev_column = (!label.contains(", ")).then_some(column);
        }
        if groups.len() > 10 {
            write!(f, " and {} more groups", groups.len() - 10)?;
        }
        Ok(())
    }
}

/// A value as compared: trimmed, lower-cased.
fn normalized(v: &str) -> String {
    v.trim().to_lowercase()
}

/// The key of a row or supporter: its normalized values, NUL-separated.
fn match_key<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut key = String::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            key.push('\0');
        }
        key.push_str(&normalized(v));
    }
    key
}

/// A value as it may be printed: control characters escaped.
fn shown(v: &str) -> String {
    if v.chars().any(char::is_control) {
        v.escape_debug().to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmatched(groups: &[(&str, u64)]) -> Unmatched {
        let mut u = Unmatched::default();
        for (label, n) in groups {
            for _ in 0..*n {
                u.add((*label).to_string());
            }
        }
        u
    }

    #[test]
    fn unmatched_groups_say_the_column_once() {
        let u = unmatched(&[("state GU", 7), ("state PR", 29), ("state pr", 1)]);
        assert_eq!(u.to_string(), "37 supporters match no target: state PR 30, GU 7");
        let one = unmatched(&[("state (empty)", 1)]);
        assert_eq!(one.to_string(), "1 supporter matches no target: state (empty) 1");
    }

    #[test]
    fn match_keys_ignore_case_and_spaces() {
        assert_eq!(
            match_key(["  CA ", "Ten"].into_iter()),
            match_key(["ca", "ten "].into_iter())
        );
        assert_ne!(
            match_key(["a", "bc"].into_iter()),
            match_key(["ab", "c"].into_iter())
        );
    }
}
