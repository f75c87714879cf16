//! The supporters CSV, streamed row by row into typed [`Row`]s.
//!
//! Owns: header rules, line numbers (counted here: the csv crate's are one low
//! on CRLF input, rust-csv #395), strict quoting (the csv crate would merge
//! rows behind a stray quote), bounded reads (nothing grows with the file but
//! the duplicate set), email validation and duplicate detection.
//! Whether a row's *letter* can be built is `campaign.rs`'s business.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use lettre::Address;

use crate::config::Layout;

/// The longest value a cell may hold; a longer one skips its row.
pub(crate) const MAX_FIELD_CHARS: usize = 10_000;

/// The most bytes of one value the reader takes in: the longest that
/// [`MAX_FIELD_CHARS`] characters can be in UTF-8. A longer value cannot be
/// a cell, only a file that is not a supporters export (`/dev/zero`) or a
/// quote that never closes: the reader stops there, so memory stays bounded
/// whatever the file holds.
const MAX_VALUE_BYTES: u64 = 4 * MAX_FIELD_CHARS as u64;

/// The most bytes of one row the reader takes in (a line that never ends).
const MAX_ROW_BYTES: u64 = 1 << 20;

/// The most columns of one row the reader takes in.
const MAX_COLUMNS: u64 = 1_000;

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

/// A row that cannot be sent: reported, and recorded as `skipped` by `send`.
#[derive(Debug, Clone)]
pub(crate) struct Skipped {
    /// 1-based line.
    pub(crate) line: u64,
    /// Ledger key: the lower-cased email as written, or `line:N` when empty.
    pub(crate) key: String,
    /// Why.
    pub(crate) reason: String,
}

/// A later row repeating an earlier email; only the first counts.
#[derive(Debug, Clone)]
pub(crate) struct Duplicate {
    /// 1-based line.
    pub(crate) line: u64,
    /// The repeated address.
    pub(crate) email: String,
    /// The line that holds it first.
    pub(crate) first_line: u64,
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

/// Shards of [`Seen`]: a power of two.
const SEEN_SHARDS: usize = 256;

/// The addresses read so far (their [`fingerprint`]) and the line of each.
///
/// NOTE: one `HashMap<u128, u64>` of a million rows peaks at ~96 MB while it
/// grows for the last time (old and new tables both live, 32-byte entries).
/// Split by the fingerprint's low bits, each shard grows on its own, so the
/// peak stays near the tables' size, and a `[u64; 2]` key packs an entry in
/// 24 bytes. Same answers, half the memory.
struct Seen {
    shards: Vec<HashMap<[u64; 2], u64>>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            shards: (0..SEEN_SHARDS).map(|_| HashMap::new()).collect(),
        }
    }

    /// The line `fingerprint` was first read on, if it was.
    fn get(&self, fingerprint: u128) -> Option<u64> {
        let (shard, key) = Seen::place(fingerprint);
        self.shards[shard].get(&key).copied()
    }

    fn insert(&mut self, fingerprint: u128, line: u64) {
        let (shard, key) = Seen::place(fingerprint);
        self.shards[shard].insert(key, line);
    }

    fn place(fingerprint: u128) -> (usize, [u64; 2]) {
        let key = [(fingerprint >> 64) as u64, fingerprint as u64];
        ((key[1] as usize) & (SEEN_SHARDS - 1), key)
    }
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

