//! The SMTP wire: replies read under deadlines, data written in bounded
//! chunks, dot-stuffing, and the one choke point where server bytes become
//! text ([`Wire::shown`]: redacted, escaped, capped).
//!
//! Generic over the stream, so it is unit-tested over an in-memory one; TCP,
//! TLS, STARTTLS and AUTH are `session`'s.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::ui::printable;

/// Longest reply line we accept (RFC 5321 says 512; be generous).
const MAX_LINE: usize = 4096;
/// Longest server text kept for display and the ledger, per line and per reply.
const MAX_SHOWN: usize = 1000;
/// Bytes written under one deadline: a body goes in chunks, each of which must
/// leave within the timeout (a slow uplink may need longer for a whole body).
const WRITE_CHUNK: usize = 64 * 1024;

/// Longest one read or write blocks before it looks at the run's stop flag
/// (reads) or the deadline again. Every read and write is bounded by this
/// same slice, so the socket's timeouts are set once per connection, not
/// once per call.
const STOP_POLL: Duration = Duration::from_millis(200);

/// The run's stop flag, set by `send`'s SIGINT/SIGTERM handlers.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Lets reads see the run's stop flag: a signal that lands just before a
/// read starts brings no EINTR to that read, so reads also wake every
/// [`STOP_POLL`] to look.
pub(crate) fn watch_stop(flag: &Arc<AtomicBool>) {
    let _ = STOP.set(Arc::clone(flag));
}

fn stopping() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// A server reply: code and text (lines joined with ` / `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit code.
    pub(crate) code: u16,
    /// The text after the code.
    pub(crate) text: String,
}

impl Reply {
    /// 2xx
    pub(crate) fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx: try again later.
    pub(crate) fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// The relay asks us to slow down: a `421` (service closing, often
    /// "too many connections/messages"), a 4xx with enhanced status 4.7.x
    /// (Gmail's 4.7.28, M365's 4.7.x) or 4.3.2 ("system not accepting
    /// messages"), or SES's `454 Throttling failure`.
    pub(crate) fn is_throttle(&self) -> bool {
        let enhanced = |prefix: &str| self.text.starts_with(prefix);
        self.code == 421
            || (self.is_transient() && (enhanced("4.7.") || enhanced("4.3.2")))
            || (self.code == 454 && self.text.to_ascii_lowercase().contains("throttling"))
    }
    /// A 5.7.x enhanced status: a policy rejection (auth, relaying, spam).
    pub(crate) fn is_policy(&self) -> bool {
        self.code >= 500 && self.text.starts_with("5.7.")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A stream whose reads and writes can be bounded in time.
pub(crate) trait Timed: Read + Write {
    /// Bounds the next reads and writes to `left`.
    fn limit(&self, left: Duration) -> io::Result<()>;
}

/// One SMTP conversation's bytes, over any [`Timed`] stream.
pub(crate) struct Wire<S> {
    pub(crate) stream: S,
    /// Read but not yet consumed.
    pub(crate) rbuf: Vec<u8>,
    /// The deadline for each reply and each written chunk.
    pub(crate) timeout: Duration,
    /// What this session sent that the server must never get shown back:
    /// the password in every form AUTH carried it (see [`Wire::shown`]).
    pub(crate) secrets: Vec<String>,
    /// A body went and its reply is awaited: a signal must not abandon it.
    pub(crate) awaiting_outcome: bool,
    /// When the last reply was asked for.
    pub(crate) last_used: Instant,
    /// The bound last set on the stream (see [`Wire::bound`]); `None` when
    /// unknown, as after the stream was replaced.
    bounded: Cell<Option<Duration>>,
}

impl<S: Timed> Wire<S> {
    pub(crate) fn new(stream: S, timeout: Duration) -> Wire<S> {
        Wire {
            stream,
            rbuf: Vec::with_capacity(1024),
            timeout,
            secrets: Vec::new(),
            awaiting_outcome: false,
            last_used: Instant::now(),
            bounded: Cell::new(None),
        }
    }

    /// Forgets the bound set on the stream: call after something other
    /// than this wire set the stream's timeouts (the TLS handshake).
    pub(crate) fn forget_bound(&self) {
        self.bounded.set(None);
    }

    /// Writes `text` and reads one reply.
    pub(crate) fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send(line.as_bytes())?;
        self.reply()
    }

    /// Writes `bytes`, each [`WRITE_CHUNK`] within the timeout.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_counted(bytes, &mut 0)
    }

