//! Issue 15, "the first hour", part three: the confirmation shows the
//! letter, the password is settled before the question (and asked for on
//! a terminal), `-q` still names a newly skipped row once, and re-sends
//! after a changed target or campaign id are announced.

use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::pty::Term;
use base64::Engine as _;

use crate::support::relays::starttls_auth_campaign;
use crate::support::smtp::{Security, Server, ServerOptions};

// ---------------------------------------------------------------- item 3: the confirmation shows the letter

/// What the terminal showed before the `[y/N]` question, answering `n`.
fn before_the_question(c: &Campaign) -> String {
    let mut t = Term::spawn(c.command(&["send"]));
    t.expect("[y/N] ");
    let shown = t.text();
    t.keys("[y/N] ", "n");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "--- terminal\n{text}");
    assert!(text.contains("Nothing sent"), "--- terminal\n{text}");
    let at = shown.find("About to send").expect("the question");
    shown[..at].to_string()
}

#[test]
fn issue15_the_confirmation_shows_a_small_run_in_full_and_the_check_warnings() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    let shown = before_the_question(&c);
    for needle in [
        "From: Ana López via Test Org <letters@org.example>",
        "To: Satya Nadella",
        "Subject: Ana from Tucson: drop the contract",
        "I am Ana López from Tucson.",
        "Subject: Sam from Minneapolis: drop the contract",
        "Please, listen.",
        "I am Lee Park from Seattle.",
        // `check`'s warning, with the question.
        "warning: no [dkim] section",
    ] {
        assert!(shown.contains(needle), "lacks {needle:?}\n--- terminal\n{shown}");
    }
    assert!(server.received().is_empty(), "a letter went after `n`");
}

#[test]
fn issue15_the_confirmation_of_a_larger_run_shows_the_first_letters_headers() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).file(
        "supporters.csv",
        format!(
            "{}kim@mail.example,Kim,Ng,Boise,\n",
            crate::support::campaign::SUPPORTERS
        ),
    );
    let shown = before_the_question(&c);
    for needle in [
        "From: Ana López via Test Org <letters@org.example>",
        "To: Satya Nadella",
        "Subject: Ana from Tucson: drop the contract",
        "warning: no [dkim] section",
    ] {
        assert!(shown.contains(needle), "lacks {needle:?}\n--- terminal\n{shown}");
    }
    // Four letters: not the whole text.
    assert!(!shown.contains("I am Ana"), "--- terminal\n{shown}");
    assert!(!shown.contains("Sam from"), "--- terminal\n{shown}");
}

// ---------------------------------------------------------------- item 4: credentials before the question

const USER: &str = "letters@org.example";
const PASSWORD: &str = "Tr0ub4dor&3-horse-Battery";

#[test]
fn issue15_a_password_typed_at_the_terminal_is_not_echoed_and_reaches_auth() {
    let (server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    let mut t = Term::spawn_ctty(&c.command(&["send"]));
    t.expect("(not stored): ");
    t.expect_no_echo();
    t.keys("(not stored): ", PASSWORD);
    t.keys("[y/N] ", "y");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "--- terminal\n{text}");
    assert!(
        text.contains(&format!("SMTP password for {USER} at 127.0.0.1")),
        "{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password was echoed\n--- terminal\n{text}"
    );
    assert!(server.wait_idle(Duration::from_secs(10)));
    let plain = base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("\0{USER}\0{PASSWORD}"));
    let auth: Vec<_> = server
        .transcript()
        .into_iter()
        .filter(|l| l.text.to_ascii_uppercase().starts_with("AUTH"))
        .collect();
    assert!(
        !auth.is_empty() && auth.iter().all(|l| l.tls && l.text.contains(&plain)),
        "{auth:?}"
    );
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    // Never stored.
    c.assert_never_stored(PASSWORD);
}

#[test]
fn issue15_a_failing_password_command_stops_send_before_the_question() {
    let (server, c) = starttls_auth_campaign(
        USER,
        PASSWORD,
        "password_command = \"echo 'vault locked' >&2; exit 3\"\n",
    );
    let t = Term::spawn(c.command(&["send"]));
    let (code, text) = t.finish();
    assert_eq!(code, 1, "--- terminal\n{text}");
    assert!(text.contains("vault locked"), "--- terminal\n{text}");
    assert!(!text.contains("[y/N]"), "asked first\n--- terminal\n{text}");
    assert_eq!(server.connections(), 0, "connected with no password");
}

#[test]
fn issue15_an_unset_password_variable_stops_a_run_without_a_terminal_before_connecting() {
    let (server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    let r = c.run(&["send", "--yes"]);
    r.code(1).stderr_has("MAILER_SMTP_PASSWORD");
    assert_eq!(server.connections(), 0, "connected with no password");
    if c.ledger().exists() {
        assert!(c.states().iter().all(|(s, _)| s == "pending"), "{:?}", c.states());
    }
}

#[test]
fn issue15_check_reports_a_missing_password_source() {
    let (_server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    // Not set: a warning; `send` at a terminal would ask, so exit 0.
    c.run(&["check"])
        .code(0)
        .stderr_has("warning: the SMTP password: environment variable `MAILER_SMTP_PASSWORD`")
        .stderr_has("`mailer send` at a terminal asks for it");
    // Set: nothing to say.
    let set = c.env("MAILER_SMTP_PASSWORD", PASSWORD);
    let r = set.run(&["check"]);
    r.code(0);
    assert!(!r.stderr.contains("SMTP password"), "{}", r.stderr);
    assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));
    // A command that fails stops `send`: exit 1.
    let (_server, c) = starttls_auth_campaign(USER, PASSWORD, "password_command = \"exit 3\"\n");
    c.run(&["check"])
        .code(1)
        .stdout_has("[smtp] password")
        .stdout_has("password_command");
}

