//! `mailer send` against real SMTP servers: exactly once, resumable.
//!
//! Every test runs the real binary against the scriptable server in
//! `tests/support/smtp.rs`, then checks three things against each other: what
//! the server got, what the ledger says, and what the commands print.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher as _, Hasher as _};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::campaign::{Campaign, query, st};
use crate::support::smtp::{Action, Received, Security, Server, ServerOptions, Step};
use crate::support::wait::{idle, pause, wait_for, wait_until};

// ---------------------------------------------------------------- helpers

/// `n` valid supporters, `s0001@mail.example` …
fn supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

/// An `[smtp]` section for a plain loopback server with this timeout.
fn smtp(server: &Server, timeout_secs: u64) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout_secs = {timeout_secs}\n",
        server.port()
    )
}

/// A campaign on `server` with `[delivery]` as given.
fn campaign(server: &Server, delivery: &str) -> Campaign {
    Campaign::new()
        .smtp_plain(server)
        .section(&format!("[delivery]\n{delivery}"))
}

/// Message-IDs of these messages, in order.
fn ids(msgs: &[Received]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.message_id().expect("every letter has a Message-ID"))
        .collect()
}

/// How often each Message-ID reached the server (accepted or dropped after the dot).
fn copies(server: &Server) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for id in ids(&server.received())
        .into_iter()
        .chain(ids(&server.dropped_after_dot()))
    {
        *n.entry(id).or_insert(0) += 1;
    }
    n
}

/// Message-IDs the ledger has in `state`.
fn ledger_ids(c: &Campaign, state: &str) -> BTreeSet<String> {
    query(
        c,
        &format!("SELECT message_id FROM letters WHERE state = '{state}'"),
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

/// `state=n` pairs as `&str` for terse assertions.
fn states(c: &Campaign) -> Vec<(String, i64)> {
    c.states()
}

/// A random number per call (std's randomly keyed hasher; no `rand` needed).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

// ---------------------------------------------------------------- basics

#[test]
fn sends_each_letter_once_and_a_rerun_sends_nothing() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    assert!(server.wait_idle(Duration::from_secs(5)));
    let got = server.received();
    assert_eq!(got.len(), 3);
    let ids: std::collections::HashSet<_> = got.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(got[0].rcpt_to, vec!["ceo@corp.example".to_string()]);
    assert!(
        got.iter()
            .any(|m| m.text().contains("I am Sam Okafor from Minneapolis."))
    );
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    assert_eq!(server.received().len(), 3);
}

// ---------------------------------------------------------------- server replies

#[test]
fn transient_451_is_retried_within_the_run_and_sent_once() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth, .. } if *nth <= 2 => Action::reply("451 4.3.0 later"),
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 2\n");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    let got = ids(&server.received());
    assert_eq!(got.len(), 3, "the server accepted exactly one copy of each");
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(server.dots_seen(), 5, "two refused tries plus three accepted");
    assert_eq!(states(&c), st(&[("sent", 3)]));
    // The first letter took three tries; its row says so and keeps the 250.
    let rows = query(
        &c,
        "SELECT supporter, attempts, reply FROM letters WHERE attempts > 1",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "ana@mail.example");
    assert_eq!(rows[0][1], "3");
    assert!(rows[0][2].starts_with("250"), "{rows:?}");
}

#[test]
fn transient_451_beyond_retries_is_deferred_for_a_later_run() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 1, .. } => Action::reply("451 4.3.0 later"),
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 0\n");
    c.run(&["send", "--yes"]).code(3).stderr_has("451 4.3.0 later");
    assert_eq!(states(&c), st(&[("deferred", 1), ("sent", 2)]));
    let next = query(
        &c,
        "SELECT next_attempt_at - updated_at FROM letters WHERE state = 'deferred'",
    );
    assert!(next[0][0].parse::<i64>().unwrap() >= 30, "a backoff: {next:?}");
    // Not due yet: a plain rerun leaves it.
    c.run(&["send", "--yes"]).code(0);
    idle(&server);
    assert_eq!(server.received().len(), 2);
    c.sql("UPDATE letters SET next_attempt_at = 0");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    assert_eq!(server.received().len(), 3);
    assert_eq!(states(&c), st(&[("sent", 3)]));
}

#[test]
fn permanent_554_fails_one_letter_keeps_its_reply_and_retry_failed_retries_it() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 2, .. } => Action::reply("554 5.6.0 message content rejected"),
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 3\n");
    let run = c.run(&["send", "--yes"]);
    run.code(3)
        .stdout_has("sent 2")
        .stdout_has("failed 1")
        .stderr_has("554 5.6.0 message content rejected");
    idle(&server);
    assert_eq!(server.received().len(), 2);
    assert_eq!(server.dots_seen(), 3, "a 5xx is not retried within the run");
    assert_eq!(states(&c), st(&[("failed", 1), ("sent", 2)]));
    let failed = query(&c, "SELECT supporter, reply FROM letters WHERE state = 'failed'");
    assert_eq!(failed[0][0], "sam@mail.example");
    assert_eq!(failed[0][1], "554 5.6.0 message content rejected");

    // `status` lists it with the reply.
    let status = c.run(&["status"]);
    status.code(0).stdout_has("sam@mail.example");
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains("sam@mail.example"))
        .unwrap();
    assert!(line.contains("failed"), "{line}");
    assert!(line.contains("554 5.6.0 message content rejected"), "{line}");

    // A plain rerun holds it; --retry-failed sends it.
    c.run(&["send", "--yes"]).code(0);
    idle(&server);
    assert_eq!(server.dots_seen(), 3);
    c.run(&["send", "--yes", "--retry-failed"])
        .code(0)
        .stdout_has("sent 1");
    idle(&server);
    assert_eq!(server.received().len(), 3);
    assert_eq!(states(&c), st(&[("sent", 3)]));
    let ids = ids(&server.received());
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3);
}

// ---------------------------------------------------------------- lost connections

