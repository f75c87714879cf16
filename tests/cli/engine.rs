//! Issue 13: the delivery engine in its own module, one round trip per
//! letter, a sender that adapts to the relay.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::relays::throttling_relay;
use crate::support::smtp::{Action, Received, Security, Server, ServerOptions, Step};
use crate::support::wait::idle;

/// `n` valid supporters, `s0001@mail.example` …
fn supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

/// A campaign on `server` with `[delivery]` as given.
fn campaign(server: &Server, delivery: &str) -> Campaign {
    Campaign::new()
        .smtp_plain(server)
        .section(&format!("[delivery]\n{delivery}"))
}

#[test]
fn issue13_dry_run_on_a_fresh_campaign_applies_the_daily_limit() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "daily_limit = 2\n").file("supporters.csv", supporters(5));
    // No ledger yet: the dry run and the real run use one budget rule.
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("This run would send at most 2 (");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
}

/// Message-IDs of these messages, in order.
fn ids(msgs: &[Received]) -> Vec<String> {
    msgs.iter().map(|m| m.message_id().unwrap()).collect()
}

#[test]
fn issue13_the_next_letters_envelope_rides_with_the_body() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "concurrency = 1\n").file("supporters.csv", supporters(3));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_eq!(server.connections(), 1);
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    // After each body but the last, the next letter's MAIL, RCPT and DATA
    // were already there, before the server answered the body.
    let ahead = server.ahead_of_dot_replies();
    assert_eq!(ahead.len(), 3, "{ahead:?}");
    let received = server.received();
    for (nth, text) in &ahead[..2] {
        let next = &received[*nth];
        assert!(
            text.starts_with(&format!("MAIL FROM:<{}>", next.mail_from))
                && text.ends_with(&format!("\r\nRCPT TO:<{}>\r\nDATA\r\n", next.rcpt_to[0])),
            "after body {nth}: {text:?}"
        );
    }
    assert_eq!(ahead[2].1, "", "nothing rides with the last body");
}

#[test]
fn issue13_no_pipelining_offered_means_one_letter_at_a_time() {
    let mut opts = ServerOptions::new(Security::Plain);
    opts.pipelining = false;
    let server = Server::start(opts);
    let c = campaign(&server, "concurrency = 1\n").file("supporters.csv", supporters(3));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert!(server.ahead_of_dot_replies().iter().all(|(_, t)| t.is_empty()));
}

#[test]
fn issue13_a_drop_after_the_combined_write_leaves_the_next_letter_untouched() {
    let down = Arc::new(AtomicBool::new(true));
    let script = {
        let down = Arc::clone(&down);
        move |step: &Step| match step {
            Step::Dot { nth: 1, .. } => Action::Drop,
            // The relay stays away for the rest of the first run.
            Step::Greeting { conn } if *conn > 1 && down.load(SeqCst) => {
                Action::reply("421 4.3.2 try again later")
            }
            _ => Action::Default,
        }
    };
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(script));
    let c = campaign(&server, "concurrency = 1\nretries = 1\n").file("supporters.csv", supporters(3));
    c.run(&["send", "--yes"])
        .code(3)
        .stderr_has("letters already went: 1");
    idle(&server);
    // The second letter's envelope went with the first body...
    let ahead = server.ahead_of_dot_replies();
    assert!(ahead[0].1.starts_with("MAIL FROM:<"), "{ahead:?}");
    // ...but it never got its 354: not claimed, so still due.
    assert_eq!(c.states(), vec![("unknown".to_string(), 1)]);
    let first = ids(&server.dropped_after_dot());
    assert_eq!(first.len(), 1);

    down.store(false, SeqCst);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    idle(&server);
    let sent = ids(&server.received());
    assert_eq!(sent.len(), 2);
    assert!(!sent.contains(&first[0]), "the unknown letter is not resent");
    assert_eq!(
        c.states(),
        vec![("sent".to_string(), 2), ("unknown".to_string(), 1)]
    );
}

#[test]
fn issue13_a_refused_rcpt_in_the_combined_flight_fails_that_letter_only() {
    let rcpts = Arc::new(AtomicUsize::new(0));
    let script = {
        let rcpts = Arc::clone(&rcpts);
        move |step: &Step| match step {
            Step::Rcpt { .. } if rcpts.fetch_add(1, SeqCst) + 1 == 2 => {
                Action::reply("550 5.1.1 no such user here")
            }
            _ => Action::Default,
        }
    };
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(script));
    let c = campaign(&server, "concurrency = 1\n").file("supporters.csv", supporters(3));
    c.run(&["send", "--yes"])
        .code(3)
        .stderr_has("failed: 550 5.1.1 no such user here");
    idle(&server);
    // The refused RCPT was the one that rode with the first body.
    let ahead = server.ahead_of_dot_replies();
    assert!(ahead[0].1.contains("RCPT TO:<"), "{ahead:?}");
    assert_eq!(server.connections(), 1);
    assert_eq!(server.received().len(), 2);
    assert_eq!(
        c.states(),
        vec![("failed".to_string(), 1), ("sent".to_string(), 2)]
    );
}

#[test]
fn issue13_a_relay_that_throttles_slows_the_run_and_every_letter_goes_once() {
    let refused = Arc::new(AtomicUsize::new(0));
    let server = Server::start(throttling_relay(Duration::from_millis(150), &refused));
    // No rate configured, two connections, no retries: throttling alone
    // must not fail or defer a letter.
    let c = campaign(&server, "concurrency = 2\nretries = 0\n").file("supporters.csv", supporters(6));
    let run = c.run(&["-v", "send", "--yes"]);
    idle(&server);
    run.code(0)
        .stdout_has("sent 6 deferred 0 failed 0")
        .stdout_has("; the relay throttled us at ")
        .stderr_has("(454 Throttling failure: Maximum sending rate exceeded.); slowed to ");
    assert!(refused.load(SeqCst) > 0, "the relay throttled");
    let sent = ids(&server.received());
    let distinct: std::collections::BTreeSet<_> = sent.iter().collect();
    assert_eq!((sent.len(), distinct.len()), (6, 6), "each letter exactly once");
    assert_eq!(c.states(), vec![("sent".to_string(), 6)]);
}

#[test]
fn issue13_a_throttled_run_never_goes_faster_than_the_configured_rate() {
    let refused = Arc::new(AtomicUsize::new(0));
    let server = Server::start(throttling_relay(Duration::from_millis(150), &refused));
    // 10/second is too fast for this relay: slowed, never above it.
    let c = campaign(&server, "rate = \"10/second\"\nretries = 0\n").file("supporters.csv", supporters(4));
    c.run(&["send", "--yes"])
        .code(0)
        .stdout_has("sent 4 deferred 0 failed 0")
        .stdout_has("slowed to 5/second");
    idle(&server);
    assert_eq!(server.received().len(), 4);
}
