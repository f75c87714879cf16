//! Issue 14: bounces. VERP return paths on the wire, `mailer bounces` over a
//! Maildir, an mbox and a real IMAP server (dovecot, TLS), DSNs in the shapes
//! Postfix, Exchange/Microsoft 365 and Gmail send, and what `status`,
//! `export`, `check` and `send` make of them.

use std::collections::BTreeMap;

use crate::support::campaign::{Campaign, Run};
use crate::support::imap::{Dovecot, free_port};
use crate::support::smtp::{Security, Server, ServerOptions, TestPki};

const PASSWORD: &str = "s3cret-imap-pw";

/// A DSN fixture with this letter's details filled in.
fn fixture(name: &str, letter: &Letter) -> String {
    let path = format!("{}/tests/fixtures/dsn/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap()
        .replace("{{RETURN_PATH}}", &letter.mail_from)
        .replace("{{MESSAGE_ID}}", &letter.message_id)
        .replace("{{TARGET}}", "ceo@corp.example")
        .replace("{{SUPPORTER}}", &letter.supporter)
        .replace('\n', "\r\n")
}

/// One letter as the server received it.
#[derive(Debug, Clone)]
struct Letter {
    supporter: String,
    mail_from: String,
    message_id: String,
}

/// The letters the server got, by supporter (their Reply-To).
fn letters(server: &Server) -> BTreeMap<String, Letter> {
    server
        .received()
        .into_iter()
        .map(|m| {
            let supporter = m.header("Reply-To").unwrap();
            let letter = Letter {
                supporter: supporter.clone(),
                mail_from: m.mail_from.clone(),
                message_id: m.message_id().unwrap(),
            };
            (supporter, letter)
        })
        .collect()
}

/// A campaign sending through `server` with VERP and a bounce mailbox.
fn campaign(server: &Server, mailbox: &str) -> Campaign {
    Campaign::new().smtp_plain(server).section(&format!(
        "[bounces]\nreturn_path = \"bounces+{{token}}@org.example\"\nmailbox = \"{mailbox}\"\n"
    ))
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

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap()
}

#[test]
fn issue14_verp_envelope_carries_a_per_letter_token() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "Maildir");
    c.run(&["send", "--yes"]).code(0);
    let got = letters(&server);
    assert_eq!(got.len(), 3);
    let mut tokens = Vec::new();
    for l in got.values() {
        let token = l
            .mail_from
            .strip_prefix("bounces+")
            .and_then(|t| t.strip_suffix("@org.example"))
            .unwrap_or_else(|| panic!("MAIL FROM `{}` has no VERP token", l.mail_from));
        assert_eq!(token.len(), 16, "{token}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let local = l.supporter.split('@').next().unwrap();
        assert!(!token.contains(local), "token {token} shows the supporter");
        tokens.push(token.to_string());
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "one token per letter");

    // Without [bounces], MAIL FROM stays the From address.
    let plain = Server::start(ServerOptions::new(Security::Plain));
    Campaign::new().smtp_plain(&plain).run(&["send", "--yes"]).code(0);
    assert!(
        plain
            .received()
            .iter()
            .all(|m| m.mail_from == "letters@org.example")
    );
}

#[test]
fn issue14_verp_token_is_stable_across_resends() {
    // The first attempt is refused with 451 and sent again later: same token.
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        use crate::support::smtp::{Action, Step};
        match step {
            Step::Data { conn: 1 } => Action::reply("451 4.3.0 try again later"),
            _ => Action::Default,
        }
    }));
    let c = Campaign::new()
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,note\nana@mail.example,Ana,L,Tucson,\n",
        )
        .smtp_plain(&server)
        .section("[delivery]\nretries = 0\n[bounces]\nreturn_path = \"bounces+{token}@org.example\"\n");
    c.run(&["send", "--yes"]).code(3);
    let first: Vec<String> = server
        .transcript()
        .iter()
        .filter(|l| l.text.starts_with("MAIL FROM"))
        .map(|l| l.text.clone())
        .collect();
    c.sql("UPDATE letters SET next_attempt_at = 0");
    c.run(&["send", "--yes"]).code(0);
    let all: Vec<String> = server
        .transcript()
        .iter()
        .filter(|l| l.text.starts_with("MAIL FROM"))
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(first.len(), 1);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], all[1], "a resend carries the same return path");
}

