//! A real, scriptable SMTP server on 127.0.0.1 for the `mailer` integration tests.
//!
//! `Server::start` binds an ephemeral port and serves each connection on its own
//! thread: plain, STARTTLS or implicit TLS (rustls, certificates from [`TestPki`]),
//! AUTH PLAIN/LOGIN, pipelining, MAIL/RCPT/DATA. Everything it reads is recorded
//! (with the connection number and whether it was read inside TLS), every accepted
//! message too, and a script hook can answer any step with a chosen reply, drop
//! the connection, stall, trickle a reply or write raw bytes, to imitate failing
//! or hostile relays. The server stops when dropped.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

static CA_SERIAL: AtomicUsize = AtomicUsize::new(0);

/// A test certificate authority plus a leaf for `localhost` and `127.0.0.1` signed by it.
/// Two `TestPki::new()` are unrelated: trust one, connect to a server using the other.
#[derive(Clone)]
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
    leaf_key: Vec<u8>,
    leaf_pem: String,
    leaf_key_pem: String,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Generates a fresh CA (ECDSA P-256) and a `localhost`/`127.0.0.1` server leaf.
    pub fn new() -> Self {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// Like [`TestPki::new`], with a server leaf valid for `names` only.
    pub fn for_names(names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A unique name per CA: with equal names a client trusting another TestPki
        // would report BadSignature instead of the realistic UnknownIssuer.
        let id = format!("{}-{}", std::process::id(), CA_SERIAL.fetch_add(1, SeqCst));
        ca.distinguished_name
            .push(DnType::CommonName, format!("mailer test CA {id}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("self-sign CA");
        let leaf_key = KeyPair::generate().expect("generate leaf key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf = CertificateParams::new(names.clone()).expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let leaf_cert = leaf.signed_by(&leaf_key, &ca).expect("sign leaf");
        Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            leaf_der: leaf_cert.der().clone(),
            leaf_key: leaf_key.serialize_der(),
            leaf_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    /// The CA certificate, PEM encoded (what `[smtp] ca_file` should contain).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server leaf certificate and its private key, PEM (for servers
    /// the tests run as separate programs, such as dovecot).
    pub fn leaf_pem(&self) -> (&str, &str) {
        (&self.leaf_pem, &self.leaf_key_pem)
    }

    /// The CA certificate, DER encoded (for a rustls `RootCertStore`).
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// Writes the CA certificate as PEM to `path`.
    pub fn write_ca_pem(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }

    /// A rustls server config (ring provider, TLS 1.2 and 1.3) serving the leaf.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.clone()));
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .expect("server certificate");
        Arc::new(config)
    }
}

/// How the server secures connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Clear text only; STARTTLS is not offered.
    Plain,
    /// Clear text greeting, STARTTLS advertised and honoured.
    StartTls,
    /// TLS from the first byte (port-465 style).
    ImplicitTls,
}

/// Where a session is when the script is asked; `conn` is the 1-based connection number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Before the 220 greeting.
    Greeting { conn: usize },
    /// An EHLO or HELO was read.
    Ehlo { conn: usize },
    /// STARTTLS was read (a `Reply` refuses the upgrade).
    StartTls { conn: usize },
    /// AUTH was read, before any challenge (a `Reply` replaces the whole exchange).
    Auth { conn: usize },
    /// MAIL FROM with its reverse-path (without angle brackets).
    Mail { conn: usize, from: String },
    /// RCPT TO with its forward-path; a non-2xx `Reply` rejects that recipient.
    Rcpt { conn: usize, to: String },
    /// DATA was read, before the 354.
    Data { conn: usize },
    /// The message's final "." was read; `nth` counts terminators server-wide from 1.
    Dot {
        conn: usize,
        message_id: Option<String>,
        nth: usize,
    },
}

impl Step {
    /// The 1-based number of the connection this step belongs to.
    pub fn conn(&self) -> usize {
        match self {
            Step::Greeting { conn }
            | Step::Ehlo { conn }
            | Step::StartTls { conn }
            | Step::Auth { conn }
            | Step::Mail { conn, .. }
            | Step::Rcpt { conn, .. }
            | Step::Data { conn }
            | Step::Dot { conn, .. } => *conn,
        }
    }
}

/// What the server does at a [`Step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Behave like a healthy server.
    Default,
    /// Send this reply line (no CRLF) instead. At `Dot`, a non-2xx reply means the
    /// message is not recorded in `received()`.
    Reply(String),
    /// Close the socket at once without replying. At `Dot` the message goes to
    /// `dropped_after_dot()`.
    Drop,
    /// Wait this long without replying, then close (like `Drop` for recording).
    Stall(Duration),
    /// Send this reply line (CRLF added) one byte every `Duration`, then close
    /// (like `Drop` for recording): a server that trickles.
    Trickle(String, Duration),
    /// Write these bytes exactly as given (no CRLF added), then close (like
    /// `Drop` for recording): partial lines, junk, raw control bytes.
    Raw(Vec<u8>),
}

