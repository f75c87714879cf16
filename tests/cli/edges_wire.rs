//! Issue 9, the wire's edges: hostile server text (secrets echoed back,
//! terminal escapes, endless replies), copies the relay refuses, and servers
//! that trickle or stall. Real binary, real sockets, the scripted server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Action, Line, Security, Server, ServerOptions, Step, TestPki};
use crate::support::wait::idle;

const USER: &str = "letters@org.example";
const PASSWORD: &str = "Hunter2-Secret";

// ---------------------------------------------------------------- helpers

/// The password in every form AUTH carries it (unpadded, so padded forms match too).
fn secrets() -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD_NO_PAD.encode(s);
    vec![
        PASSWORD.to_string(),
        b64(PASSWORD),
        b64(&format!("\0{USER}\0{PASSWORD}")),
        b64(&format!("{USER}\0{USER}\0{PASSWORD}")),
        hex(PASSWORD, false),
    ]
}

/// `text`'s bytes in hex.
fn hex(text: &str, upper: bool) -> String {
    use std::fmt::Write as _;
    text.bytes().fold(String::new(), |mut out, b| {
        let _ = if upper {
            write!(out, "{b:02X}")
        } else {
            write!(out, "{b:02x}")
        };
        out
    })
}

/// Whether `needle` is in `haystack`, ignoring ASCII case.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Asserts no secret is in `bytes`.
#[track_caller]
fn assert_no_secret(what: &str, bytes: &[u8]) {
    for s in secrets() {
        assert!(
            !contains(bytes, s.as_bytes()),
            "{what} holds a secret ({s:?}):\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Asserts no file under `dir` holds a secret (the ledger keeps replies).
#[track_caller]
fn assert_no_secret_in_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_secret_in_files(&path);
        } else {
            assert_no_secret(&path.display().to_string(), &std::fs::read(&path).unwrap());
        }
    }
}

/// Runs `mailer ARGS` and asserts no secret reached stdout or stderr.
#[track_caller]
fn run_clean(c: &Campaign, args: &[&str]) -> Run {
    let run = c.run(args);
    assert_no_secret(
        &format!("stdout of `mailer {}`", args.join(" ")),
        run.stdout.as_bytes(),
    );
    assert_no_secret(
        &format!("stderr of `mailer {}`", args.join(" ")),
        run.stderr.as_bytes(),
    );
    run
}

/// A STARTTLS server requiring AUTH, with `script`.
fn auth_server(pki: &TestPki, script: impl Fn(&Step) -> Action + Send + Sync + 'static) -> Server {
    Server::start(
        ServerOptions::new(Security::StartTls)
            .with_auth(USER, PASSWORD)
            .with_pki(pki)
            .with_script(script),
    )
}

/// The default campaign on a STARTTLS `server`, logging in as [`USER`].
fn auth_campaign(server: &Server, pki: &TestPki, timeout_secs: u64, retries: u32) -> Campaign {
    Campaign::new()
        .file("ca.pem", pki.ca_pem())
        .section(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"starttls\"\n\
             username = \"{USER}\"\nca_file = \"ca.pem\"\ntimeout_secs = {timeout_secs}\n",
            server.port()
        ))
        .section(&format!("[delivery]\nretries = {retries}\n"))
        .env("MAILER_SMTP_PASSWORD", PASSWORD)
}

/// The default campaign on a plain loopback `server`.
fn plain_campaign(server: &Server, timeout_secs: u64, delivery: &str) -> Campaign {
    Campaign::new()
        .section(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout_secs = {timeout_secs}\n",
            server.port()
        ))
        .section(&format!("[delivery]\n{delivery}"))
}

/// Every control character in `text` other than a line end.
fn controls(text: &str) -> Vec<char> {
    text.chars().filter(|c| c.is_control() && *c != '\n').collect()
}

/// Asserts `text` carries no raw control character (ESC, BEL, C1 …).
#[track_caller]
fn assert_no_controls(what: &str, text: &str) {
    let found = controls(text);
    assert!(
        found.is_empty(),
        "{what} carries raw control characters {found:?}:\n{text:?}"
    );
}

