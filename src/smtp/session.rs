//! An SMTP session on std sockets and rustls: TCP, implicit TLS, STARTTLS
//! (refusing bytes injected before the handshake), AUTH (only inside TLS),
//! then letters, MAIL/RCPT/DATA pipelined when the server offers it. The
//! bytes themselves are `wire`'s; how each letter ended is `attempt`'s.

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
use crate::smtp::attempt::{Attempt, End, RefusedCopy, classify};
use crate::smtp::wire::{Reply, Timed, Wire, describe_io, dot_stuff, is_timeout, joined, timeout_as, until};
use crate::smtp::{Dialer, Envelope, Session};
use crate::ui::printable;

/// Letters per connection before a fresh one (relays often cap this).
const LETTERS_PER_CONNECTION: usize = 100;

/// Why a connection could not be set up. Each stops the run.
#[derive(Debug)]
pub(crate) enum ConnectError {
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

impl std::error::Error for ConnectError {}

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

/// Everything needed to open connections, built once per run.
#[derive(Clone)]
pub(crate) struct Connector {
    smtp: Smtp,
    tls: Arc<ClientConfig>,
    hello: String,
}

impl Connector {
    /// Prepares TLS roots (web PKI plus `ca_file`).
    pub(crate) fn new(smtp: &Smtp) -> Result<Connector> {
        let tls = tls_client_config(smtp.ca_file.as_deref())?;
        let hello = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(char::is_whitespace))
            .unwrap_or_else(|| "localhost".into());
        Ok(Connector {
            smtp: smtp.clone(),
            tls,
            hello,
        })
    }