#[test]
fn drop_after_the_dot_is_unknown_and_only_resend_unknown_resends_it_with_the_same_id() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 2, .. } => Action::Drop,
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 3\n");
    c.run(&["send", "--yes"]).code(3).stdout_has("unknown 1");
    idle(&server);
    let dropped = ids(&server.dropped_after_dot());
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        server.received().len(),
        2,
        "the others went on a fresh connection"
    );
    assert_eq!(states(&c), st(&[("sent", 2), ("unknown", 1)]));
    assert_eq!(
        ledger_ids(&c, "unknown"),
        dropped.iter().cloned().collect(),
        "the unknown letter is the one the server had in hand"
    );

    // A plain rerun (and --retry-failed) does not resend it.
    c.run(&["send", "--yes"]).code(0);
    c.run(&["send", "--yes", "--retry-failed"]).code(0);
    idle(&server);
    assert_eq!(server.dots_seen(), 3);

    // --resend-unknown does, with the same Message-ID.
    c.run(&["send", "--yes", "--resend-unknown"])
        .code(0)
        .stdout_has("sent 1");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].message_id().as_ref(), Some(&dropped[0]));
    assert_eq!(states(&c), st(&[("sent", 3)]));
}

/// Drops the connection at `at` (Mail, Rcpt or Data) on the first try of the
/// second letter only.
fn drop_before_data(at: &'static str) -> ServerOptions {
    let fired = AtomicBool::new(false);
    let mails = AtomicUsize::new(0);
    ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Mail { .. } = step {
            mails.fetch_add(1, SeqCst);
        }
        let hit = matches!(
            (at, step),
            ("mail", Step::Mail { .. }) | ("rcpt", Step::Rcpt { .. }) | ("data", Step::Data { .. })
        );
        if hit && mails.load(SeqCst) == 2 && !fired.swap(true, SeqCst) {
            Action::Drop
        } else {
            Action::Default
        }
    })
}

#[test]
fn drop_before_data_defers_and_the_next_run_sends_it_after_the_backoff() {
    for at in ["rcpt", "data"] {
        let server = Server::start(drop_before_data(at));
        let c = campaign(&server, "retries = 0\n");
        c.run(&["send", "--yes"]).code(3).stdout_has("deferred 1");
        idle(&server);
        assert!(server.dropped_after_dot().is_empty());
        assert_eq!(server.received().len(), 2, "drop at {at}");
        assert_eq!(states(&c), st(&[("deferred", 1), ("sent", 2)]), "drop at {at}");
        let deferred = query(&c, "SELECT supporter FROM letters WHERE state = 'deferred'");
        assert_eq!(deferred[0][0], "sam@mail.example");
        // Before its backoff: not yet.
        c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
        idle(&server);
        assert_eq!(server.received().len(), 2);
        // Once it has passed: sent, once.
        c.sql("UPDATE letters SET next_attempt_at = 0");
        c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
        idle(&server);
        let got = ids(&server.received());
        assert_eq!(got.len(), 3);
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 3);
        assert_eq!(states(&c), st(&[("sent", 3)]));
    }
}

#[test]
fn drop_before_data_is_retried_within_the_run_on_a_fresh_connection() {
    for pipelining in [true, false] {
        drop_before_data_retried(pipelining);
    }
}

fn drop_before_data_retried(pipelining: bool) {
    let mut opts = drop_before_data("rcpt");
    opts.pipelining = pipelining;
    let server = Server::start(opts);
    let c = campaign(&server, "retries = 1\n");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_eq!(server.connections(), 2, "one reconnect");
    let got = server.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].conn, 2, "the retried letter went on the fresh connection");
    assert_eq!(ids(&got).iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(states(&c), st(&[("sent", 3)]));
}

#[test]
fn a_421_mid_batch_reconnects_and_delivers_the_whole_batch() {
    let mails = AtomicUsize::new(0);
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(move |step| match step {
            Step::Mail { conn: 1, .. } if mails.fetch_add(1, SeqCst) == 1 => {
                Action::reply("421 4.3.2 shutting down")
            }
            _ => Action::Default,
        }),
    );
    let c = Campaign::new()
        .file("supporters.csv", supporters(6))
        .smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 6");
    idle(&server);
    assert!(server.connections() >= 2, "reconnected after the 421");
    let got = server.received();
    assert_eq!(got.len(), 6);
    assert_eq!(got[0].conn, 1);
    assert!(got[1..].iter().all(|m| m.conn >= 2));
    assert_eq!(ids(&got).iter().collect::<BTreeSet<_>>().len(), 6);
    assert_eq!(states(&c), st(&[("sent", 6)]));
    // The client stopped talking on the connection that said 421.
    let after_421: Vec<_> = server
        .transcript()
        .into_iter()
        .filter(|l| l.conn == 1)
        .skip_while(|l| !l.text.starts_with("MAIL"))
        .skip(1)
        .skip_while(|l| !l.text.starts_with("MAIL"))
        .skip(1)
        .filter(|l| l.text.starts_with("MAIL"))
        .collect();
    assert!(after_421.is_empty(), "{after_421:?}");
}

#[test]
fn stall_after_the_dot_past_the_timeout_is_unknown() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 1, .. } => Action::Stall(Duration::from_secs(3)),
            _ => Action::Default,
        }),
    );
    let c = Campaign::new()
        .section(&smtp(&server, 1))
        .section("[delivery]\nretries = 2\n");
    let t = Instant::now();
    c.run(&["send", "--yes"]).code(3).stdout_has("unknown 1");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "gave up after the 1 s timeout"
    );
    idle(&server);
    assert_eq!(server.received().len(), 2);
    assert_eq!(states(&c), st(&[("sent", 2), ("unknown", 1)]));
    assert_eq!(
        ledger_ids(&c, "unknown"),
        ids(&server.dropped_after_dot()).into_iter().collect()
    );
    let reply = query(&c, "SELECT reply FROM letters WHERE state = 'unknown'");
    assert!(reply[0][0].contains("did not reply in time"), "{reply:?}");
}

