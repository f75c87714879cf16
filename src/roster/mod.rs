//! The supporters CSV, streamed row by row into typed [`Row`]s.
//!
//! Owns: header rules, line numbers (counted here: the csv crate's are one low
//! on CRLF input, rust-csv #395), strict quoting (the csv crate would merge
//! rows behind a stray quote), bounded reads (nothing grows with the file but
//! the duplicate set), email validation and duplicate detection.
//! Whether a row's *letter* can be built is `campaign.rs`'s business.
//!
//! This file holds the rows ([`Supporter`], [`Row`]) and the reader
//! ([`Roster`]): the header rules and each row's classification; the rest is
//! one concern a file:
//! - `file`: opening the file (a regular file only) and sniffing its header
//!   line for the delimiter.
//! - `scan`: [`Scanned`], the strict scanner under the csv crate: quoting,
//!   honest line numbers, bounded reads.
//! - `suspect`: what a row swallowed by a stray quote looks like.
//! - `seen`: the duplicate set and the address [`fingerprint`].
//! - `email`: [`validate_email`].
//! - `problems`: what a row or the file can be wrong with ([`Skipped`],
//!   [`Duplicate`], [`Malformed`]).

mod email;
mod file;
mod problems;
mod scan;
mod seen;
mod suspect;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use lettre::Address;

use crate::config::Layout;

pub(crate) use email::validate_email;
pub(crate) use problems::{Duplicate, Malformed, Skipped};
pub(crate) use seen::fingerprint;

use file::{detect_delimiter, open_regular, read_head};
use problems::malformed;
use scan::Scanned;
use seen::Seen;

/// The longest value a cell may hold; a longer one skips its row.
pub(crate) const MAX_FIELD_CHARS: usize = 10_000;

/// One supporter, valid for sending.
#[derive(Debug, Clone)]
pub(crate) struct Supporter {
    /// 1-based line of the row in the CSV file.
    pub(crate) line: u64,
    /// The address as written (trimmed).
    pub(crate) email: Address,
    /// The address lower-cased: the supporter's identity in the ledger.
    pub(crate) key: String,
    /// Display name: the `name` column, else `first_name` + `last_name`.
    pub(crate) name: String,
    /// Column names, normalized (lower-case, spaces as `_`).
    pub(crate) headers: Arc<[String]>,
    /// Cell values in column order.
    pub(crate) values: Vec<String>,
}

impl Supporter {
    /// A column's value by normalized header name.
    pub(crate) fn get(&self, column: &str) -> Option<&str> {
        self.headers
            .iter()
            .position(|h| h == column)
            .map(|i| self.values[i].as_str())
    }
}

/// What one CSV row turned out to be.
#[derive(Debug, Clone)]
pub(crate) enum Row {
    /// A supporter whose letters can be built.
    Valid(Supporter),
    /// A row that cannot be sent.
    Skipped(Skipped),
    /// A repeated email.
    Duplicate(Duplicate),
}

impl Row {
    /// The row's 1-based line.
    #[must_use]
    pub(crate) fn line(&self) -> u64 {
        match self {
            Row::Valid(s) => s.line,
            Row::Skipped(Skipped { line, .. }) | Row::Duplicate(Duplicate { line, .. }) => *line,
        }
    }
}

/// A streaming reader over the supporters file.
pub(crate) struct Roster {
    path: PathBuf,
    reader: csv::Reader<Scanned<io::Chain<io::Cursor<Vec<u8>>, File>>>,
    headers: Arc<[String]>,
    email_col: usize,
    name_cols: NameCols,
    seen: Seen,
    record: csv::ByteRecord,
}

enum NameCols {
    Name(usize),
    Parts(Option<usize>, Option<usize>),
}