/// `export` as rows of column → value.
fn export_rows(c: &Campaign) -> Vec<BTreeMap<String, String>> {
    let out = c.run(&["export"]);
    out.code(0);
    assert_no_controls("export", &out.stdout);
    let mut reader = csv::Reader::from_reader(out.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

fn auth_lines(server: &Server) -> Vec<Line> {
    server
        .transcript()
        .into_iter()
        .filter(|l| l.text.get(..4).is_some_and(|v| v.eq_ignore_ascii_case("AUTH")))
        .collect()
}

// ---------------------------------------------------------------- 2: secrets in server text

#[test]
fn issue9_a_password_echoed_in_any_reply_shape_is_never_shown_or_stored() {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let plain = b64(&format!("\0{USER}\0{PASSWORD}"));
    let login = b64(PASSWORD);
    let login_unpadded = login.trim_end_matches('=').to_string();
    // (what the server does at AUTH, at the target's RCPT)
    let shapes: Vec<(Action, Action)> = vec![
        // Not a reply at all: the code is not three digits.
        (
            Action::reply(&format!("5x5 malformed echo of your password: {PASSWORD}")),
            Action::Default,
        ),
        // A multi-line reply cut off after a line that echoes every form.
        (
            Action::Raw(format!("535-5.7.8 you sent {PASSWORD} {plain} {login}\r\n535-more").into_bytes()),
            Action::Default,
        ),
        // A line with no digits and the unpadded base64, then the connection ends.
        (
            Action::Raw(format!("oops {login_unpadded} {plain}\r\n").into_bytes()),
            Action::Default,
        ),
        // A proper refusal that echoes them.
        (
            Action::reply(&format!("535 5.7.8 bad {PASSWORD} / {plain} / {login_unpadded}")),
            Action::Default,
        ),
        // The login goes through; later replies echo it into the ledger.
        (
            Action::Default,
            Action::reply(&format!("550 5.1.1 no such user (you logged in with {PASSWORD})")),
        ),
        (
            Action::Default,
            Action::reply(&format!("5.1.1 {PASSWORD} malformed")),
        ),
        // Echoed in upper case, and as hex bytes (a debugging relay).
        (
            Action::reply(&format!(
                "535 5.7.8 {} / {}",
                PASSWORD.to_uppercase(),
                hex(PASSWORD, true)
            )),
            Action::Default,
        ),
    ];
    for (i, (at_auth, at_rcpt)) in shapes.into_iter().enumerate() {
        let pki = TestPki::new();
        let server = auth_server(&pki, move |step| match step {
            Step::Auth { .. } => at_auth.clone(),
            Step::Rcpt { to, .. } if to == "ceo@corp.example" => at_rcpt.clone(),
            _ => Action::Default,
        });
        let c = auth_campaign(&server, &pki, 5, 0);
        let run = run_clean(&c, &["send", "--yes"]);
        assert_ne!(run.code, 0, "shape {i}: {run:?}");
        for args in [&["status"][..], &["export"], &["status", "--json"]] {
            if c.ledger().exists() {
                run_clean(&c, args).code(0);
            }
        }
        assert_no_secret_in_files(&c.join(".mailer"));
        if i == 0 {
            run.stderr_has("malformed reply").stderr_has("(redacted)");
        }
        idle(&server);
    }
}

#[test]
fn issue9_check_smtp_never_shows_an_echoed_password() {
    let pki = TestPki::new();
    let server = auth_server(&pki, |step| match step {
        Step::Auth { .. } => Action::reply(&format!("5x5 malformed echo of your password: {PASSWORD}")),
        _ => Action::Default,
    });
    let c = auth_campaign(&server, &pki, 5, 0);
    run_clean(&c, &["check", "--smtp"]).stderr_has("(redacted)");
}

// ---------------------------------------------------------------- 3: control characters

const HOSTILE: &str = "550 5.7.1 \u{1b}[2J \u{1b}[1;31mPWNED \u{1b}]0;title\u{7} \u{9b}31m";

#[test]
fn issue9_server_control_characters_are_escaped_in_send_status_and_export() {
    let long = format!("550 5.1.1 {}", "x".repeat(6000));
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(move |step| match step {
            Step::Dot { nth: 1, .. } => Action::reply(HOSTILE),
            Step::Dot { nth: 2, .. } => Action::reply(&long),
            // Not a reply: junk with escapes where a code should be.
            Step::Dot { nth: 3, .. } => Action::Raw(b"\x1b[2J\x1b]0;pwned\x07 junk\r\n".to_vec()),
            _ => Action::Default,
        }),
    );
    let c = plain_campaign(&server, 5, "retries = 0\n");
    let run = c.run(&["send", "--yes"]);
    run.code(3);
    assert_no_controls("send stdout", &run.stdout);
    assert_no_controls("send stderr", &run.stderr);
    run.stderr_has("\\u{1b}[2J")
        .stderr_has("PWNED")
        .stderr_has("\\u{7}");

    let status = c.run(&["status"]);
    status.code(0);
    assert_no_controls("status", &status.stdout);
    status.stdout_has("\\u{1b}[1;31mPWNED").stdout_has("\\u{9b}31m");

    let rows = export_rows(&c);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let replies: Vec<&str> = rows.iter().map(|r| r["last_reply"].as_str()).collect();
    assert!(
        replies.iter().any(|r| r.contains("\\u{1b}]0;title\\u{7}")),
        "{replies:?}"
    );
    assert!(
        replies.iter().any(|r| r.contains("\\u{1b}]0;pwned")),
        "{replies:?}"
    );
    // An endless reply is cut to a readable length, and says so.
    let long_row = replies
        .iter()
        .find(|r| r.contains("xxxx"))
        .expect("the long reply");
    assert!(long_row.len() < 2000, "{} characters kept", long_row.len());
    assert!(long_row.contains("truncated"), "{long_row}");
    idle(&server);
}

#[test]
fn issue9_status_and_export_escape_control_characters_an_older_run_stored() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 1, .. } => Action::reply("550 5.1.1 no"),
            _ => Action::Default,
        }),
    );
    let c = plain_campaign(&server, 5, "retries = 0\n");
    c.run(&["send", "--yes"]).code(3);
    // A ledger written before replies were escaped.
    c.sql("UPDATE letters SET reply = char(27) || '[2J ' || char(7) || 'x' WHERE state = 'failed'");
    let status = c.run(&["status"]);
    assert_no_controls("status", &status.stdout);
    status.stdout_has("\\u{1b}[2J \\u{7}x");
    let rows = export_rows(&c);
    assert!(
        rows.iter().any(|r| r["last_reply"] == "\\u{1b}[2J \\u{7}x"),
        "{rows:?}"
    );
}