#[test]
fn stall_before_data_past_the_timeout_is_deferred() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Rcpt { conn: 1, .. } => Action::Stall(Duration::from_secs(3)),
            _ => Action::Default,
        }),
    );
    let c = Campaign::new()
        .section(&smtp(&server, 1))
        .section("[delivery]\nretries = 0\n");
    c.run(&["send", "--yes"]).code(3).stdout_has("deferred 1");
    idle(&server);
    assert!(server.dropped_after_dot().is_empty());
    assert_eq!(server.received().len(), 2);
    assert_eq!(states(&c), st(&[("deferred", 1), ("sent", 2)]));
    c.sql("UPDATE letters SET next_attempt_at = 0");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    assert_eq!(server.received().len(), 3);
}

// ---------------------------------------------------------------- crashes and signals

/// One kill -9 trial: what went wrong, if anything.
#[derive(Debug, Default)]
struct Trial {
    /// Message-IDs that reached the server twice before `--resend-unknown`.
    duplicates: usize,
    /// Letters the ledger calls `sent` that the server never got, plus
    /// supporters the server never got at all after `--resend-unknown`.
    lost: usize,
    /// `unknown` letters after the rerun (at most the one in flight).
    unknown: usize,
    /// Of those, how many the server had accepted (so `--resend-unknown`
    /// made an allowed duplicate with the same Message-ID).
    unknown_delivered: usize,
    /// Whether the kill landed mid-batch (some but not all letters sent).
    mid_batch: bool,
    /// Where the server was slow.
    phase: &'static str,
    /// Ledger vs. server mismatches (sent + unknown ≠ what the server got).
    mismatches: Vec<String>,
}

const TRIAL_SUPPORTERS: usize = 200;

/// Where the server spends its ~20 ms per letter, so that is where kills land.
const PHASES: [&str; 3] = ["mail", "data", "dot"];

/// Spawns a 200-letter run against a server that takes ~20 ms per letter
/// (at MAIL, at DATA before the 354, or after the final dot: chosen at
/// random), SIGKILLs it at a random moment mid-batch, reruns it, checks the
/// ledger against the server, then `--resend-unknown`s. `concurrency`
/// connections: at most that many letters are in flight at the kill.
fn kill9_trial(max_delay_ms: u64, concurrency: usize) -> Trial {
    let phase = PHASES[(random_u64() % 3) as usize];
    let slow = Arc::new(AtomicBool::new(true));
    let slow2 = Arc::clone(&slow);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        let here = matches!(
            (phase, step),
            ("mail", Step::Mail { .. }) | ("data", Step::Data { .. }) | ("dot", Step::Dot { .. })
        );
        if here && slow2.load(SeqCst) {
            pause(Duration::from_millis(20));
        }
        Action::Default
    }));
    let c = campaign(&server, &format!("retries = 1\nconcurrency = {concurrency}\n"))
        .file("supporters.csv", supporters(TRIAL_SUPPORTERS));
    let mut child = c.spawn(&["send", "--yes"]);
    // Wait for the first letter, so the kill lands in the delivery phase, then a random moment.
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() > 0));
    // More connections finish sooner: land the kill within their batch too.
    let max_delay_ms = max_delay_ms / (2 * concurrency as u64 - 1);
    pause(Duration::from_millis(random_u64() % max_delay_ms.max(1)));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by the signal");
    idle(&server);
    let before = server.received().len();

    // The rerun finishes the batch, quickly.
    slow.store(false, SeqCst);
    let rerun = c.run(&["send", "--yes"]);
    idle(&server);
    let mut t = Trial {
        phase,
        ..Trial::default()
    };
    let got = copies(&server);
    t.duplicates = got.values().filter(|&&n| n > 1).count();
    let sent = ledger_ids(&c, "sent");
    let unknown = ledger_ids(&c, "unknown");
    t.unknown = unknown.len();
    t.mid_batch = before > 0 && before < TRIAL_SUPPORTERS;
    let received: BTreeSet<String> = ids(&server.received()).into_iter().collect();
    t.lost += sent.difference(&received).count();
    t.unknown_delivered = unknown.intersection(&received).count();
    // The rerun delivered all it attempted (exit 0); the letter it found
    // in flight is reported as `unknown` on stderr, not retried.
    if rerun.code != 0 || (t.unknown > 0 && !rerun.stderr.contains("in flight")) {
        t.mismatches.push(format!(
            "rerun exit {} with {} unknown: {rerun:?}",
            rerun.code, t.unknown
        ));
    }
    if sent.len() + unknown.len() != TRIAL_SUPPORTERS {
        t.mismatches.push(format!(
            "ledger: {} sent + {} unknown ≠ {TRIAL_SUPPORTERS}: {:?}",
            sent.len(),
            unknown.len(),
            states(&c)
        ));
    }
    let extra: Vec<_> = received
        .difference(&sent)
        .filter(|id| !unknown.contains(*id))
        .collect();
    if !extra.is_empty() {
        t.mismatches
            .push(format!("server got letters the ledger does not know: {extra:?}"));
    }
    if t.unknown > concurrency {
        t.mismatches.push(format!(
            "{} unknown, expected at most the {concurrency} in flight",
            t.unknown
        ));
    }

    // --resend-unknown: every supporter has their letter; repeats only for unknown ones.
    if t.unknown > 0 {
        let r = c.run(&["send", "--yes", "--resend-unknown"]);
        if r.code != 0 {
            t.mismatches.push(format!("--resend-unknown: {r:?}"));
        }
        idle(&server);
    }
    let got = copies(&server);
    let accepted: BTreeSet<String> = ids(&server.received()).into_iter().collect();
    t.lost += TRIAL_SUPPORTERS.saturating_sub(accepted.len());
    for (id, n) in &got {
        if *n > 1 && !unknown.contains(id) {
            t.mismatches.push(format!("{id} reached the server {n} times"));
        }
    }
    if states(&c) != st(&[("sent", TRIAL_SUPPORTERS as i64)]) {
        t.mismatches.push(format!("final ledger {:?}", states(&c)));
    }
    t
}