#[test]
fn issue14_bounces_end_to_end_maildir() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "Maildir");
    c.run(&["send", "--yes"]).code(0);
    let got = letters(&server);
    let (ana, sam, lee) = (
        &got["ana@mail.example"],
        &got["sam@mail.example"],
        &got["lee@mail.example"],
    );
    maildir(
        &c,
        "Maildir",
        &[
            ("1.postfix", fixture("postfix-5.1.1.eml", ana)),
            ("2.exchange", fixture("exchange-5.7.1.eml", sam)),
            ("3.delayed", fixture("postfix-delayed-4.4.1.eml", lee)),
            ("4.ooo", fixture("out-of-office.eml", ana)),
            ("5.other", fixture("not-ours.eml", ana)),
        ],
    );
    let run = c.run(&["bounces"]);
    run.code(0)
        .stdout_has("Read 5 messages")
        .stdout_has("2 letters bounced")
        .stdout_has("1 delay notice")
        .stdout_has("1 auto-reply")
        .stdout_has("1 not about this campaign's letters");

    let status = json(c.run(&["status", "--json"]).code(0));
    assert_eq!(status["bounced"], 2, "{status}");
    assert_eq!(status["sent"], 1, "{status}");
    assert_eq!(status["total"], 3, "{status}");

    // Again: nothing changes.
    let before = c.states();
    c.run(&["bounces"])
        .code(0)
        .stdout_has("0 letters bounced")
        .stdout_has("3 already recorded");
    assert_eq!(c.states(), before);
    assert_eq!(json(&c.run(&["status", "--json"]))["bounced"], 2);

    // send sends nothing new.
    let received = server.received().len();
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), received);
    c.run(&["send", "--yes", "--retry-failed", "--resend-unknown"])
        .code(0);
    assert_eq!(server.received().len(), received);

    // status: grouped by problem, with when it started and who said it.
    let text = c.run(&["status"]).code(0).stdout.clone();
    assert!(text.contains("bounced          2"), "{text}");
    assert!(text.contains("Bounced, by problem:"), "{text}");
    assert!(
        text.contains("1 letter since 2026-12-02 14:03 UTC: 550 5.7.1 Message rejected as bulk mail"),
        "{text}"
    );
    assert!(text.contains("reported by mx.corp.example"), "{text}");
    assert!(text.contains("1 letter had a delay notice"), "{text}");
    assert!(
        text.contains("warning: 2 of the last 3 letters to ceo@corp.example bounced"),
        "{text}"
    );

    // export: the bounce status and diagnostic.
    let csv = c.run(&["export"]).code(0).stdout.clone();
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains(",bounce_status,bounce_diagnostic,bounced_at,"),
        "{header}"
    );
    let ana_row = csv.lines().find(|l| l.starts_with("ana@mail.example")).unwrap();
    assert!(ana_row.contains(",bounced,"), "{ana_row}");
    assert!(ana_row.contains("5.1.1"), "{ana_row}");
    assert!(
        ana_row.contains("User unknown in virtual mailbox table"),
        "{ana_row}"
    );
    let lee_row = csv.lines().find(|l| l.starts_with("lee@mail.example")).unwrap();
    assert!(
        lee_row.contains(",sent,") && lee_row.contains("4.4.1"),
        "{lee_row}"
    );

    // check names the target whose address came back unknown.
    c.run(&["check"])
        .code(0)
        .stderr_has("target `ceo@corp.example`: 1 letter bounced as an unknown address");
}

