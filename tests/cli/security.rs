//! Transport security and sender identity over real sockets: TLS (STARTTLS and
//! implicit), AUTH, where the password may come from, `check --smtp`, DKIM
//! verified by an independent verifier (dkimpy), header injection end to end
//! and the ledger's file modes.
//!
//! Every `mailer` run here goes through [`Secrets::run`], which fails the test
//! if the SMTP password, or any base64 form AUTH would put it in, appears in
//! any byte of stdout or stderr.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use base64::Engine as _;

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Action, Line, Security, Server, ServerOptions, Step, TestPki};
use crate::support::wait::idle;

const USER: &str = "letters@org.example";
const PASSWORD: &str = "Tr0ub4dor&3-horse-Battery";
const WRONG_PASSWORD: &str = "Wr0ng-p4ss-Staple!";

/// How to install the independent DKIM verifier (Ed25519 needs `PyNaCl`).
const DKIMPY_INSTALL: &str =
    "python3 -m pip install 'dkimpy[ed25519]' (or apt-get install python3-dkim python3-nacl)";

// ---- helpers ----

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// The secrets a run must never print, in every form AUTH would carry them.
struct Secrets {
    needles: Vec<String>,
}

impl Secrets {
    /// `password` as configured for `user` (plus any other passwords involved).
    fn new(user: &str, passwords: &[&str]) -> Secrets {
        let mut needles = Vec::new();
        for pass in passwords {
            needles.push((*pass).to_string());
            // AUTH PLAIN: "\0user\0pass" (and with authzid = user), unpadded so
            // that the padded form matches too.
            needles.push(b64(format!("\0{user}\0{pass}").as_bytes()));
            needles.push(b64(format!("{user}\0{user}\0{pass}").as_bytes()));
            // AUTH LOGIN: the password alone.
            needles.push(b64(pass.as_bytes()));
        }
        Secrets { needles }
    }

    /// The default: the campaign user and [`PASSWORD`], plus [`WRONG_PASSWORD`].
    fn standard() -> Secrets {
        Secrets::new(USER, &[PASSWORD, WRONG_PASSWORD])
    }

