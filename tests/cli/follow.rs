//! `send --follow` across rounds (each note once, the relay's pace carried
//! over), unreadable ledgers beside this one, and which section holds a
//! literal password.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crate::support::campaign::{Campaign, SUPPORTERS};
use crate::support::relays::throttling_relay;
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};

/// How many times `needle` occurs in `text`.
fn times(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

// ---- each note once per --follow run ----

#[test]
fn follow_shows_each_note_once_and_later_rounds_only_what_is_new() {
    // The other campaign's letter is the first; of ours, the second is
    // refused for good: a failure and its hint in round 1, a held failure
    // (and the same hint) in round 2.
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|s| match s {
        Step::Dot { nth: 3, .. } => Action::reply("550 5.7.1 refused"),
        _ => Action::Default,
    }));
    let supporters = format!("{SUPPORTERS}not-an-address,Bad,Row,Nowhere,\n");
    let c = Campaign::new()
        .file("supporters.csv", supporters)
        .smtp_plain(&server)
        .section("[delivery]\ndaily_limit = 10\nretries = 0\n");
    // Another campaign in the folder used the same relay account today.
    let other = c
        .config_text()
        .replace("id = \"test-campaign\"", "id = \"other-campaign\"")
        .replace("ceo@corp.example", "cfo@corp.example");
    std::fs::write(c.join("other.toml"), other).unwrap();
    c.run(&["-c", "other.toml", "send", "--yes", "--limit", "1"])
        .code(0);
    let c = c.file(
        ".mailer/broken.sqlite3",
        "this is no SQLite database, just text\n".repeat(200),
    );

    let r = c.run(&["send", "--yes", "--follow"]);
    r.code(3).stderr_has("Every letter due was handed over.");
    // It took two rounds: one that sent, one that found nothing left.
    assert_eq!(times(&r.stdout, "sent 2 "), 1, "{}", r.stdout);
    assert_eq!(times(&r.stdout, "sent 0 "), 1, "{}", r.stdout);
    for once in [
        "is shared with campaign `other-campaign`",
        "broken.sqlite3` is not a mailer ledger",
        "not-an-address",
        "`mailer status` lists the failures",
    ] {
        assert_eq!(times(&r.stderr, once), 1, "{once:?}\n--- stderr\n{}", r.stderr);
    }
}

// ---- the relay's pace carries over to the next round ----

#[test]
fn follow_starts_the_next_round_at_the_pace_the_relay_left() {
    // `rate` is 1 a second; the relay takes one per 1.5 s: throttled once,
    // the pace halves to one per 2 s, which the relay takes. Two rounds
    // (`--limit 2`): the second starts at the slowed pace, 0.5 s clear of
    // the relay's limit either way.
    let refused = Arc::new(AtomicUsize::new(0));
    let server = Server::start(throttling_relay(Duration::from_millis(1500), &refused));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[delivery]\nrate = \"60/minute\"\nconcurrency = 1\nretries = 0\n");
    let r = c.run(&["-v", "send", "--yes", "--follow", "--limit", "2"]);
    r.code(0).stderr_has("Every letter due was handed over.");
    assert_eq!(times(&r.stdout, "sent 2 deferred 0 failed 0"), 1, "{}", r.stdout);
    assert_eq!(times(&r.stdout, "sent 1 deferred 0 failed 0"), 1, "{}", r.stdout);
    assert_eq!(server.received().len(), 3);
    // Round 2 said where it started and was not throttled again.
    r.stderr_has("the relay slowed us earlier: starting at 30/minute");
    assert_eq!(times(&r.stderr, "slowed to 30/minute"), 1, "{}", r.stderr);
    assert_eq!(times(&r.stdout, "the relay throttled us"), 1, "{}", r.stdout);
    assert_eq!(refused.load(SeqCst), 1, "{}", r.stderr);
}

// ---- a literal password names its section ----

#[test]
fn a_literal_bounces_password_in_a_readable_config_names_bounces() {
    let c = Campaign::new().section(
        "[bounces]\nmailbox = \"imaps://imap.example\"\nusername = \"bounces\"\npassword = \"hunter2\"\n",
    );
    let config = c.write_config();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = c.run(&["check"]);
    run.code(1)
        .stderr_has("holds a literal password in [bounces]")
        .stderr_has("chmod 600");
    assert!(!run.stderr.contains("SMTP password"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

// ---- another ledger beside this one that cannot be read ----

#[test]
fn a_ledger_beside_that_cannot_be_read_is_named_by_the_resend_check() {
    // No daily_limit: only the check for letters another campaign sent reads it.
    let c = Campaign::new().file(
        ".mailer/broken.sqlite3",
        "this is no SQLite database, just text\n".repeat(200),
    );
    let r = c.run(&["send", "--dry-run"]);
    r.code(0)
        .stderr_has("warning: ledger `")
        .stderr_has("broken.sqlite3` is not a mailer ledger: ")
        .stderr_has("whether its campaign already wrote to these targets is not checked");
}
