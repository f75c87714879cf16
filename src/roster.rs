//! The supporters CSV, streamed row by row into typed [`Row`]s.
//!
//! Owns: header rules, line numbers (counted here: the csv crate's are one low
//! on CRLF input, rust-csv #395), email validation and duplicate detection.
//! Whether a row's *letter* can be built is `campaign.rs`'s business.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use lettre::Address;

/// The longest value a cell may hold; anything longer is a broken export.
pub const MAX_FIELD_CHARS: usize = 10_000;

/// One supporter, valid for sending.
#[derive(Debug, Clone)]
pub struct Supporter {
    /// 1-based line of the row in the CSV file.
    pub line: u64,
    /// The address as written (trimmed).
    pub email: Address,
    /// The address lower-cased: the supporter's identity in the ledger.
    pub key: String,
    /// Display name: the `name` column, else `first_name` + `last_name`.
    pub name: String,
    /// Column names, normalized (lower-case, spaces as `_`).
    pub headers: Arc<[String]>,
    /// Cell values in column order.
    pub values: Vec<String>,
}

impl Supporter {
    /// A column's value by normalized header name.
    #[must_use]
    pub fn get(&self, column: &str) -> Option<&str> {
        self.headers
            .iter()
            .position(|h| h == column)
            .map(|i| self.values[i].as_str())
    }
}

/// A row that cannot be sent: reported, and recorded as `skipped` by `send`.
#[derive(Debug, Clone)]
pub struct Skip {
    /// 1-based line.
    pub line: u64,
    /// Ledger key: the lower-cased email as written, or `line:N` when empty.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// A later row repeating an earlier email; only the first counts.
#[derive(Debug, Clone)]
pub struct Repeat {
    /// 1-based line.
    pub line: u64,
    /// The repeated address.
    pub email: String,
    /// The line that holds it first.
    pub first_line: u64,
}

/// What one CSV row turned out to be.
#[derive(Debug, Clone)]
pub enum Row {
    /// A supporter whose letters can be built.
    Valid(Supporter),
    /// A row that cannot be sent.
    Invalid(Skip),
    /// A repeated email.
    Duplicate(Repeat),
}

impl Row {
    /// The row's 1-based line.
    #[must_use]
    pub fn line(&self) -> u64 {
        match self {
            Row::Valid(s) => s.line,
            Row::Invalid(Skip { line, .. }) | Row::Duplicate(Repeat { line, .. }) => *line,
        }
    }
}

/// A streaming reader over the supporters file.
pub struct Roster {
    path: PathBuf,
    reader: csv::Reader<File>,
    lines: LineIndex,
    headers: Arc<[String]>,
    email_col: usize,
    name_cols: NameCols,
    seen: HashMap<u128, u64>,
    record: csv::ByteRecord,
    file_len: u64,
}

enum NameCols {
    Name(usize),
    Parts(Option<usize>, Option<usize>),
}

impl Roster {
    /// Opens the file and reads its header row.
    pub fn open(path: &Path) -> Result<Roster> {
        let shown = path.display();
        let open = || {
            File::open(path).map_err(|e| {
                anyhow!("cannot read supporters file `{shown}`: {e}\n\nhint: check [supporters] file in the config")
            })
        };
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(open()?);
        let raw = reader
            .byte_headers()
            .map_err(|e| anyhow!("{shown}:1: cannot read the header row: {e}"))?
            .clone();
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
        let Some(email_col) = col("email") else {
            bail!(
                "{shown}:1: no `email` column (found: {})\n\nhint: name the column holding addresses `email`; \
                 a file separated by `;` must be re-saved with commas",
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
            lines: LineIndex::new(open()?),
            headers: headers.into(),
            email_col,
            name_cols,
            seen: HashMap::new(),
            record: csv::ByteRecord::new(),
            file_len: std::fs::metadata(path).map_or(u64::MAX, |m| m.len()),
        })
    }