    /// Runs `mailer ARGS` and asserts no secret appears in stdout or stderr.
    #[track_caller]
    fn run(&self, c: &Campaign, args: &[&str]) -> Run {
        let out = c.command(args).output().expect("run mailer");
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            for needle in &self.needles {
                assert!(
                    !contains(bytes, needle.as_bytes()),
                    "`mailer {}` leaked a secret ({needle:?}) on {stream}:\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(bytes)
                );
            }
        }
        Run::from(out)
    }

    /// Asserts no file under `dir` holds a secret (the ledger keeps server replies).
    #[track_caller]
    fn assert_not_in_files(&self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                self.assert_not_in_files(&path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for needle in &self.needles {
                assert!(
                    !contains(&bytes, needle.as_bytes()),
                    "{} holds a secret ({needle:?})",
                    path.display()
                );
            }
        }
    }

    /// Asserts nothing the server read in clear text is AUTH or holds a secret.
    #[track_caller]
    fn assert_nothing_in_clear(&self, server: &Server) {
        for line in commands(server).iter().filter(|l| !l.tls) {
            assert!(
                !is_auth(line),
                "AUTH read in clear text: {line:?}\n{}",
                show(server)
            );
        }
        for line in server.transcript().iter().filter(|l| !l.tls) {
            for needle in &self.needles {
                assert!(
                    !line.text.contains(needle.as_str()),
                    "a secret was read in clear text: {line:?}"
                );
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn is_auth(line: &Line) -> bool {
    line.text.get(..4).is_some_and(|v| v.eq_ignore_ascii_case("AUTH"))
}

/// The SMTP commands the server read: the transcript without message content.
fn commands(server: &Server) -> Vec<Line> {
    let mut in_data: HashMap<usize, bool> = HashMap::new();
    let mut out = Vec::new();
    for line in server.transcript() {
        let data = in_data.entry(line.conn).or_default();
        if *data {
            *data = line.text != ".";
            continue;
        }
        *data = line.text.eq_ignore_ascii_case("DATA");
        out.push(line);
    }
    out
}

fn auth_lines(server: &Server) -> Vec<Line> {
    commands(server).into_iter().filter(is_auth).collect()
}

fn mail_lines(server: &Server) -> Vec<Line> {
    commands(server)
        .into_iter()
        .filter(|l| l.text.to_ascii_uppercase().starts_with("MAIL FROM"))
        .collect()
}

/// The transcript, one line each, for assertion messages.
fn show(server: &Server) -> String {
    let mut out = String::new();
    for l in server.transcript() {
        let _ = writeln!(out, "{}{} {}", l.conn, if l.tls { "T" } else { " " }, l.text);
    }
    out
}

/// Ledger states other than `failed`; the ledger may not exist at all.
#[track_caller]
fn assert_nothing_failed(c: &Campaign) {
    if !c.ledger().exists() {
        return;
    }
    let states = c.states();
    assert!(
        states.iter().all(|(s, _)| s != "failed" && s != "sent"),
        "ledger states after a refused connection: {states:?}"
    );
}

/// A server requiring AUTH with [`USER`]/[`PASSWORD`], certificates from `pki`.
fn tls_server(security: Security, pki: &TestPki) -> Server {
    Server::start(
        ServerOptions::new(security)
            .with_auth(USER, PASSWORD)
            .with_pki(pki),
    )
}

/// The default campaign with `[smtp]` for `server`: `security`, [`USER`],
/// `ca_file = "ca.pem"` holding `trusted`'s CA, the password in
/// `MAILER_SMTP_PASSWORD`.
fn tls_campaign(server: &Server, security: &str, trusted: &TestPki) -> Campaign {
    Campaign::new()
        .file("ca.pem", trusted.ca_pem())
        .section(&smtp_section(server.port(), security, ""))
        .env("MAILER_SMTP_PASSWORD", PASSWORD)
}

/// `[smtp]` on 127.0.0.1 with [`USER`] and `ca_file = "ca.pem"`; `extra` lines appended.
fn smtp_section(port: u16, security: &str, extra: &str) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"{security}\"\n\
         username = \"{USER}\"\nca_file = \"ca.pem\"\ntimeout_secs = 5\n{extra}"
    )
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Asserts the happy path: every letter arrived encrypted and authenticated.
#[track_caller]
fn assert_delivered_securely(server: &Server, n: usize) {
    let got = server.received();
    assert_eq!(got.len(), n, "{}", show(server));
    for m in &got {
        assert!(m.tls, "a letter travelled in clear text");
        assert_eq!(m.authenticated_as.as_deref(), Some(USER));
    }
}

// ---- STARTTLS + AUTH ----

#[test]
fn starttls_auth_plain_delivers_encrypted_and_never_shows_the_password() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = tls_campaign(&server, "starttls", &pki);
    secrets
        .run(&c, &["-v", "send", "--yes"])
        .code(0)
        .stdout_has("sent 3");
    idle(&server);
    assert_delivered_securely(&server, 3);
    secrets.assert_nothing_in_clear(&server);
    let auth = auth_lines(&server);
    assert!(!auth.is_empty(), "no AUTH at all:\n{}", show(&server));
    assert!(
        auth.iter()
            .all(|l| l.tls && l.text.to_ascii_uppercase().starts_with("AUTH PLAIN")),
        "{auth:?}"
    );
    // Only one STARTTLS per connection, and EHLO again after it.
    let t = server.transcript();
    let starttls = t.iter().position(|l| l.text.eq_ignore_ascii_case("STARTTLS"));
    let starttls = starttls.expect("STARTTLS was sent");
    assert!(!t[starttls].tls);
    assert!(
        t[starttls + 1..]
            .iter()
            .find(|l| l.conn == t[starttls].conn)
            .is_some_and(|l| l.tls && l.text.to_ascii_uppercase().starts_with("EHLO")),
        "no EHLO right after the TLS handshake:\n{}",
        show(&server)
    );
    // The guarded forms are what AUTH really carries (so the guard is not vacuous).
    let plain = b64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    assert!(
        auth.iter().all(|l| l.text.contains(&plain)),
        "{auth:?} vs {plain}"
    );
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    secrets.assert_not_in_files(&c.join(".mailer"));
}

#[test]
fn starttls_with_auth_offered_only_inside_tls() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let mut opts = ServerOptions::new(Security::StartTls)
        .with_auth(USER, PASSWORD)
        .with_pki(&pki);
    opts.auth_after_tls = true;
    let server = Server::start(opts);
    let c = tls_campaign(&server, "starttls", &pki);
    secrets.run(&c, &["send", "--yes"]).code(0);
    idle(&server);
    assert_delivered_securely(&server, 3);
    secrets.assert_nothing_in_clear(&server);
}

#[test]
fn auth_login_is_used_when_only_login_is_offered() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    // The first EHLO on a connection (clear text) gets the normal reply; the
    // one after STARTTLS advertises only AUTH LOGIN.
    let ehlos: Mutex<HashMap<usize, usize>> = Mutex::default();
    let opts = ServerOptions::new(Security::StartTls)
        .with_auth(USER, PASSWORD)
        .with_pki(&pki)
        .with_script(move |step| match step {
            Step::Ehlo { conn } => {
                let mut seen = ehlos.lock().unwrap();
                let n = seen.entry(*conn).or_insert(0);
                *n += 1;
                if *n == 1 {
                    Action::Default
                } else {
                    Action::reply(
                        "250-localhost\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH LOGIN",
                    )
                }
            }
            _ => Action::Default,
        });
    let server = Server::start(opts);
    let c = tls_campaign(&server, "starttls", &pki);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_delivered_securely(&server, 3);
    secrets.assert_nothing_in_clear(&server);
    let auth = auth_lines(&server);
    assert!(
        !auth.is_empty()
            && auth
                .iter()
                .all(|l| l.tls && l.text.eq_ignore_ascii_case("AUTH LOGIN")),
        "expected AUTH LOGIN inside TLS:\n{}",
        show(&server)
    );
    let login = b64(PASSWORD.as_bytes());
    let t = server.transcript();
    assert!(
        t.iter().any(|l| l.tls && l.text.starts_with(&login)),
        "the LOGIN password line ({login}) was not read inside TLS:\n{}",
        show(&server)
    );
}