#[test]
fn kill_9_mid_batch_never_doubles_or_loses_a_letter() {
    for trial in 0..5 {
        let t = kill9_trial(1500, 1);
        assert_eq!(t.duplicates, 0, "trial {trial}: {t:?}");
        assert_eq!(t.lost, 0, "trial {trial}: {t:?}");
        assert!(t.mismatches.is_empty(), "trial {trial}: {t:?}");
    }
}

/// `scripts/kill9-trials` runs this: `KILL9_TRIALS` (default 20) trials,
/// printing the duplicates and lost letters.
#[test]
#[ignore = "long: run through scripts/kill9-trials"]
fn kill_9_trials_report() {
    let n: usize = std::env::var("KILL9_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let concurrency: usize = std::env::var("KILL9_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (mut dup, mut lost, mut unknown, mut had, mut mid, mut bad) = (0, 0, 0, 0, 0, 0);
    for i in 1..=n {
        let t = kill9_trial(4000, concurrency);
        println!(
            "trial {i:>2}: server slow at {:<4} duplicates {} lost {} unknown {} (the server had it: {}) \
             mid-batch {}{}",
            t.phase,
            t.duplicates,
            t.lost,
            t.unknown,
            t.unknown_delivered,
            t.mid_batch,
            if t.mismatches.is_empty() {
                String::new()
            } else {
                format!(" MISMATCH {:?}", t.mismatches)
            }
        );
        dup += t.duplicates;
        lost += t.lost;
        unknown += t.unknown;
        had += t.unknown_delivered;
        mid += usize::from(t.mid_batch);
        bad += usize::from(!t.mismatches.is_empty());
    }
    println!(
        "kill -9 trials: {n}, killed mid-batch: {mid}, duplicates: {dup}, lost: {lost}, \
         unknown (in flight at the kill): {unknown}, of which the server had accepted: {had} \
         (resent by --resend-unknown with the same Message-ID), trials with mismatches: {bad}"
    );
    assert_eq!((dup, lost, bad), (0, 0, 0));
}

#[test]
fn sigterm_mid_batch_exits_130_and_the_ledger_matches_the_server() {
    interrupt_mid_batch("-TERM");
}

#[test]
fn sigint_mid_batch_is_handled_like_sigterm() {
    interrupt_mid_batch("-INT");
}

fn interrupt_mid_batch(signal: &str) {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        if matches!(step, Step::Dot { .. }) {
            pause(Duration::from_millis(20));
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 1\n").file("supporters.csv", supporters(100));
    let child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() >= 5));
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = wait_for(child, Duration::from_secs(5));
    run.code(130).stderr_has("interrupted");
    idle(&server);
    let received: BTreeSet<String> = ids(&server.received()).into_iter().collect();
    assert!(received.len() < 100, "stopped mid-batch");
    assert!(server.dropped_after_dot().is_empty());
    assert_eq!(
        ledger_ids(&c, "sent"),
        received,
        "every received letter is sent, nothing else"
    );
    let s = states(&c);
    assert_eq!(
        s,
        st(&[("sent", received.len() as i64)]),
        "no sending/unknown left"
    );
    // The rest goes on the next run.
    c.run(&["send", "--yes"])
        .code(0)
        .stdout_has(&format!("sent {}", 100 - received.len()));
    idle(&server);
    assert_eq!(copies(&server).len(), 100);
    assert!(copies(&server).values().all(|&n| n == 1));
}

#[test]
fn a_second_concurrent_run_exits_75_at_once_and_nothing_doubles() {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        if matches!(step, Step::Dot { .. }) {
            pause(Duration::from_millis(20));
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 1\n").file("supporters.csv", supporters(40));
    let mut first = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() > 0));
    let t = Instant::now();
    let second = c.run(&["send", "--yes"]);
    let took = t.elapsed();
    second.code(75).stderr_has("another run holds the ledger");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was still going"
    );
    wait_for(first, Duration::from_secs(10))
        .code(0)
        .stdout_has("sent 40");
    idle(&server);
    let got = copies(&server);
    assert_eq!(got.len(), 40);
    assert!(got.values().all(|&n| n == 1));
    assert_eq!(states(&c), st(&[("sent", 40)]));
}

// ---------------------------------------------------------------- cron batches

#[test]
fn appended_rows_get_exactly_their_letters_and_removed_pending_rows_are_not_sent() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "max_per_run = 2\n").file("supporters.csv", supporters(3));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    idle(&server);
    assert_eq!(server.received().len(), 3);

    // Two new rows: exactly their letters on the next run.
    let c = c.file(
        "supporters.csv",
        format!(
            "{}s0004@mail.example,A,B,C,\ns0005@mail.example,D,E,F,\n",
            supporters(3)
        ),
    );
    c.run(&["send", "--yes", "--limit", "1"])
        .code(0)
        .stdout_has("sent 1");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 4);
    assert!(got[3].text().contains("I am A B from C."), "{}", got[3].text());
    // s0005 is still pending; its row leaves the CSV: never sent.
    let c = c.file(
        "supporters.csv",
        format!("{}s0004@mail.example,A,B,C,\n", supporters(3)),
    );
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    idle(&server);
    assert_eq!(server.received().len(), 4);
    assert!(
        server.transcript().iter().all(|l| !l.text.contains("s0005")),
        "nothing about s0005 reached the server"
    );
    assert_eq!(states(&c), st(&[("sent", 4)]));
    let all = ids(&server.received());
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 4);
}

#[test]
fn max_per_run_batches_and_limit_overrides_it() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "max_per_run = 2\n").file("supporters.csv", supporters(5));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    assert_eq!(states(&c), st(&[("sent", 2)]));
    c.run(&["send", "--yes", "--limit", "1"])
        .code(0)
        .stdout_has("sent 1");
    assert_eq!(states(&c), st(&[("sent", 3)]));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    idle(&server);
    let got = ids(&server.received());
    assert_eq!(got.len(), 5);
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 5);
    // The batches went in CSV order.
    let order: Vec<String> = server
        .received()
        .iter()
        .map(|m| m.header("Reply-To").unwrap())
        .collect();
    let expected: Vec<String> = (1..=5).map(|i| format!("s{i:04}@mail.example")).collect();
    assert_eq!(order, expected);
}

