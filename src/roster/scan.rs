//! The strict scanner under the csv crate: refuses stray quotes, bounds what
//! one value, row or column count may take in, and numbers each row's line.

use std::collections::VecDeque;
use std::io::{self, Read};

use super::MAX_FIELD_CHARS;
use super::suspect::Suspect;

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

/// Where and why [`Scanned`] stopped.
#[derive(Debug, Clone)]
pub(super) struct Broken {
    pub(super) line: u64,
    pub(super) reason: String,
    pub(super) hint: &'static str,
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
pub(super) struct Scanned<R> {
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
    pub(super) fn new(inner: R, delimiter: u8) -> Self {
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
    pub(super) fn line_at(&mut self, offset: u64) -> u64 {
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
    use crate::roster::tests::{broken, lines, rows};
    use crate::roster::{Row, Skipped};

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

    #[test]
    fn lf_line_numbers() {
        let r = rows(b"email\na@x.org\n\nb@x.org\n");
        assert_eq!(lines(&r), vec![2, 4]);
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
}
