//! What a row swallowed by a stray quote looks like: a continuation line of
//! a quoted value with a whole row's delimiters and an email-shaped token.

/// What the lines of one open quoted value look like, line by line: a
/// line after the first that holds as many delimiters as the header (a
/// whole row's worth) *and* an email-shaped token is a supporter row that
/// a stray quote swallowed. Both are needed: prose with commas, or with an
/// address, is a note.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Suspect {
    /// Delimiters on the current line (inside the value).
    pub(super) delimiters: u64,
    /// The token being read.
    token: EmailShape,
    /// Whether the current line holds an email-shaped token.
    email: bool,
    /// Lines that looked like rows so far, and the first of them.
    pub(super) rows: u64,
    pub(super) first_row: Option<u64>,
}

impl Suspect {
    pub(super) fn byte(&mut self, b: u8) {
        if b.is_ascii_whitespace() || b"\"<>()[],;:".contains(&b) {
            self.boundary();
        } else {
            self.token.push(b);
        }
    }

    pub(super) fn boundary(&mut self) {
        self.email |= self.token.shaped();
        self.token = EmailShape::default();
    }

    /// Ends the current line, a continuation line of the value.
    pub(super) fn end_line(&mut self, line: u64, header_columns: Option<u64>) {
        self.boundary();
        let whole_row = header_columns.is_some_and(|n| self.delimiters + 1 >= n);
        if whole_row && self.email {
            self.rows += 1;
            self.first_row.get_or_insert(line);
        }
        self.new_line();
    }

    pub(super) fn new_line(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::Row;
    use crate::roster::tests::{broken, lines, rows};

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
}