#[test]
fn daily_limit_counts_across_runs_over_a_rolling_24_hours() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "daily_limit = 3\nmax_per_run = 2\n").file("supporters.csv", supporters(5));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    // --limit does not lift the daily quota.
    c.run(&["send", "--yes", "--limit", "5"])
        .code(0)
        .stdout_has("sent 0");
    idle(&server);
    assert_eq!(server.received().len(), 3);
    // 23 h later the quota is still used up; 24 h later it is free again.
    c.sql("UPDATE attempts SET at = at - 23 * 3600");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    c.sql("UPDATE attempts SET at = at - 3600 - 1");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    idle(&server);
    assert_eq!(server.received().len(), 5);
    assert_eq!(states(&c), st(&[("sent", 5)]));
}

#[test]
fn rate_spaces_letters_evenly() {
    // The rate spaces the *starts* of letters (MAIL FROM): what a relay's
    // rate limit counts. (Dots also carry the CPU jitter of a loaded machine.)
    let dots: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = Arc::clone(&dots);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if matches!(step, Step::Mail { .. }) {
            log.lock().unwrap().push(Instant::now());
        }
        Action::Default
    }));
    let c = campaign(&server, "rate = \"10/second\"\n").file("supporters.csv", supporters(5));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 5");
    idle(&server);
    let times = dots.lock().unwrap().clone();
    assert_eq!(times.len(), 5);
    let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert_paced(&gaps, 100);
    assert!((times[4] - times[0]).as_millis() >= 380, "gaps: {gaps:?}");
}

/// Asserts letters went `spacing` ms apart. The times are taken at the
/// server, so each carries the scheduling delay of a loaded machine: a gap
/// may look short when the letter before it was read late. So each gap must
/// be at least half the spacing (a burst shows gaps of 0–2 ms), and the
/// gaps together the full spacing each, within 20 ms (the rate holds).
#[track_caller]
fn assert_paced(gaps: &[u128], spacing: u128) {
    assert!(
        gaps.iter().all(|&g| g >= spacing / 2),
        "gaps between letters (ms): {gaps:?}"
    );
    let total: u128 = gaps.iter().sum();
    assert!(
        total + 20 >= spacing * gaps.len() as u128,
        "gaps between letters (ms): {gaps:?}, {total} ms in all"
    );
}

/// Runs 6 letters with `rate = "10/second"` plus `delivery`, with `fault`
/// answering each Dot; returns the gaps (ms) between the MAIL commands.
fn mail_gaps(delivery: &str, fault: impl Fn(usize) -> Action + Send + Sync + 'static) -> Vec<u128> {
    let mails: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = Arc::clone(&mails);
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(move |step| match step {
            Step::Mail { .. } => {
                log.lock().unwrap().push(Instant::now());
                Action::Default
            }
            Step::Dot { nth, .. } => fault(*nth),
            _ => Action::Default,
        }),
    );
    let c =
        campaign(&server, &format!("rate = \"10/second\"\n{delivery}")).file("supporters.csv", supporters(6));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 6");
    idle(&server);
    assert_eq!(states(&c), st(&[("sent", 6)]));
    let times = mails.lock().unwrap().clone();
    times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
}

#[test]
fn rate_spaces_letters_across_concurrent_connections() {
    let gaps = mail_gaps("concurrency = 3\n", |_| Action::Default);
    assert_eq!(gaps.len(), 5);
    assert_paced(&gaps, 100);
}

#[test]
fn rate_also_paces_in_run_retries() {
    let gaps = mail_gaps("retries = 1\n", |nth| {
        if nth == 1 {
            Action::reply("451 4.3.0 later")
        } else {
            Action::Default
        }
    });
    assert_eq!(gaps.len(), 6, "six letters and one retry");
    assert_paced(&gaps, 100);
}

#[test]
fn sigterm_during_a_retry_pause_exits_130_promptly() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { .. } => Action::reply("451 4.3.0 later"),
            _ => Action::Default,
        }),
    );
    // Pauses of 0.2, 0.4, 0.8, 1.6, 3.2 s between the tries: signal in the 1.6 s one.
    let c = campaign(&server, "retries = 5\n");
    let child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() >= 4));
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let run = wait_for(child, Duration::from_secs(10));
    let took = t.elapsed();
    run.code(130);
    assert!(took < Duration::from_millis(600), "took {took:?} to stop");
    idle(&server);
    assert!(server.received().is_empty());
    assert_eq!(
        states(&c),
        st(&[("deferred", 1)]),
        "the letter is deferred, not in flight"
    );
}

// ---------------------------------------------------------------- targets, status, export

const SECOND_TARGET: &str =
    "[[targets]]\nname = \"Brad Smith\"\nemail = \"Board@Corp.example\"\ntitle = \"President\"\n";

#[test]
fn two_targets_one_message_each_status_json_and_export() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 3, .. } => Action::reply("550 5.1.1 mailbox unavailable"),
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 0\nmax_per_run = 5\n")
        .section(SECOND_TARGET)
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,note\n\
             ana@mail.example,Ana,López,Tucson,\n\
             =2+5@mail.example,Eq,Ual,=cmd,\n\
             lee@mail.example,Lee,Park,Seattle,\n\
             not-an-email,Bad,Row,Nowhere,\n",
        );
    c.run(&["send", "--yes"]).code(3).stdout_has("sent 4");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 4);
    let pairs: BTreeSet<(String, String)> = got
        .iter()
        .map(|m| (m.header("Reply-To").unwrap(), m.rcpt_to.join(",")))
        .collect();
    assert_eq!(pairs.len(), 4, "one message per (supporter, target): {pairs:?}");
    assert!(got.iter().all(|m| m.rcpt_to.len() == 1));
    assert_eq!(ids(&got).iter().collect::<BTreeSet<_>>().len(), 4);
    assert!(
        got.iter()
            .any(|m| m.rcpt_to[0].eq_ignore_ascii_case("board@corp.example"))
    );
    assert!(got.iter().any(|m| m.rcpt_to[0] == "ceo@corp.example"));

    status_json_has_the_spec_keys_and_totals(&c);
    export_has_one_row_per_letter(&c, &got);
}