#[test]
fn issue14_gmail_dsn_in_mbox_matches_by_message_id() {
    // No return_path: MAIL FROM is the From address; the DSN is tied to its
    // letter by the Message-ID of the returned message.
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[bounces]\nmailbox = \"bounces.mbox\"\n");
    c.run(&["send", "--yes"]).code(0);
    let got = letters(&server);
    let lee = &got["lee@mail.example"];
    let mut mbox = String::new();
    for text in [fixture("gmail-5.1.1.eml", lee), fixture("out-of-office.eml", lee)] {
        mbox.push_str("From MAILER-DAEMON Thu Dec  3 16:15:42 2026\n");
        mbox.push_str(&text.replace("\r\n", "\n"));
        mbox.push('\n');
    }
    std::fs::write(c.join("bounces.mbox"), mbox).unwrap();
    c.run(&["bounces"])
        .code(0)
        .stdout_has("Read 2 messages")
        .stdout_has("1 letter bounced")
        .stdout_has("1 auto-reply");
    let states = c.states();
    assert_eq!(states, vec![("bounced".into(), 1), ("sent".into(), 2)]);
    let csv = c.run(&["export"]).code(0).stdout.clone();
    let row = csv.lines().find(|l| l.starts_with("lee@mail.example")).unwrap();
    assert!(
        row.contains("The email account that you tried to reach does not exist"),
        "{row}"
    );
}

#[test]
fn issue14_a_bounce_of_the_supporters_copy_is_not_the_letters() {
    // cc_supporter: the supporter's own address bounced; the letter to the
    // target did not.
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .head(&Campaign::new().config_text().replace(
            "reply_to = \"{{ supporter.email }}\"",
            "reply_to = \"{{ supporter.email }}\"\ncc_supporter = true",
        ))
        .smtp_plain(&server)
        .section("[bounces]\nreturn_path = \"bounces+{token}@org.example\"\nmailbox = \"Maildir\"\n");
    c.run(&["send", "--yes"]).code(0);
    let got = letters(&server);
    let ana = &got["ana@mail.example"];
    let copy = fixture("postfix-5.1.1.eml", ana).replace("ceo@corp.example", "ana@mail.example");
    maildir(&c, "Maildir", &[("1", copy)]);
    c.run(&["bounces"]).code(0).stdout_has("0 letters bounced");
    assert_eq!(c.states(), vec![("sent".into(), 3)]);
}

#[test]
fn issue14_return_path_needs_a_token_and_the_from_domain() {
    let c = Campaign::new().section("[bounces]\nreturn_path = \"bounces@org.example\"\n");
    c.run(&["check"])
        .code(1)
        .stderr_has("mailer.toml:")
        .stderr_has("has no `{token}`");
    let c = Campaign::new().section("[bounces]\nreturn_path = \"bounces+{token}@other.example\"\n");
    c.run(&["check"])
        .code(1)
        .stdout_has("[bounces] return_path is in `other.example`, From in `org.example`")
        .stdout_has("DMARC");
    // A subdomain of From's domain aligns (relaxed alignment).
    let c = Campaign::new().section("[bounces]\nreturn_path = \"b+{token}@bounce.org.example\"\n");
    c.run(&["check"]).code(0);
}

#[test]
fn issue14_bounces_needs_a_mailbox_and_reports_a_missing_one() {
    Campaign::new()
        .run(&["bounces"])
        .code(1)
        .stderr_has("no [bounces] section");
    Campaign::new()
        .section("[bounces]\nmailbox = \"nowhere\"\n")
        .run(&["bounces"])
        .code(1)
        .stderr_has("cannot read the bounce mailbox");
    Campaign::new()
        .section("[bounces]\nmailbox = \"imap://imap.org.example\"\n")
        .run(&["bounces"])
        .code(1)
        .stderr_has("only imaps://");
}

// ------------------------------------------------------------------ IMAP

/// A campaign whose bounce mailbox is `dovecot`, trusting `ca`.
fn imap_campaign(server: &Server, port: u16, ca: &TestPki) -> Campaign {
    let c = Campaign::new().smtp_plain(server).section(&format!(
        "[bounces]\nreturn_path = \"bounces+{{token}}@org.example\"\nmailbox = \"imaps://localhost:{port}\"\n\
         username = \"bounces\"\nca_file = \"ca.pem\"\ntimeout_secs = 10\n"
    ));
    ca.write_ca_pem(c.join("ca.pem")).unwrap();
    c.env("MAILER_BOUNCES_PASSWORD", PASSWORD)
}

