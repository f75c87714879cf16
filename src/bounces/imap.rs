//! A small `IMAP4rev1` client (RFC 3501) over TLS, for the bounce mailbox:
//! LOGIN, SELECT, UID SEARCH UNSEEN, UID FETCH BODY.PEEK[], UID STORE
//! +FLAGS (\Seen), LOGOUT. Nothing is ever deleted or expunged.
//!
//! TLS only (implicit, port 993), verified against the web PKI plus
//! `ca_file`; the password goes out only after the handshake succeeded.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::secret::Password;
use crate::ui::printable;

/// Why a session failed.
#[derive(Debug)]
pub(crate) enum ImapError {
    /// The server could not be reached, or went away: try later.
    Unreachable(String),
    /// Certificate, login or folder trouble: needs a person.
    Refused(String),
}

impl std::fmt::Display for ImapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImapError::Unreachable(m) | ImapError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ImapError {}

/// Longest response line (without literals) accepted.
const MAX_LINE: usize = 64 * 1024;
/// Largest literal kept (a message): bigger ones are read past and dropped.
const MAX_LITERAL: usize = crate::bounces::MAX_MESSAGE;
/// Most bytes accepted in reply to one command, literals included.
const MAX_REPLY: usize = 32 * 1024 * 1024;
/// Most untagged lines accepted in reply to one command.
const MAX_UNTAGGED: usize = 10_000;
/// Longest server text shown, in characters.
const MAX_SHOWN: usize = 300;

/// One response line, with the literals (`{n}` octets) it carried.
struct Line {
    text: String,
    literals: Vec<Literal>,
}

/// A literal of a response.
enum Literal {
    Kept(Vec<u8>),
    /// Larger than [`MAX_LITERAL`]: read past, not kept.
    Dropped,
}

/// What `fetch` got.
pub(crate) enum Fetched {
    /// The message.
    Message(Vec<u8>),
    /// Larger than 10 MB: skipped.
    TooLarge,
    /// The server sent no body for it.
    Missing,
}

/// An authenticated-or-not IMAP session.
pub(crate) struct Session {
    stream: StreamOwned<ClientConnection, TcpStream>,
    rbuf: Vec<u8>,
    tag: u32,
    timeout: Duration,
    host: String,
    /// Bytes received since the current command went out.
    received: usize,
}

impl Session {
    /// Connects over TLS and reads the greeting.
    pub(crate) fn connect(
        host: &str,
        port: u16,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<Session, ImapError> {
        let where_ = format!("{host}:{port}");
        let tcp = open_tcp(host, port, timeout)
            .map_err(|e| ImapError::Unreachable(format!("cannot connect to {where_}: {e}")))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| ImapError::Refused(format!("`{host}` is not a valid TLS server name: {e}")))?;
        let mut client =
            ClientConnection::new(tls, name).map_err(|e| ImapError::Refused(format!("TLS setup: {e}")))?;
        let mut tcp = tcp;
        while client.is_handshaking() {
            if let Err(e) = client.complete_io(&mut tcp) {
                return Err(tls_error(host, &e));
            }
        }
        let mut session = Session {
            stream: StreamOwned::new(client, tcp),
            rbuf: Vec::new(),
            tag: 0,
            timeout,
            host: host.to_string(),
            received: 0,
        };
        let deadline = Instant::now() + timeout;
        let greeting = session
            .line(deadline)
            .map_err(|e| session.lost("no greeting", &e))?;
        let upper = greeting.text.to_ascii_uppercase();
        if !(upper.starts_with("* OK") || upper.starts_with("* PREAUTH")) {
            return Err(ImapError::Unreachable(format!(
                "{where_} is not accepting IMAP sessions: {}",
                clean(&greeting.text, &[])
            )));
        }
        Ok(session)
    }

