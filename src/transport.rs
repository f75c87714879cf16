//! Our own SMTP client connection, on std sockets and rustls.
//!
//! NOTE: we drive SMTP ourselves instead of lettre's transport because lettre
//! 0.11 cannot say *when* a connection failed (before DATA is safe to retry,
//! after the final dot is not), stalls ~40 ms per message (no `TCP_NODELAY`),
//! has no PIPELINING, sends AUTH over plain connections, and kept bytes a
//! man-in-the-middle injected before STARTTLS. lettre still builds and signs
//! the messages (`message.rs`). The ledger callback runs between the server's
//! `354` and the body, so `sending` is on disk before anything can arrive.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::config::{Security, Smtp};
use crate::message::Built;
use crate::ui::printable;

/// Longest reply line we accept (RFC 5321 says 512; be generous).
const MAX_LINE: usize = 4096;
/// Longest server text kept for display and the ledger, per line and per reply.
const MAX_SHOWN: usize = 1000;
/// Bytes written under one deadline: a body goes in chunks, each of which must
/// leave within the timeout (a slow uplink may need longer for a whole body).
const WRITE_CHUNK: usize = 64 * 1024;
/// Letters per connection before a fresh one (relays often cap this).
pub const LETTERS_PER_CONNECTION: usize = 100;

/// A server reply: code and text (lines joined with ` / `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text after the code.
    pub text: String,
}

impl Reply {
    /// 2xx
    #[must_use]
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx: try again later.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx: don't.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// A 5.7.x enhanced status: a policy rejection (auth, relaying, spam).
    #[must_use]
    pub fn is_policy(&self) -> bool {
        self.code >= 500 && self.text.starts_with("5.7.")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Why a connection could not be set up. Each stops the run.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing answered, or the server said "busy" (421): try later.
    Unreachable(String),
    /// The server answered the connection, then stopped answering within
    /// the timeout (greeting, EHLO, TLS, AUTH): worth one more try, not more.
    TimedOut(String),
    /// TLS, authentication or protocol trouble that needs a person.
    Refused(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Unreachable(m) | ConnectError::TimedOut(m) | ConnectError::Refused(m) => {
                f.write_str(m)
            }
        }
    }
}

impl ConnectError {
    /// A setup step failed on the wire: a timeout is [`ConnectError::TimedOut`],
    /// anything else [`ConnectError::Unreachable`].
    fn io(what: &str, e: &io::Error) -> ConnectError {
        let message = format!("{what}: {}", describe_io(e));
        if is_timeout(e) {
            ConnectError::TimedOut(message)
        } else {
            ConnectError::Unreachable(message)
        }
    }
}

/// A Cc or Bcc copy the server refused while it took the letter itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCopy {
    /// The copy's address.
    pub recipient: String,
    /// The server's RCPT reply.
    pub reply: Reply,
}

impl std::error::Error for ConnectError {}

/// How one letter went on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx after the final dot. `refused`: Cc/Bcc copies the server would
    /// not take (the target got the letter).
    Accepted { reply: Reply, refused: Vec<RefusedCopy> },
    /// The server said no. `handed_over`: the body had been sent.
    Rejected { reply: Reply, handed_over: bool },
    /// The connection failed. Before handoff it is safe to retry; after, the
    /// letter may have been delivered.
    Lost { reason: String, handed_over: bool },
}

/// Everything needed to open connections, built once per run.
#[derive(Clone)]
pub struct Connector {
    smtp: Smtp,
    tls: Arc<ClientConfig>,
    hello: String,
}