#[test]
fn the_leak_guard_catches_a_leak() {
    // `preview` prints the letters, so a "secret" taken from a letter must trip the guard.
    let guard = Secrets::new(USER, &["Minneapolis"]);
    let c = Campaign::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guard.run(&c, &["preview"])));
    assert!(caught.is_err(), "the guard missed a secret printed on stdout");
    // And its base64 forms are the ones AUTH uses.
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0x"));
    assert!(
        guard_forms(USER, "x")
            .iter()
            .any(|n| plain.starts_with(n.as_str()))
    );
}

fn guard_forms(user: &str, pass: &str) -> Vec<String> {
    Secrets::new(user, &[pass]).needles
}

#[test]
fn implicit_tls_delivers_encrypted() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::ImplicitTls, &pki);
    let c = tls_campaign(&server, "tls", &pki);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_delivered_securely(&server, 3);
    let t = server.transcript();
    assert!(!t.is_empty());
    assert!(t.iter().all(|l| l.tls), "clear text read:\n{}", show(&server));
    assert!(!t.iter().any(|l| l.text.eq_ignore_ascii_case("STARTTLS")));
}

#[test]
fn starttls_to_localhost_verifies_the_dns_name() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .section(&smtp_section(server.port(), "starttls", "").replace("127.0.0.1", "localhost"))
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_delivered_securely(&server, 3);
}

// ---- failures are global: nothing sent, nothing marked failed ----

#[test]
fn wrong_password_stops_the_run_once_without_marking_letters_failed() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = tls_campaign(&server, "starttls", &pki).env("MAILER_SMTP_PASSWORD", WRONG_PASSWORD);
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(1);
    let err = run.stderr.to_lowercase();
    assert!(
        err.contains("login") && err.contains("rejected"),
        "the message should say the login was rejected:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains(USER), "{}", run.stderr);
    idle(&server);
    assert!(server.received().is_empty());
    assert_eq!(server.dots_seen(), 0);
    assert!(mail_lines(&server).is_empty(), "{}", show(&server));
    // One attempt: a wrong password is not hammered at the relay (lockouts).
    assert_eq!(auth_lines(&server).len(), 1, "{}", show(&server));
    secrets.assert_nothing_in_clear(&server);
    assert_nothing_failed(&c);
    secrets.assert_not_in_files(&c.join(".mailer"));
    // The letters are still due: with the right password they all go.
    let c = c.env("MAILER_SMTP_PASSWORD", PASSWORD);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
}

#[test]
fn a_wrong_password_is_tried_once_whatever_the_concurrency() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = tls_campaign(&server, "starttls", &pki)
        .env("MAILER_SMTP_PASSWORD", WRONG_PASSWORD)
        .section("[delivery]\nconcurrency = 4\n");
    secrets.run(&c, &["send", "--yes"]).code(1);
    idle(&server);
    assert!(server.received().is_empty());
    // Relays lock accounts (or ban the IP) after a few bad logins: one per run.
    assert_eq!(auth_lines(&server).len(), 1, "{}", show(&server));
}

#[test]
fn untrusted_certificate_stops_the_run() {
    let secrets = Secrets::standard();
    let server_pki = TestPki::new();
    let other = TestPki::new();
    let server = tls_server(Security::StartTls, &server_pki);
    let c = tls_campaign(&server, "starttls", &other);
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(1).stderr_has("certificate").stderr_has("127.0.0.1");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(auth_lines(&server).is_empty(), "{}", show(&server));
    assert!(mail_lines(&server).is_empty(), "{}", show(&server));
    assert_nothing_failed(&c);
}

#[test]
fn untrusted_certificate_over_implicit_tls_stops_the_run() {
    let secrets = Secrets::standard();
    let server = tls_server(Security::ImplicitTls, &TestPki::new());
    let c = tls_campaign(&server, "tls", &TestPki::new());
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(1).stderr_has("certificate").stderr_has("127.0.0.1");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(server.transcript().is_empty(), "{}", show(&server));
    assert_nothing_failed(&c);
}

#[test]
fn the_web_pki_alone_does_not_trust_a_private_ca() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = Campaign::new()
        .section(&smtp_section(server.port(), "starttls", "").replace("ca_file = \"ca.pem\"\n", ""))
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    secrets
        .run(&c, &["send", "--yes"])
        .code(1)
        .stderr_has("certificate")
        .stderr_has("ca_file");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(auth_lines(&server).is_empty());
}

#[test]
fn starttls_response_injection_aborts_before_auth() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let mut opts = ServerOptions::new(Security::StartTls)
        .with_auth(USER, PASSWORD)
        .with_pki(&pki);
    opts.inject_after_starttls = Some("250-PIPELINING\r\n250 AUTH PLAIN\r\n".into());
    let server = Server::start(opts);
    let c = tls_campaign(&server, "starttls", &pki);
    let run = secrets.run(&c, &["send", "--yes"]);
    assert_ne!(run.code, 0, "{run:?}");
    run.stderr_has("STARTTLS");
    idle(&server);
    assert!(server.received().is_empty());
    assert_eq!(server.dots_seen(), 0);
    assert!(
        auth_lines(&server).is_empty(),
        "AUTH was sent:\n{}",
        show(&server)
    );
    assert!(mail_lines(&server).is_empty(), "{}", show(&server));
    assert_nothing_failed(&c);
}