impl Roster {
    /// Opens the file and reads its header row. `layout`: which column holds
    /// the addresses, and the delimiter (detected from the header line when
    /// not given).
    pub(crate) fn open(path: &Path, layout: &Layout) -> Result<Roster> {
        let shown = path.display();
        let mut file = open_regular(path)?;
        // The header line is read once, for the delimiter, and then read
        // again from memory: the file may be a pipe that cannot be reopened.
        let head = read_head(&mut file).map_err(|e| anyhow!("cannot read supporters file `{shown}`: {e}"))?;
        let delimiter = layout.delimiter.unwrap_or_else(|| detect_delimiter(&head));
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .delimiter(delimiter)
            .from_reader(Scanned::new(io::Cursor::new(head).chain(file), delimiter));
        let raw = match reader.byte_headers() {
            Ok(raw) => raw.clone(),
            Err(e) => {
                return Err(malformed(path, &e)
                    .unwrap_or_else(|| anyhow!("{shown}:1: cannot read the header row: {e}")));
            }
        };
        if raw.is_empty() || (raw.len() == 1 && raw[0].is_empty()) {
            bail!("{shown}:1: the file is empty: it needs a header row with an `email` column");
        }
        let mut headers = Vec::with_capacity(raw.len());
        for (i, cell) in raw.iter().enumerate() {
            let text = std::str::from_utf8(cell).map_err(|_| {
                anyhow!(
                    "{shown}:1: header {} is not UTF-8\n\nhint: re-save the file as \"CSV UTF-8\"",
                    i + 1
                )
            })?;
            let mut name = normalize_header(text);
            if name.is_empty() {
                // Spreadsheets often export trailing empty columns (`…,note,,`):
                // those are harmless. An unnamed column in the middle is not.
                let trailing = raw
                    .iter()
                    .skip(i)
                    .all(|h| normalize_header(&String::from_utf8_lossy(h)).is_empty());
                if !trailing {
                    bail!("{shown}:1: header {} is empty: every column needs a name", i + 1);
                }
                name = format!("column_{}", i + 1);
            }
            if headers.contains(&name) {
                bail!("{shown}:1: column `{name}` appears twice: rename or remove one");
            }
            headers.push(name);
        }
        let col = |n: &str| headers.iter().position(|h| h == n);
        let email_name = &layout.email_column;
        let Some(email_col) = col(email_name) else {
            bail!(
                "{shown}:1: no `{email_name}` column (found: {})\n\nhint: name the column holding addresses \
                 `{email_name}`, or set [supporters] email_column = \"…\" to its header",
                headers.join(", ")
            );
        };
        let name_cols = match col("name") {
            Some(i) => NameCols::Name(i),
            None => NameCols::Parts(col("first_name"), col("last_name")),
        };
        Ok(Roster {
            path: path.to_path_buf(),
            reader,
            headers: headers.into(),
            email_col,
            name_cols,
            seen: Seen::new(),
            record: csv::ByteRecord::new(),
        })
    }

    /// The column names, normalized.
    #[must_use]
    pub(crate) fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The file, as given.
    #[must_use]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `FILE:LINE` for messages.
    #[must_use]
    pub(crate) fn at(&self, line: u64) -> String {
        format!("{}:{line}", self.path.display())
    }

    fn next_row(&mut self) -> Result<Option<Row>> {
        let read = self.reader.read_byte_record(&mut self.record);
        let offset = match &read {
            Ok(_) => self.record.position().map_or(0, csv::Position::byte),
            Err(e) => e.position().map_or(0, csv::Position::byte),
        };
        match read {
            Ok(false) => Ok(None),
            Ok(true) => {
                let line = self.reader.get_mut().line_at(offset);
                Ok(Some(self.classify(line)))
            }
            Err(e) => {
                if let Some(err) = malformed(&self.path, &e) {
                    return Err(err);
                }
                let line = self.reader.get_mut().line_at(offset);
                match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => Ok(Some(Row::Skipped(Skipped {
                        line,
                        key: format!("line:{line}"),
                        reason: format!(
                            "the row has {len} field{} but the header has {expected_len}: \
                             quote values that contain commas",
                            if *len == 1 { "" } else { "s" }
                        ),
                    }))),
                    csv::ErrorKind::Io(io) => {
                        bail!("{}: cannot read: {io}", self.at(line))
                    }
                    _ => bail!("{}: {e}", self.at(line)),
                }
            }
        }
    }

    fn classify(&mut self, line: u64) -> Row {
        let invalid = |key: String, reason: String| Row::Skipped(Skipped { line, key, reason });
        let raw_email = String::from_utf8_lossy(&self.record[self.email_col])
            .trim()
            .to_string();
        let key = if raw_email.is_empty() {
            format!("line:{line}")
        } else {
            raw_email.to_lowercase()
        };
        // NOTE: the address decides duplicates before any other cell is
        // judged: a later row repeating it is ignored even when it is invalid
        // (it must never be recorded under the first row's key), and a first
        // row that is invalid still holds its address.
        if !raw_email.is_empty() {
            let fingerprint = fingerprint(&[&key]);
            if let Some(first_line) = self.seen.get(fingerprint) {
                return Row::Duplicate(Duplicate {
                    line,
                    email: shown(&raw_email),
                    first_line,
                });
            }
            self.seen.insert(fingerprint, line);
        }
        let mut values = Vec::with_capacity(self.record.len());
        for (i, cell) in self.record.iter().enumerate() {
            let column = &self.headers[i];
            let Ok(text) = std::str::from_utf8(cell) else {
                return invalid(
                    key,
                    format!("column `{column}` is not valid UTF-8: re-save the file as \"CSV UTF-8\""),
                );
            };
            if text.contains('\0') {
                return invalid(key, format!("column `{column}` holds a NUL character"));
            }
            let chars = text.chars().count();
            if chars > MAX_FIELD_CHARS {
                return invalid(
                    key,
                    format!("column `{column}` is {chars} characters long (at most {MAX_FIELD_CHARS})"),
                );
            }
            values.push(text.trim().to_string());
        }
        let email = match validate_email(&raw_email) {
            Ok(a) => a,
            Err(why) => return invalid(key, why),
        };
        let name = match self.name_cols {
            NameCols::Name(i) => values[i].trim().to_string(),
            NameCols::Parts(first, last) => {
                let part = |c: Option<usize>| c.map_or("", |i| values[i].trim());
                format!("{} {}", part(first), part(last)).trim().to_string()
            }
        };
        Row::Valid(Supporter {
            line,
            email,
            key,
            name,
            headers: Arc::clone(&self.headers),
            values,
        })
    }
}