impl Action {
    /// Shorthand for `Action::Reply(text.to_owned())`.
    pub fn reply(text: &str) -> Self {
        Action::Reply(text.to_owned())
    }
}

/// The script hook: called at every [`Step`], from the connection's thread.
pub type Script = Arc<dyn Fn(&Step) -> Action + Send + Sync>;

/// Server configuration; build with [`ServerOptions::new`] and the `with_*` helpers
/// or set the public fields directly.
#[derive(Clone)]
pub struct ServerOptions {
    /// Plain, STARTTLS or implicit TLS.
    pub security: Security,
    /// Certificates; a fresh [`TestPki`] is generated when `None`.
    pub pki: Option<TestPki>,
    /// `(username, password)` accepted by AUTH; `None` = AUTH not offered.
    pub auth: Option<(String, String)>,
    /// With `auth` set: MAIL before a successful AUTH gets `530 5.7.0`. Default true.
    pub require_auth: bool,
    /// Advertise and accept AUTH only inside TLS (`538 5.7.11` in clear). Default false.
    pub auth_after_tls: bool,
    /// Advertise PIPELINING. Default true.
    pub pipelining: bool,
    /// The SIZE limit advertised and enforced (MAIL SIZE= and after DATA). Default 10 MiB.
    pub size: usize,
    /// STARTTLS command-injection probe: sent in the same write as the 220, before TLS.
    pub inject_after_starttls: Option<String>,
    /// The fault script; default always answers `Action::Default`.
    pub script: Script,
    /// Socket read/write timeout. Default 30 s.
    pub timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self::new(Security::Plain)
    }
}

impl ServerOptions {
    /// Options for `security` with everything else at its default.
    pub fn new(security: Security) -> Self {
        Self {
            security,
            pki: None,
            auth: None,
            require_auth: true,
            auth_after_tls: false,
            pipelining: true,
            size: 10 * 1024 * 1024,
            inject_after_starttls: None,
            script: Arc::new(|_: &Step| Action::Default),
            timeout: Duration::from_secs(30),
        }
    }

    /// Requires AUTH with these credentials.
    pub fn with_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Uses these certificates instead of fresh ones.
    pub fn with_pki(mut self, pki: &TestPki) -> Self {
        self.pki = Some(pki.clone());
        self
    }

    /// Installs a fault script, e.g.
    /// `|s| match s { Step::Dot { nth, .. } if *nth <= 2 => Action::reply("451 4.3.0 Try again later"), _ => Action::Default }`.
    pub fn with_script(mut self, script: impl Fn(&Step) -> Action + Send + Sync + 'static) -> Self {
        self.script = Arc::new(script);
        self
    }
}

/// A message the server accepted (or received fully before a scripted drop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Connection number it came in on.
    pub conn: usize,
    /// The MAIL FROM reverse-path, without angle brackets.
    pub mail_from: String,
    /// Every accepted RCPT TO forward-path, in order.
    pub rcpt_to: Vec<String>,
    /// The message as sent, CRLF line ends kept, dot-stuffing removed, without the final ".".
    pub data: Vec<u8>,
    /// Whether the session was encrypted (STARTTLS done or implicit TLS).
    pub tls: bool,
    /// The AUTH username, if the session authenticated.
    pub authenticated_as: Option<String>,
}

