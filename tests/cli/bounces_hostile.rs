//! `mailer bounces` against hostile input: forged DSNs, misbehaving IMAP
//! servers, huge or odd local mailboxes, a Maildir changing underfoot,
//! control characters in diagnostics, a misaligned return path.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::campaign::{Campaign, Run};
use crate::support::hostile_imap::{HostileImap, Mode};
use crate::support::smtp::{Security, Server, ServerOptions, TestPki};

const PASSWORD: &str = "s3cret-imap-pw";

/// One letter as the server received it.
struct Letter {
    mail_from: String,
    message_id: String,
}

/// The letters the server got, by supporter (their Reply-To).
fn letters(server: &Server) -> BTreeMap<String, Letter> {
    server
        .received()
        .into_iter()
        .map(|m| {
            let letter = Letter {
                mail_from: m.mail_from.clone(),
                message_id: m.message_id().unwrap(),
            };
            (m.header("Reply-To").unwrap(), letter)
        })
        .collect()
}

/// A DSN fixture about `letter`, delivered to `to`, naming `target`.
fn fixture(name: &str, letter: &Letter, to: &str, target: &str) -> String {
    let path = format!("{}/tests/fixtures/dsn/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap()
        .replace("{{RETURN_PATH}}", to)
        .replace("{{MESSAGE_ID}}", &letter.message_id)
        .replace("{{TARGET}}", target)
        .replace("{{ESC}}", "\u{1b}")
        .replace("{{RLO}}", "\u{202e}")
        .replace("{{PDF}}", "\u{202c}")
        .replace('\n', "\r\n")
}

/// A campaign with VERP and a bounce mailbox, its letters already sent.
fn sent_campaign(mailbox: &str) -> (Campaign, Server) {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).section(&format!(
        "[bounces]\nreturn_path = \"bounces+{{token}}@org.example\"\nmailbox = \"{mailbox}\"\n"
    ));
    c.run(&["send", "--yes"]).code(0);
    (c, server)
}

/// Writes messages into `DIR/new/` of a fresh Maildir.
fn maildir(c: &Campaign, dir: &str, messages: &[(&str, String)]) {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(c.join(dir).join(sub)).unwrap();
    }
    for (name, text) in messages {
        std::fs::write(c.join(dir).join("new").join(name), text).unwrap();
    }
}

#[track_caller]
fn no_raw_controls(run: &Run) {
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}') && !text.contains('\u{202c}'),
            "raw control characters in {name}:\n{text:?}"
        );
    }
}

/// Runs `mailer ARGS` under `/usr/bin/time`: the run and its peak RSS in KB.
fn with_peak_rss(c: &Campaign, env: &[(&str, &str)], args: &[&str]) -> (Run, u64) {
    c.write_config();
    let report = c.join("rss.txt");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", c.path())
        .env("NO_COLOR", "1")
        .current_dir(c.path())
        .args(["-f", "%M", "-o"])
        .arg(&report)
        .arg(env!("CARGO_BIN_EXE_mailer"))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = Run::from(cmd.output().expect("run /usr/bin/time"));
    let text = std::fs::read_to_string(&report).unwrap();
    let kb = text
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no RSS in {text:?}"));
    (run, kb)
}

/// Runs a spawned `mailer` to completion, killing it after `limit`.
fn finish_within(c: &Campaign, args: &[&str], limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = c.spawn(args);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`mailer {}` still ran after {limit:?}\n--- stderr\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (Run::from(child.wait_with_output().unwrap()), started.elapsed())
}

// ------------------------------------------------------------ 1. forgery

#[test]
fn hostile_forged_dsn_with_a_real_message_id_is_not_ours_under_verp() {
    // The target receives every letter, so it knows every Message-ID; with
    // VERP on, only a keyed token may tie a DSN to a letter.
    let (c, server) = sent_campaign("Maildir");
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let forged = fixture(
        "postfix-5.1.1.eml",
        ana,
        "bounces+aaaaaaaaaaaaaaaa@org.example",
        "ceo@corp.example",
    );
    maildir(&c, "Maildir", &[("1.forged", forged)]);
    c.run(&["bounces"])
        .code(0)
        .stdout_has("0 letters bounced")
        .stdout_has("1 not about this campaign's letters");
    assert_eq!(c.states(), vec![("sent".into(), 3)]);
}

