//! Issue 15, "the first hour": holding letters back by hand and putting them
//! back, `check`'s exit codes, placeholders that must never reach a real
//! relay, `init`'s questions and `preview` at a terminal.

use std::fmt::Write as _;

use crate::support::campaign::Campaign;
use crate::support::pty::Term;
use crate::support::smtp::{Received, Security, Server, ServerOptions};
use crate::support::wait::idle;

const BOARD: &str = "[[targets]]\nname = \"Brad Smith\"\nemail = \"board@corp.example\"\n";

/// (supporter address from Reply-To, recipient) of each received message, sorted.
fn letters(got: &[Received]) -> Vec<(String, String)> {
    let mut v: Vec<_> = got
        .iter()
        .map(|m| (m.header("Reply-To").unwrap(), m.rcpt_to.join(",")))
        .collect();
    v.sort();
    v
}

/// One ledger row's (state, reply) for this letter.
fn row(c: &Campaign, supporter: &str, target: &str) -> (String, String) {
    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    conn.query_row(
        "SELECT state, coalesce(reply, '') FROM letters WHERE supporter = ?1 AND target = ?2",
        [supporter, target],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

// ---------------------------------------------------------------- item 10: skip and requeue

#[test]
fn issue15_skip_holds_a_letter_across_sends_until_requeued() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&[
        "skip",
        "--supporter",
        "Sam@Mail.example",
        "--reason",
        "asked to wait",
    ])
    .code(0)
    .stderr_has("skipped  sam@mail.example → ceo@corp.example (was pending)");
    assert_eq!(
        row(&c, "sam@mail.example", "ceo@corp.example"),
        ("skipped".into(), "skipped by hand: asked to wait".into())
    );
    // The dry run and two real runs all leave Sam's letter alone.
    c.run(&["send", "--dry-run"]).code(0);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    idle(&server);
    assert_eq!(server.received().len(), 2);
    assert!(server.received().iter().all(|m| !m.text().contains("Sam Okafor")));
    // …and keep the reason, unlike a row skipped for its data.
    assert_eq!(
        row(&c, "sam@mail.example", "ceo@corp.example"),
        ("skipped".into(), "skipped by hand: asked to wait".into())
    );
    let status = c.run(&["status", "--json"]);
    status
        .code(0)
        .stdout_has("\"sent\":2")
        .stdout_has("\"skipped\":1");
    c.run(&["export"])
        .code(0)
        .stdout_has("skipped by hand: asked to wait");

    c.run(&["requeue", "--supporter", "sam@mail.example"])
        .code(0)
        .stderr_has("requeued sam@mail.example → ceo@corp.example (was skipped)");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    assert_eq!(server.received().len(), 3);
    assert!(server.received()[2].text().contains("I am Sam Okafor"));
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
}

#[test]
fn issue15_skip_and_requeue_never_touch_a_sent_letter() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    let skip = c.run(&["skip", "--supporter", "ana@mail.example", "--reason", "oops"]);
    skip.code(1)
        .stderr_has("nothing to skip")
        .stderr_has("a sent letter is never changed");
    let requeue = c.run(&["requeue", "--supporter", "ana@mail.example"]);
    requeue.code(1).stderr_has("nothing to requeue");
    let (state, reply) = row(&c, "ana@mail.example", "ceo@corp.example");
    assert_eq!(state, "sent");
    assert!(reply.starts_with("250"), "{reply}");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    idle(&server);
    assert_eq!(server.received().len(), 3);
}

#[test]
fn issue15_requeue_puts_a_failed_letter_back_without_retry_failed() {
    use crate::support::smtp::{Action, Step};
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 1, .. } => Action::reply("550 5.1.1 mailbox unavailable"),
            _ => Action::Default,
        }),
    );
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[delivery]\nretries = 0\n");
    c.run(&["send", "--yes"]).code(3);
    assert_eq!(row(&c, "ana@mail.example", "ceo@corp.example").0, "failed");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    c.run(&["requeue", "--supporter", "ana@mail.example"]).code(0);
    assert_eq!(row(&c, "ana@mail.example", "ceo@corp.example").0, "pending");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
}