    /// [`Wire::send`], counting into `written` the bytes the stream took,
    /// so a failed write can say whether a given prefix left.
    pub(crate) fn send_counted(&mut self, bytes: &[u8], written: &mut usize) -> io::Result<()> {
        let late = |e| timeout_as(e, "the server did not take the data in time");
        for chunk in bytes.chunks(WRITE_CHUNK) {
            let deadline = Instant::now() + self.timeout;
            let mut rest = chunk;
            while !rest.is_empty() {
                self.bound(deadline).map_err(late)?;
                match self.stream.write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *written += n;
                        rest = &rest[n..];
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A slice of the deadline ran out, not the deadline.
                    Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
                    Err(e) => return Err(late(e)),
                }
            }
            loop {
                self.bound(deadline).map_err(late)?;
                match self.stream.flush() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
                    Err(e) => return Err(late(e)),
                }
            }
        }
        Ok(())
    }

    /// Bounds the next reads and writes (both: TLS may write while
    /// reading) by a slice of what is left until `deadline`: at most
    /// [`STOP_POLL`], so callers retry a slice that ran out while the
    /// deadline has not. The stream's timeouts change only when the slice
    /// does: with time to spare it is always [`STOP_POLL`], and a letter
    /// costs no system calls for them.
    fn bound(&self, deadline: Instant) -> io::Result<()> {
        let slice = until(deadline)?.min(STOP_POLL);
        if self.bounded.get() != Some(slice) {
            self.bounded.set(None);
            self.stream.limit(slice)?;
            self.bounded.set(Some(slice));
        }
        Ok(())
    }

    /// Reads `n` replies.
    pub(crate) fn replies(&mut self, n: usize) -> io::Result<Vec<Reply>> {
        (0..n).map(|_| self.reply()).collect()
    }

    /// Reads one (possibly multi-line) reply: its text is what may be shown
    /// and stored (see [`Wire::shown`]), cut at [`MAX_SHOWN`].
    pub(crate) fn reply(&mut self) -> io::Result<Reply> {
        let (code, lines) = self.read_reply()?;
        Ok(joined(code, &lines))
    }

    /// Reads one reply as its code and lines. The whole reply must arrive
    /// within the timeout: a server trickling a byte at a time does not
    /// reset it (Postfix's `smtp_per_record_deadline`).
    pub(crate) fn read_reply(&mut self) -> io::Result<(u16, Vec<String>)> {
        self.last_used = Instant::now();
        let deadline = self.last_used + self.timeout;
        let mut lines = Vec::new();
        let code = loop {
            let line = self.line(deadline)?;
            let bytes = line.as_bytes();
            if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply `{line}`"),
                ));
            }
            let code: u16 = line[..3].parse().unwrap_or(0);
            let more = bytes.get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                break code;
            }
            if lines.len() > 200 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
            }
        };
        Ok((code, lines))
    }

    /// Reads one line before `deadline`, as [`Wire::shown`] text.
    fn line(&mut self, deadline: Instant) -> io::Result<String> {
        loop {
            if let Some(i) = self.rbuf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.rbuf.drain(..=i).collect();
                return Ok(self.shown(&raw));
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply line too long"));
            }
            // The run is stopping: wait on only for the reply to a body that
            // went, so that letter's outcome is recorded; anything else (a
            // greeting, a login, MAIL/RCPT/DATA) is abandoned at once and is
            // safe to try again.
            if stopping() && !self.awaiting_outcome {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
            let mut chunk = [0u8; 4096];
            self.bound(deadline)
                .map_err(|e| timeout_as(e, "the server did not reply in time"))?;
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                // A slice of the deadline ran out, not the deadline.
                Err(e) if is_timeout(&e) && Instant::now() < deadline => continue,
                // NOTE: only our SIGINT/SIGTERM handlers interrupt a read (a
                // socket with a timeout returns EINTR despite SA_RESTART). The
                // run is stopping: wait on only for the reply to a body that
                // went, so that letter's outcome is recorded; anything else
                // (a greeting, a login, MAIL/RCPT/DATA) is abandoned at once
                // and is safe to try again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted && self.awaiting_outcome => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
                }
                Err(e) => return Err(timeout_as(e, "the server did not reply in time")),
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// NOTE: the one place where server bytes become text. Everything the
    /// server says reaches errors, the terminal and the ledger only through
    /// here: secrets this session sent are redacted, control characters
    /// escaped, and the text cut at [`MAX_SHOWN`].
    pub(crate) fn shown(&self, raw: &[u8]) -> String {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\r', '\n']);
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        cap(&printable(&redact(text, &secrets)), MAX_SHOWN)
    }
}

/// A reply from its code and lines (joined with ` / `, cut at [`MAX_SHOWN`]).
pub(crate) fn joined(code: u16, lines: &[String]) -> Reply {
    Reply {
        code,
        text: cap(&lines.join(" / "), MAX_SHOWN),
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying so.
fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} more bytes truncated)", &text[..end], text.len() - end)
}