// ---------------------------------------------------------------- 7: refused copies

#[test]
fn issue9_refused_cc_and_bcc_copies_are_reported_kept_and_shown() {
    refused_copies(true);
}

#[test]
fn issue9_refused_copies_without_pipelining() {
    refused_copies(false);
}

fn refused_copies(pipelining: bool) {
    let mut opts = ServerOptions::new(Security::Plain).with_script(|step| match step {
        Step::Rcpt { to, .. } if to == "archive@org.example" => Action::reply("452 4.2.2 mailbox full"),
        Step::Rcpt { to, .. } if to == "sam@mail.example" => Action::reply("550 5.1.1 no such user"),
        _ => Action::Default,
    });
    opts.pipelining = pipelining;
    let server = Server::start(opts);
    let c = plain_campaign(&server, 5, "retries = 0\n").head(&Campaign::new().config_text().replace(
        "reply_to = \"{{ supporter.email }}\"\n",
        "reply_to = \"{{ supporter.email }}\"\ncc_supporter = true\nbcc = [\"archive@org.example\"]\n",
    ));
    let run = c.run(&["send", "--yes", "-q"]);
    // Every letter reached its target: exit 0, but each refused copy is named.
    run.code(0);
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(warnings.len(), 4, "3 archive copies + Sam's Cc:\n{}", run.stderr);
    run.stderr_has("sam@mail.example → ceo@corp.example: sent, but the copy to sam@mail.example was refused: 550 5.1.1 no such user");
    run.stderr_has("ana@mail.example → ceo@corp.example: sent, but the copy to archive@org.example was refused: 452 4.2.2 mailbox full");
    idle(&server);
    assert_eq!(server.received().len(), 3);
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);

    // The ledger keeps them.
    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM refused_copies", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4);
    drop(conn);

    let status = c.run(&["status"]);
    status
        .code(0)
        .stdout_has("Copies refused: 4 (the letters reached their targets");
    status.stdout_has(
        "sam@mail.example → ceo@corp.example: copy to sam@mail.example refused: 550 5.1.1 no such user",
    );
    status.stdout_has(
        "lee@mail.example → ceo@corp.example: copy to archive@org.example refused: 452 4.2.2 mailbox full",
    );

    let rows = export_rows(&c);
    let sam = rows
        .iter()
        .find(|r| r["supporter"] == "sam@mail.example")
        .unwrap();
    assert_eq!(sam["state"], "sent");
    assert_eq!(
        sam["refused_copies"],
        "sam@mail.example: 550 5.1.1 no such user; archive@org.example: 452 4.2.2 mailbox full"
    );
    let lee = rows
        .iter()
        .find(|r| r["supporter"] == "lee@mail.example")
        .unwrap();
    assert_eq!(
        lee["refused_copies"],
        "archive@org.example: 452 4.2.2 mailbox full"
    );

    // Nothing is resent and nothing is warned twice.
    let again = c.run(&["send", "--yes"]);
    again.code(0);
    assert!(!again.stderr.contains("refused"), "{}", again.stderr);
    assert_eq!(server.received().len(), 3);
}