impl Received {
    /// The Message-ID header value (trimmed, angle brackets kept), if any.
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID")
    }

    /// The first header called `name` (case-insensitive), unfolded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.data);
        let mut found: Option<String> = None;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(value) = found.as_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((key, value)) = line.split_once(':')
                && key.trim().eq_ignore_ascii_case(name)
            {
                found = Some(value.trim().to_owned());
            }
        }
        found
    }

    /// The message as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// One line the server read, CRLF stripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based connection number.
    pub conn: usize,
    /// Whether it was read inside TLS.
    pub tls: bool,
    /// The line, lossily decoded, without its line end.
    pub text: String,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    dropped: Vec<Received>,
    transcript: Vec<Line>,
    ahead: Vec<(usize, String)>,
}

struct Shared {
    opts: ServerOptions,
    tls: Arc<ServerConfig>,
    stop: AtomicBool,
    conns: AtomicUsize,
    active: AtomicUsize,
    dots: AtomicUsize,
    log: Mutex<Log>,
    streams: Mutex<Vec<(usize, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running test SMTP server; stops (and joins its threads) when dropped.
pub struct Server {
    addr: SocketAddr,
    pki: TestPki,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and starts serving in the background; returns at once.
    pub fn start(mut opts: ServerOptions) -> Server {
        let pki = opts.pki.take().unwrap_or_default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            opts,
            tls: pki.server_config(),
            stop: AtomicBool::new(false),
            conns: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            dots: AtomicUsize::new(0),
            log: Mutex::default(),
            streams: Mutex::default(),
            threads: Mutex::default(),
        });
        let sh = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("smtp-accept".into())
            .spawn(move || accept_loop(&listener, &sh))
            .expect("spawn accept thread");
        Server {
            addr,
            pki,
            shared,
            accept: Some(accept),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificates it serves (write `ca_pem()` to a file for the client).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// Messages accepted with a 2xx after the final ".", in order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.log).received.clone()
    }

    /// Messages fully received whose connection was then dropped/stalled without a reply.
    pub fn dropped_after_dot(&self) -> Vec<Received> {
        lock(&self.shared.log).dropped.clone()
    }

    /// For each final "." (`nth`, server-wide from 1): what the client had
    /// already sent after it, read in the same flight, before the server
    /// replied to it (RFC 2920 pipelining across messages).
    pub fn ahead_of_dot_replies(&self) -> Vec<(usize, String)> {
        lock(&self.shared.log).ahead.clone()
    }

    /// Every line read on every connection, in the order read.
    pub fn transcript(&self) -> Vec<Line> {
        lock(&self.shared.log).transcript.clone()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.conns.load(SeqCst)
    }

    /// Number of DATA terminators (".") read so far, whatever the reply.
    pub fn dots_seen(&self) -> usize {
        self.shared.dots.load(SeqCst)
    }

    /// Waits until no connection is open (e.g. after the client exited); false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.active.load(SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
        for (_, stream) in lock(&self.shared.streams).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for handle in threads {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, sh: &Arc<Shared>) {
    for stream in listener.incoming() {
        if sh.stop.load(SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let conn = sh.conns.fetch_add(1, SeqCst) + 1;
        sh.active.fetch_add(1, SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&sh.streams).push((conn, clone));
        }
        let sh2 = Arc::clone(sh);
        let spawned = thread::Builder::new()
            .name(format!("smtp-conn-{conn}"))
            .spawn(move || serve(stream, conn, &sh2));
        match spawned {
            Ok(handle) => lock(&sh.threads).push(handle),
            Err(_) => {
                sh.active.fetch_sub(1, SeqCst);
            }
        }
    }
}

/// Marks the connection closed even if the script panics.
struct Closing<'a>(&'a Shared, usize);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut streams = lock(&self.0.streams);
        if let Some(i) = streams.iter().position(|(c, _)| *c == self.1) {
            let (_, stream) = streams.swap_remove(i);
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.0.active.fetch_sub(1, SeqCst);
    }
}

fn serve(stream: TcpStream, conn: usize, sh: &Arc<Shared>) {
    let _closing = Closing(sh, conn);
    let _ = stream.set_read_timeout(Some(sh.opts.timeout));
    let _ = stream.set_write_timeout(Some(sh.opts.timeout));
    let _ = stream.set_nodelay(true);
    let implicit = sh.opts.security == Security::ImplicitTls;
    let io = if implicit {
        let Ok(tls) = ServerConnection::new(Arc::clone(&sh.tls)) else {
            return;
        };
        Conn::Tls(Box::new(StreamOwned::new(tls, stream)))
    } else {
        Conn::Plain(stream)
    };
    let mut session = Session {
        sh: Arc::clone(sh),
        conn,
        io: BufReader::new(io),
        tls: implicit,
        ehlo: false,
        user: None,
        from: None,
        rcpts: Vec::new(),
    };
    let _ = session.run();
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
    Closed,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Closed => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Closed => Ok(()),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by script")
}