/// What is left until `deadline`, or a timeout error once it has passed.
pub(crate) fn until(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// A socket timeout (`EAGAIN` on Linux: "Resource temporarily unavailable")
/// as a plain `timed out: WHAT` error; other errors unchanged.
pub(crate) fn timeout_as(e: io::Error, what: &str) -> io::Error {
    if is_timeout(&e) {
        io::Error::new(io::ErrorKind::TimedOut, format!("timed out: {what}"))
    } else {
        e
    }
}

/// Dot-stuffs a CRLF message and appends the terminator, in one buffer so it
/// leaves in one write.
pub(crate) fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Replaces every occurrence of each secret with `(redacted)`, ignoring
/// ASCII case (a server may echo `HUNTER2` or an upper-case hex form).
fn redact(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 3)
        .fold(text.to_string(), |t, s| replace_ignoring_case(&t, s))
}

/// `text` with each ASCII-case-insensitive occurrence of `secret` replaced.
fn replace_ignoring_case(text: &str, secret: &str) -> String {
    // ASCII lower-casing keeps every byte offset, so matches found in the
    // folded copy cut the original at the same (character) boundaries.
    let folded = text.to_ascii_lowercase();
    let needle = secret.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(at) = folded[from..].find(&needle) {
        out.push_str(&text[from..from + at]);
        out.push_str("(redacted)");
        from += at + needle.len();
    }
    out.push_str(&text[from..]);
    out
}

