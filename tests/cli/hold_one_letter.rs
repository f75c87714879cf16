//! `mailer skip --supporter S --target T` holds exactly that one letter:
//! never sent, whatever the flags, until `mailer requeue`; a later skip of
//! the same row for invalid data does not clear the hold.

use crate::support::campaign::Campaign;
use crate::support::smtp::{Security, Server, ServerOptions};
use crate::support::wait::idle;

const BOARD: &str = "[[targets]]\nname = \"Brad Smith\"\nemail = \"board@corp.example\"\n";

/// One ledger row's (state, reply, held) for this letter.
fn row(c: &Campaign, supporter: &str, target: &str) -> (String, String, i64) {
    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    conn.query_row(
        "SELECT state, coalesce(reply, ''), held FROM letters WHERE supporter = ?1 AND target = ?2",
        [supporter, target],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// (Reply-To, recipients) of each received message.
fn sent_to(server: &Server) -> Vec<(String, String)> {
    let mut v: Vec<_> = server
        .received()
        .iter()
        .map(|m| (m.header("Reply-To").unwrap(), m.rcpt_to.join(",")))
        .collect();
    v.sort();
    v
}

#[test]
fn hold_one_letter_stays_held_across_retry_failed_and_resend_unknown() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).section(BOARD);
    c.run(&[
        "skip",
        "--supporter",
        "lee@mail.example",
        "--target",
        "board@corp.example",
        "--reason",
        "board only later",
    ])
    .code(0);
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Letters due now: 5")
        .stdout_has("1 skipped by hand");
    c.run(&["send", "--yes", "--retry-failed", "--resend-unknown"])
        .code(0)
        .stdout_has("sent 5");
    c.run(&["send", "--yes", "--retry-failed", "--resend-unknown"])
        .code(0)
        .stdout_has("sent 0");
    idle(&server);
    let got = sent_to(&server);
    assert_eq!(got.len(), 5);
    assert!(got.contains(&("lee@mail.example".into(), "ceo@corp.example".into())));
    assert!(!got.contains(&("lee@mail.example".into(), "board@corp.example".into())));
    assert_eq!(
        row(&c, "lee@mail.example", "board@corp.example"),
        ("skipped".into(), "skipped by hand: board only later".into(), 1)
    );
    c.run(&["status"]).code(0).stdout_has("skipped");
    c.run(&["export"])
        .code(0)
        .stdout_has("skipped by hand: board only later");
}

#[test]
fn hold_one_letter_survives_a_later_skip_for_invalid_data() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).section(BOARD).file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana,López,Tucson,\n",
    );
    c.run(&[
        "skip",
        "--supporter",
        "ana@mail.example",
        "--target",
        "board@corp.example",
        "--reason",
        "asked to wait",
    ])
    .code(0);
    // The row goes bad (a NUL in a value): every run
    // skips it for invalid data, and records so in the ledger, quiet or not.
    let c = c.file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana\0X,López,Tucson,\n",
    );
    // Her row is the file's only one: with every row skipped there is
    // nothing to send, which `send` says with exit 1.
    c.run(&["send", "--yes"]).code(1);
    c.run(&["-q", "send", "--yes"]).code(1);
    assert_eq!(
        row(&c, "ana@mail.example", "board@corp.example"),
        ("skipped".into(), "skipped by hand: asked to wait".into(), 1)
    );
    // Fixed again: the CEO's letter goes, the held one still does not.
    let c = c.file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana,López,Tucson,\n",
    );
    c.run(&["send", "--yes", "--retry-failed", "--resend-unknown"])
        .code(0)
        .stdout_has("sent 1");
    idle(&server);
    assert_eq!(
        sent_to(&server),
        vec![("ana@mail.example".into(), "ceo@corp.example".into())]
    );
    assert_eq!(row(&c, "ana@mail.example", "board@corp.example").2, 1);
}