struct Session {
    sh: Arc<Shared>,
    conn: usize,
    io: BufReader<Conn>,
    tls: bool,
    ehlo: bool,
    user: Option<String>,
    from: Option<String>,
    rcpts: Vec<String>,
}

impl Session {
    fn run(&mut self) -> io::Result<()> {
        let greeting = self.scripted(&Step::Greeting { conn: self.conn })?;
        self.send(
            greeting
                .as_deref()
                .unwrap_or("220 localhost ESMTP mailer test server"),
        )?;
        while let Some(line) = self.read_line()? {
            let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let arg = arg.trim();
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" => self.hello(arg, true)?,
                "HELO" => self.hello(arg, false)?,
                "STARTTLS" => self.starttls()?,
                "AUTH" => self.auth(arg)?,
                "MAIL" => self.mail(arg)?,
                "RCPT" => self.rcpt(arg)?,
                "DATA" => self.data()?,
                "RSET" => {
                    self.reset();
                    self.send("250 2.0.0 Ok")?;
                }
                "NOOP" => self.send("250 2.0.0 Ok")?,
                "VRFY" => self.send("252 2.0.0 Cannot VRFY user")?,
                "QUIT" => {
                    self.send("221 2.0.0 Bye")?;
                    if let Conn::Tls(s) = self.io.get_mut() {
                        s.conn.send_close_notify();
                        s.flush()?;
                    }
                    return Ok(());
                }
                _ => self.send("500 5.5.2 Command not recognized")?,
            }
        }
        Ok(())
    }

    fn send(&mut self, reply: &str) -> io::Result<()> {
        let io = self.io.get_mut();
        io.write_all(format!("{reply}\r\n").as_bytes())?;
        io.flush()
    }

    /// Reads one raw line (line end kept), recording it; `None` at EOF.
    fn read_raw(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        (&mut self.io).take(1 << 20).read_until(b'\n', &mut buf)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(trim_eol(&buf)).into_owned();
        let line = Line {
            conn: self.conn,
            tls: self.tls,
            text,
        };
        lock(&self.sh.log).transcript.push(line);
        Ok(Some(buf))
    }

    fn read_line(&mut self) -> io::Result<Option<String>> {
        let raw = self.read_raw()?;
        Ok(raw.map(|b| String::from_utf8_lossy(trim_eol(&b)).into_owned()))
    }

    fn scripted(&mut self, step: &Step) -> io::Result<Option<String>> {
        match (self.sh.opts.script)(step) {
            Action::Default => Ok(None),
            Action::Reply(reply) => Ok(Some(reply)),
            action => {
                self.misbehave(action);
                Err(closed())
            }
        }
    }

    /// Carries out `Drop`, `Stall`, `Trickle` or `Raw`; the caller then closes.
    fn misbehave(&mut self, action: Action) {
        match action {
            Action::Stall(d) => self.stall(d),
            Action::Trickle(reply, every) => {
                for byte in format!("{reply}\r\n").bytes() {
                    let io = self.io.get_mut();
                    if self.sh.stop.load(SeqCst) || io.write_all(&[byte]).and_then(|()| io.flush()).is_err() {
                        return;
                    }
                    self.stall(every);
                }
            }
            Action::Raw(bytes) => {
                let io = self.io.get_mut();
                let _ = io.write_all(&bytes).and_then(|()| io.flush());
            }
            Action::Default | Action::Reply(_) | Action::Drop => {}
        }
    }

    fn stall(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline && !self.sh.stop.load(SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.rcpts.clear();
    }

    fn hello(&mut self, arg: &str, extended: bool) -> io::Result<()> {
        if arg.is_empty() {
            return self.send("501 5.5.4 Syntax: EHLO hostname");
        }
        self.reset();
        self.ehlo = true;
        if let Some(reply) = self.scripted(&Step::Ehlo { conn: self.conn })? {
            return self.send(&reply);
        }
        if !extended {
            return self.send("250 localhost");
        }
        let o = &self.sh.opts;
        let caps = [
            Some(format!("localhost greets {arg}")),
            o.pipelining.then(|| "PIPELINING".to_owned()),
            Some("8BITMIME".to_owned()),
            Some("ENHANCEDSTATUSCODES".to_owned()),
            Some(format!("SIZE {}", o.size)),
            (o.security == Security::StartTls && !self.tls).then(|| "STARTTLS".to_owned()),
            (o.auth.is_some() && (self.tls || !o.auth_after_tls)).then(|| "AUTH PLAIN LOGIN".to_owned()),
        ];
        let caps: Vec<String> = caps.into_iter().flatten().collect();
        let text: Vec<String> = caps
            .iter()
            .enumerate()
            .map(|(i, c)| format!("250{}{c}", if i + 1 == caps.len() { ' ' } else { '-' }))
            .collect();
        self.send(&text.join("\r\n"))
    }

    fn starttls(&mut self) -> io::Result<()> {
        if self.sh.opts.security != Security::StartTls || self.tls {
            return self.send("503 5.5.1 STARTTLS not available");
        }
        if let Some(reply) = self.scripted(&Step::StartTls { conn: self.conn })? {
            return self.send(&reply);
        }
        let mut ready = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
        if let Some(inject) = &self.sh.opts.inject_after_starttls {
            ready.extend_from_slice(inject.as_bytes());
        }
        // Clear text the client pipelined after STARTTLS is logged (tls: false), then discarded.
        let pipelined = String::from_utf8_lossy(self.io.buffer()).into_owned();
        for text in pipelined.lines() {
            let line = Line {
                conn: self.conn,
                tls: false,
                text: text.to_owned(),
            };
            lock(&self.sh.log).transcript.push(line);
        }
        let Conn::Plain(mut tcp) = std::mem::replace(&mut self.io, BufReader::new(Conn::Closed)).into_inner()
        else {
            return Err(closed());
        };
        tcp.write_all(&ready)?;
        let tls = ServerConnection::new(Arc::clone(&self.sh.tls)).map_err(io::Error::other)?;
        // The handshake happens on the first read of the next command.
        self.io = BufReader::new(Conn::Tls(Box::new(StreamOwned::new(tls, tcp))));
        self.tls = true;
        self.ehlo = false;
        self.user = None;
        self.reset();
        Ok(())
    }

    /// Reads one SASL response (or takes the initial one); `None` = a 501 was sent.
    fn sasl(&mut self, initial: Option<&str>, challenge: &str) -> io::Result<Option<Vec<u8>>> {
        let text = if let Some(text) = initial {
            text.to_owned()
        } else {
            self.send(challenge)?;
            self.read_line()?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?
        };
        match text.trim() {
            "*" => self.send("501 5.0.0 Authentication cancelled").map(|()| None),
            "=" => Ok(Some(Vec::new())),
            t => match b64decode(t) {
                Some(bytes) => Ok(Some(bytes)),
                None => self.send("501 5.5.2 Cannot decode response").map(|()| None),
            },
        }
    }

    fn auth(&mut self, arg: &str) -> io::Result<()> {
        let Some((user, pass)) = self.sh.opts.auth.clone() else {
            return self.send("503 5.5.1 AUTH not available");
        };
        if !self.ehlo {
            return self.send("503 5.5.1 Send EHLO first");
        }
        if self.user.is_some() {
            return self.send("503 5.5.1 Already authenticated");
        }
        if self.sh.opts.auth_after_tls && !self.tls {
            return self.send("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        if let Some(reply) = self.scripted(&Step::Auth { conn: self.conn })? {
            return self.send(&reply);
        }
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        let (got_user, got_pass) = match mechanism.as_str() {
            "PLAIN" => {
                let Some(resp) = self.sasl(initial, "334 ")? else {
                    return Ok(());
                };
                let parts: Vec<&[u8]> = resp.split(|&b| b == 0).collect();
                let [_authzid, authcid, password] = parts.as_slice() else {
                    return self.send("501 5.5.2 Malformed PLAIN response");
                };
                (authcid.to_vec(), password.to_vec())
            }
            "LOGIN" => {
                let Some(u) = self.sasl(initial, "334 VXNlcm5hbWU6")? else {
                    return Ok(());
                };
                let Some(p) = self.sasl(None, "334 UGFzc3dvcmQ6")? else {
                    return Ok(());
                };
                (u, p)
            }
            _ => return self.send("504 5.5.4 Unrecognized authentication type"),
        };
        if got_user == user.as_bytes() && got_pass == pass.as_bytes() {
            self.user = Some(user);
            self.send("235 2.7.0 Authentication successful")
        } else {
            self.send("535 5.7.8 Authentication credentials invalid")
        }
    }

    fn mail(&mut self, arg: &str) -> io::Result<()> {
        let o = &self.sh.opts;
        if !self.ehlo {
            return self.send("503 5.5.1 Send EHLO first");
        }
        if o.auth.is_some() && o.require_auth && self.user.is_none() {
            return self.send("530 5.7.0 Authentication required");
        }
        if self.from.is_some() {
            return self.send("503 5.5.1 Nested MAIL command");
        }
        let Some((from, params)) = path_arg(arg, "FROM:") else {
            return self.send("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let size = params.split_whitespace().find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.eq_ignore_ascii_case("SIZE")
                .then(|| v.parse::<usize>().ok())
                .flatten()
        });
        if size.is_some_and(|s| s > o.size) {
            return self.send("552 5.3.4 Message size exceeds fixed limit");
        }
        let step = Step::Mail {
            conn: self.conn,
            from: from.clone(),
        };
        if let Some(reply) = self.scripted(&step)? {
            return self.send(&reply);
        }
        self.from = Some(from);
        self.send("250 2.1.0 Ok")
    }

    fn rcpt(&mut self, arg: &str) -> io::Result<()> {
        if self.from.is_none() {
            return self.send("503 5.5.1 Need MAIL command");
        }
        let Some((to, _)) = path_arg(arg, "TO:") else {
            return self.send("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        let reply = self.scripted(&Step::Rcpt {
            conn: self.conn,
            to: to.clone(),
        })?;
        let reply = reply.unwrap_or_else(|| "250 2.1.5 Ok".into());
        if reply.starts_with('2') {
            self.rcpts.push(to);
        }
        self.send(&reply)
    }

    fn data(&mut self) -> io::Result<()> {
        if self.from.is_none() || self.rcpts.is_empty() {
            return self.send("503 5.5.1 Need RCPT command");
        }
        if let Some(reply) = self.scripted(&Step::Data { conn: self.conn })? {
            if !reply.starts_with('3') {
                return self.send(&reply);
            }
            self.send(&reply)?;
        } else {
            self.send("354 End data with <CR><LF>.<CR><LF>")?;
        }
        let mut data = Vec::new();
        loop {
            let Some(raw) = self.read_raw()? else {
                return Ok(());
            };
            if trim_eol(&raw) == b"." && raw.ends_with(b"\n") {
                break;
            }
            data.extend_from_slice(raw.strip_prefix(b".").unwrap_or(&raw));
        }
        let nth = self.sh.dots.fetch_add(1, SeqCst) + 1;
        let ahead = String::from_utf8_lossy(self.io.buffer()).into_owned();
        lock(&self.sh.log).ahead.push((nth, ahead));
        let msg = Received {
            conn: self.conn,
            mail_from: self.from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpts),
            data,
            tls: self.tls,
            authenticated_as: self.user.clone(),
        };
        let step = Step::Dot {
            conn: self.conn,
            message_id: msg.message_id(),
            nth,
        };
        let (reply, keep) = match (self.sh.opts.script)(&step) {
            Action::Default if msg.data.len() > self.sh.opts.size => {
                ("552 5.3.4 Message size exceeds fixed limit".to_owned(), false)
            }
            Action::Default => (format!("250 2.0.0 Ok: queued as {nth}"), true),
            Action::Reply(reply) => {
                let ok = reply.starts_with('2');
                (reply, ok)
            }
            action => {
                lock(&self.sh.log).dropped.push(msg);
                self.misbehave(action);
                return Err(closed());
            }
        };
        if keep {
            lock(&self.sh.log).received.push(msg);
        }
        self.send(&reply)
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses `FROM:<addr> params` (keyword case-insensitive) into `(addr, params)`.
fn path_arg<'a>(arg: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start().strip_prefix('<')?;
    let (addr, params) = rest.split_once('>')?;
    Some((addr.to_owned(), params.trim()))
}

fn b64decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = ((acc << 6) | u32::from(v)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits).to_le_bytes()[0]);
        }
    }
    Some(out)
}