// ---------------------------------------------------------------- item 11: -q names a newly skipped row once

/// Lines of `text` that name a skipped row.
fn skipped_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.ends_with("(skipped)")).collect()
}

#[test]
fn issue15_quiet_names_each_newly_skipped_row_once() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let with_bad = format!(
        "{}not-an-email,Bad,Row,Reno,\n",
        crate::support::campaign::SUPPORTERS
    );
    let c = Campaign::new()
        .smtp_plain(&server)
        .file("supporters.csv", &with_bad);
    // The first run that sees it names it, even with -q.
    let r = c.run(&["-q", "send", "--yes"]);
    r.code(0);
    let lines = skipped_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].starts_with("supporters.csv:5: "), "{}", r.stderr);
    // The next run does not say it again.
    let r = c.run(&["-q", "send", "--yes"]);
    r.code(0);
    assert!(skipped_lines(&r.stderr).is_empty(), "{}", r.stderr);
    // A new invalid signup, with nothing else due: named once, alone.
    let c = c.file("supporters.csv", format!("{with_bad}also bad,Also,Bad,Reno,\n"));
    let r = c.run(&["-q", "send", "--yes"]);
    r.code(0);
    let lines = skipped_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].starts_with("supporters.csv:6: "), "{}", r.stderr);
    let r = c.run(&["-q", "send", "--yes"]);
    assert!(skipped_lines(&r.stderr).is_empty(), "{}", r.stderr);
    // Without -q every run lists them, as before.
    let r = c.run(&["send", "--yes"]);
    assert_eq!(skipped_lines(&r.stderr).len(), 2, "{}", r.stderr);
    assert_eq!(server.received().len(), 3);
}

// ---------------------------------------------------------------- item 8: silent re-sends

/// The default campaign's head with another `id` and target address.
fn head(id: &str, target: &str) -> String {
    format!(
        r#"[campaign]
id = "{id}"
name = "Drop the contract"
org = "Test Org"
letter = "letters/letter.txt"
subject = "{{{{ supporter.first_name }}}} from {{{{ supporter.city }}}}: drop the contract"

[sender]
from = "{{{{ supporter.name }}}} via Test Org <letters@org.example>"
reply_to = "{{{{ supporter.email }}}}"

[[targets]]
name = "Satya Nadella"
email = "{target}"

[supporters]
file = "supporters.csv"
"#
    )
}

/// Three letters sent to `ceo@corp.example` under id `test-campaign`.
fn sent_once() -> (Server, Campaign) {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .head(&head("test-campaign", "ceo@corp.example"))
        .smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    (server, c)
}

#[test]
fn issue15_the_dry_run_warns_when_a_targets_address_changed_after_letters_went() {
    let (_server, c) = sent_once();
    let c = c.head(&head("test-campaign", "satya@corp.example"));
    let r = c.run(&["send", "--dry-run"]);
    r.code(0).stdout_has("Letters due now: 3").stderr_has(
        "warning: letters were already sent to a target no longer in the config: `ceo@corp.example` (3)",
    );
    // Nothing to say while the config still names it.
    let c = c.head(&head("test-campaign", "ceo@corp.example"));
    let r = c.run(&["send", "--dry-run"]);
    assert!(!r.stderr.contains("already sent"), "{}", r.stderr);
}

#[test]
fn issue15_the_dry_run_warns_when_another_campaigns_ledger_sent_to_the_same_targets() {
    let (_server, c) = sent_once();
    let c = c.head(&head("renamed", "ceo@corp.example"));
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Letters due now: 3")
        .stderr_has("(campaign `test-campaign`) already sent letters to this campaign's targets: `ceo@corp.example` (3)")
        .stderr_has("set [campaign] id back to `test-campaign`");
    // Another campaign to other targets is not this one's business.
    let c = c.head(&head("renamed", "someone.else@corp.example"));
    let r = c.run(&["send", "--dry-run"]);
    assert!(!r.stderr.contains("campaign `test-campaign`"), "{}", r.stderr);
}

#[test]
fn issue15_the_confirmation_warns_before_sending_again_under_a_new_id() {
    let (server, c) = sent_once();
    let c = c.head(&head("renamed", "ceo@corp.example"));
    let shown = before_the_question(&c);
    assert!(
        shown.contains(
            "warning: `.mailer/test-campaign.sqlite3` (campaign `test-campaign`) already sent letters"
        ),
        "--- terminal\n{shown}"
    );
    assert_eq!(server.received().len(), 3, "a letter went again after `n`");
}