/// Opens the supporters file, refusing anything but a regular file.
///
/// NOTE: mailer reads the file twice (`send` checks every row, then sends),
/// and rows are named by their line: it needs a file that stays put. A FIFO,
/// a device or a process substitution (`<(…)`) reads differently each time,
/// or never ends, and opening a FIFO with no writer blocks for ever (with the
/// ledger locked, beyond the reach of a single SIGTERM). So the type is
/// checked before anything is opened for reading, and again on the opened
/// descriptor, which cannot change under us.
fn open_regular(path: &Path) -> Result<File> {
    let shown = path.display();
    let unreadable = |e: io::Error| {
        anyhow!("cannot read supporters file `{shown}`: {e}\n\nhint: check [supporters] file in the config")
    };
    let not_regular = |meta: &std::fs::Metadata| {
        let kind = file_kind(meta);
        anyhow!(
            "supporters file `{shown}` is {kind}, not a regular file: mailer reads the supporters \
             twice (it checks every row before it sends) and names rows by their line, so it needs \
             a file that stays put\n\nhint: export the supporters to a file (e.g. `supporters.csv`) \
             and set [supporters] file to it"
        )
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// What a file that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// The delimiter of a CSV file, from its header line: the most frequent
/// of `,`, `;` and tab outside quotes (a comma when none appears).
fn detect_delimiter(head: &[u8]) -> u8 {
    let (mut counts, mut quoted) = ([0usize; 3], false);
    for &b in head {
        match b {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted => break,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3)
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    if counts[best] == 0 {
        b','
    } else {
        [b',', b';', b'\t'][best]
    }
}

/// The file's first bytes, up to the end of the header line (at most 64 KiB:
/// a longer line decides on what it has).
fn read_head(file: &mut File) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while head.len() < 1 << 16 {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    Ok(head)
}

/// `First Name` → `first_name`.
#[must_use]
pub(crate) fn normalize_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .trim()
        .to_lowercase()
        .replace(' ', "_")
}

/// A supporter's address: ASCII, parseable, with a dotted domain.
pub(crate) fn validate_email(raw: &str) -> std::result::Result<Address, String> {
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

/// The supporters file is broken at a line: reading cannot go on, because
/// what follows cannot be trusted to be rows. `check` lists it as a problem,
/// every other command stops with it (exit 1) before anything is sent.
#[derive(Debug)]
pub(crate) struct Malformed {
    /// `FILE:LINE: reason`.
    pub(crate) at: String,
    /// What to do about it.
    pub(crate) hint: &'static str,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\nhint: {}", self.at, self.hint)
    }
}

impl std::error::Error for Malformed {}

/// The [`Malformed`] error a csv error carries, if it is one of ours.
fn malformed(path: &Path, e: &csv::Error) -> Option<anyhow::Error> {
    let csv::ErrorKind::Io(io) = e.kind() else {
        return None;
    };
    let broken = io.get_ref()?.downcast_ref::<Broken>()?;
    Some(anyhow::Error::new(Malformed {
        at: format!("{}:{}: {}", path.display(), broken.line, broken.reason),
        hint: broken.hint,
    }))
}

/// Where and why [`Scanned`] stopped.
#[derive(Debug, Clone)]
struct Broken {
    line: u64,
    reason: String,
    hint: &'static str,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for Broken {}

const QUOTE_HINT: &str = "close the quote where the value ends, and write a quote inside a \
                          quoted value as `\"\"`; then run `mailer check`";

const SIZE_HINT: &str = "check that `[supporters] file` names the supporters CSV export; \
                         then run `mailer check`";

/// Where the scanner is, in the terms of the csv crate's own state machine
/// (csv-core's `NfaState`, default quoting, no escape or comment bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Between rows: line ends here are blank lines.
    RowStart,
    /// At the first byte of a value.
    ValueStart,
    /// In a value that did not start with a quote: a `"` here is a literal.
    Bare,
    /// In a quoted value.
    Quoted,
    /// Just after a `"` in a quoted value: `""` is a literal quote, a
    /// delimiter or line end closes the value, anything else is broken.
    QuoteInQuoted,
}

/// Reads the file for the csv crate and checks every byte on the way
/// through, with the same state machine: it refuses what the csv crate
/// would silently accept (text after a closing quote, a quote never
/// closed), stops at a value, row or column count past the limits above
/// (the csv crate would buffer them whole), and numbers each row's first
/// line, honestly, for any line end (`\n`, `\r\n`, or a lone `\r` from old
/// Mac exports).
///
/// NOTE: a `"` opens a quoted value only as the value's first byte; inside a
/// bare value (`6'2" tall`) it is a literal, on every row (RFC 4180-lenient,
/// like the csv crate, Python and spreadsheets).
struct Scanned<R> {
    inner: R,
    delimiter: u8,
    at: At,
    /// Bytes scanned so far.
    offset: u64,
    /// The line of the next byte (1-based).
    line: u64,
    after_cr: bool,
    /// The line the open quoted value started on.
    quote_line: u64,
    /// The line the current row started on.
    row_line: u64,
    /// Bytes of the current row, of its current value, and its columns.
    row_bytes: u64,
    value_bytes: u64,
    columns: u64,
    /// (offset, line) of each row's first byte, not yet asked for.
    starts: VecDeque<(u64, u64)>,
    /// The header row's column count, once it has ended.
    header_columns: Option<u64>,
    /// What the lines of the open quoted value look like.
    suspect: Suspect,
    /// Stopped: every later read fails with this.
    broken: Option<Broken>,
}

impl<R: Read> Scanned<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        Scanned {
            inner,
            delimiter,
            at: At::RowStart,
            offset: 0,
            line: 1,
            after_cr: false,
            quote_line: 1,
            row_line: 1,
            row_bytes: 0,
            value_bytes: 0,
            columns: 0,
            starts: VecDeque::new(),
            header_columns: None,
            suspect: Suspect::default(),
            broken: None,
        }
    }

    /// The 1-based line of the row the csv crate says starts at `offset`.
    ///
    /// NOTE: csv reports a row as starting right after the previous row's
    /// terminator, which on CRLF input is the `\n` of the `\r\n`, and before
    /// any blank lines it skipped: the row's first line is that of the first
    /// byte at or after `offset` that is not a line end, which the scan
    /// recorded. Rows are asked for in order, so older starts are dropped.
    fn line_at(&mut self, offset: u64) -> u64 {
        while let Some(&(start, line)) = self.starts.front() {
            if start >= offset {
                return line;
            }
            self.starts.pop_front();
        }
        self.line
    }

    /// Scans `bytes`; on a fault, how many of them are good.
    fn scan(&mut self, bytes: &[u8]) -> std::result::Result<(), (usize, Broken)> {
        // The csv crate drops a UTF-8 BOM at the very start of the file.
        let bom = if self.offset == 0 && bytes.starts_with(b"\xef\xbb\xbf") {
            3
        } else {
            0
        };
        self.offset += bom as u64;
        for (i, &b) in bytes.iter().enumerate().skip(bom) {
            self.step(b).map_err(|broken| (i, broken))?;
            self.offset += 1;
            if b == b'\r' || (b == b'\n' && !self.after_cr) {
                self.line += 1;
            }
            self.after_cr = b == b'\r';
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> std::result::Result<(), Broken> {
        let end = b == b'\r' || b == b'\n';
        if self.at == At::RowStart {
            if end {
                return Ok(());
            }
            self.starts.push_back((self.offset, self.line));
            self.at = At::ValueStart;
            (self.row_line, self.row_bytes, self.value_bytes, self.columns) = (self.line, 0, 0, 1);
        }
        self.row_bytes += 1;
        if self.row_bytes > MAX_ROW_BYTES {
            return Err(self.too_big(format!("this row is longer than {MAX_ROW_BYTES} bytes")));
        }
        if self.at == At::QuoteInQuoted && (b == self.delimiter || end) {
            self.closed()?;
        }
        // RowStart was turned into ValueStart above; it shares the arms.
        self.at = match (self.at, b) {
            (At::RowStart | At::ValueStart, b'"') => {
                self.quote_line = self.line;
                self.suspect = Suspect::default();
                At::Quoted
            }
            (At::RowStart | At::ValueStart | At::Bare | At::QuoteInQuoted, _) if b == self.delimiter => {
                self.value_bytes = 0;
                self.columns += 1;
                if self.columns > MAX_COLUMNS {
                    return Err(self.too_big(format!("this row has more than {MAX_COLUMNS} columns")));
                }
                At::ValueStart
            }
            (At::RowStart | At::ValueStart | At::Bare | At::QuoteInQuoted, _) if end => {
                self.header_columns.get_or_insert(self.columns);
                At::RowStart
            }
            (At::RowStart | At::ValueStart | At::Bare, _) => self.grow(At::Bare)?,
            (At::Quoted, b'"') => {
                self.suspect.boundary();
                At::QuoteInQuoted
            }
            (At::Quoted, _) => {
                self.note_quoted(b, end);
                self.grow(At::Quoted)?
            }
            (At::QuoteInQuoted, b'"') => self.grow(At::Quoted)?,
            (At::QuoteInQuoted, _) => return Err(self.text_after_quote()),
        };
        Ok(())
    }

    /// Notes one byte of a quoted value (not a quote) for [`Suspect`].
    fn note_quoted(&mut self, b: u8, end: bool) {
        if end {
            if self.line > self.quote_line {
                self.suspect.end_line(self.line, self.header_columns);
            } else {
                self.suspect.new_line();
            }
        } else if b == self.delimiter {
            self.suspect.delimiters += 1;
            self.suspect.boundary();
        } else {
            self.suspect.byte(b);
        }
    }

    /// A quoted value has just closed (its closing quote is followed by a
    /// delimiter, a line end or the end of the file). Refuses one that ran
    /// over lines that look like supporter rows: an opening quote whose
    /// value should have ended on its own line, closed by a quote that
    /// ends a later row (`…,I am 6 foot tall"`). That is valid CSV, but a
    /// real multi-line note is prose, not a run of whole rows with emails.
    fn closed(&mut self) -> std::result::Result<(), Broken> {
        if self.line > self.quote_line {
            self.suspect.end_line(self.line, self.header_columns);
        }
        let Some(first) = self.suspect.first_row else {
            return Ok(());
        };
        let n = self.suspect.rows;
        let (lines, rows) = if n == 1 {
            ("1 line that looks like a supporter row".to_string(), "that row")
        } else {
            (format!("{n} lines that look like supporter rows"), "those rows")
        };
        Err(Broken {
            line: self.quote_line,
            reason: format!(
                "a quoted value here runs over {lines} (from line {first}): a quote is probably \
                 missing its end, and {rows} would be read as part of this row's value"
            ),
            hint: QUOTE_HINT,
        })
    }

    /// One more byte of the current value.
    fn grow(&mut self, at: At) -> std::result::Result<At, Broken> {
        self.value_bytes += 1;
        if self.value_bytes <= MAX_VALUE_BYTES {
            return Ok(at);
        }
        if at == At::Quoted && self.quote_line < self.line {
            return Err(Broken {
                line: self.quote_line,
                reason: format!(
                    "the quote opened in this row is still open after {MAX_VALUE_BYTES} bytes, so \
                     the rest of the file would be read as one value"
                ),
                hint: QUOTE_HINT,
            });
        }
        Err(self.too_big(format!(
            "a value in this row is longer than {MAX_VALUE_BYTES} bytes (a cell holds at most \
             {MAX_FIELD_CHARS} characters)"
        )))
    }

    fn too_big(&self, reason: String) -> Broken {
        Broken {
            line: self.row_line,
            reason,
            hint: SIZE_HINT,
        }
    }

    fn text_after_quote(&self) -> Broken {
        let reason = if self.quote_line == self.line {
            "a quoted value goes on after its closing quote".to_string()
        } else {
            format!(
                "the quote opened in this row closes on line {} with text after it, so lines {}-{} \
                 would be read as one value",
                self.line, self.quote_line, self.line
            )
        };
        Broken {
            line: self.quote_line,
            reason,
            hint: QUOTE_HINT,
        }
    }

    /// At the end of the file: a quote still open swallowed the rest.
    fn finish(&mut self) -> std::result::Result<(), Broken> {
        if self.at == At::QuoteInQuoted {
            self.closed()?;
        }
        if self.at == At::Quoted {
            return Err(Broken {
                line: self.quote_line,
                reason: "the quote opened in this row is never closed, so the rest of the file \
                         would be read as one value"
                    .into(),
                hint: QUOTE_HINT,
            });
        }
        Ok(())
    }
}

/// What the lines of one open quoted value look like, line by line: a
/// line after the first that holds as many delimiters as the header (a
/// whole row's worth) *and* an email-shaped token is a supporter row that
/// a stray quote swallowed. Both are needed: prose with commas, or with an
/// address, is a note.
#[derive(Debug, Default, Clone, Copy)]
struct Suspect {
    /// Delimiters on the current line (inside the value).
    delimiters: u64,
    /// The token being read.
    token: EmailShape,
    /// Whether the current line holds an email-shaped token.
    email: bool,
    /// Lines that looked like rows so far, and the first of them.
    rows: u64,
    first_row: Option<u64>,
}

impl Suspect {
    fn byte(&mut self, b: u8) {
        if b.is_ascii_whitespace() || b"\"<>()[],;:".contains(&b) {
            self.boundary();
        } else {
            self.token.push(b);
        }
    }

    fn boundary(&mut self) {
        self.email |= self.token.shaped();
        self.token = EmailShape::default();
    }

    /// Ends the current line, a continuation line of the value.
    fn end_line(&mut self, line: u64, header_columns: Option<u64>) {
        self.boundary();
        let whole_row = header_columns.is_some_and(|n| self.delimiters + 1 >= n);
        if whole_row && self.email {
            self.rows += 1;
            self.first_row.get_or_insert(line);
        }
        self.new_line();
    }

    fn new_line(&mut self) {
        (self.delimiters, self.email, self.token) = (0, false, EmailShape::default());
    }
}

/// Whether a token read byte by byte has the shape `local@domain.tld`:
/// something before one `@`, then dot-separated labels of letters, digits
/// and `-` (a trailing dot, as at the end of a sentence, is allowed).
#[derive(Debug, Default, Clone, Copy)]
struct EmailShape {
    local: bool,
    at: bool,
    /// Bytes of the domain label being read, and the labels ended by a dot.
    label: u32,
    dots: u32,
    bad: bool,
}

impl EmailShape {
    fn push(&mut self, b: u8) {
        if self.bad {
            return;
        }
        if !self.at {
            if b == b'@' {
                self.at = self.local;
                self.bad = !self.local;
            } else {
                self.local = true;
            }
        } else if b == b'.' {
            self.bad = self.label == 0;
            (self.dots, self.label) = (self.dots + 1, 0);
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            self.label += 1;
        } else {
            self.bad = true;
        }
    }

    fn shaped(self) -> bool {
        !self.bad && self.at && (self.dots >= 2 || (self.dots == 1 && self.label > 0))
    }
}

impl<R: Read> Read for Scanned<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fail = |broken: &Broken| io::Error::new(io::ErrorKind::InvalidData, broken.clone());
        if let Some(broken) = &self.broken {
            return Err(fail(broken));
        }
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        let scanned = if n == 0 {
            self.finish().map_err(|b| (0, b))
        } else {
            self.scan(&buf[..n])
        };
        match scanned {
            Ok(()) => Ok(n),
            // Hand over the good bytes first, so the rows before the fault
            // are read (and reported) before it.
            Err((good, broken)) => {
                let err = fail(&broken);
                self.broken = Some(broken);
                if good == 0 { Err(err) } else { Ok(good) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn seen_keeps_the_first_line_of_every_address_in_every_shard() {
        let mut seen = Seen::new();
        let key = |i: u64| fingerprint(&[&format!("s{i}@mail.example")]);
        for i in 0..20_000 {
            assert_eq!(seen.get(key(i)), None);
            seen.insert(key(i), i + 2);
        }
        for i in 0..20_000 {
            assert_eq!(seen.get(key(i)), Some(i + 2));
        }
        assert!(seen.shards.iter().all(|s| !s.is_empty()));
        assert_eq!(seen.get(fingerprint(&["other@mail.example"])), None);
    }

    fn rows(content: &[u8]) -> Vec<Row> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        File::create(&path).unwrap().write_all(content).unwrap();
        Roster::open(&path, &Layout::default())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn open_err(content: &[u8]) -> String {
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
        assert!(matches!(&r[1], Row::Skipped(Skipped { reason, .. }) if reason.contains("invalid email")));
    }

    #[test]
    fn cr_only_line_numbers() {
        let r = rows(b"email\ra@x.org\rb@x.org\r");
        assert_eq!(lines(&r), vec![2, 3]);
    }

    /// The rows before the file breaks, and the error it breaks with.
    fn broken(content: &[u8]) -> (Vec<Row>, String) {
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
    fn an_unclosed_quote_breaks_the_file_at_its_row() {
        // A merged blob cannot be trusted to be one row: the file is broken.
        let (good, err) = broken(b"email,note\na@x.org,\"oops\nb@x.org,fine\nc@x.org,fine\n");
        assert!(good.is_empty(), "{good:?}");
        assert!(
            err.starts_with("s.csv:2: the quote opened in this row is never closed"),
            "{err}"
        );
        assert!(err.contains("\n\nhint: close the quote"), "{err}");
        let ok = rows(b"email,note\na@x.org,\"say \"\"hi\"\"\"\n");
        assert!(
            matches!(&ok[0], Row::Valid(s) if s.values[1] == "say \"hi\""),
            "{ok:?}"
        );
    }

    #[test]
    fn text_after_a_closing_quote_breaks_the_file_where_the_quote_opened() {
        // issue 9 item 4: rust-csv closes Ana's quote at Cat's `5"` and
        // reads lines 3-5 as one value; the rows before are still read.
        let csv =
            b"email,note\r\nz@x.org,ok\r\na@x.org,\"oops\r\nb@x.org,ok\r\nc@x.org,5\" tall\r\nd@x.org,\r\n";
        let (good, err) = broken(csv);
        assert_eq!(lines(&good), vec![2]);
        assert!(
            err.starts_with(
                "s.csv:3: the quote opened in this row closes on line 5 with text after it, \
                 so lines 3-5 would be read as one value"
            ),
            "{err}"
        );
        let (good, err) = broken(b"email,name\na@x.org,ok\nb@x.org,\"Lo\"pez\n");
        assert_eq!(lines(&good), vec![2]);
        assert!(
            err.starts_with("s.csv:3: a quoted value goes on after its closing quote"),
            "{err}"
        );
        let (_, err) = broken(b"\"email\"x,note\na@x.org,\n");
        assert!(err.starts_with("s.csv:1: a quoted value"), "{err}");
    }

    #[test]
    fn a_quote_closed_at_the_end_of_a_later_row_breaks_the_file() {
        // Review of issue 9 item 4: the closing quote ends Cat's line, so
        // the csv crate reads lines 3-5 as Ana's note, validly.
        let csv = "email,name,note\nz@m.test,Zoe,hi\nana@m.test,Ana,\"I support this\n\
                   bob@m.test,Bob,count me in\ncat@m.test,Cat,I am 6 foot tall\"\ndan@m.test,Dan,hi\n";
        let (good, err) = broken(csv.as_bytes());
        assert_eq!(lines(&good), vec![2]);
        assert!(
            err.starts_with(
                "s.csv:3: a quoted value here runs over 2 lines that look like supporter rows \
                 (from line 4): a quote is probably missing its end"
            ),
            "{err}"
        );
        assert!(err.contains("\n\nhint: close the quote"), "{err}");
        // CRLF, the last row, one swallowed row, the file ending at the quote.
        let (_, err) = broken(b"email,name,note\r\nana@m.test,Ana,\"x\r\nbob@m.test,Bob,y\"");
        assert!(
            err.starts_with("s.csv:2: a quoted value here runs over 1 line that looks like a supporter row"),
            "{err}"
        );
        // A swallowed row in the middle of the value, with more text after it.
        let (_, err) = broken(b"email,name,note\nana@m.test,Ana,\"x\nbob@m.test,Bob,y\nand so on\"\n");
        assert!(
            err.starts_with("s.csv:2: a quoted value here runs over 1 line"),
            "{err}"
        );
    }

    #[test]
    fn a_multi_line_note_is_still_a_note() {
        // Prose spanning lines is accepted, commas and all; a line is a
        // swallowed row only with a row's worth of delimiters AND an
        // email-shaped token.
        for note in [
            "Dear Satya,\nas a parent, a voter, and a customer, I ask you:\ndrop it.\nThanks, Ana",
            // An address, but too few delimiters for a row of 4 columns.
            "Write to me\nat ana@m.test, any time.\nAna",
            // Delimiters for a whole row, but no address.
            "one\ntwo, three, four, five, six\nseven",
            // `@` without a mail domain is no address.
            "hi\n@ana, @bob, @cat, and @dan\nbye",
            "hi\nana@localhost, b, c, d\nbye",
        ] {
            let csv = format!("email,name,city,note\na@m.test,Ana,Oslo,\"{note}\"\nb@m.test,Bob,Rome,ok\n");
            let r = rows(csv.as_bytes());
            assert_eq!(lines(&r), vec![2, 2 + note.lines().count() as u64], "{note}");
            assert!(matches!(&r[0], Row::Valid(s) if s.values[3] == note), "{r:?}");
        }
        // Exactly a row's worth: 3 delimiters for 4 columns, and an address.
        let csv = "email,name,city,note\na@m.test,Ana,Oslo,\"x\nb@m.test,Bob,Rome,ok\"\n";
        let (_, err) = broken(csv.as_bytes());
        assert!(
            err.starts_with("s.csv:2: a quoted value here runs over 1 line"),
            "{err}"
        );
        let csv = "email,name,city,note\na@m.test,Ana,Oslo,\"x\nb@m.test,Bob,ok\"\n";
        assert_eq!(lines(&rows(csv.as_bytes())), vec![2]);
    }

    #[test]
    fn email_shaped_tokens() {
        let shaped = |t: &str| {
            let mut e = EmailShape::default();
            t.bytes().for_each(|b| e.push(b));
            e.shaped()
        };
        for yes in ["a@b.co", "jane.doe+x@mail.example.org", "a@b.co."] {
            assert!(shaped(yes), "{yes}");
        }
        for no in [
            "@b.co", "a@b", "a@b.", "a@.b", "a@@b.co", "a@b_c.co", "plain", "a.b.c",
        ] {
            assert!(!shaped(no), "{no}");
        }
    }

    #[test]
    fn a_bare_quote_inside_a_value_is_a_literal_on_any_row() {
        for csv in [
            &b"email,note\na@x.org,6'2\" tall\nb@x.org,x\n"[..],
            b"email,note\na@x.org,x\nb@x.org,6'2\" tall\n",
            b"email,note\na@x.org,x\nb@x.org,6'2\" tall",
            b"email,note\r\na@x.org,x\r\nb@x.org, \"6'2\" tall\r\n",
        ] {
            let r = rows(csv);
            assert_eq!(lines(&r), vec![2, 3]);
            assert!(r.iter().all(|r| matches!(r, Row::Valid(_))), "{r:?}");
        }
    }

    #[test]
    fn the_reader_stops_past_the_limits_at_the_row_line() {
        // issue 9 item 16: nothing is buffered past the limits, whatever the
        // file holds; a value up to the limit is read and its row skipped.
        let at_limit = "x".repeat(MAX_VALUE_BYTES as usize);
        let r = rows(format!("email,note\na@x.org,{at_limit}\nb@x.org,ok\n").as_bytes());
        assert!(
            matches!(&r[0], Row::Skipped(Skipped { line: 2, reason, .. }) if reason.contains("40000 characters long"))
        );
        assert!(matches!(&r[1], Row::Valid(s) if s.line == 3), "{r:?}");

        let long = "x".repeat(MAX_VALUE_BYTES as usize + 1);
        let (good, err) = broken(format!("email,note\r\na@x.org,ok\r\nb@x.org,{long}\r\n").as_bytes());
        assert_eq!(lines(&good), vec![2]);
        assert!(
            err.starts_with("s.csv:3: a value in this row is longer than 40000 bytes (a cell holds at most 10000 characters)"),
            "{err}"
        );
        assert!(err.contains("hint: check that `[supporters] file`"), "{err}");

        let (_, err) = broken(format!("email,note\na@x.org,\"{long}\"\n").as_bytes());
        assert!(err.starts_with("s.csv:2: a value in this row is longer"), "{err}");
        let open = "x\n".repeat(MAX_VALUE_BYTES as usize);
        let (_, err) = broken(format!("email,note\na@x.org,ok\nb@x.org,\"{open}").as_bytes());
        assert!(
            err.starts_with("s.csv:3: the quote opened in this row is still open after 40000 bytes"),
            "{err}"
        );

        let (_, err) = broken(format!("email{}\n", ",x".repeat(MAX_COLUMNS as usize)).as_bytes());
        assert!(
            err.starts_with("s.csv:1: this row has more than 1000 columns"),
            "{err}"
        );
        let cells = format!(",{}", "x".repeat(39_000)).repeat(30);
        let header = (0..30).map(|i| format!(",c{i}")).collect::<Vec<_>>().concat();
        let (_, err) = broken(format!("email{header}\n\na@x.org{cells}\n").as_bytes());
        assert!(
            err.starts_with("s.csv:3: this row is longer than 1048576 bytes"),
            "{err}"
        );
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
        assert!(matches!(&r[0], Row::Skipped(Skipped { reason, .. }) if reason.contains("characters long")));
        assert!(matches!(&r[1], Row::Skipped(Skipped { reason, .. }) if reason.contains("NUL")));
    }

    #[test]
    fn the_delimiter_is_the_most_frequent_outside_quotes() {
        assert_eq!(detect_delimiter(b"email,first_name,city\na;b;c;d\n"), b',');
        assert_eq!(detect_delimiter(b"email;first_name;city\n"), b';');
        assert_eq!(detect_delimiter(b"Email Address\tFirst Name\n"), b'\t');
        assert_eq!(detect_delimiter(b"\"a;b;c\",email\n"), b',');
        assert_eq!(detect_delimiter(b"email\n"), b',');
    }
}