#[test]
fn starttls_required_but_not_offered_fails_closed() {
    let secrets = Secrets::standard();
    let server = Server::start(ServerOptions::new(Security::Plain).with_auth(USER, PASSWORD));
    let c = tls_campaign(&server, "starttls", &TestPki::new());
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(1).stderr_has("STARTTLS");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(auth_lines(&server).is_empty(), "{}", show(&server));
    assert!(mail_lines(&server).is_empty(), "{}", show(&server));
    assert_nothing_failed(&c);
}

#[test]
fn starttls_refused_by_the_server_fails_closed() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let opts = ServerOptions::new(Security::StartTls)
        .with_auth(USER, PASSWORD)
        .with_pki(&pki)
        .with_script(|step| match step {
            Step::StartTls { .. } => Action::reply("454 4.7.0 TLS not available due to temporary reason"),
            _ => Action::Default,
        });
    let server = Server::start(opts);
    let c = tls_campaign(&server, "starttls", &pki);
    let run = secrets.run(&c, &["send", "--yes"]);
    assert_ne!(run.code, 0, "{run:?}");
    run.stderr_has("STARTTLS");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(auth_lines(&server).is_empty(), "{}", show(&server));
    assert!(mail_lines(&server).is_empty(), "{}", show(&server));
    assert_nothing_failed(&c);
}

// ---- security = "none" ----

#[test]
fn security_none_never_sends_the_password_in_clear() {
    let secrets = Secrets::standard();
    let server = Server::start(ServerOptions::new(Security::Plain).with_auth(USER, PASSWORD));
    let c = tls_campaign(&server, "none", &TestPki::new());
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(1);
    let err = run.stderr.to_lowercase();
    assert!(
        err.contains("password") && err.contains("without tls"),
        "should refuse to send the password in clear:\n{}",
        run.stderr
    );
    idle(&server);
    assert!(server.received().is_empty());
    assert!(
        auth_lines(&server).is_empty(),
        "AUTH in clear:\n{}",
        show(&server)
    );
    assert!(mail_lines(&server).is_empty(), "{}", show(&server));
    secrets.assert_nothing_in_clear(&server);
    assert_nothing_failed(&c);
}

#[test]
fn security_none_to_a_remote_host_is_refused_at_config_load() {
    let secrets = Secrets::standard();
    let section = "[smtp]\nhost = \"smtp.example.org\"\nsecurity = \"none\"\n";
    let c = Campaign::new()
        .section(section)
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    for args in [&["check"][..], &["send", "--dry-run"]] {
        let run = secrets.run(&c, args);
        run.code(1)
            .stderr_has("smtp.example.org")
            .stderr_has("clear text");
    }
    // allow_insecure opts in (the config loads; no connection is made by a
    // dry run; `check` would now also name the `.example` placeholders).
    let c = Campaign::new()
        .section(&format!("{section}allow_insecure = true\n"))
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    secrets.run(&c, &["send", "--dry-run"]).code(0);
}

// ---- where the password comes from ----

#[test]
fn literal_password_in_a_world_readable_config_is_refused() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .section(&smtp_section(
            server.port(),
            "starttls",
            &format!("password = \"{PASSWORD}\"\n"),
        ));
    let config = c.write_config();
    set_mode(&config, 0o644);
    for args in [&["send", "--yes"][..], &["check"]] {
        secrets
            .run(&c, args)
            .code(1)
            .stderr_has("chmod 600")
            .stderr_has("mailer.toml");
    }
    assert_eq!(mode_of(&config), 0o644, "mailer must not chmod the file itself");
    idle(&server);
    assert_eq!(server.connections(), 0);
    // Group-readable is not private either.
    set_mode(&config, 0o640);
    secrets
        .run(&c, &["send", "--yes"])
        .code(1)
        .stderr_has("chmod 600");
    assert_eq!(server.connections(), 0);

    set_mode(&config, 0o600);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_delivered_securely(&server, 3);
}

#[test]
fn password_command_supplies_the_password() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .file("vault.txt", format!("{PASSWORD}\nsecond line ignored\n"))
        .section(&smtp_section(
            server.port(),
            "starttls",
            "password_command = \"cat vault.txt\"\n",
        ));
    secrets
        .run(&c, &["-v", "send", "--yes"])
        .code(0)
        .stdout_has("sent 3");
    idle(&server);
    assert_delivered_securely(&server, 3);
    secrets.assert_nothing_in_clear(&server);
}

#[test]
fn failing_password_command_shows_its_stderr() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .section(&smtp_section(
            server.port(),
            "starttls",
            "password_command = \"echo 'vault is locked: run unlock first' >&2; exit 3\"\n",
        ));
    let run = secrets.run(&c, &["send", "--yes"]);
    assert_ne!(run.code, 0);
    run.stderr_has("vault is locked: run unlock first")
        .stderr_has("password_command");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(auth_lines(&server).is_empty(), "{}", show(&server));
    assert_nothing_failed(&c);
}