    /// `LOGIN user password`. A refusal names the user, never the password.
    pub(crate) fn login(&mut self, user: &str, password: &Password) -> Result<(), ImapError> {
        let secret = password.expose();
        let (status, _) = self
            .command(&[Arg::Atom("LOGIN"), Arg::Str(user), Arg::Str(secret)], &[secret])
            .map_err(|e| self.lost("LOGIN", &e))?;
        if !status.ok {
            return Err(ImapError::Refused(format!(
                "the IMAP server `{}` refused the login for `{user}`: {}\n\n\
                 hint: check [bounces] username and the password (password_env / password_command)",
                self.host,
                clean(&status.text, &[secret])
            )));
        }
        Ok(())
    }

    /// `SELECT folder` (read-write, for `\Seen`).
    pub(crate) fn select(&mut self, folder: &str) -> Result<(), ImapError> {
        let (status, _) = self
            .command(&[Arg::Atom("SELECT"), Arg::Str(folder)], &[])
            .map_err(|e| self.lost("SELECT", &e))?;
        if !status.ok {
            return Err(ImapError::Refused(format!(
                "the IMAP server `{}` cannot open folder `{folder}`: {}\n\nhint: check [bounces] folder",
                self.host,
                clean(&status.text, &[])
            )));
        }
        Ok(())
    }

    /// UIDs of the messages not yet `\Seen`.
    pub(crate) fn unseen(&mut self) -> Result<Vec<u32>, ImapError> {
        let (status, lines) = self
            .command(&[Arg::Atom("UID SEARCH UNSEEN")], &[])
            .map_err(|e| self.lost("SEARCH", &e))?;
        self.expect_ok(&status, "SEARCH")?;
        let mut uids = Vec::new();
        for line in lines {
            if let Some(rest) = strip_prefix_ci(&line.text, "* SEARCH") {
                uids.extend(rest.split_whitespace().filter_map(|n| n.parse::<u32>().ok()));
            }
        }
        Ok(uids)
    }

    /// One message's bytes, without setting `\Seen`.
    pub(crate) fn fetch(&mut self, uid: u32) -> Result<Fetched, ImapError> {
        let cmd = format!("UID FETCH {uid} BODY.PEEK[]");
        let (status, lines) = self
            .command(&[Arg::Atom(&cmd)], &[])
            .map_err(|e| self.lost("FETCH", &e))?;
        self.expect_ok(&status, "FETCH")?;
        Ok(lines
            .into_iter()
            .filter(|l| l.text.to_ascii_uppercase().contains("FETCH"))
            .find_map(|mut l| (!l.literals.is_empty()).then(|| l.literals.swap_remove(0)))
            .map_or(Fetched::Missing, |literal| match literal {
                Literal::Kept(bytes) => Fetched::Message(bytes),
                Literal::Dropped => Fetched::TooLarge,
            }))
    }

    /// Marks a message `\Seen` (never deletes).
    pub(crate) fn mark_seen(&mut self, uid: u32) -> Result<(), ImapError> {
        let cmd = format!("UID STORE {uid} +FLAGS.SILENT (\\Seen)");
        let (status, _) = self
            .command(&[Arg::Atom(&cmd)], &[])
            .map_err(|e| self.lost("STORE", &e))?;
        self.expect_ok(&status, "STORE")
    }

    /// `LOGOUT`, best effort.
    pub(crate) fn logout(mut self) {
        let _ = self.command(&[Arg::Atom("LOGOUT")], &[]);
    }

    fn expect_ok(&self, status: &Status, what: &str) -> Result<(), ImapError> {
        if status.ok {
            Ok(())
        } else {
            Err(ImapError::Refused(format!(
                "the IMAP server `{}` refused {what}: {}",
                self.host,
                clean(&status.text, &[])
            )))
        }
    }

    fn lost(&self, what: &str, e: &io::Error) -> ImapError {
        let message = format!("IMAP server `{}`: {what}: {}", self.host, describe_io(e));
        if e.kind() == io::ErrorKind::InvalidData {
            // It answered, but not as an IMAP server does: a person should look.
            ImapError::Refused(message)
        } else {
            ImapError::Unreachable(message)
        }
    }