#[test]
fn hostile_token_dsn_naming_another_recipient_is_not_recorded() {
    let (c, server) = sent_campaign("Maildir");
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let other = fixture("postfix-5.1.1.eml", ana, &ana.mail_from, "cfo@corp.example");
    maildir(&c, "Maildir", &[("1.other", other)]);
    c.run(&["bounces"])
        .code(0)
        .stdout_has("0 letters bounced")
        .stdout_has("1 naming another recipient than its letter's target");
    assert_eq!(c.states(), vec![("sent".into(), 3)]);
    assert!(!c.run(&["status"]).stdout.contains("Bounced, by problem"));
}

// ------------------------------------------------------------ 2. IMAP

/// A campaign whose bounce mailbox is the hostile server.
fn hostile_campaign(mode: Mode, timeout_secs: u64) -> (Campaign, HostileImap) {
    let pki = TestPki::new();
    let imap = HostileImap::start(mode, &pki);
    let c = hostile_campaign_at(&imap, &pki, timeout_secs);
    (c, imap)
}

fn hostile_campaign_at(imap: &HostileImap, trusted: &TestPki, timeout_secs: u64) -> Campaign {
    let c = Campaign::new().section(&format!(
        "[bounces]\nmailbox = \"imaps://localhost:{}\"\nusername = \"bounces\"\nca_file = \"ca.pem\"\n\
         timeout_secs = {timeout_secs}\n",
        imap.port()
    ));
    trusted.write_ca_pem(c.join("ca.pem")).unwrap();
    c.env("MAILER_BOUNCES_PASSWORD", PASSWORD)
}

/// Writes an empty ledger, so that `bounces` has something to match against.
fn seed_ledger(c: &Campaign) {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let text = c.config_text();
    let seeded = Campaign::new()
        .smtp_plain(&server)
        .section(&text[text.find("[bounces]").unwrap()..]);
    seeded.run(&["send", "--yes"]).code(0);
    std::fs::create_dir_all(c.join(".mailer")).unwrap();
    std::fs::copy(seeded.ledger(), c.ledger()).unwrap();
}

#[test]
fn hostile_imap_password_echoed_after_a_long_refusal_is_redacted() {
    let (c, _imap) = hostile_campaign(Mode::EchoPassword, 5);
    seed_ledger(&c);
    let run = c.run(&["bounces"]);
    run.code(1).stderr_has("refused the login for `bounces`");
    // Not even a part of it survives the cut at 300 characters.
    assert!(
        !run.stderr.contains(&PASSWORD[..6]) && !run.stdout.contains(&PASSWORD[..6]),
        "{run:?}"
    );
}

#[test]
fn hostile_imap_dripping_server_times_out_per_command() {
    // A line every second, timeout 2 s: the deadline covers the whole reply.
    let (c, _imap) = hostile_campaign(Mode::Drip, 2);
    seed_ledger(&c);
    let (run, _) = finish_within(&c, &["bounces"], Duration::from_secs(20));
    run.code(75).stderr_has("did not reply in time");
}

#[test]
fn hostile_imap_literal_bomb_and_line_flood_are_bounded() {
    for mode in [Mode::LiteralBomb, Mode::LineFlood] {
        let (c, _imap) = hostile_campaign(mode.clone(), 10);
        seed_ledger(&c);
        let (run, kb) = with_peak_rss(&c, &[("MAILER_BOUNCES_PASSWORD", PASSWORD)], &["bounces"]);
        run.code(1).stderr_has("SELECT");
        assert!(kb < 100 * 1024, "{mode:?}: peak RSS {kb} KB\n{run:?}");
    }
}