    /// `host:port (SECURITY)` for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{}:{} ({})", self.smtp.host, self.smtp.port, self.smtp.security)
    }

    /// Connects, upgrades to TLS, greets and authenticates.
    pub(crate) fn connect(&self) -> Result<Connection, ConnectError> {
        let s = &self.smtp;
        let where_ = format!("{}:{}", s.host, s.port);
        let tcp = open_tcp(&s.host, s.port, s.timeout)?;
        let mut conn = Connection {
            wire: Wire::new(Stream::Plain(tcp), s.timeout),
            caps: Caps::default(),
            letters: 0,
            usable: true,
            host: s.host.clone(),
            primed: None,
        };
        if s.security == Security::Tls {
            conn.upgrade(&self.tls)?;
        }
        let greeting = conn
            .wire
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
            let r = conn.wire.command("STARTTLS\r\n").map_err(|e| {
                match ConnectError::io(&format!("{where_}: STARTTLS"), &e) {
                    timed_out @ ConnectError::TimedOut(_) => timed_out,
                    other => ConnectError::Refused(other.to_string()),
                }
            })?;
            if r.code != 220 {
                return Err(ConnectError::Refused(format!("{where_} refused STARTTLS: {r}")));
            }
            if !conn.wire.rbuf.is_empty() {
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
            if !conn.wire.stream.is_tls() {
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

impl Dialer for Connector {
    fn connect(&self) -> Result<Box<dyn Session>, ConnectError> {
        Connector::connect(self).map(|c| Box::new(c) as Box<dyn Session>)
    }

    fn describe(&self) -> String {
        Connector::describe(self)
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

    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(&s.sock),
            Stream::Closed => None,
        }
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

impl Timed for Stream {
    fn limit(&self, left: Duration) -> io::Result<()> {
        let tcp = self.tcp().ok_or(io::ErrorKind::NotConnected)?;
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))
    }
}

/// One open SMTP session, reused for many letters.
pub(crate) struct Connection {
    wire: Wire<Stream>,
    caps: Caps,
    letters: usize,
    usable: bool,
    host: String,
    /// The next letter's envelope went with the last body (see [`Session::send`]).
    primed: Option<Primed>,
}

/// A letter whose MAIL, RCPT and DATA went in the previous letter's
/// flight. Their replies are read when that letter is sent, so the previous
/// letter's outcome is recorded first. (After a `354` the server waits for
/// its body.)
struct Primed {
    message_id: String,
    /// Commands sent (MAIL, each RCPT, DATA).
    sent: usize,
}

impl Connection {
    /// Whether another letter may go on this connection.
    fn is_usable(&self) -> bool {
        self.usable && self.letters < LETTERS_PER_CONNECTION
    }

    /// Whether the server is still there: a session it closed while idle
    /// (EOF, or an unsolicited `421`) is replaced before a letter is
    /// risked on it. Never blocks; a connection used in the last 100 ms is
    /// taken as alive without a system call.
    fn is_alive(&self) -> bool {
        if self.wire.last_used.elapsed() < Duration::from_millis(100) {
            return !matches!(self.wire.stream, Stream::Closed);
        }
        let Some(tcp) = self.wire.stream.tcp() else {
            return false;
        };
        if !self.wire.rbuf.is_empty() || tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let quiet = matches!(tcp.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        tcp.set_nonblocking(false).is_ok() && quiet
    }

    /// Whether the server offered PIPELINING.
    pub(crate) fn pipelining(&self) -> bool {
        self.caps.pipelining
    }

    /// Whether the session is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        self.wire.stream.is_tls()
    }

    fn upgrade(&mut self, tls: &Arc<ClientConfig>) -> Result<(), ConnectError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|e| {
            ConnectError::Refused(format!("`{}` is not a valid TLS server name: {e}", self.host))
        })?;
        let Stream::Plain(mut tcp) = std::mem::replace(&mut self.wire.stream, Stream::Closed) else {
            return Err(ConnectError::Refused("TLS requested twice".into()));
        };
        let mut client = ClientConnection::new(Arc::clone(tls), name)
            .map_err(|e| ConnectError::Refused(format!("TLS setup: {e}")))?;
        // One deadline for the whole handshake, however slowly its bytes come.
        let deadline = Instant::now() + self.wire.timeout;
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
        self.wire.rbuf.clear();
        self.wire.stream = Stream::Tls(Box::new(StreamOwned::new(client, tcp)));
        // The handshake set the socket's timeouts itself.
        self.wire.forget_bound();
        Ok(())
    }

    fn ehlo(&mut self, hello: &str) -> Result<(), ConnectError> {
        let sent = self.wire.send(format!("EHLO {hello}\r\n").as_bytes());
        let (code, lines) = sent
            .and_then(|()| self.wire.read_reply())
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
        let mut secrets = vec![
            password.to_string(),
            unpadded(password),
            unpadded(&format!("\0{user}\0{password}")),
            unpadded(&format!("{user}\0{user}\0{password}")),
            // Hex, as a debugging relay may print bytes (case is ignored).
            password.bytes().fold(String::new(), |mut hex, b| {
                let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
                hex
            }),
        ];
        // Longest first: the password's base64 is the tail of the PLAIN blob's.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.wire.secrets = secrets;
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
            return self
                .wire
                .command(&format!("AUTH PLAIN {plain}\r\n"))
                .map_err(io_err);
        }
        if !self.caps.auth_login {
            return Err(ConnectError::Refused(format!(
                "{} offers no AUTH PLAIN or LOGIN, but a username is configured",
                self.host
            )));
        }
        for line in ["AUTH LOGIN".to_string(), b64(user)] {
            let r = self.wire.command(&format!("{line}\r\n")).map_err(io_err)?;
            if r.code != 334 {
                return Ok(r);
            }
        }
        self.wire
            .command(&format!("{}\r\n", b64(password)))
            .map_err(io_err)
    }

    /// The connection failed: it is closed, and the letter is classified by
    /// whether its body went.
    fn lost(&mut self, e: &io::Error, body_went: bool) -> Attempt {
        self.close();
        classify(End::Lost(describe_io(e)), body_went, Vec::new())
    }

    fn close(&mut self) {
        self.usable = false;
        self.wire.stream = Stream::Closed;
    }

    /// A letter's MAIL, one RCPT per recipient, and DATA.
    fn commands(&self, built: &Envelope) -> Vec<String> {
        let body_param = if self.caps.eightbit { " BODY=8BITMIME" } else { "" };
        let mut commands = vec![format!("MAIL FROM:<{}>{body_param}\r\n", built.from)];
        commands.extend(built.recipients.iter().map(|r| format!("RCPT TO:<{r}>\r\n")));
        commands.push("DATA\r\n".into());
        commands
    }

    /// The envelope: in one write with PIPELINING, else one command at a
    /// time, stopping at a refused MAIL or target RCPT.
    fn envelope(&mut self, built: &Built) -> io::Result<(usize, Vec<Reply>)> {
        let commands = self.commands(&Envelope::from(built));
        if self.caps.pipelining {
            self.wire.send(commands.concat().as_bytes())?;
            return Ok((commands.len(), self.wire.replies(commands.len())?));
        }
        let mut out = Vec::with_capacity(commands.len());
        for (i, c) in commands.iter().enumerate() {
            let r = self.wire.command(c)?;
            let stop = !r.is_positive() && (i == 0 || i == 1);
            out.push(r);
            if stop {
                break;
            }
        }
        Ok((commands.len(), out))
    }

    /// Sends one letter (see [`Session::send`]).
    fn deliver(
        &mut self,
        built: &Built,
        before_body: &mut dyn FnMut() -> Result<Option<Envelope>>,
    ) -> Result<Attempt> {
        self.letters += 1;
        let (sent, replies) = match self.primed.take() {
            // Lost here, the letter's attempt was lost before its body.
            Some(p) if p.message_id == built.message_id => match self.wire.replies(p.sent) {
                Ok(replies) => (p.sent, replies),
                Err(e) => return Ok(self.lost(&e, false)),
            },
            // The server waits for another letter's body: this one must not
            // become it. (The engine quits such a session first.)
            Some(_) => {
                self.close();
                let why = "the session was waiting for another letter".to_string();
                return Ok(classify(End::Lost(why), false, Vec::new()));
            }
            None => match self.envelope(built) {
                Ok(r) => r,
                Err(e) => return Ok(self.lost(&e, false)),
            },
        };
        if replies.iter().any(|r| r.code == 421) {
            self.usable = false;
        }
        // Every RCPT after the target's is a copy (Cc, Bcc): a refused copy
        // does not stop the letter, it is reported with it.
        let copies_end = replies.len().min(sent - 1);
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
        let data = replies.get(sent - 1);
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
                self.close();
            } else if self.usable {
                self.rset();
            }
            return Ok(classify(End::Reply(reply), false, Vec::new()));
        }
        let next = match before_body() {
            Ok(next) => next,
            Err(e) => {
                self.close();
                return Err(e);
            }
        };
        // The next letter's envelope rides with this body (RFC 2920 §3.1).
        let ahead =
            next.filter(|_| self.caps.pipelining && self.usable && self.letters < LETTERS_PER_CONNECTION);
        let mut flight = dot_stuff(&built.bytes);
        let body_len = flight.len();
        let ahead = ahead.map(|n| {
            let commands = self.commands(&n);
            flight.extend_from_slice(commands.concat().as_bytes());
            (n, commands.len())
        });
        // NOTE: if writing fails before the body's final ".\r\n" all left
        // this process, the server cannot have accepted it: safe to retry.
        // Only a missing reply after the dot left is unknown.
        let mut written = 0;
        if let Err(e) = self.wire.send_counted(&flight, &mut written) {
            return Ok(self.lost(&e, ahead.is_some() && written >= body_len));
        }
        self.wire.awaiting_outcome = true;
        let outcome = self.wire.reply();
        self.wire.awaiting_outcome = false;
        match outcome {
            Ok(r) => {
                if r.code == 421 {
                    self.usable = false;
                } else if let Some((next, sent)) = ahead {
                    self.primed = Some(Primed {
                        message_id: next.message_id,
                        sent,
                    });
                }
                Ok(classify(End::Reply(r), true, refused))
            }
            Err(e) => Ok(self.lost(&e, true)),
        }
    }

    fn rset(&mut self) {
        match self.wire.command("RSET\r\n") {
            Ok(r) if r.is_positive() => {}
            _ => self.usable = false,
        }
    }

    /// Ends the session politely.
    pub(crate) fn quit(mut self) {
        // A primed session's server may be reading a body: a QUIT would
        // become its text. Closing without the final dot discards it.
        if self.usable && self.primed.is_none() {
            let _ = self.wire.command("QUIT\r\n");
        }
        if let Stream::Tls(s) = &mut self.wire.stream {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

impl Session for Connection {
    fn is_ready(&self) -> bool {
        // A primed session is ready for its letter: `send` reads how its
        // envelope went (the replies, or that the server went away).
        self.primed.is_some() || (self.is_usable() && self.is_alive())
    }

    fn send(
        &mut self,
        letter: &Built,
        before_body: &mut dyn FnMut() -> Result<Option<Envelope>>,
    ) -> Result<Attempt> {
        self.deliver(letter, before_body)
    }

    fn primed(&self) -> Option<&str> {
        self.primed.as_ref().map(|p| p.message_id.as_str())
    }

    fn primed_replied(&self) -> bool {
        // Complete replies in the buffer: final lines (`250 …`, not `250-…`).
        self.primed.as_ref().is_some_and(|p| {
            let finals = self
                .wire
                .rbuf
                .split(|b| *b == b'\n')
                .rev()
                .skip(1)
                .filter(|line| line.get(3) != Some(&b'-'))
                .count();
            finals >= p.sent
        })
    }

    fn quit(self: Box<Self>) {
        Connection::quit(*self);
    }
}

/// A TLS client configuration trusting the web PKI plus `ca_file` (PEM),
/// as `[smtp]` does; also for the other servers mailer talks to (the bounce
/// mailbox).
pub(crate) fn tls_client_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>> {
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
}