fn status_json_has_the_spec_keys_and_totals(c: &Campaign) {
    // 3 valid supporters × 2 + 1 invalid row × 2: 4 sent, 1 failed, 1 pending, 2 skipped.
    let json = c.run(&["status", "--json"]);
    json.code(0);
    let value: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(
        value,
        serde_json::json!({
            "campaign": "test-campaign", "total": 8, "sent": 4, "pending": 1,
            "deferred": 0, "failed": 1, "unknown": 0, "skipped": 2, "bounced": 0
        })
    );
    let keys: Vec<&str> = json
        .stdout
        .trim()
        .trim_matches(['{', '}'])
        .split(',')
        .map(|kv| kv.split(':').next().unwrap().trim().trim_matches('"'))
        .collect();
    assert_eq!(
        keys,
        [
            "campaign", "total", "sent", "pending", "deferred", "failed", "unknown", "skipped", "bounced"
        ],
        "exactly the SPEC keys, in its order"
    );
    assert_eq!(json.stdout.trim().lines().count(), 1);
}

fn export_has_one_row_per_letter(c: &Campaign, got: &[Received]) {
    // export: one row per letter, the SPEC columns, formulas neutralized.
    let out = c.run(&["export"]);
    out.code(0);
    let mut reader = csv::Reader::from_reader(out.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "supporter",
            "target",
            "state",
            "attempts",
            "last_reply",
            "sent_at",
            "message_id",
            "refused_copies",
            "bounce_status",
            "bounce_diagnostic",
            "bounced_at",
            "body_fingerprint",
            "letter_file",
            "language",
            "subject_variant",
            "letter_version",
            "supporter_name",
            "target_name",
            "csv_line"
        ]
    );
    let rows: Vec<BTreeMap<String, String>> = reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 8, "{}", out.stdout);
    let by_state = |s: &str| rows.iter().filter(|r| r["state"] == s).count();
    assert_eq!(
        (
            by_state("sent"),
            by_state("failed"),
            by_state("pending"),
            by_state("skipped")
        ),
        (4, 1, 1, 2)
    );
    for r in &rows {
        assert!(
            !r["supporter"].starts_with(['=', '+', '-', '@']),
            "formula not neutralized: {r:?}"
        );
    }
    assert!(
        rows.iter().any(|r| r["supporter"] == "'=2+5@mail.example"),
        "{rows:?}"
    );
    let server_ids: BTreeSet<String> = ids(got).into_iter().collect();
    for r in rows.iter().filter(|r| r["state"] == "sent") {
        assert!(server_ids.contains(&r["message_id"]), "{r:?}");
        assert!(r["last_reply"].starts_with("250"), "{r:?}");
        assert!(!r["sent_at"].is_empty(), "{r:?}");
        assert_eq!(r["attempts"], "1");
    }
    let failed = rows.iter().find(|r| r["state"] == "failed").unwrap();
    assert_eq!(failed["last_reply"], "550 5.1.1 mailbox unavailable");
    assert!(failed["sent_at"].is_empty());
    let pending = rows.iter().find(|r| r["state"] == "pending").unwrap();
    assert_eq!(pending["attempts"], "0");
    assert!(!pending["message_id"].is_empty(), "known before sending");
}

#[test]
fn concurrency_3_delivers_everything_once() {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        if matches!(step, Step::Dot { .. }) {
            pause(Duration::from_millis(5));
        }
        Action::Default
    }));
    let c = campaign(&server, "concurrency = 3\n")
        .section(SECOND_TARGET)
        .file("supporters.csv", supporters(30));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 60");
    idle(&server);
    let got = copies(&server);
    assert_eq!(got.len(), 60);
    assert!(got.values().all(|&n| n == 1));
    let conns: BTreeSet<usize> = server.received().iter().map(|m| m.conn).collect();
    assert_eq!(conns.len(), 3, "three connections, each reused: {conns:?}");
    assert_eq!(states(&c), st(&[("sent", 60)]));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
}

// ---------------------------------------------------------------- exit codes

#[test]
fn exit_codes_follow_the_spec() {
    // 0: all delivered; 0 again: nothing due.
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0);
    c.run(&["send", "--yes"]).code(0);

    // 3: some letter not delivered.
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 1, .. } => Action::reply("550 5.1.1 no such user"),
            _ => Action::Default,
        }),
    );
    campaign(&server, "retries = 0\n").run(&["send", "--yes"]).code(3);

    // 3, not 75: the server became unreachable after a letter went.
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 2, .. } => Action::Drop,
            Step::Greeting { conn } if *conn >= 2 => Action::Drop,
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 1\n");
    c.run(&["send", "--yes"]).code(3);
    assert_eq!(states(&c), st(&[("sent", 1), ("unknown", 1)]));

    // 75: the server is unreachable before any letter went; nothing recorded as attempted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let c = Campaign::new()
        .section(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\ntimeout_secs = 2\n"
        ))
        .section("[delivery]\nretries = 1\n");
    let run = c.run(&["send", "--yes"]);
    run.code(75);
    assert!(
        run.stderr.contains(&port.to_string()),
        "names the server: {}",
        run.stderr
    );
    let rows = query(&c, "SELECT count(*) FROM letters WHERE state NOT IN ('pending')");
    assert_eq!(rows[0][0], "0", "nothing recorded as attempted");
}

// ---------------------------------------------------------------- found by this suite