#[test]
fn missing_password_env_var_is_named() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    // The default variable, unset.
    let c = Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .section(&smtp_section(server.port(), "starttls", ""));
    let run = secrets.run(&c, &["send", "--yes"]);
    assert_ne!(run.code, 0);
    run.stderr_has("MAILER_SMTP_PASSWORD");
    // A custom variable, unset (while the default one is set: it must not be used).
    let c = Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .section(&smtp_section(
            server.port(),
            "starttls",
            "password_env = \"ORG_RELAY_SECRET\"\n",
        ))
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    let run = secrets.run(&c, &["send", "--yes"]);
    assert_ne!(run.code, 0);
    run.stderr_has("ORG_RELAY_SECRET");
    idle(&server);
    assert!(server.received().is_empty());
    assert!(auth_lines(&server).is_empty(), "{}", show(&server));
    // And when it is set, it is the one used.
    let c = c.env("ORG_RELAY_SECRET", PASSWORD);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
}

// ---- check --smtp ----

#[test]
fn check_smtp_ok_connects_tls_auth_and_quits() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = tls_campaign(&server, "starttls", &pki);
    let run = secrets.run(&c, &["check", "--smtp"]);
    run.code(0);
    assert!(
        run.stdout.lines().any(|l| l.contains("SMTP") && l.contains("ok")),
        "no `ok` line:\n{}",
        run.stdout
    );
    idle(&server);
    let t = server.transcript();
    assert!(t.iter().any(|l| l.tls && is_auth(l)), "{}", show(&server));
    assert!(
        t.last().is_some_and(|l| l.text.eq_ignore_ascii_case("QUIT")),
        "{}",
        show(&server)
    );
    assert!(mail_lines(&server).is_empty());
    secrets.assert_nothing_in_clear(&server);
    assert!(server.received().is_empty());
}

#[test]
fn check_smtp_says_the_connect_step_failed() {
    let secrets = Secrets::standard();
    let port = closed_port();
    let c = Campaign::new()
        .file("ca.pem", TestPki::new().ca_pem())
        .section(&smtp_section(port, "starttls", ""))
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    let run = secrets.run(&c, &["check", "--smtp"]);
    assert_ne!(run.code, 0);
    run.stderr_has("connect").stderr_has(&format!("127.0.0.1:{port}"));
}

#[test]
fn check_smtp_says_the_certificate_step_failed() {
    let secrets = Secrets::standard();
    let server = tls_server(Security::StartTls, &TestPki::new());
    let c = tls_campaign(&server, "starttls", &TestPki::new());
    let run = secrets.run(&c, &["check", "--smtp"]);
    assert_ne!(run.code, 0);
    run.stderr_has("certificate").stderr_has("127.0.0.1");
    idle(&server);
    assert!(auth_lines(&server).is_empty());
}

#[test]
fn check_smtp_says_the_login_step_failed() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = tls_campaign(&server, "starttls", &pki).env("MAILER_SMTP_PASSWORD", WRONG_PASSWORD);
    let run = secrets.run(&c, &["check", "--smtp"]);
    assert_ne!(run.code, 0);
    run.stderr_has("login").stderr_has(USER);
    idle(&server);
    secrets.assert_nothing_in_clear(&server);
}

// ---- DKIM, verified by dkimpy ----

/// dkimpy's verify with a DNS function that answers only `SELECTOR._domainkey.DOMAIN`.
const VERIFY_PY: &str = r#"
import sys
import dkim
message = open(sys.argv[1], "rb").read()
record = open(sys.argv[2], "rb").read()
expected = sys.argv[3]
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return record if name.rstrip(".").lower() == expected else None
print(dkim.verify(message, dnsfunc=dnsfunc))
"#;