#[test]
fn hostile_imap_oversized_message_is_skipped_and_counted() {
    let pki = TestPki::new();
    let server = Server::start(ServerOptions::new(Security::Plain));
    // First the campaign, to know the letter's return path.
    let probe = Campaign::new()
        .smtp_plain(&server)
        .section("[bounces]\nreturn_path = \"bounces+{token}@org.example\"\nmailbox = \"Maildir\"\n");
    probe.run(&["send", "--yes"]).code(0);
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let dsn = fixture("postfix-5.1.1.eml", ana, &ana.mail_from, "ceo@corp.example");
    let imap = HostileImap::start(
        Mode::Oversized {
            big: 11 * 1024 * 1024,
            message: dsn.into_bytes(),
        },
        &pki,
    );
    // The same campaign (its VERP secret is in the ledger), read over IMAP.
    let text = probe.config_text().replace(
        "mailbox = \"Maildir\"",
        &format!(
            "mailbox = \"imaps://localhost:{}\"\nusername = \"bounces\"\nca_file = \"ca.pem\"\ntimeout_secs = 10",
            imap.port()
        ),
    );
    let c = Campaign::new()
        .head(&text)
        .env("MAILER_BOUNCES_PASSWORD", PASSWORD);
    pki.write_ca_pem(c.join("ca.pem")).unwrap();
    std::fs::create_dir_all(c.join(".mailer")).unwrap();
    std::fs::copy(probe.ledger(), c.ledger()).unwrap();
    c.run(&["bounces"])
        .code(0)
        .stdout_has("Read 1 message")
        .stdout_has("1 letter bounced")
        .stdout_has("1 skipped");
}

#[test]
fn hostile_imap_certificate_rejection_reads_as_a_sentence() {
    let imap = HostileImap::start(Mode::Drip, &TestPki::new());
    let c = hostile_campaign_at(&imap, &TestPki::new(), 5);
    seed_ledger(&c);
    let run = c.run(&["bounces"]);
    run.code(1)
        .stderr_has("certificate of IMAP server `localhost` was rejected")
        .stderr_has("not signed by a certificate authority mailer trusts");
    assert!(!run.stderr.contains("UnknownIssuer"), "{}", run.stderr);
}

// ------------------------------------------------------------ 3. local mailboxes

#[test]
fn hostile_mailbox_that_is_a_device_is_a_config_error() {
    let (c, _server) = sent_campaign("/dev/zero");
    c.run(&["bounces"])
        .code(1)
        .stderr_has("error: ")
        .stderr_has("`/dev/zero` is neither a Maildir folder nor an mbox file")
        .stderr_has("hint:");
}

#[test]
fn hostile_large_mbox_is_read_one_message_at_a_time() {
    let (c, server) = sent_campaign("big.mbox");
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let dsn = fixture("postfix-5.1.1.eml", ana, &ana.mail_from, "ceo@corp.example").replace("\r\n", "\n");
    // 200 MB: 16 messages of 11 MB (skipped) between small ones, then the DSN.
    let mut f = std::io::BufWriter::new(std::fs::File::create(c.join("big.mbox")).unwrap());
    let line = format!("{}\n", "x".repeat(1023));
    for i in 0..16 {
        writeln!(
            f,
            "From MAILER-DAEMON Tue Dec  1 10:00:00 2026\nFrom: m@r\nSubject: big {i}\n"
        )
        .unwrap();
        for _ in 0..11 * 1024 {
            f.write_all(line.as_bytes()).unwrap();
        }
        f.write_all(b"\n").unwrap();
        for j in 0..100 {
            write!(
                f,
                "From MAILER-DAEMON Tue Dec  1 10:00:00 2026\nFrom: m@r\nMessage-ID: <{i}.{j}@r>\nSubject: s\n\n{}\n",
                line.repeat(16)
            )
            .unwrap();
        }
    }
    write!(f, "From MAILER-DAEMON Tue Dec  1 10:00:00 2026\n{dsn}\n").unwrap();
    drop(f);
    assert!(std::fs::metadata(c.join("big.mbox")).unwrap().len() > 190_000_000);
    let (run, kb) = with_peak_rss(&c, &[], &["bounces"]);
    run.code(0)
        .stdout_has("Read 1601 messages")
        .stdout_has("1 letter bounced")
        .stdout_has("16 skipped");
    assert!(kb < 100 * 1024, "peak RSS {kb} KB for a 200 MB mbox");
}

// ------------------------------------------------------------ 4. Maildir underfoot