#[test]
fn rate_holds_after_a_slow_letter_no_burst() {
    let mails: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = Arc::clone(&mails);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        match step {
            Step::Mail { .. } => log.lock().unwrap().push(Instant::now()),
            Step::Dot { nth: 1, .. } => pause(Duration::from_millis(350)),
            _ => {}
        }
        Action::Default
    }));
    let c = campaign(&server, "rate = \"10/second\"\n").file("supporters.csv", supporters(5));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 5");
    idle(&server);
    let times = mails.lock().unwrap().clone();
    let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert_paced(&gaps, 100);
}

#[test]
fn sigterm_during_a_rate_wait_exits_130_promptly() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "rate = \"1/minute\"\n");
    let child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.received().len() == 1));
    pause(Duration::from_millis(200));
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let run = wait_for(child, Duration::from_secs(5));
    let took = t.elapsed();
    run.code(130);
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    assert_eq!(states(&c), st(&[("sent", 1)]));
}

#[test]
fn a_second_sigterm_exits_at_once_and_the_letter_in_flight_becomes_unknown() {
    let slow = Arc::new(AtomicBool::new(true));
    let slow2 = Arc::clone(&slow);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if matches!(step, Step::Dot { .. }) && slow2.load(SeqCst) {
            pause(Duration::from_millis(1500));
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 1\n").file("supporters.csv", supporters(5));
    let child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() == 1));
    let pid = child.id().to_string();
    let t = Instant::now();
    for _ in 0..2 {
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        pause(Duration::from_millis(100));
    }
    let run = wait_for(child, Duration::from_secs(5));
    let took = t.elapsed();
    run.code(130);
    assert!(
        took < Duration::from_millis(1400),
        "exited at once, took {took:?}"
    );
    slow.store(false, SeqCst);
    idle(&server);
    assert_eq!(
        server.received().len(),
        1,
        "the server accepted the letter in flight"
    );
    assert_eq!(states(&c), st(&[("sending", 1)]));
    c.run(&["send", "--yes"])
        .code(0)
        .stdout_has("sent 4")
        .stderr_has("in flight");
    assert_eq!(states(&c), st(&[("sent", 4), ("unknown", 1)]));
    assert_eq!(
        ledger_ids(&c, "unknown"),
        ids(&server.received()[..1]).into_iter().collect()
    );
    idle(&server);
    assert!(copies(&server).values().all(|&n| n == 1));
}

#[test]
fn sigterm_with_concurrency_3_records_every_letter_in_flight() {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        if matches!(step, Step::Dot { .. }) {
            pause(Duration::from_millis(30));
        }
        Action::Default
    }));
    let c = campaign(&server, "concurrency = 3\n").file("supporters.csv", supporters(100));
    let child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() >= 10));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for(child, Duration::from_secs(5)).code(130);
    idle(&server);
    let received: BTreeSet<String> = ids(&server.received()).into_iter().collect();
    assert!(received.len() < 100);
    assert_eq!(ledger_ids(&c, "sent"), received);
    assert_eq!(states(&c), st(&[("sent", received.len() as i64)]));
}

#[test]
fn a_busy_greeting_before_any_letter_exits_75() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Greeting { .. } => Action::reply("421 4.3.2 too busy, try later"),
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "retries = 1\n");
    c.run(&["send", "--yes"]).code(75).stderr_has("421");
    assert!(server.received().is_empty());
    let rows = query(&c, "SELECT count(*) FROM letters");
    assert_eq!(rows[0][0], "0");
}

#[test]
fn status_total_keeps_sent_letters_whose_row_left_the_csv() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "max_per_run = 2\n").file("supporters.csv", supporters(4));
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    // s0001 (sent) and s0004 (pending) leave the CSV.
    let c = c.file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         s0002@mail.example,F,L,C,\n\
         s0003@mail.example,F,L,C,\n",
    );
    let json = c.run(&["status", "--json"]);
    let value: serde_json::Value = serde_json::from_str(json.code(0).stdout.trim()).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "campaign": "test-campaign", "total": 3, "sent": 2, "pending": 1,
            "deferred": 0, "failed": 0, "unknown": 0, "skipped": 0, "bounced": 0
        })
    );
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    let to: BTreeSet<String> = server
        .received()
        .iter()
        .map(|m| m.header("Reply-To").unwrap())
        .collect();
    assert_eq!(
        to,
        ["s0001", "s0002", "s0003"]
            .iter()
            .map(|s| format!("{s}@mail.example"))
            .collect()
    );
}

/// Three 5.7.x rejections in a row: a sender problem, so the run stops and
/// those letters go back to `deferred`, not `failed`.
fn policy_server() -> Server {
    Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Rcpt { .. } => Action::reply("550 5.7.1 relaying denied"),
            _ => Action::Default,
        }),
    )
}

#[test]
fn repeated_policy_rejections_stop_the_run_without_failing_letters() {
    let server = policy_server();
    let c = campaign(&server, "retries = 0\n").file("supporters.csv", supporters(5));
    let run = c.run(&["send", "--yes"]);
    assert_ne!(run.code, 0, "{run:?}");
    run.stderr_has("policy");
    idle(&server);
    let rcpts = server
        .transcript()
        .iter()
        .filter(|l| l.text.starts_with("RCPT"))
        .count();
    assert_eq!(rcpts, 3, "stopped after the third rejection");
    assert!(server.received().is_empty());
    assert_eq!(states(&c), st(&[("deferred", 3)]));
    c.run(&["status"]).code(0).stdout_has("550 5.7.1 relaying denied");
}

#[test]
fn policy_stop_summary_matches_the_ledger() {
    let server = policy_server();
    let c = campaign(&server, "retries = 0\n").file("supporters.csv", supporters(5));
    let run = c.run(&["send", "--yes"]);
    assert_eq!(states(&c), st(&[("deferred", 3)]));
    run.stdout_has("deferred 3").stdout_has("failed 0");
    assert!(!run.stderr.contains("--retry-failed"), "{}", run.stderr);
}