enum KeyKind {
    RsaPkcs1,
    RsaPkcs8,
    Ed25519,
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed to make DKIM test keys (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Writes `dkim.pem` into `dir`; returns the DNS TXT record for its public key.
fn make_key(kind: &KeyKind, dir: &Path) -> String {
    let (header, k) = match kind {
        KeyKind::RsaPkcs1 => {
            openssl(&["genrsa", "-traditional", "-out", "dkim.pem", "2048"], dir);
            ("-----BEGIN RSA PRIVATE KEY-----", "rsa")
        }
        KeyKind::RsaPkcs8 => {
            let args = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
            openssl(&[&args[..], &["-out", "dkim.pem"]].concat(), dir);
            ("-----BEGIN PRIVATE KEY-----", "rsa")
        }
        KeyKind::Ed25519 => {
            openssl(&["genpkey", "-algorithm", "ed25519", "-out", "dkim.pem"], dir);
            ("-----BEGIN PRIVATE KEY-----", "ed25519")
        }
    };
    let pem = std::fs::read_to_string(dir.join("dkim.pem")).unwrap();
    assert!(pem.starts_with(header), "unexpected key format:\n{pem}");
    let spki = openssl(&["pkey", "-in", "dkim.pem", "-pubout", "-outform", "DER"], dir);
    let public = match kind {
        // RFC 6376: p= is the DER SubjectPublicKeyInfo.
        KeyKind::RsaPkcs1 | KeyKind::RsaPkcs8 => spki,
        // RFC 8463: p= is the raw 32-byte key, the tail of the SPKI.
        KeyKind::Ed25519 => {
            assert_eq!(spki.len(), 44);
            spki[12..].to_vec()
        }
    };
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    format!("v=DKIM1; k={k}; p={p}")
}

/// Runs dkimpy on `message`; true when it verifies.
fn dkimpy_verifies(dir: &Path, message: &[u8], record: &str) -> bool {
    let msg = dir.join("verify.eml");
    let txt = dir.join("verify.txt");
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&txt, record).unwrap();
    let out = Command::new("python3")
        .args(["-c", VERIFY_PY])
        .arg(&msg)
        .arg(&txt)
        .arg("mailer._domainkey.org.example")
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to verify DKIM ({e}); then {DKIMPY_INSTALL}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dkimpy failed to run (install it: {DKIMPY_INSTALL}):\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    match stdout.trim() {
        "True" => true,
        "False" => false,
        other => panic!("unexpected dkimpy output {other:?}"),
    }
}

/// Flips one letter of the body (a change relaxed canonicalization keeps).
fn tamper_body(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    let start = contains_at(&out, b"\r\n\r\n").expect("a header/body separator") + 4;
    let i = out[start..]
        .iter()
        .position(u8::is_ascii_alphabetic)
        .expect("a letter in the body")
        + start;
    out[i] = if out[i] == b'x' { b'y' } else { b'x' };
    out
}

fn contains_at(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const DKIM_SECTION: &str =
    "[dkim]\ndomain = \"org.example\"\nselector = \"mailer\"\nprivate_key_file = \"dkim.pem\"\n";

/// A Markdown letter: the message becomes multipart/alternative (text + HTML).
const LETTER_MD: &str = "Dear {{ target.name }},\n\nI am **{{ supporter.name }}** from {{ supporter.city }}.\n\n\
     - drop the contract\n- today: {{ today }}\n\n.a line starting with a dot\n\n{{ campaign.org }}\n";

fn dkim_round_trip(kind: &KeyKind, algorithm: &str, markdown: bool) {
    let secrets = Secrets::standard();
    let server = Server::start(ServerOptions::new(Security::Plain));
    let mut c = Campaign::new();
    if markdown {
        let head = c.config_text().replace("letters/letter.txt", "letters/letter.md");
        c = c.file("letters/letter.md", LETTER_MD).head(&head);
    }
    let c = c.smtp_plain(&server).section(DKIM_SECTION);
    let record = make_key(kind, c.path());
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 3);
    for m in &got {
        let sig = m.header("DKIM-Signature").expect("a DKIM-Signature header");
        let tags: String = sig.split_whitespace().collect();
        for tag in [
            "d=org.example;",
            "s=mailer;",
            "c=relaxed/relaxed;",
            &format!("a={algorithm};"),
        ] {
            assert!(tags.contains(tag), "DKIM-Signature lacks {tag}: {sig}");
        }
        assert!(
            dkimpy_verifies(c.path(), &m.data, &record),
            "dkimpy did not verify:\n{}",
            m.text()
        );
    }
    if markdown {
        assert!(
            got[0].text().contains("multipart/alternative"),
            "{}",
            got[0].text()
        );
    }
    // The verifier can say no: one changed body byte breaks the signature…
    assert!(!dkimpy_verifies(c.path(), &tamper_body(&got[0].data), &record));
    // …and so does a changed signed header.
    let text = got[0].text();
    let subject = got[0].header("Subject").unwrap();
    let forged = text.replacen(&subject, &subject.replacen("drop", "keep", 1), 1);
    assert_ne!(forged, text);
    assert!(!dkimpy_verifies(c.path(), forged.as_bytes(), &record));
    // And a different key does not verify it either.
    let other = tempfile::tempdir().unwrap();
    let wrong_record = make_key(kind, other.path());
    assert!(!dkimpy_verifies(c.path(), &got[0].data, &wrong_record));
}

#[test]
fn dkim_rsa_pkcs1_verifies_with_dkimpy() {
    dkim_round_trip(&KeyKind::RsaPkcs1, "rsa-sha256", false);
}

#[test]
fn dkim_rsa_pkcs8_verifies_with_dkimpy() {
    dkim_round_trip(&KeyKind::RsaPkcs8, "rsa-sha256", true);
}

#[test]
fn dkim_ed25519_verifies_with_dkimpy() {
    dkim_round_trip(&KeyKind::Ed25519, "ed25519-sha256", false);
}

#[test]
fn dkim_ed25519_verifies_with_dkimpy_for_a_multipart_letter() {
    dkim_round_trip(&KeyKind::Ed25519, "ed25519-sha256", true);
}

// ---- sender identity: `check` explains DMARC alignment ----

/// A campaign whose From address is `from` and SMTP login `username`, no connection made.
fn sender_campaign(from: &str, username: &str) -> Campaign {
    let c = Campaign::new();
    let head = c
        .config_text()
        .replace("<letters@org.example>", &format!("<{from}>"));
    // Loopback: these `.example` addresses are placeholders a real relay
    // would refuse (issue 15); `check` without --smtp connects nowhere.
    c.head(&head)
        .section(&format!(
            "[smtp]\nhost = \"localhost\"\nusername = \"{username}\"\n"
        ))
        .env("MAILER_SMTP_PASSWORD", PASSWORD)
}

#[test]
fn check_warns_about_free_mail_from_and_dmarc_alignment() {
    let secrets = Secrets::standard();
    let run = secrets.run(
        &sender_campaign("letters@gmail.com", "letters@gmail.com"),
        &["check"],
    );
    run.code(0).stderr_has("gmail.com").stderr_has("DMARC");

    let run = secrets.run(
        &sender_campaign("letters@org.example", "relay-user@provider.example"),
        &["check"],
    );
    run.code(0).stderr_has("provider.example").stderr_has("DMARC");

    // Aligned, but no [dkim]: says so.
    let run = secrets.run(&sender_campaign("letters@org.example", USER), &["check"]);
    run.code(0).stderr_has("[dkim]");
    assert!(!run.stderr.contains("free-mail"), "{}", run.stderr);
}

#[test]
fn check_is_quiet_when_from_login_and_dkim_align_and_warns_when_dkim_does_not() {
    let secrets = Secrets::standard();
    let c = sender_campaign("letters@org.example", USER).section(DKIM_SECTION);
    make_key(&KeyKind::Ed25519, c.path());
    let run = secrets.run(&c, &["check"]);
    run.code(0);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);