    /// The file, as given.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `FILE:LINE` for messages.
    #[must_use]
    pub fn at(&self, line: u64) -> String {
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
                let line = self.lines.line_at(offset)?;
                if self.reader.position().byte() >= self.file_len && self.unclosed_quote(offset)? {
                    return Ok(Some(Row::Invalid(Skip {
                        line,
                        key: format!("line:{line}"),
                        reason: "a quote opened in this row is never closed, so the rest of the file \
                                 was read as one value: close the quote"
                            .into(),
                    })));
                }
                Ok(Some(self.classify(line)))
            }
            Err(e) => {
                let line = self.lines.line_at(offset)?;
                match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => Ok(Some(Row::Invalid(Skip {
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

    /// Whether the last record (from `offset` to the end) has an odd number
    /// of `"`: an unclosed quote swallows every later row into one value,
    /// which the csv crate accepts silently at end of file.
    fn unclosed_quote(&self, offset: u64) -> Result<bool> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        Ok(tail.iter().filter(|b| **b == b'"').count() % 2 == 1)
    }

    fn classify(&mut self, line: u64) -> Row {
        let invalid = |key: String, reason: String| Row::Invalid(Skip { line, key, reason });
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
            if let Some(&first_line) = self.seen.get(&fingerprint) {
                return Row::Duplicate(Repeat {
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
            values.push(text.to_string());
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
pub fn normalize_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .trim()
        .to_lowercase()
        .replace(' ', "_")
}

/// A supporter's address: ASCII, parseable, with a dotted domain.
pub fn validate_email(raw: &str) -> std::result::Result<Address, String> {
    if raw.is_empty() {
        return Err("the email is empty".into());
    }
    if !raw.is_ascii() {
        return Err(format!(
            "invalid email `{}`: non-ASCII addresses are not supported",
            raw.escape_debug()
        ));
    }
    let address: Address = raw
        .parse()
        .map_err(|e| format!("invalid email `{}`: {e}", raw.escape_debug()))?;
    let domain = address.domain();
    if !domain.contains('.') || domain.starts_with('[') || domain.ends_with('.') {
        return Err(format!(
            "invalid email `{raw}`: the domain `{domain}` is not a mail domain"
        ));
    }
    Ok(address)
}

/// A cell as it may be printed: control characters escaped.
fn shown(cell: &str) -> String {
    if cell.chars().any(char::is_control) {
        cell.escape_debug().to_string()
    } else {
        cell.to_string()
    }
}

/// 128 bits of the lower-cased address: enough to dedupe millions of rows
/// without keeping every address in memory.
pub(crate) fn fingerprint(parts: &[&str]) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        parts.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Turns record start offsets (ascending) into 1-based line numbers by
/// counting line ends (`\n`, `\r\n`, or a lone `\r` from old Mac exports)
/// in a second, sequential read of the same file.
///
/// NOTE: csv reports a record as starting right after the previous record's
/// terminator, which on CRLF input is the `\n` of the `\r\n`, and before any
/// blank lines it skipped. So after reaching the offset we also step over
/// line-ending bytes: the record's first line is the one after them.
struct LineIndex {
    reader: BufReader<File>,
    offset: u64,
    line: u64,
    after_cr: bool,
}

impl LineIndex {
    fn new(file: File) -> Self {
        LineIndex {
            reader: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            line: 1,
            after_cr: false,
        }
    }

    fn line_at(&mut self, target: u64) -> Result<u64> {
        while self.offset < target {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(self.line);
            }
            let n = usize::try_from(target - self.offset)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            count_line_ends(&buf[..n], &mut self.line, &mut self.after_cr);
            self.reader.consume(n);
            self.offset += n as u64;
        }
        loop {
            let buf = self.reader.fill_buf()?;
            let n = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            let whole = n == buf.len() && n > 0;
            count_line_ends(&buf[..n], &mut self.line, &mut self.after_cr);
            self.reader.consume(n);
            self.offset += n as u64;
            if !whole {
                return Ok(self.line);
            }
        }
    }
}

/// Counts the line ends in `bytes` into `line`; `after_cr` carries a CRLF
/// split across two calls.
fn count_line_ends(bytes: &[u8], line: &mut u64, after_cr: &mut bool) {
    for &b in bytes {
        if b == b'\r' || (b == b'\n' && !*after_cr) {
            *line += 1;
        }
        *after_cr = b == b'\r';
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn rows(content: &[u8]) -> Vec<Row> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        Roster::open(&path).unwrap().map(Result::unwrap).collect()
    }

    fn open_err(content: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        format!("{:#}", Roster::open(&path).err().expect("should fail"))
    }

    fn lines(rows: &[Row]) -> Vec<u64> {
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

    #[test]
    fn crlf_bom_and_quoted_newlines_keep_line_numbers_right() {
        let csv = "\u{feff}email,note\r\na@x.org,\"two\r\nlines\"\r\nbad,\r\nc@x.org,ok\r\n";
        let r = rows(csv.as_bytes());
        assert_eq!(lines(&r), vec![2, 4, 5]);
        assert!(matches!(&r[1], Row::Invalid(Skip { reason, .. }) if reason.contains("invalid email")));
    }

    #[test]
    fn cr_only_line_numbers() {
        let r = rows(b"email\ra@x.org\rb@x.org\r");
        assert_eq!(lines(&r), vec![2, 3]);
    }

    #[test]
    fn an_unclosed_quote_is_reported_not_merged() {
        let r = rows(b"email,note\na@x.org,\"oops\nb@x.org,fine\nc@x.org,fine\n");
        assert_eq!(r.len(), 1);
        assert!(
            matches!(&r[0], Row::Invalid(Skip { line: 2, reason, .. }) if reason.contains("never closed")),
            "{r:?}"
        );
        let ok = rows(b"email,note\na@x.org,\"say \"\"hi\"\"\"\n");
        assert!(matches!(&ok[0], Row::Valid(_)), "{ok:?}");
    }

    #[test]
    fn lf_line_numbers() {
        let r = rows(b"email\na@x.org\n\nb@x.org\n");
        assert_eq!(lines(&r), vec![2, 4]);
    }

    #[test]
    fn duplicates_point_at_the_first_row() {
        let r = rows(b"email\na@x.org\nA@X.org\n");
        assert!(
            matches!(
                &r[1],
                Row::Duplicate(Repeat {
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
            matches!(&r[1], Row::Duplicate(Repeat { line: 3, first_line: 2, email }) if email == "A@x.org"),
            "{r:?}"
        );
        assert!(matches!(&r[2], Row::Invalid(Skip { line: 4, reason, .. }) if reason.contains("NUL")));
        assert!(
            matches!(
                &r[3],
                Row::Duplicate(Repeat {
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
        assert!(matches!(&r[0], Row::Invalid(Skip { line: 2, reason, .. }) if reason.contains("3 fields")));
        assert!(matches!(&r[1], Row::Invalid(Skip { line: 3, reason, .. }) if reason.contains("UTF-8")));
        assert!(matches!(&r[2], Row::Valid(s) if s.line == 4));
    }

    #[test]
    fn file_level_errors() {
        assert!(open_err(b"").contains(":1: the file is empty"));
        assert!(open_err(b"name,city\n").contains(":1: no `email` column"));
        assert!(open_err(b"email,Email\n").contains(":1: column `email` appears twice"));
    }

    #[test]
    fn emails_are_checked() {
        for bad in [
            "",
            "jane@",
            "jane..doe@x.org",
            "jane@localhost",
            "jané@x.org",
            "a b@x.org",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert!(validate_email("jane.doe+tag@example.org").is_ok());
    }

    #[test]
    fn huge_and_nul_fields_are_refused() {
        let big = "x".repeat(MAX_FIELD_CHARS + 1);
        let r = rows(format!("email,note\na@x.org,{big}\nb@x.org,a\0b\n").as_bytes());
        assert!(matches!(&r[0], Row::Invalid(Skip { reason, .. }) if reason.contains("characters long")));
        assert!(matches!(&r[1], Row::Invalid(Skip { reason, .. }) if reason.contains("NUL")));
    }
}