#[track_caller]
fn no_password(run: &Run) {
    assert!(
        !run.stdout.contains(PASSWORD) && !run.stderr.contains(PASSWORD),
        "the password was printed\n{run:?}"
    );
}

#[test]
fn issue14_imap_marks_processed_messages_seen_and_deletes_nothing() {
    let pki = TestPki::new();
    let dovecot = Dovecot::start("bounces", PASSWORD, &pki);
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = imap_campaign(&server, dovecot.port(), &pki);
    c.run(&["send", "--yes"]).code(0);
    let got = letters(&server);
    dovecot.deliver(
        "1.postfix",
        fixture("postfix-5.1.1.eml", &got["ana@mail.example"]).as_bytes(),
    );
    dovecot.deliver(
        "2.exchange",
        fixture("exchange-5.7.1.eml", &got["sam@mail.example"]).as_bytes(),
    );
    dovecot.deliver(
        "3.ooo",
        fixture("out-of-office.eml", &got["lee@mail.example"]).as_bytes(),
    );
    let run = c.run(&["bounces"]);
    no_password(&run);
    run.code(0)
        .stdout_has("Read 3 messages from imaps://localhost:")
        .stdout_has("2 letters bounced")
        .stdout_has("1 auto-reply");
    assert_eq!(json(&c.run(&["status", "--json"]))["bounced"], 2);
    let messages = dovecot.messages();
    assert_eq!(messages.len(), 3, "nothing deleted: {messages:?}");
    assert_eq!(
        messages.iter().filter(|(_, seen)| *seen).count(),
        2,
        "the two bounces are \\Seen, the auto-reply is left alone: {messages:?}"
    );
    // Again: only the unseen auto-reply is read; nothing changes.
    let before = c.states();
    c.run(&["bounces"])
        .code(0)
        .stdout_has("Read 1 message from")
        .stdout_has("0 letters bounced");
    assert_eq!(c.states(), before);
    assert_eq!(dovecot.messages().len(), 3);
    // -q: silent on success, for cron.
    let quiet = c.run(&["-q", "bounces"]);
    quiet.code(0);
    assert_eq!(quiet.stdout, "");
}

#[test]
fn issue14_imap_wrong_password_is_a_config_error() {
    let pki = TestPki::new();
    let dovecot = Dovecot::start("bounces", "the-right-one", &pki);
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = imap_campaign(&server, dovecot.port(), &pki);
    let run = c.run(&["bounces"]);
    no_password(&run);
    run.code(1)
        .stderr_has("refused the login for `bounces`")
        .stderr_has("hint:");
    let log = dovecot.wait_log("auth failed");
    assert!(log.contains("user=<bounces>"), "{log}");
}

#[test]
fn issue14_imap_untrusted_certificate_fails_closed() {
    let dovecot_pki = TestPki::new();
    let dovecot = Dovecot::start("bounces", PASSWORD, &dovecot_pki);
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = imap_campaign(&server, dovecot.port(), &TestPki::new());
    let run = c.run(&["bounces"]);
    no_password(&run);
    run.code(1)
        .stderr_has("certificate of IMAP server `localhost` was rejected")
        .stderr_has("ca_file");
    // The handshake failed on our side: the server saw no login at all.
    // dovecot logs our disconnect with the TLS alert ("unknown ca") and
    // "no auth attempts", or, when its auth process was not ready yet (a
    // loaded machine), "disconnected before auth was ready". Either way no
    // login came. (The start-up probe's own line has no alert.)
    let log = dovecot.wait_log("unknown ca");
    let ours = log.lines().find(|l| l.contains("unknown ca")).unwrap_or_default();
    assert!(
        ["no auth attempts", "disconnected before auth was ready"]
            .iter()
            .any(|n| ours.contains(n)),
        "{log}"
    );
    assert!(
        !log.contains("user=<bounces>"),
        "no login reached the server:\n{log}"
    );
}

#[test]
fn issue14_imap_unreachable_is_try_later() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = imap_campaign(&server, free_port(), &TestPki::new());
    let run = c.run(&["bounces"]);
    no_password(&run);
    run.code(75).stderr_has("cannot connect to localhost:");
}