    let c = sender_campaign("letters@org.example", USER)
        .section(&DKIM_SECTION.replace("\"org.example\"", "\"elsewhere.example\""));
    make_key(&KeyKind::Ed25519, c.path());
    let run = secrets.run(&c, &["check"]);
    run.code(0).stderr_has("elsewhere.example").stderr_has("DMARC");
}

// ---- header injection, end to end ----

fn assert_no_evil(server: &Server) {
    for line in server.transcript() {
        assert!(
            !line.text.to_ascii_lowercase().contains("evil"),
            "injected text reached the server: {line:?}\n{}",
            show(server)
        );
    }
    for m in server.received() {
        assert!(m.rcpt_to.iter().all(|r| !r.contains("evil")), "{:?}", m.rcpt_to);
        assert!(!m.text().to_ascii_lowercase().contains("evil"), "{}", m.text());
        assert!(m.header("Bcc").is_none(), "{}", m.text());
    }
}

#[test]
fn crlf_in_a_name_is_skipped_and_never_reaches_the_server() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let csv = "email,first_name,last_name,city,note\n\
               ana@mail.example,Ana,López,Tucson,\n\
               eve@mail.example,\"Eve\r\nBcc: evil@evil.example\",Doe,Reno,\n\
               sam@mail.example,Sam,Okafor,Minneapolis,\"Please, listen.\"\n\
               lee@mail.example,Lee,Park,Seattle,\n";
    let c = tls_campaign(&server, "starttls", &pki).file("supporters.csv", csv);
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(0).stdout_has("sent 3").stderr_has("supporters.csv:3");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 3, "{}", show(&server));
    let mut to: Vec<String> = got
        .iter()
        .map(|m| m.header("Reply-To").unwrap_or_default())
        .collect();
    to.sort();
    assert_eq!(
        to,
        ["ana@mail.example", "lee@mail.example", "sam@mail.example"],
        "the other supporters are delivered"
    );
    assert_no_evil(&server);
    assert_eq!(
        c.states(),
        vec![("sent".to_string(), 3), ("skipped".to_string(), 1)]
    );
}

#[test]
fn every_kind_of_header_injection_is_skipped() {
    let secrets = Secrets::standard();
    let server = Server::start(ServerOptions::new(Security::Plain));
    let csv = "email,first_name,last_name,city,note\n\
               ana@mail.example,Ana,López,Tucson,\n\
               eve1@mail.example,Eve,\"Doe\nBcc: evil1@evil.example\",Reno,\n\
               eve2@mail.example,Eve,Doe,\"Reno\rBcc: evil2@evil.example\",\n\
               \"eve3@mail.example\r\nRCPT TO:<evil3@evil.example>\",Eve,Doe,Reno,\n\
               \"eve4@mail.example>\r\nBcc: evil4@evil.example\",Eve,Doe,Reno,\n\
               sam@mail.example,Sam,Okafor,Minneapolis,\"Please, listen.\"\n";
    // The supporter is also Cc'd, so the name goes into a Cc header too.
    let c = Campaign::new()
        .smtp_plain(&server)
        .file("supporters.csv", csv)
        .head(
            &Campaign::new()
                .config_text()
                .replace("reply_to = ", "cc_supporter = true\nreply_to = "),
        );
    let run = secrets.run(&c, &["send", "--yes"]);
    run.code(0).stdout_has("sent 2");
    idle(&server);
    assert_eq!(server.received().len(), 2, "{}", show(&server));
    assert_no_evil(&server);
    assert_eq!(
        c.states(),
        vec![("sent".to_string(), 2), ("skipped".to_string(), 4)]
    );
}

/// The addresses of header `name` (From, Cc, Reply-To), as a mail reader parses them.
fn addresses(data: &[u8], name: &str) -> Vec<String> {
    let msg = mail_parser::MessageParser::default()
        .parse(data)
        .expect("a parsable message");
    let list = match name {
        "From" => msg.from(),
        "Cc" => msg.cc(),
        "Reply-To" => msg.reply_to(),
        _ => unreachable!("{name}"),
    };
    list.map(|a| {
        a.iter()
            .map(|m| m.address().unwrap_or_default().to_ascii_lowercase())
            .collect()
    })
    .unwrap_or_default()
}