impl Connector {
    /// Prepares TLS roots (web PKI plus `ca_file`).
    pub fn new(smtp: &Smtp) -> Result<Connector> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca) = &smtp.ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let certs = CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read ca_file `{}`", ca.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("ca_file `{}` is not PEM certificates", ca.display()))?;
            if certs.is_empty() {
                anyhow::bail!("ca_file `{}` holds no certificate", ca.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("ca_file `{}`: bad certificate", ca.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let hello = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(char::is_whitespace))
            .unwrap_or_else(|| "localhost".into());
        Ok(Connector {
            smtp: smtp.clone(),
            tls: Arc::new(tls),
            hello,
        })
    }

    /// `host:port (SECURITY)` for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!("{}:{} ({})", self.smtp.host, self.smtp.port, self.smtp.security)
    }

    /// Connects, upgrades to TLS, greets and authenticates.
    pub fn connect(&self) -> Result<Connection, ConnectError> {
        let s = &self.smtp;
        let where_ = format!("{}:{}", s.host, s.port);
        let tcp = open_tcp(&s.host, s.port, s.timeout)?;
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            rbuf: Vec::with_capacity(1024),
            caps: Caps::default(),
            letters: 0,
            usable: true,
            host: s.host.clone(),
            last_used: Instant::now(),
            timeout: s.timeout,
            secrets: Vec::new(),
            awaiting_outcome: false,
        };
        if s.security == Security::Tls {
            conn.upgrade(&self.tls)?;
        }
        let greeting = conn
            .reply()
            .map_err(|e| ConnectError::io(&format!("{where_}: no greeting"), &e))?;
        if greeting.code != 220 {
            return Err(ConnectError::Unreachable(format!(
                "{where_} is not accepting mail: {greeting}"
            )));
        }
        conn.ehlo(&self.hello)?;
        if s.security == Security::Starttls {
            if !conn.caps.starttls {
                return Err(ConnectError::Refused(format!(
                    "{where_} does not offer STARTTLS, and security = \"starttls\" requires it"
                )));
            }
            let r = conn.command("STARTTLS\r\n").map_err(|e| {
                match ConnectError::io(&format!("{where_}: STARTTLS"), &e) {
                    timed_out @ ConnectError::TimedOut(_) => timed_out,
                    other => ConnectError::Refused(other.to_string()),
                }
            })?;
            if r.code != 220 {
                return Err(ConnectError::Refused(format!("{where_} refused STARTTLS: {r}")));
            }
            if !conn.rbuf.is_empty() {
                return Err(ConnectError::Refused(format!(
                    "{where_} sent data after agreeing to STARTTLS and before the TLS handshake \
                     (a sign of a STARTTLS injection attack); not continuing"
                )));
            }
            conn.upgrade(&self.tls)?;
            conn.caps = Caps::default();
            conn.ehlo(&self.hello)?;
        }
        if let Some(user) = &s.username {
            if !conn.stream.is_tls() {
                return Err(ConnectError::Refused(format!(
                    "refusing to send the SMTP password to {where_} without TLS \
                     (security = \"none\"): use starttls or tls, or remove username"
                )));
            }
            let password = s
                .password
                .resolve()
                .map_err(|e| ConnectError::Refused(format!("{e:#}")))?;
            conn.auth(user, password.expose())?;
        }
        Ok(conn)
    }
}

/// Resolves and connects. A name that does not exist is the config's
/// problem (a person must fix `[smtp] host`), not the server's: `Refused`,
/// so `send` exits 1 instead of "try later" every hour. A resolver that
/// could not answer this time stays `Unreachable`.
fn open_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let unresolved = |why: &str| format!("cannot resolve host `{}`: {why}", printable(host));
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        // getaddrinfo's EAI_AGAIN: the resolver did not answer, this time.
        Err(e) if e.to_string().contains("Temporary failure") => {
            return Err(ConnectError::Unreachable(unresolved(
                "the name server did not answer",
            )));
        }
        Err(_) => Vec::new(),
    };
    if addrs.is_empty() {
        return Err(ConnectError::Refused(format!(
            "{}\n\nhint: check [smtp] host: it is not a name the DNS knows (a typo?); \
             your provider documents its submission server, e.g. smtp.gmail.com",
            unresolved("no such host name")
        )));
    }
    let where_ = format!("{host}:{port}");
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name did not resolve");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => {
                let set = || -> io::Result<()> {
                    tcp.set_nodelay(true)?;
                    tcp.set_read_timeout(Some(timeout))?;
                    tcp.set_write_timeout(Some(timeout))
                };
                match set() {
                    Ok(()) => return Ok(tcp),
                    Err(e) => last = e,
                }
            }
            Err(e) => last = e,
        }
    }
    Err(ConnectError::Unreachable(format!(
        "cannot connect to {where_}: {last}"
    )))
}

#[derive(Debug, Default, Clone)]
struct Caps {
    starttls: bool,
    pipelining: bool,
    eightbit: bool,
    auth_plain: bool,
    auth_login: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Closed,
}