#[test]
fn a_letter_left_in_flight_by_a_crash_shows_why_it_is_unknown() {
    let slow = Arc::new(AtomicBool::new(false));
    let slow2 = Arc::clone(&slow);
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(move |step| match step {
            Step::Dot { nth: 1, .. } => Action::reply("451 4.3.0 later"),
            Step::Dot { .. } if slow2.load(SeqCst) => {
                pause(Duration::from_millis(1500));
                Action::Default
            }
            _ => Action::Default,
        }),
    );
    // Run 1: ana's letter is deferred by a 451.
    let c = campaign(&server, "retries = 0\n");
    c.run(&["send", "--yes"]).code(3);
    // Run 2: killed while ana's retry waits for its reply.
    c.sql("UPDATE letters SET next_attempt_at = 0");
    slow.store(true, SeqCst);
    let mut child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() == 4));
    child.kill().unwrap();
    child.wait().unwrap();
    slow.store(false, SeqCst);
    idle(&server);
    // Run 3 finds it in flight.
    c.run(&["send", "--yes"]).code(0);
    let rows = query(&c, "SELECT supporter, reply FROM letters WHERE state = 'unknown'");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "ana@mail.example");
    let status = c.run(&["status"]);
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains("ana@mail.example"))
        .unwrap_or_default()
        .to_string();
    assert!(line.starts_with("  unknown"), "{line}");
    assert!(!line.contains("451"), "a stale reply: {line}");
    assert!(line.contains("before the server replied"), "{line}");
}

#[test]
fn a_connection_the_server_closed_while_idle_is_replaced_not_blamed_on_the_letter() {
    // The server drops connections idle for 300 ms; the rate leaves 500 ms between letters.
    let mut opts = ServerOptions::new(Security::Plain);
    opts.timeout = Duration::from_millis(300);
    let server = Server::start(opts);
    let c = campaign(&server, "rate = \"2/second\"\nretries = 0\n");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    assert_eq!(server.received().len(), 3);
    assert_eq!(states(&c), st(&[("sent", 3)]));
    let deferred = query(&c, "SELECT count(*) FROM attempts WHERE outcome <> 'sent'");
    assert_eq!(deferred[0][0], "0", "no attempt was charged for the idle close");
}

#[test]
fn a_letter_in_flight_at_a_crash_counts_against_the_daily_limit() {
    let slow = Arc::new(AtomicBool::new(true));
    let slow2 = Arc::clone(&slow);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if matches!(step, Step::Dot { .. }) && slow2.load(SeqCst) {
            pause(Duration::from_millis(1500));
        }
        Action::Default
    }));
    let c = campaign(&server, "daily_limit = 2\n");
    let mut child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() == 1));
    child.kill().unwrap();
    child.wait().unwrap();
    slow.store(false, SeqCst);
    idle(&server);
    assert_eq!(server.received().len(), 1, "the server took the letter in flight");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    idle(&server);
    assert_eq!(
        server.received().len(),
        2,
        "daily_limit = 2: the unknown letter may have gone, so only one more today"
    );
}

#[test]
fn refused_attempts_do_not_use_up_the_daily_limit() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth, .. } if *nth <= 2 => Action::reply("451 4.3.0 later"),
            _ => Action::Default,
        }),
    );
    let c = campaign(&server, "daily_limit = 3\nmax_per_run = 1\nretries = 2\n");
    for _ in 0..3 {
        c.run(&["send", "--yes"]).code(0).stdout_has("sent 1");
    }
    idle(&server);
    assert_eq!(server.received().len(), 3);
}

#[test]
fn a_run_held_by_the_daily_limit_says_so() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "daily_limit = 1\n");
    c.run(&["send", "--yes"])
        .code(0)
        .stdout_has("sent 1")
        .stdout_has("left 2");
    c.run(&["send", "--yes"])
        .code(0)
        .stdout_has("sent 0")
        .stdout_has("left 2")
        .stderr_has("daily_limit");
}

// ------------------------------------------------------------- full disk

#[test]
fn a_full_disk_stops_the_run_before_a_letter_goes_unrecorded() {
    // The ledger folder is a 512 KiB tmpfs in a private mount namespace
    // (root, or an unprivileged user namespace). After one letter went,
    // the disk is filled to the last byte: the next run must stop with a
    // clear message before sending anything, and once space is freed the
    // remaining letters go, each exactly once.
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "retries = 0\n")
        .file("all.csv", supporters(3))
        .file("supporters.csv", supporters(1));
    c.write_config();
    let script = r#"
        set -u
        mkdir -p .mailer && mount -t tmpfs -o size=512k tmpfs .mailer || exit 99
        "$MAILER" send --yes >out1 2>err1; echo $? >code1
        dd if=/dev/zero of=.mailer/fill bs=1k 2>/dev/null
        cp all.csv supporters.csv
        "$MAILER" send --yes >out2 2>err2; echo $? >code2
        rm .mailer/fill
        "$MAILER" send --yes >out3 2>err3; echo $? >code3
        "$MAILER" status --json >status
    "#;
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.arg("-r");
    }
    let status = cmd
        .args(["-m", "--propagation", "private", "bash", "-c", script])
        .current_dir(c.path())
        .env("MAILER", env!("CARGO_BIN_EXE_mailer"))
        .env("NO_COLOR", "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "could not set up a private tmpfs (needs root or user namespaces)"
    );
    let read = |f: &str| std::fs::read_to_string(c.join(f)).unwrap_or_default();
    assert_eq!(read("code1").trim(), "0", "{}", read("err1"));
    assert_ne!(read("code2").trim(), "0");
    let err2 = read("err2");
    assert!(
        err2.contains("disk holding the ledger") && err2.contains("is full"),
        "{err2}"
    );
    assert_eq!(read("code3").trim(), "0", "{}", read("err3"));
    assert!(read("out3").starts_with("sent 2 "), "{}", read("out3"));
    idle(&server);
    let got = ids(&server.received());
    let unique: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!((got.len(), unique.len()), (3, 3), "each letter exactly once");
    assert!(read("status").contains(r#""sent":3"#), "{}", read("status"));
}