#[test]
fn a_name_holding_an_address_cannot_change_from_cc_or_the_envelope() {
    let secrets = Secrets::standard();
    let server = Server::start(ServerOptions::new(Security::Plain));
    let csv = "email,first_name,last_name,city,note\n\
               mal@mail.example,\"Mal <boss@bad.example>, \"\"x\"\" <x@bad.example>;\",\"Doe, <y@bad.example>\",Reno,\n\
               ana@mail.example,Ana,López,Tucson,\n";
    let head = Campaign::new()
        .config_text()
        .replace("reply_to = ", "cc_supporter = true\nreply_to = ");
    let c = Campaign::new()
        .smtp_plain(&server)
        .file("supporters.csv", csv)
        .head(&head);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 2");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 2);
    for m in &got {
        assert_eq!(m.mail_from, "letters@org.example");
        assert!(
            m.rcpt_to.iter().all(|r| !r.contains("bad.example")),
            "{:?}",
            m.rcpt_to
        );
        assert_eq!(
            addresses(&m.data, "From"),
            ["letters@org.example"],
            "{}",
            m.text()
        );
        let cc = addresses(&m.data, "Cc");
        assert_eq!(cc.len(), 1, "{}", m.text());
        assert!(cc[0].ends_with("@mail.example"), "{}", m.text());
        assert_eq!(addresses(&m.data, "Reply-To"), cc, "{}", m.text());
    }
}

#[test]
fn a_note_cannot_smuggle_a_second_smtp_message() {
    let secrets = Secrets::standard();
    let server = Server::start(ServerOptions::new(Security::Plain));
    // A note (body only) that ends DATA early with every line-end flavour, then
    // tries a second transaction to a recipient of its choice.
    let smuggle = |eol: &str| {
        format!(
            "hi{eol}.{eol}MAIL FROM:<x@bad.example>{eol}RCPT TO:<victim@bad.example>{eol}DATA{eol}\
             Subject: smuggled{eol}{eol}smuggled{eol}.{eol}"
        )
    };
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for (i, eol) in ["\r\n", "\n", "\r", "\r\r\n", "\n\r"].iter().enumerate() {
        let _ = writeln!(csv, "s{i}@mail.example,S{i},Mith,Reno,\"{}\"", smuggle(eol));
    }
    csv.push_str("ana@mail.example,Ana,López,Tucson,\n");
    let c = Campaign::new().smtp_plain(&server).file("supporters.csv", &csv);
    secrets.run(&c, &["send", "--yes"]).code(0).stdout_has("sent 6");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 6, "{}", show(&server));
    assert_eq!(server.dots_seen(), 6, "{}", show(&server));
    for m in &got {
        assert_eq!(m.rcpt_to, ["ceo@corp.example"], "{}", show(&server));
        assert_eq!(m.mail_from, "letters@org.example");
    }
    let mails = mail_lines(&server);
    assert_eq!(mails.len(), 6, "{mails:?}");
    assert!(
        mails.iter().all(|l| l.text.contains("letters@org.example")),
        "{mails:?}"
    );
    // The would-be second message stayed inside the first one's body.
    let smuggler = got.iter().filter(|m| m.text().contains("smuggled")).count();
    assert_eq!(smuggler, 5);
}

#[test]
fn a_server_echoing_the_credentials_does_not_make_mailer_print_them() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let echoed = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{WRONG_PASSWORD}"));
    let reply = format!("535 5.7.8 Authentication failed for PLAIN {echoed}");
    let opts = ServerOptions::new(Security::StartTls)
        .with_auth(USER, PASSWORD)
        .with_pki(&pki)
        .with_script(move |step| match step {
            Step::Auth { .. } => Action::Reply(reply.clone()),
            _ => Action::Default,
        });
    let server = Server::start(opts);
    let c = tls_campaign(&server, "starttls", &pki).env("MAILER_SMTP_PASSWORD", WRONG_PASSWORD);
    // `Secrets::run` fails if the echoed base64 reaches stdout or stderr.
    secrets.run(&c, &["send", "--yes"]).code(1);
    secrets.run(&c, &["check", "--smtp"]).code(1);
}

// ---- the ledger is private ----

#[test]
fn ledger_folder_is_0700_and_its_files_0600() {
    let secrets = Secrets::standard();
    let pki = TestPki::new();
    let server = tls_server(Security::StartTls, &pki);
    let c = tls_campaign(&server, "starttls", &pki);
    secrets.run(&c, &["send", "--yes"]).code(0);
    let dir = c.join(".mailer");
    assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 1);
    assert!(c.ledger().exists());
    // `status` and `export` keep it so.
    secrets.run(&c, &["status"]).code(0);
    let export = c.join("export.csv");
    secrets
        .run(&c, &["export", "--out", export.to_str().unwrap()])
        .code(0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
    }

    // A custom ledger path: every folder mailer creates is private too.
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[ledger]\npath = \"state/deep/ledger.sqlite3\"\n");
    secrets.run(&c, &["send", "--yes"]).code(0);
    assert_eq!(mode_of(&c.join("state")), 0o700);
    assert_eq!(mode_of(&c.join("state/deep")), 0o700);
    for entry in std::fs::read_dir(c.join("state/deep")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
    }
}