    /// Sends one tagged command and reads until its tagged status. Strings
    /// go quoted, or as synchronizing literals when they are not plain ASCII.
    /// The whole reply must arrive within the timeout, in at most
    /// [`MAX_REPLY`] bytes and [`MAX_UNTAGGED`] untagged lines.
    fn command(&mut self, args: &[Arg<'_>], secrets: &[&str]) -> io::Result<(Status, Vec<Line>)> {
        let deadline = Instant::now() + self.timeout;
        self.received = 0;
        self.tag += 1;
        let tag = format!("m{}", self.tag);
        let mut pending = tag.clone().into_bytes();
        for arg in args {
            pending.push(b' ');
            match arg {
                Arg::Atom(a) => pending.extend_from_slice(a.as_bytes()),
                Arg::Str(s) if is_quotable(s) => {
                    pending.push(b'"');
                    for b in s.bytes() {
                        if b == b'"' || b == b'\\' {
                            pending.push(b'\\');
                        }
                        pending.push(b);
                    }
                    pending.push(b'"');
                }
                Arg::Str(s) => {
                    pending.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
                    self.stream.write_all(&pending)?;
                    self.stream.flush()?;
                    pending.clear();
                    let go = self.line(deadline)?;
                    if !go.text.starts_with('+') {
                        let ok = false;
                        let text = clean(&go.text, secrets);
                        return Ok((Status { ok, text }, Vec::new()));
                    }
                    pending.extend_from_slice(s.as_bytes());
                }
            }
        }
        pending.extend_from_slice(b"\r\n");
        self.stream.write_all(&pending)?;
        self.stream.flush()?;
        let mut untagged = Vec::new();
        loop {
            let line = self.line(deadline)?;
            if let Some(rest) = line.text.strip_prefix(&format!("{tag} ")) {
                let ok = strip_prefix_ci(rest, "OK").is_some();
                return Ok((
                    Status {
                        ok,
                        text: rest.to_string(),
                    },
                    untagged,
                ));
            }
            if strip_prefix_ci(&line.text, "* BYE").is_some()
                && !args.iter().any(|a| matches!(a, Arg::Atom("LOGOUT")))
            {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("the server closed the session: {}", clean(&line.text, secrets)),
                ));
            }
            if untagged.len() >= MAX_UNTAGGED {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the server sent more than {MAX_UNTAGGED} lines in reply to one command"),
                ));
            }
            untagged.push(line);
        }
    }

    /// One response line with its literals, by `deadline`.
    fn line(&mut self, deadline: Instant) -> io::Result<Line> {
        let mut text = Vec::new();
        let mut literals = Vec::new();
        loop {
            let part = self.raw_line(deadline)?;
            // `... {123}` announces a literal of 123 octets, then the line goes on.
            let literal = part
                .strip_suffix(b"}")
                .and_then(|p| p.iter().rposition(|&b| b == b'{').map(|i| (i, &p[i + 1..])))
                .and_then(|(i, n)| std::str::from_utf8(n).ok()?.parse::<usize>().ok().map(|n| (i, n)));
            text.extend_from_slice(&part);
            let Some((_, len)) = literal else { break };
            if len > MAX_REPLY {
                return Err(too_much());
            }
            literals.push(if len > MAX_LITERAL {
                self.skip_by(len, deadline)?;
                Literal::Dropped
            } else {
                Literal::Kept(self.read_exact_by(len, deadline)?)
            });
        }
        Ok(Line {
            text: String::from_utf8_lossy(&text).into_owned(),
            literals,
        })
    }

    fn raw_line(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.rbuf.windows(2).position(|w| w == b"\r\n") {
                let line = self.rbuf[..i].to_vec();
                self.rbuf.drain(..i + 2);
                return Ok(line);
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response line too long",
                ));
            }
            self.fill(deadline)?;
        }
    }

    fn read_exact_by(&mut self, len: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        while self.rbuf.len() < len {
            self.fill(deadline)?;
        }
        Ok(self.rbuf.drain(..len).collect())
    }

    /// Reads past `len` octets without keeping them.
    fn skip_by(&mut self, mut len: usize, deadline: Instant) -> io::Result<()> {
        loop {
            let n = len.min(self.rbuf.len());
            self.rbuf.drain(..n);
            len -= n;
            if len == 0 {
                return Ok(());
            }
            self.fill(deadline)?;
        }
    }

    /// Reads what the server sent, waiting no later than `deadline`.
    fn fill(&mut self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.sock.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.received += n;
        if self.received > MAX_REPLY {
            return Err(too_much());
        }
        self.rbuf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A command argument.
enum Arg<'a> {
    /// Sent as is (command names, sequence sets).
    Atom(&'a str),
    /// A string: quoted, or a literal.
    Str(&'a str),
}

/// A tagged status.
struct Status {
    ok: bool,
    text: String,
}

/// Printable ASCII goes quoted; anything else as a literal.
fn is_quotable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

fn too_much() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the server sent more than {} MB in reply to one command",
            MAX_REPLY >> 20
        ),
    )
}