impl Iterator for Roster {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        self.next_row().transpose()
    }
}

/// `First Name` → `first_name`.
#[must_use]
pub(crate) fn normalize_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .trim()
        .to_lowercase()
        .replace(' ', "_")
}

/// A cell as it may be printed: control characters escaped.
fn shown(cell: &str) -> String {
    if cell.chars().any(char::is_control) {
        cell.escape_debug().to_string()
    } else {
        cell.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    pub(super) fn rows(content: &[u8]) -> Vec<Row> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        Roster::open(&path, &Layout::default())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    pub(super) fn open_err(content: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        format!(
            "{:#}",
            Roster::open(&path, &Layout::default())
                .err()
                .expect("should fail")
        )
    }

    pub(super) fn lines(rows: &[Row]) -> Vec<u64> {
        rows.iter().map(Row::line).collect()
    }

    #[test]
    fn headers_are_normalized_and_name_derived() {
        let r = rows(b"Email,First Name,Last Name\nA@x.org,Ana,Lopez\n");
        let Row::Valid(s) = &r[0] else { panic!("{r:?}") };
        assert_eq!(s.name, "Ana Lopez");
        assert_eq!(s.key, "a@x.org");
        assert_eq!(s.get("first_name"), Some("Ana"));
    }

    /// The rows before the file breaks, and the error it breaks with.
    pub(super) fn broken(content: &[u8]) -> (Vec<Row>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        let mut good = Vec::new();
        let err = match Roster::open(&path, &Layout::default()) {
            Err(e) => e,
            Ok(roster) => {
                let mut rows = roster;
                loop {
                    match rows.next() {
                        Some(Ok(row)) => good.push(row),
                        Some(Err(e)) => break e,
                        None => panic!("the file should break: {good:?}"),
                    }
                }
            }
        };
        let shown = format!("{err:#}").replace(&path.display().to_string(), "s.csv");
        assert!(err.downcast_ref::<Malformed>().is_some(), "{shown}");
        (good, shown)
    }

    #[test]
    fn duplicates_point_at_the_first_row() {
        let r = rows(b"email\na@x.org\nA@X.org\n");
        assert!(
            matches!(
                &r[1],
                Row::Duplicate(Duplicate {
                    line: 3,
                    first_line: 2,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn the_address_decides_duplicates_before_other_cells() {
        // issue 9 item 6: a repeat with a NUL elsewhere is a repeat, not a
        // skipped row under the first row's key; an invalid first row still
        // holds its address.
        let r = rows(b"email,note\na@x.org,ok\nA@x.org,a\0b\nb@x.org,c\0d\nB@X.org,ok\n");
        assert!(matches!(&r[0], Row::Valid(s) if s.line == 2), "{r:?}");
        assert!(
            matches!(&r[1], Row::Duplicate(Duplicate { line: 3, first_line: 2, email }) if email == "A@x.org"),
            "{r:?}"
        );
        assert!(matches!(&r[2], Row::Skipped(Skipped { line: 4, reason, .. }) if reason.contains("NUL")));
        assert!(
            matches!(
                &r[3],
                Row::Duplicate(Duplicate {
                    line: 5,
                    first_line: 4,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn ragged_and_bad_utf8_rows_are_skipped_not_fatal() {
        let r = rows(b"email,city\na@x.org,Oslo,extra\nb@x.org,\xff\xfe\nc@x.org,Rome\n");
        assert!(
            matches!(&r[0], Row::Skipped(Skipped { line: 2, reason, .. }) if reason.contains("3 fields"))
        );
        assert!(matches!(&r[1], Row::Skipped(Skipped { line: 3, reason, .. }) if reason.contains("UTF-8")));
        assert!(matches!(&r[2], Row::Valid(s) if s.line == 4));
    }

    #[test]
    fn file_level_errors() {
        assert!(open_err(b"").contains(":1: the file is empty"));
        assert!(open_err(b"name,city\n").contains(":1: no `email` column"));
        assert!(open_err(b"email,Email\n").contains(":1: column `email` appears twice"));
    }

    #[test]
    fn huge_and_nul_fields_are_refused() {
        let big = "x".repeat(MAX_FIELD_CHARS + 1);
        let r = rows(format!("email,note\na@x.org,{big}\nb@x.org,a\0b\n").as_bytes());
        assert!(matches!(&r[0], Row::Skipped(Skipped { reason, .. }) if reason.contains("characters long")));
        assert!(matches!(&r[1], Row::Skipped(Skipped { reason, .. }) if reason.contains("NUL")));
    }
}