/// An I/O error as a person reads it.
pub(crate) fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        // Our own deadline errors say what timed out.
        io::ErrorKind::TimedOut if e.get_ref().is_some() => e.to_string(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out: the server did not reply in time".into()
        }
        io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "the connection was reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An in-memory stream: reads from `input`, records what is written.
    pub(crate) struct Memory {
        pub(crate) input: io::Cursor<Vec<u8>>,
        pub(crate) output: Vec<u8>,
    }

    impl Memory {
        pub(crate) fn new(input: &[u8]) -> Memory {
            Memory {
                input: io::Cursor::new(input.to_vec()),
                output: Vec::new(),
            }
        }
    }

    impl Read for Memory {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timed for Memory {
        fn limit(&self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn wire(input: &[u8]) -> Wire<Memory> {
        Wire::new(Memory::new(input), Duration::from_secs(1))
    }

    /// A [`Memory`] that counts the bounds set on it and whose first
    /// `stalls` writes and flushes time out, as a socket's do when its
    /// send timeout runs out before the peer takes the data.
    struct Slow {
        memory: Memory,
        limits: std::cell::RefCell<Vec<Duration>>,
        stalls: usize,
    }

    impl Slow {
        fn new(input: &[u8], stalls: usize) -> Slow {
            Slow {
                memory: Memory::new(input),
                limits: std::cell::RefCell::new(Vec::new()),
                stalls,
            }
        }

        /// One stall: the write times out at once (the wire retries at
        /// once while its deadline has not passed).
        fn stall(&mut self) -> io::Result<()> {
            if self.stalls == 0 {
                return Ok(());
            }
            self.stalls -= 1;
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.memory.read(buf)
        }
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.stall()?;
            self.memory.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.stall()
        }
    }

    impl Timed for Slow {
        fn limit(&self, left: Duration) -> io::Result<()> {
            self.limits.borrow_mut().push(left);
            Ok(())
        }
    }

    #[test]
    fn socket_timeouts_are_set_once_not_per_read_and_write() {
        let mut w = Wire::new(
            Slow::new(b"250 a\r\n250 b\r\n354 c\r\n", 0),
            Duration::from_secs(30),
        );
        for line in ["MAIL FROM:<a@b.org>\r\n", "RCPT TO:<c@d.org>\r\n", "DATA\r\n"] {
            w.command(line).unwrap();
        }
        assert_eq!(
            w.stream.memory.output,
            b"MAIL FROM:<a@b.org>\r\nRCPT TO:<c@d.org>\r\nDATA\r\n"
        );
        let limits = w.stream.limits.borrow();
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert!(limits[0] <= Duration::from_secs(30), "{limits:?}");
    }

    #[test]
    fn a_write_whose_slice_of_the_deadline_runs_out_is_retried() {
        // Three writes and then the flush time out: the deadline (30 s) has not.
        let mut w = Wire::new(Slow::new(b"250 ok\r\n", 4), Duration::from_secs(30));
        let mut written = 0;
        w.send_counted(b"MAIL FROM:<a@b.org>\r\n", &mut written).unwrap();
        assert_eq!(written, 21);
        assert_eq!(w.stream.memory.output, b"MAIL FROM:<a@b.org>\r\n");
        assert_eq!(w.reply().unwrap().code, 250);
    }

    #[test]
    fn a_write_still_stalled_at_the_deadline_times_out() {
        let mut w = Wire::new(Slow::new(b"", usize::MAX), Duration::from_millis(50));
        let e = w.send(b"MAIL FROM:<a@b.org>\r\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            e.to_string(),
            "timed out: the server did not take the data in time"
        );
        assert!(w.stream.memory.output.is_empty());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("535 bad AGFsAHB3 pw", &["AGFsAHB3", "pw"]),
            "535 bad (redacted) pw"
        );
        assert_eq!(redact("535 bad hunter2!", &["hunter2"]), "535 bad (redacted)!");
        // Any case, and the hex form the session adds to the secrets.
        assert_eq!(
            redact("535 HUNTER2 or 68756E74657232 é", &["hunter2", "68756e74657232"]),
            "535 (redacted) or (redacted) é"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(cap("short", 10), "short");
        let cut = cap(&"é".repeat(10), 5);
        assert_eq!(cut, "éé … (16 more bytes truncated)");
    }

    #[test]
    fn deadlines_run_out() {
        assert!(until(Instant::now() + Duration::from_secs(5)).is_ok());
        let e = until(Instant::now()).unwrap_err();
        assert!(is_timeout(&e));
        let e = timeout_as(e, "the server did not reply in time");
        assert_eq!(describe_io(&e), "timed out: the server did not reply in time");
        let eagain = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(
            describe_io(&eagain),
            "timed out: the server did not reply in time"
        );
    }

    #[test]
    fn server_text_is_redacted_escaped_and_cut_where_it_becomes_text() {
        let mut w = wire(b"");
        w.secrets = vec!["AGEAaHVudGVyMg".into(), "aHVudGVyMg".into(), "hunter2".into()];
        assert_eq!(
            w.shown(b"5x5 echo hunter2 AGEAaHVudGVyMg== aHVudGVyMg\x1b[2J\r\n"),
            "5x5 echo (redacted) (redacted)== (redacted)\\u{1b}[2J"
        );
        let long = w.shown(&[b'x'; 3000]);
        assert!(
            long.len() < MAX_SHOWN + 40 && long.ends_with("truncated)"),
            "{long}"
        );
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
    }

    #[test]
    fn reply_classes() {
        let r = |code, text: &str| Reply {
            code,
            text: text.into(),
        };
        assert!(r(250, "ok").is_positive());
        assert!(r(451, "4.3.0 later").is_transient());
        assert!(r(554, "5.7.1 spam").is_policy());
        assert!(!r(550, "5.1.1 no such user").is_policy());
    }

    #[test]
    fn throttling_replies() {
        let r = |code, text: &str| Reply {
            code,
            text: text.into(),
        };
        // (reply, a request to slow down)
        let table = [
            (r(421, "4.7.0 Too many connections"), true),
            (r(421, "Service not available"), true),
            (r(421, "4.7.28 Gmail has detected an unusual rate"), true),
            (r(451, "4.7.1 Rate limit exceeded"), true),
            (r(452, "4.3.2 System not accepting network messages"), true),
            (r(454, "Throttling failure: Maximum sending rate exceeded."), true),
            (r(451, "4.3.0 Temporary failure"), false),
            (r(452, "4.2.2 Mailbox full"), false),
            (r(454, "4.7.0 TLS not available"), true),
            (r(454, "Temporary authentication failure"), false),
            (r(554, "5.7.1 Rate limited"), false),
            (r(250, "2.0.0 Ok"), false),
        ];
        for (reply, throttle) in table {
            assert_eq!(reply.is_throttle(), throttle, "{reply}");
        }
    }

    #[test]
    fn replies_over_an_in_memory_stream() {
        let mut w = wire(b"250-relay.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n354 go\r\n");
        let (code, lines) = w.read_reply().unwrap();
        assert_eq!((code, lines.len()), (250, 3));
        assert_eq!(w.command("DATA\r\n").unwrap().to_string(), "354 go");
        assert_eq!(w.stream.output, b"DATA\r\n");
        let e = w.reply().unwrap_err();
        assert_eq!(describe_io(&e), "the server closed the connection");
    }

    #[test]
    fn malformed_and_endless_replies_are_errors() {
        let e = wire(b"hello\r\n").reply().unwrap_err();
        assert_eq!(e.to_string(), "malformed reply `hello`");
        let e = wire(&[b'2'; MAX_LINE + 10]).reply().unwrap_err();
        assert_eq!(e.to_string(), "reply line too long");
        let many = "250-x\r\n".repeat(300);
        let e = wire(many.as_bytes()).reply().unwrap_err();
        assert_eq!(e.to_string(), "reply too long");
    }

    #[test]
    fn a_reply_is_joined_and_its_secrets_redacted() {
        let mut w = wire(b"535-5.7.8 no for hunter2\r\n535 bye\r\n");
        w.secrets = vec!["hunter2".into()];
        assert_eq!(w.reply().unwrap().text, "5.7.8 no for (redacted) / bye");
    }
}