#[test]
fn issue15_a_hand_hold_outlives_a_fixed_row_but_a_data_skip_does_not() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana,López,Tucson,\n\
         lee@mail,Lee,Park,Seattle,\n",
    );
    c.run(&[
        "skip",
        "--supporter",
        "ana@mail.example",
        "--reason",
        "duplicate signup",
    ])
    .code(0);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    // Lee fixes the address; Ana's row is edited too: only Lee's letter goes.
    let c = c.file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana,López,Phoenix,\n\
         lee@mail.example,Lee,Park,Seattle,\n",
    );
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    assert_eq!(
        letters(&server.received()),
        vec![("lee@mail.example".into(), "ceo@corp.example".into())]
    );
    assert_eq!(
        row(&c, "ana@mail.example", "ceo@corp.example"),
        ("skipped".into(), "skipped by hand: duplicate signup".into())
    );
}

#[test]
fn issue15_skip_one_target_holds_only_that_letter() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).section(BOARD);
    c.run(&[
        "skip",
        "--supporter",
        "lee@mail.example",
        "--target",
        "Board@Corp.example",
        "--reason",
        "board only later",
    ])
    .code(0)
    .stderr_has("skipped  lee@mail.example → board@corp.example")
    .stderr_has("until `mailer requeue --supporter lee@mail.example --target board@corp.example`");
    // Lee's letter to the CEO goes; only the one to the board waits.
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 5");
    idle(&server);
    let lee: Vec<_> = letters(&server.received())
        .into_iter()
        .filter(|(s, _)| s == "lee@mail.example")
        .collect();
    assert_eq!(lee, vec![("lee@mail.example".into(), "ceo@corp.example".into())]);
    assert_eq!(
        row(&c, "lee@mail.example", "board@corp.example"),
        ("skipped".into(), "skipped by hand: board only later".into())
    );
    c.run(&[
        "requeue",
        "--supporter",
        "lee@mail.example",
        "--target",
        "board@corp.example",
    ])
    .code(0);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    assert_eq!(server.received().len(), 6);
}

#[test]
fn issue15_skip_names_an_unknown_supporter_or_target() {
    let c = Campaign::new();
    c.run(&["skip", "--supporter", "nobody@mail.example", "--reason", "x"])
        .code(1)
        .stderr_has("no supporter `nobody@mail.example`");
    c.run(&[
        "skip",
        "--supporter",
        "ana@mail.example",
        "--target",
        "cfo@corp.example",
        "--reason",
        "x",
    ])
    .code(1)
    .stderr_has("`cfo@corp.example` is not a target")
    .stderr_has("`ceo@corp.example`");
    c.run(&[
        "skip",
        "--supporter",
        "ana@mail.example",
        "--reason",
        "two\nlines",
    ])
    .code(1)
    .stderr_has("one line");
    c.run(&["skip", "--supporter", "ana@mail.example"]).code(2);
}

// ---------------------------------------------------------------- item 6: check's exit codes

#[test]
fn issue15_check_lists_rows_send_would_skip_as_warnings_and_strict_fails_them() {
    let c = Campaign::new().file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana,López,Tucson,\n\
         not-an-email,Bad,Row,Nowhere,\n\
         ANA@mail.example,Ana,Again,Tucson,\n",
    );
    let run = c.run(&["check"]);
    run.code(0)
        .stdout_has("supporters.csv:3: ")
        .stdout_has("supporters.csv:4: `ANA@mail.example` repeats line 2")
        .stdout_has("1 supporter × 1 target = 1 letter ready; 2 problems")
        .stderr_has("mailer check --strict");
    let strict = c.run(&["check", "--strict"]);
    strict
        .code(1)
        .stdout_has("supporters.csv:3: ")
        .stdout_has("supporters.csv:4: ");
    assert!(!strict.stderr.contains("--strict"), "{}", strict.stderr);
}

#[test]
fn issue15_check_still_fails_on_a_letter_or_file_error() {
    // A letter that cannot render stops `send`: exit 1 with or without --strict.
    let c = Campaign::new().file("letters/letter.txt", "Dear {{ target.nmae }},\n");
    c.run(&["check"]).code(1).stdout_has("nmae");
    // So does a supporters file that cannot be read past a line.
    let c = Campaign::new().file(
        "supporters.csv",
        "email,first_name,last_name,city,note\nana@mail.example,Ana,\"López,Tucson,\n",
    );
    c.run(&["check"]).code(1);
    // A config error too.
    let c = Campaign::new().section("[delivery]\nrtae = \"3/minute\"\n");
    c.run(&["check"]).code(1).stderr_has("rtae");
}