#[test]
fn issue9_a_refused_target_is_still_the_letters_failure() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Rcpt { to, .. } if to == "ceo@corp.example" => Action::reply("550 5.1.1 no such user"),
            _ => Action::Default,
        }),
    );
    let c = plain_campaign(&server, 5, "retries = 0\n").head(&Campaign::new().config_text().replace(
        "reply_to = \"{{ supporter.email }}\"\n",
        "reply_to = \"{{ supporter.email }}\"\nbcc = [\"archive@org.example\"]\n",
    ));
    let run = c.run(&["send", "--yes"]);
    run.code(3).stderr_has("failed: 550 5.1.1 no such user");
    assert!(!run.stderr.contains("copy to"), "{}", run.stderr);
    assert_eq!(c.states(), vec![("failed".to_string(), 3)]);
    assert!(server.received().is_empty());
}

#[test]
fn issue9_a_ledger_from_before_refused_copies_still_reads_and_upgrades() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["send", "--yes", "--limit", "1"]).code(0);
    c.sql("DROP TABLE refused_copies");
    c.run(&["status"]).code(0).stdout_has("sent");
    let rows = export_rows(&c);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["refused_copies"].is_empty()));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    c.sql("SELECT count(*) FROM refused_copies");
}

// ---------------------------------------------------------------- 14: trickling servers

/// A reply long enough that trickling it takes far longer than the timeout.
fn slow(code: &str) -> String {
    format!("{code} {}", "slow ".repeat(12))
}

#[test]
fn issue9_a_trickling_greeting_times_out_on_a_deadline() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Greeting { .. } => Action::Trickle(slow("220"), Duration::from_millis(400)),
            _ => Action::Default,
        }),
    );
    let c = plain_campaign(&server, 2, "retries = 0\n");
    let t = Instant::now();
    let run = c.run(&["check", "--smtp"]);
    let took = t.elapsed();
    run.code(75).stderr_has("timed out");
    assert!(!run.stderr.contains("os error"), "{}", run.stderr);
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} with timeout_secs = 2"
    );
}

#[test]
fn issue9_a_reply_trickled_mid_transaction_times_out_on_a_deadline() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Rcpt { conn: 1, .. } => Action::Trickle(slow("250"), Duration::from_millis(400)),
            _ => Action::Default,
        }),
    );
    let c = plain_campaign(&server, 2, "retries = 0\n");
    let t = Instant::now();
    let run = c.run(&["send", "--yes"]);
    let took = t.elapsed();
    run.code(3).stdout_has("deferred 1").stderr_has("timed out");
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} with timeout_secs = 2"
    );
    let rows = export_rows(&c);
    let deferred = rows.iter().find(|r| r["state"] == "deferred").unwrap();
    assert!(deferred["last_reply"].contains("timed out"), "{deferred:?}");
}

// ---------------------------------------------------------------- 15: a stalled login

#[test]
fn issue9_a_stalled_login_is_retried_once_and_ends_with_75() {
    let pki = TestPki::new();
    let server = auth_server(&pki, |step| match step {
        Step::Auth { .. } => Action::Stall(Duration::from_secs(20)),
        _ => Action::Default,
    });
    let (timeout, retries) = (2, 3);
    let c = auth_campaign(&server, &pki, timeout, retries);
    let t = Instant::now();
    let run = c.run(&["-v", "send", "--yes"]);
    let took = t.elapsed();
    run.code(75).stderr_has("timed out").stderr_has("AUTH");
    run.stderr_has("trying again");
    assert!(
        took < Duration::from_secs(3 * u64::from(retries) * timeout),
        "took {took:?}"
    );
    // A timed-out login is tried twice, not 1 + retries times.
    assert_eq!(auth_lines(&server).len(), 2, "{:?}", server.transcript());
    assert!(server.received().is_empty());
}