/// Server text made printable: secrets removed first (while whole), then
/// control characters escaped, then cut at [`MAX_SHOWN`] characters.
fn clean(text: &str, secrets: &[&str]) -> String {
    let redacted = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| t.replace(s, "(redacted)"));
    let shown = printable(&redacted);
    if shown.chars().count() > MAX_SHOWN {
        format!("{}…", shown.chars().take(MAX_SHOWN).collect::<String>())
    } else {
        shown.into_owned()
    }
}

fn open_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name did not resolve");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(timeout))?;
                tcp.set_write_timeout(Some(timeout))?;
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "the server did not reply in time".into(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "the connection was reset".into(),
        _ => e.to_string(),
    }
}

fn tls_error(host: &str, e: &io::Error) -> ImapError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(why)) => ImapError::Refused(format!(
            "the certificate of IMAP server `{host}` was rejected: {}; nothing was sent to it\n\n\
             hint: if the mailbox server uses a private CA, set [bounces] ca_file to its PEM certificate",
            certificate_problem(why)
        )),
        Some(other) => ImapError::Refused(
            printable(&format!(
                "TLS handshake with IMAP server `{host}` failed: {other}"
            ))
            .into_owned(),
        ),
        None => ImapError::Unreachable(format!(
            "TLS handshake with IMAP server `{host}` failed: {}",
            describe_io(e)
        )),
    }
}

/// Why a certificate was refused, as a sentence.
fn certificate_problem(why: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match why {
        E::UnknownIssuer => "it is not signed by a certificate authority mailer trusts".into(),
        E::Expired | E::ExpiredContext { .. } => "it has expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => {
            "it is not valid yet (check this machine's clock)".into()
        }
        E::Revoked => "it has been revoked".into(),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            format!(
                "it is not issued for this host name ({})",
                printable(&why.to_string())
            )
        }
        E::BadSignature | E::BadEncoding => "it is malformed or its signature does not verify".into(),
        other => format!("it is not acceptable ({})", printable(&other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quote_or_go_literal() {
        assert!(is_quotable("pa ss\"w\\d"));
        assert!(!is_quotable("pässword"));
        assert!(!is_quotable("a\r\nb"));
    }

    #[test]
    fn server_text_is_cleaned() {
        assert_eq!(
            clean("m1 NO [AUTHENTICATIONFAILED] bad hunter2\u{1b}[31m", &["hunter2"]),
            "m1 NO [AUTHENTICATIONFAILED] bad (redacted)\\u{1b}[31m"
        );
    }

    #[test]
    fn a_secret_is_redacted_before_the_text_is_cut() {
        let text = format!("m1 NO {}hunter2-secret", "x".repeat(295));
        let shown = clean(&text, &["hunter2-secret"]);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.ends_with('…'), "{shown}");
    }
}