// ---------------------------------------------------------------- item 2: placeholders

/// `[smtp]` on a non-loopback address (TEST-NET-1: nothing answers there).
const REAL_RELAY: &str = "[smtp]\nhost = \"192.0.2.1\"\nport = 587\ntimeout_secs = 2\n";

#[test]
fn issue15_a_real_relay_never_gets_a_placeholder_and_check_names_each() {
    // The test campaign's From, Reply-To and target are all in `.example`.
    let c = Campaign::new().section(REAL_RELAY);
    let send = c.run(&["send", "--yes"]);
    send.code(1)
        .stderr_has("not sending through `192.0.2.1`")
        .stderr_has("From `letters@org.example`")
        .stderr_has("target `ceo@corp.example`");
    assert!(!c.ledger().exists(), "nothing was recorded");
    let check = c.run(&["check"]);
    check
        .code(1)
        .stdout_has("mailer.toml: From `letters@org.example` is a placeholder address (`.example`")
        .stdout_has("mailer.toml: target `ceo@corp.example` is a placeholder address")
        .stdout_has("supporters.csv:2: Reply-To `ana@mail.example` is a placeholder address")
        .stdout_has("supporters.csv:3: Reply-To `sam@mail.example`");
    // The dry run still works.
    c.run(&["send", "--dry-run"]).code(0);
}

#[test]
fn issue15_real_addresses_on_a_real_relay_pass_check() {
    let c = Campaign::new()
        .head(
            &Campaign::new()
                .config_text()
                .replace("letters@org.example", "letters@colorofchange.org")
                .replace("ceo@corp.example", "ceo@microsoft.com"),
        )
        .section(REAL_RELAY)
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,note\nana@gmail.com,Ana,López,Tucson,\n",
        );
    let check = c.run(&["check"]);
    check.code(0).stdout_has("0 problems");
    assert!(!check.stdout.contains("placeholder"), "{}", check.stdout);
}

#[test]
fn issue15_placeholders_on_loopback_are_fine() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["check"]).code(0);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
}

// ---------------------------------------------------------------- item 7: preview at a terminal

/// Runs `cmd` with stdin, stdout and stderr on a fresh pseudo-terminal and
/// returns its exit code and everything the terminal showed.
fn on_a_terminal(cmd: std::process::Command) -> (i32, String) {
    Term::spawn(cmd).finish()
}

fn many_supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

#[test]
fn issue15_preview_at_a_terminal_shows_three_with_headers_and_says_how_many_more() {
    let c = Campaign::new().file("supporters.csv", many_supporters(1_005));
    let (code, text) = on_a_terminal(c.command(&["preview"]));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("# 1/1,005  supporters.csv:2 → Satya Nadella\n"),
        "{text}"
    );
    assert!(
        text.contains("# 3/1,005  supporters.csv:4 → Satya Nadella\n"),
        "{text}"
    );
    assert!(!text.contains("# 4/1,005"), "{text}");
    assert_eq!(text.matches("Subject: ").count(), 3, "{text}");
    assert!(text.contains("… 1,002 more: --limit N or --all"), "{text}");

    let (code, text) = on_a_terminal(c.command(&["preview", "--all", "--target", "ceo@corp.example"]));
    assert_eq!(code, 0);
    assert!(text.contains("# 1,005/1,005  supporters.csv:1006 → Satya Nadella"));
    assert!(!text.contains("more: --limit"));

    let (_, text) = on_a_terminal(c.command(&["preview", "--limit", "5"]));
    assert!(text.contains("# 5/1,005 "));
    assert!(!text.contains("# 6/1,005") && !text.contains("more: --limit"));

    // On a pipe: every letter, as before, and no header lines.
    let piped = c.run(&["preview"]);
    piped.code(0);
    assert_eq!(piped.stdout.matches("Subject: ").count(), 1_005);
    assert!(!piped.stdout.contains("# 1/"));
}