#[test]
fn hostile_maildir_messages_moving_to_cur_during_the_run_are_read_once() {
    let (c, _server) = sent_campaign("Maildir");
    let messages: Vec<(String, String)> = (0..3000)
        .map(|i| {
            (
                format!("{i:05}.host"),
                format!("From: a@b\r\nSubject: hi {i}\r\n\r\nx\r\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = messages.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    maildir(&c, "Maildir", &refs);
    let dir = c.join("Maildir");
    let child = c.spawn(&["bounces"]);
    // A mail client moving new/ → cur/, last first, while `bounces` reads
    // first first: the two meet somewhere in the middle.
    let mover = std::thread::spawn(move || {
        for (name, _) in messages.iter().rev() {
            let _ = std::fs::rename(
                dir.join("new").join(name),
                dir.join("cur").join(format!("{name}:2,S")),
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    let run = Run::from(child.wait_with_output().unwrap());
    mover.join().unwrap();
    run.code(0).stdout_has("Read 3000 messages");
}

#[test]
fn hostile_maildir_symlinked_messages_are_followed_or_counted() {
    let (c, server) = sent_campaign("Maildir");
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let dsn = fixture("postfix-5.1.1.eml", ana, &ana.mail_from, "ceo@corp.example");
    maildir(&c, "Maildir", &[]);
    std::fs::write(c.join("elsewhere.eml"), dsn).unwrap();
    let new = c.join("Maildir/new");
    std::os::unix::fs::symlink(c.join("elsewhere.eml"), new.join("1.link")).unwrap();
    std::os::unix::fs::symlink(c.join("nothing-here"), new.join("2.dangling")).unwrap();
    std::os::unix::fs::symlink(c.join("Maildir"), new.join("3.folder")).unwrap();
    c.run(&["-v", "bounces"])
        .code(0)
        .stdout_has("Read 1 message")
        .stdout_has("1 letter bounced")
        .stdout_has("2 skipped")
        .stderr_has("2.dangling")
        .stderr_has("3.folder");
    assert_eq!(c.states(), vec![("bounced".into(), 1), ("sent".into(), 2)]);
}

// ------------------------------------------------------------ 5. alignment

#[test]
fn hostile_misaligned_return_path_stops_send() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[bounces]\nreturn_path = \"bounces+{token}@evil.example\"\n");
    let reason = "[bounces] return_path is in `evil.example`, From in `org.example`";
    c.run(&["check"]).code(1).stdout_has(reason);
    c.run(&["send", "--yes"])
        .code(1)
        .stderr_has("error: mailer.toml:")
        .stderr_has(reason)
        .stderr_has("hint: return_path = \"bounces+{token}@org.example\"");
    assert_eq!(server.received().len(), 0);
    assert_eq!(server.connections(), 0);
}

// ------------------------------------------------------------ 6. display

#[test]
fn hostile_dsn_controls_are_escaped_wherever_bounce_text_is_shown() {
    let (c, server) = sent_campaign("Maildir");
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let dsn = fixture("controls-5.7.1.eml", ana, &ana.mail_from, "ceo@corp.example");
    maildir(&c, "Maildir", &[("1.controls", dsn)]);
    let run = c.run(&["-v", "bounces"]);
    run.code(0)
        .stdout_has("1 letter bounced")
        .stderr_has("matched by its VERP token")
        .stderr_has("rejected\\u{1b}[2J \\u{202e}MOC");
    no_raw_controls(&run);
    let status = c.run(&["status"]);
    status
        .code(0)
        .stdout_has("rejected\\u{1b}[2J \\u{202e}MOC.LIAMG@ETAROPROC\\u{202c} contact")
        .stdout_has("reported by mx.corp.example\\u{202e}");
    no_raw_controls(&status);
    let csv = c.run(&["export"]);
    no_raw_controls(&csv);
}

// ------------------------------------------------------------ 7. before send

#[test]
fn hostile_bounces_before_any_send_creates_nothing() {
    let c = Campaign::new().section("[bounces]\nmailbox = \"Maildir\"\n");
    maildir(&c, "Maildir", &[]);
    c.run(&["bounces"])
        .code(0)
        .stdout_has("Read 0 messages")
        .stdout_has("Nothing sent yet");
    assert!(!c.join(".mailer").exists(), "a ledger folder was created");
    assert!(!Path::new(&c.ledger()).exists());
}