impl Stream {
    fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// One open SMTP session, reused for many letters.
pub struct Connection {
    stream: Stream,
    rbuf: Vec<u8>,
    caps: Caps,
    letters: usize,
    usable: bool,
    host: String,
    last_used: Instant,
    /// The deadline for each reply, each TLS handshake and each written chunk.
    timeout: Duration,
    /// What this session sent that the server must never get shown back:
    /// the password in every form AUTH carried it (see [`Connection::shown`]).
    secrets: Vec<String>,
    /// A body went and its reply is awaited: a signal must not abandon it.
    awaiting_outcome: bool,
}

impl Connection {
    /// Whether another letter may go on this connection.
    #[must_use]
    pub fn is_usable(&self) -> bool {
        self.usable && self.letters < LETTERS_PER_CONNECTION
    }

    /// Whether the server is still there: a session it closed while idle
    /// (EOF, or an unsolicited `421`) is replaced before a letter is
    /// risked on it. Never blocks; a connection used in the last 100 ms is
    /// taken as alive without a system call.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        if self.last_used.elapsed() < Duration::from_millis(100) {
            return !matches!(self.stream, Stream::Closed);
        }
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
            Stream::Closed => return false,
        };
        if !self.rbuf.is_empty() || tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let quiet = matches!(tcp.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        tcp.set_nonblocking(false).is_ok() && quiet
    }

    /// Whether the server offered PIPELINING.
    #[must_use]
    pub fn pipelining(&self) -> bool {
        self.caps.pipelining
    }

    /// Whether the session is encrypted.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    fn upgrade(&mut self, tls: &Arc<ClientConfig>) -> Result<(), ConnectError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|e| {
            ConnectError::Refused(format!("`{}` is not a valid TLS server name: {e}", self.host))
        })?;
        let Stream::Plain(mut tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ConnectError::Refused("TLS requested twice".into()));
        };
        let mut client = ClientConnection::new(Arc::clone(tls), name)
            .map_err(|e| ConnectError::Refused(format!("TLS setup: {e}")))?;
        // One deadline for the whole handshake, however slowly its bytes come.
        let deadline = Instant::now() + self.timeout;
        while client.is_handshaking() {
            let step = until(deadline)
                .and_then(|left| {
                    tcp.set_read_timeout(Some(left))?;
                    tcp.set_write_timeout(Some(left))
                })
                .and_then(|()| client.complete_io(&mut tcp).map(drop));
            if let Err(e) = step {
                return Err(tls_error(
                    &self.host,
                    &timeout_as(e, "the TLS handshake did not finish in time"),
                ));
            }
        }
        self.rbuf.clear();
        self.stream = Stream::Tls(Box::new(StreamOwned::new(client, tcp)));
        Ok(())
    }

    fn ehlo(&mut self, hello: &str) -> Result<(), ConnectError> {
        let sent = self.send_all(&format!("EHLO {hello}\r\n"));
        let (code, lines) = sent
            .and_then(|()| self.read_reply())
            .map_err(|e| ConnectError::io(&format!("{}: EHLO", self.host), &e))?;
        if !(200..300).contains(&code) {
            let r = joined(code, &lines);
            return Err(ConnectError::Refused(format!("{} refused EHLO: {r}", self.host)));
        }
        for line in lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("STARTTLS") => self.caps.starttls = true,
                Some("PIPELINING") => self.caps.pipelining = true,
                Some("8BITMIME") => self.caps.eightbit = true,
                Some("AUTH") => {
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => self.caps.auth_plain = true,
                            "LOGIN" => self.caps.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn auth(&mut self, user: &str, password: &str) -> Result<(), ConnectError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let plain = b64(&format!("\0{user}\0{password}"));
        // A server may echo what we send, in a reply, a malformed line or
        // anything else: from here on every byte it sends is redacted.
        // Unpadded base64, so that padded and unpadded echoes both match.
        let unpadded = |s: &str| base64::engine::general_purpose::STANDARD_NO_PAD.encode(s);
        self.secrets = vec![
            password.to_string(),
            unpadded(password),
            unpadded(&format!("\0{user}\0{password}")),
            unpadded(&format!("{user}\0{user}\0{password}")),
        ];
        // Longest first: the password's base64 is the tail of the PLAIN blob's.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let r = self.auth_exchange(user, password, &plain)?;
        if r.is_positive() {
            Ok(())
        } else if r.is_transient() {
            Err(ConnectError::Unreachable(format!(
                "{} could not authenticate now: {r}",
                self.host
            )))
        } else {
            Err(ConnectError::Refused(format!(
                "{} rejected the login for `{user}`: {r}\n\nhint: check [smtp] username and the password source",
                self.host
            )))
        }
    }

    /// AUTH PLAIN (preferred) or LOGIN; returns the final reply.
    fn auth_exchange(&mut self, user: &str, password: &str, plain: &str) -> Result<Reply, ConnectError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let host = self.host.clone();
        let io_err = |e: io::Error| ConnectError::io(&format!("{host}: AUTH failed"), &e);
        if self.caps.auth_plain {
            return self.command(&format!("AUTH PLAIN {plain}\r\n")).map_err(io_err);
        }
        if !self.caps.auth_login {
            return Err(ConnectError::Refused(format!(
                "{} offers no AUTH PLAIN or LOGIN, but a username is configured",
                self.host
            )));
        }
        for line in ["AUTH LOGIN".to_string(), b64(user)] {
            let r = self.command(&format!("{line}\r\n")).map_err(io_err)?;
            if r.code != 334 {
                return Ok(r);
            }
        }
        self.command(&format!("{}\r\n", b64(password))).map_err(io_err)
    }

    /// Sends one letter. `before_body` runs after the server's `354` and
    /// before the body is written: the ledger commits `sending` there, so a
    /// letter recorded `sending` (later `unknown`) really was about to go.
    /// Its error stops the letter (never sent) and is returned.
    // NOTE: claiming right after the pipelined MAIL/RCPT/DATA would overlap
    // the fsync with the server's replies (+35% letters/s on loopback) but
    // turned 18 of 20 kill -9 trials' in-flight letters into `unknown`
    // letters the server never had; on a real network the gain is nil.
    pub fn deliver(&mut self, built: &Built, before_body: impl FnOnce() -> Result<()>) -> Result<Delivery> {
        self.letters += 1;
        let lost = |this: &mut Self, e: io::Error, handed_over: bool| {
            this.usable = false;
            this.stream = Stream::Closed;
            Ok(Delivery::Lost {
                reason: describe_io(&e),
                handed_over,
            })
        };
        let body_param = if self.caps.eightbit { " BODY=8BITMIME" } else { "" };
        let mut commands = vec![format!("MAIL FROM:<{}>{body_param}\r\n", built.from)];
        commands.extend(built.recipients.iter().map(|r| format!("RCPT TO:<{r}>\r\n")));
        commands.push("DATA\r\n".into());

        let replies = if self.caps.pipelining {
            match self
                .send_all(&commands.concat())
                .and_then(|()| self.replies(commands.len()))
            {
                Ok(r) => r,
                Err(e) => return lost(self, e, false),
            }
        } else {
            let mut out = Vec::with_capacity(commands.len());
            for (i, c) in commands.iter().enumerate() {
                let r = match self.command(c) {
                    Ok(r) => r,
                    Err(e) => return lost(self, e, false),
                };
                let stop = !r.is_positive() && (i == 0 || i == 1);
                out.push(r);
                if stop {
                    break;
                }
            }
            out
        };
        if replies.iter().any(|r| r.code == 421) {
            self.usable = false;
        }
        // Every RCPT after the target's is a copy (Cc, Bcc): a refused copy
        // does not stop the letter, it is reported with it.
        let copies_end = replies.len().min(commands.len() - 1);
        let refused: Vec<RefusedCopy> = built
            .recipients
            .iter()
            .skip(1)
            .zip(replies.get(2..copies_end).unwrap_or_default())
            .filter(|(_, r)| !r.is_positive())
            .map(|(to, r)| RefusedCopy {
                recipient: to.to_string(),
                reply: r.clone(),
            })
            .collect();
        let mail = &replies[0];
        let target = replies.get(1);
        let data = replies.get(commands.len() - 1);
        // Without PIPELINING we stop at a refused MAIL or target RCPT, so a
        // missing DATA reply always comes with a refusal here.
        let refusal = if mail.is_positive() {
            target
                .filter(|t| !t.is_positive())
                .or(data.filter(|d| d.code != 354))
        } else {
            Some(mail)
        };
        if let Some(reply) = refusal.cloned() {
            if data.is_some_and(|d| d.code == 354) {
                // The server waits for a body we will not send: drop the session.
                self.usable = false;
                self.stream = Stream::Closed;
            } else if self.usable {
                self.rset();
            }
            return Ok(Delivery::Rejected {
                reply,
                handed_over: false,
            });
        }
        if let Err(e) = before_body() {
            self.usable = false;
            self.stream = Stream::Closed;
            return Err(e);
        }
        // NOTE: if writing fails, the final ".\r\n" (the last bytes) did not
        // all leave this process, so the server cannot have accepted it: safe
        // to retry. Only a missing reply after a complete write is unknown.
        if let Err(e) = self.send_all_bytes(&dot_stuff(&built.bytes)) {
            return lost(self, e, false);
        }
        self.awaiting_outcome = true;
        let outcome = self.reply();
        self.awaiting_outcome = false;
        match outcome {
            Ok(r) if r.is_positive() => Ok(Delivery::Accepted { reply: r, refused }),
            Ok(r) => {
                if r.code == 421 {
                    self.usable = false;
                }
                Ok(Delivery::Rejected {
                    reply: r,
                    handed_over: true,
                })
            }
            Err(e) => lost(self, e, true),
        }
    }

    /// Ends the session politely.
    pub fn quit(mut self) {
        if self.usable {
            let _ = self.command("QUIT\r\n");
        }
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }

    fn rset(&mut self) {
        match self.command("RSET\r\n") {
            Ok(r) if r.is_positive() => {}
            _ => self.usable = false,
        }
    }

    fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send_all(line)?;
        self.reply()
    }

    fn send_all(&mut self, text: &str) -> io::Result<()> {
        self.send_all_bytes(text.as_bytes())
    }

    /// Writes `bytes`, each [`WRITE_CHUNK`] within the timeout.
    fn send_all_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(WRITE_CHUNK) {
            let deadline = Instant::now() + self.timeout;
            let mut rest = chunk;
            while !rest.is_empty() {
                self.set_timeout(deadline, false)?;
                match self.stream.write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(timeout_as(e, "the server did not take the data in time")),
                }
            }
            self.set_timeout(deadline, false)?;
            self.stream
                .flush()
                .map_err(|e| timeout_as(e, "the server did not take the data in time"))?;
        }
        Ok(())
    }

    /// Bounds the next socket reads and writes by what is left until
    /// `deadline` (both: TLS may write while reading). `read` names the error.
    fn set_timeout(&self, deadline: Instant, read: bool) -> io::Result<()> {
        let left = until(deadline).map_err(|e| {
            let what = if read {
                "the server did not reply in time"
            } else {
                "the server did not take the data in time"
            };
            timeout_as(e, what)
        })?;
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
            Stream::Closed => return Err(io::ErrorKind::NotConnected.into()),
        };
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))
    }

    fn replies(&mut self, n: usize) -> io::Result<Vec<Reply>> {
        (0..n).map(|_| self.reply()).collect()
    }

    /// Reads one (possibly multi-line) reply: its text is what may be shown
    /// and stored (see [`Connection::shown`]), cut at [`MAX_SHOWN`].
    fn reply(&mut self) -> io::Result<Reply> {
        let (code, lines) = self.read_reply()?;
        Ok(joined(code, &lines))
    }

    /// Reads one reply as its code and lines. The whole reply must arrive
    /// within the timeout: a server trickling a byte at a time does not
    /// reset it (Postfix's `smtp_per_record_deadline`).
    fn read_reply(&mut self) -> io::Result<(u16, Vec<String>)> {
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

    /// Reads one line before `deadline`, as [`Connection::shown`] text.
    fn line(&mut self, deadline: Instant) -> io::Result<String> {
        loop {
            if let Some(i) = self.rbuf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.rbuf.drain(..=i).collect();
                return Ok(self.shown(&raw));
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply line too long"));
            }
            let mut chunk = [0u8; 4096];
            self.set_timeout(deadline, true)?;
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
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
    fn shown(&self, raw: &[u8]) -> String {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\r', '\n']);
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        cap(&printable(&redact(text, &secrets)), MAX_SHOWN)
    }
}

/// A reply from its code and lines (joined with ` / `, cut at [`MAX_SHOWN`]).
fn joined(code: u16, lines: &[String]) -> Reply {
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
fn until(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// A socket timeout (`EAGAIN` on Linux: "Resource temporarily unavailable")
/// as a plain `timed out: WHAT` error; other errors unchanged.
fn timeout_as(e: io::Error, what: &str) -> io::Error {
    if is_timeout(&e) {
        io::Error::new(io::ErrorKind::TimedOut, format!("timed out: {what}"))
    } else {
        e
    }
}

/// A TLS client configuration trusting the web PKI plus `ca_file` (PEM),
/// as `[smtp]` does; for other servers mailer talks to (the bounce mailbox).
pub fn tls_client_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read ca_file `{}`", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("ca_file `{}` is not PEM certificates", ca.display()))?;
        if certs.is_empty() {
            anyhow::bail!("ca_file `{}` holds no certificate", ca.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("ca_file `{}`: bad certificate", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// Dot-stuffs a CRLF message and appends the terminator, in one buffer so it
/// leaves in one write.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
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

/// Replaces every occurrence of each secret with `(redacted)`.
fn redact(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 3)
        .fold(text.to_string(), |t, s| t.replace(s, "(redacted)"))
}

fn describe_io(e: &io::Error) -> String {
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

fn tls_error(host: &str, e: &io::Error) -> ConnectError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(why)) => ConnectError::Refused(certificate_error(host, why)),
        Some(other) => ConnectError::Refused(
            printable(&format!("TLS handshake with `{host}` failed: {other}")).into_owned(),
        ),
        None => ConnectError::io(&format!("TLS handshake with `{host}` failed"), e),
    }
}

/// What a rejected certificate means for the person at the keyboard.
fn certificate_error(host: &str, why: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match why {
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            let names: Vec<String> = match why {
                E::NotValidForNameContext { presented, .. } => presented
                    .iter()
                    // webpki writes each as `DnsName("mail.example.org")`.
                    .map(|p| {
                        let name = match (p.find('"'), p.rfind('"')) {
                            (Some(a), Some(b)) if a < b => &p[a + 1..b],
                            _ => p.as_str(),
                        };
                        // The certificate's names are the server's text.
                        format!("`{}`", printable(name))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let valid_for = if names.is_empty() {
                "it names no host".to_string()
            } else {
                format!("it is valid for {}", names.join(", "))
            };
            format!(
                "the certificate of `{host}` is for another name: {valid_for}, not `{host}`\n\n\
                 hint: set [smtp] host to the name your provider documents for its submission server"
            )
        }
        E::UnknownIssuer => format!(
            "the certificate of `{host}` is issued by an authority this machine does not trust \
             (not a public certificate authority)\n\n\
             hint: if the relay uses a private CA, set [smtp] ca_file to that CA's PEM certificate; \
             otherwise check [smtp] host: another server may be answering"
        ),
        E::Expired | E::ExpiredContext { .. } => format!(
            "the certificate of `{host}` has expired\n\n\
             hint: the relay's operator must renew it; check this machine's clock too"
        ),
        E::NotValidYet | E::NotValidYetContext { .. } => format!(
            "the certificate of `{host}` is not valid yet\n\n\
             hint: check this machine's clock and time zone"
        ),
        other => format!(
            "the certificate of `{host}` was rejected: {}",
            printable(&other.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_say_what_they_mean() {
        let wrong = rustls::CertificateError::NotValidForNameContext {
            expected: rustls_pki_types::ServerName::try_from("smtp.a.org").unwrap(),
            presented: vec!["DnsName(\"mail.b.org\")".into(), "DnsName(\"*.b.org\")".into()],
        };
        let text = certificate_error("smtp.a.org", &wrong);
        assert!(
            text.starts_with(
                "the certificate of `smtp.a.org` is for another name: it is valid for `mail.b.org`, `*.b.org`, not `smtp.a.org`"
            ),
            "{text}"
        );
        assert!(
            !text.contains("Context") && !text.contains("private CA"),
            "{text}"
        );
        let unknown = certificate_error("smtp.a.org", &rustls::CertificateError::UnknownIssuer);
        assert!(
            unknown.contains("issued by an authority this machine does not trust"),
            "{unknown}"
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("535 bad AGFsAHB3 pw", &["AGFsAHB3", "pw"]),
            "535 bad (redacted) pw"
        );
        assert_eq!(redact("535 bad hunter2!", &["hunter2"]), "535 bad (redacted)!");
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
        let conn = Connection {
            stream: Stream::Closed,
            rbuf: Vec::new(),
            caps: Caps::default(),
            letters: 0,
            usable: false,
            host: "relay".into(),
            last_used: Instant::now(),
            timeout: Duration::from_secs(1),
            secrets: vec!["AGEAaHVudGVyMg".into(), "aHVudGVyMg".into(), "hunter2".into()],
            awaiting_outcome: false,
        };
        assert_eq!(
            conn.shown(b"5x5 echo hunter2 AGEAaHVudGVyMg== aHVudGVyMg\x1b[2J\r\n"),
            "5x5 echo (redacted) (redacted)== (redacted)\\u{1b}[2J"
        );
        let long = conn.shown(&[b'x'; 3000]);
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
        assert!(r(554, "5.7.1 spam").is_permanent() && r(554, "5.7.1 spam").is_policy());
        assert!(!r(550, "5.1.1 no such user").is_policy());
    }
}
