//! Issue 9, the run's edges: honest exit codes once letters went, the policy
//! breaker with several targets, signals before the first letter, and the
//! `Date` of each letter (items 10, 11, 13 and 19).
//!
//! Real binary, real files, the scriptable SMTP server of `tests/support`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use crate::support::campaign::{Campaign, query, st};
use crate::support::smtp::{Action, Received, Security, Server, ServerOptions, Step};
use crate::support::wait::{idle, pause, wait_for, wait_until};

// ---------------------------------------------------------------- helpers

/// A header row and `n` valid supporters, `s0001@mail.example` …
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

/// `kill -SIGNAL pid`.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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

/// Message-IDs the server accepted.
fn received_ids(server: &Server) -> BTreeSet<String> {
    server
        .received()
        .iter()
        .map(|m| m.message_id().expect("a Message-ID"))
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ------------------------------------- item 10: never exit 1 once letters went

/// A letter that renders for every row but one whose city is `Boom`: that
/// row names a column the file does not have, an error only a render finds.
const BOOM_LETTER: &str = "Dear {{ target.name }},\n\nI am {{ supporter.name }}.\n\
{% if supporter.city == \"Boom\" %}{{ supporter.no_such_column }}{% endif %}\n";

#[test]
fn issue9_row_added_mid_run_that_cannot_render_is_that_rows_problem() {
    let appended = Arc::new(Mutex::new(None::<std::path::PathBuf>));
    let path = Arc::clone(&appended);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Dot { nth: 3, .. } = step
            && let Some(p) = path.lock().unwrap().take()
        {
            let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(b"boom@mail.example,Bo,Om,Boom,\nlast@mail.example,La,St,City,\n")
                .unwrap();
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 0\n")
        .file("letters/letter.txt", BOOM_LETTER)
        .file("supporters.csv", supporters(10));
    *appended.lock().unwrap() = Some(c.join("supporters.csv"));
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    // The row added at line 12 is named; the run went on past it (the row
    // after it waits for the next run: a run sends what pass 1 counted).
    run.code(3)
        .stderr_has("supporters.csv:12")
        .stderr_has("no_such_column")
        .stderr_has("changed during the run");
    assert!(!run.stderr.contains("nothing was sent"), "{run:?}");
    assert_eq!(server.received().len(), 10, "{run:?}");
    assert_eq!(ledger_ids(&c, "sent"), received_ids(&server));
    assert_eq!(c.states(), st(&[("sent", 10)]));
}

#[test]
fn issue9_supporters_file_removed_mid_run_never_exits_1() {
    let removed = Arc::new(Mutex::new(None::<std::path::PathBuf>));
    let path = Arc::clone(&removed);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Dot { nth: 3, .. } = step
            && let Some(p) = path.lock().unwrap().take()
        {
            std::fs::remove_file(p).unwrap();
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 0\n").file("supporters.csv", supporters(10));
    *removed.lock().unwrap() = Some(c.join("supporters.csv"));
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    assert!(
        run.code == 0 || run.code == 3,
        "never 1 once letters went: {run:?}"
    );
    assert!(!run.stderr.contains("nothing was sent"), "{run:?}");
    if run.code == 3 {
        run.stderr_has("letters already went").stderr_has("hint:");
    }
    assert!(server.received().len() >= 3);
    assert_eq!(ledger_ids(&c, "sent"), received_ids(&server));
    assert_eq!(c.states(), st(&[("sent", server.received().len() as i64)]));
}

#[test]
fn issue9_supporters_file_truncated_mid_run_ends_with_3_and_says_so() {
    // Bigger than the CSV reader's buffer, so the cut is felt mid-stream.
    let truncated = Arc::new(Mutex::new(None::<std::path::PathBuf>));
    let path = Arc::clone(&truncated);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Dot { nth: 3, .. } = step
            && let Some(p) = path.lock().unwrap().take()
        {
            let header = "email,first_name,last_name,city,note\n".len() as u64;
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(header)
                .unwrap();
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 0\n").file("supporters.csv", supporters(800));
    *truncated.lock().unwrap() = Some(c.join("supporters.csv"));
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    run.code(3).stderr_has("changed during the run");
    let got = server.received().len();
    assert!((3..800).contains(&got), "{got} letters: {run:?}");
    assert_eq!(ledger_ids(&c, "sent"), received_ids(&server));
    let sending = query(
        &c,
        "SELECT count(*) FROM letters WHERE state IN ('sending', 'unknown')",
    );
    assert_eq!(sending[0][0], "0");
}

#[test]
fn issue9_ledger_write_error_after_letters_went_exits_3_with_what_to_do() {
    // At the third letter's final dot another process takes the ledger's
    // write lock and keeps it: every later write of the run fails (after
    // SQLite's busy timeout), in a worker and in the dispatcher (the invalid
    // row at line 6 is recorded as skipped by the dispatcher).
    let ledger = Arc::new(Mutex::new(None::<std::path::PathBuf>));
    let holder = Arc::new(Mutex::new(None::<rusqlite::Connection>));
    let (path, held) = (Arc::clone(&ledger), Arc::clone(&holder));
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Dot { nth: 3, .. } = step
            && let Some(p) = path.lock().unwrap().take()
        {
            let conn = rusqlite::Connection::open(p).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            *held.lock().unwrap() = Some(conn);
        }
        Action::Default
    }));
    let mut csv = supporters(4);
    csv.push_str("not-an-address,Bad,Row,Nowhere,\n");
    csv.push_str(&supporters(8)[supporters(4).len()..]);
    let c = campaign(&server, "retries = 0\n").file("supporters.csv", csv);
    *ledger.lock().unwrap() = Some(c.ledger());
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    drop(holder.lock().unwrap().take());
    run.code(3)
        .stderr_has("cannot write ledger")
        .stderr_has("letters already went")
        .stderr_has("hint:");
    assert!(!run.stderr.contains("nothing was sent"), "{run:?}");
    assert_eq!(server.received().len(), 3);
    // The third letter's outcome could not be written: the next run calls it
    // unknown (it may have arrived), and never resends it on its own.
    let next = c.run(&["send", "--yes"]);
    next.stderr_has("in flight");
    idle(&server);
    let copies = server.received().len();
    assert_eq!(received_ids(&server).len(), copies, "no letter went twice");
}

// ------------------------------------------- item 11: the policy breaker

/// Three targets; the From address is the supporter's own, so the server
/// can refuse one supporter's letters at MAIL FROM.
fn three_targets(server: &Server, delivery: &str, csv: &str) -> Campaign {
    let c = Campaign::new();
    let head = c
        .config_text()
        .replace(
            "from = \"{{ supporter.name }} via Test Org <letters@org.example>\"",
            "from = \"{{ supporter.name }} <{{ supporter.email }}>\"",
        )
        .replace(
            "[supporters]",
            "[[targets]]\nname = \"Amy Hood\"\nemail = \"cfo@corp.example\"\n\n\
             [[targets]]\nname = \"Brad Smith\"\nemail = \"president@corp.example\"\n\n[supporters]",
        );
    c.head(&head)
        .file("supporters.csv", csv)
        .smtp_plain(server)
        .section(&format!("[delivery]\n{delivery}"))
}

/// A server that refuses, for content, every letter from these supporters.
fn refusing(refused: &'static [&'static str]) -> Server {
    Server::start(
        ServerOptions::new(Security::Plain).with_script(move |step| match step {
            Step::Mail { from, .. } if refused.iter().any(|r| from.starts_with(r)) => {
                Action::reply("550 5.7.1 Message content rejected")
            }
            _ => Action::Default,
        }),
    )
}

#[test]
fn issue9_one_supporters_refused_letters_do_not_trip_the_breaker() {
    let server = refusing(&["s0002@"]);
    let c = three_targets(&server, "retries = 0\n", &supporters(4));
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    run.code(3);
    assert!(!run.stderr.contains("policy reasons"), "{run:?}");
    assert_eq!(server.received().len(), 9);
    assert_eq!(c.states(), st(&[("failed", 3), ("sent", 9)]));
}

#[test]
fn issue9_policy_breaker_defers_with_backoff_then_letters_fail_as_usual() {
    let server = refusing(&["s0001@", "s0002@", "s0003@"]);
    let c = three_targets(&server, "retries = 0\n", &supporters(5));

    // Run 1: the third distinct supporter trips the breaker: s1's and s2's
    // three letters and s3's first are held, with the normal backoff.
    // (Nothing went, so the sender problem exits 1, as before.)
    let before = unix_now();
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    run.code(1).stderr_has("policy");
    assert!(server.received().is_empty());
    assert_eq!(c.states(), st(&[("deferred", 7)]));
    for row in query(&c, "SELECT next_attempt_at FROM letters") {
        let next: i64 = row[0].parse().unwrap();
        assert!(next >= before + 50, "held with a backoff, not for now: {row:?}");
    }

    // Run 2, at once: the held letters wait; the rest of the campaign goes on.
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    run.code(3);
    assert!(!run.stderr.contains("policy reasons"), "{run:?}");
    assert_eq!(server.received().len(), 6, "s4 and s5 to all three targets");
    assert_eq!(c.states(), st(&[("deferred", 7), ("failed", 2), ("sent", 6)]));

    // Run 3, after the backoff: a held letter refused again fails as usual.
    c.sql("UPDATE letters SET next_attempt_at = 0 WHERE state = 'deferred'");
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    run.code(3);
    assert!(!run.stderr.contains("policy reasons"), "{run:?}");
    assert_eq!(c.states(), st(&[("failed", 9), ("sent", 6)]));
    // Nothing is left due: a fourth run sends nothing and exits 0.
    c.run(&["send", "--yes"]).code(0);
}

#[test]
fn issue9_policy_breaker_holds_letters_in_flight_at_concurrency_4() {
    let slow_refusals = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Mail { from, .. } if ["s0001@", "s0002@", "s0003@"].iter().any(|r| from.starts_with(r)) => {
                // Keep several refusals in flight at once.
                pause(Duration::from_millis(100));
                Action::reply("550 5.7.1 Message content rejected")
            }
            Step::Mail { .. } => {
                // Everyone else's letters are slower still, so the
                // refusals come back before any delivery would break
                // their streak (a loaded machine raced them before).
                pause(Duration::from_millis(400));
                Action::Default
            }
            _ => Action::Default,
        }),
    );
    let server = slow_refusals;
    let c = three_targets(&server, "retries = 0\nconcurrency = 4\n", &supporters(6));
    let before = unix_now();
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    // 1 if nothing went before the trip, 3 if another worker delivered s4's.
    assert!(run.code == 1 || run.code == 3, "{run:?}");
    run.stderr_has("policy");
    // No refused letter is `failed`: those in flight when the breaker
    // tripped were held like the ones that tripped it.
    let refused = query(
        &c,
        "SELECT state, next_attempt_at FROM letters WHERE supporter < 's0004'",
    );
    assert!(refused.len() >= 7, "{refused:?}");
    for row in &refused {
        assert_eq!(row[0], "deferred", "{refused:?}\n{run:?}");
        let next: i64 = row[1].parse().unwrap();
        assert!(next >= before + 50, "{refused:?}");
    }
    // After the backoff they fail as usual and everyone else's letters go.
    c.sql("UPDATE letters SET next_attempt_at = 0 WHERE state = 'deferred'");
    let run = c.run(&["send", "--yes"]);
    idle(&server);
    run.code(3);
    assert!(!run.stderr.contains("policy reasons"), "{run:?}");
    assert_eq!(c.states(), st(&[("failed", 9), ("sent", 9)]));
    assert_eq!(server.received().len(), 9);
}

// ------------------------------- item 13: signals before the first letter

/// A campaign whose pass 1 takes seconds (many rows to render).
fn big_campaign(server: &Server) -> Campaign {
    campaign(server, "retries = 0\n").file("supporters.csv", supporters(30_000))
}

fn interrupted_in_pass_one(sig: &str) {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = big_campaign(&server);
    let child = c.spawn(&["send", "--yes"]);
    // The ledger is opened just before pass 1 starts.
    assert!(wait_until(Duration::from_secs(20), || c.ledger().exists()));
    pause(Duration::from_millis(200));
    signal(&child, sig);
    let run = wait_for(child, Duration::from_secs(60));
    run.code(130)
        .stderr_has("interrupted")
        .stderr_has("nothing was sent");
    assert_eq!(server.connections(), 0, "stopped before connecting: {run:?}");
    assert!(c.states().is_empty());
}

#[test]
fn issue9_sigterm_during_pass_one_exits_130() {
    interrupted_in_pass_one("-TERM");
}

#[test]
fn issue9_sigint_during_pass_one_exits_130() {
    interrupted_in_pass_one("-INT");
}

fn interrupted_while_connecting(sig: &str) {
    // The server accepts but never greets; the timeout is long.
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Greeting { .. } => Action::Stall(Duration::from_secs(60)),
            _ => Action::Default,
        }),
    );
    let c = Campaign::new()
        .section(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout_secs = 45\n",
            server.port()
        ))
        .section("[delivery]\nretries = 0\n");
    let child = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(20), || server.connections() > 0));
    signal(&child, sig);
    // Bounded well below the 45 s timeout: the wait is not sat out.
    let run = wait_for(child, Duration::from_secs(15));
    run.code(130);
    assert!(server.received().is_empty() && server.dots_seen() == 0);
    assert!(c.states().is_empty(), "{:?}", c.states());
}

#[test]
fn issue9_sigterm_while_connecting_exits_130_at_once() {
    interrupted_while_connecting("-TERM");
}

#[test]
fn issue9_sigint_while_connecting_exits_130_at_once() {
    interrupted_while_connecting("-INT");
}

/// A pseudo-terminal pair: the master (ours) and the slave (the child's).
fn open_pty() -> (OwnedFd, OwnedFd) {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .expect("open /dev/ptmx");
    rustix::pty::grantpt(&master).expect("grantpt");
    rustix::pty::unlockpt(&master).expect("unlockpt");
    let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open the pty slave");
    (master, slave)
}

fn interrupted_at_the_prompt(sig: &str) {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "retries = 0\n");
    let (master, slave) = open_pty();
    let mut cmd = c.command(&["send"]);
    let tty = || Stdio::from(slave.try_clone().unwrap());
    cmd.env("TERM", "xterm-256color")
        .stdin(tty())
        .stderr(tty())
        .stdout(Stdio::piped());
    let child = cmd.spawn().unwrap();
    drop(cmd);
    drop(slave);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = File::from(master.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("continue?") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(e) => panic!("no prompt ({e}): {}", String::from_utf8_lossy(&seen)),
        }
    }
    signal(&child, sig);
    let run = wait_for(child, Duration::from_secs(15));
    drop(master);
    run.code(130);
    assert_eq!(server.connections(), 0);
    assert!(c.states().is_empty());
}

#[test]
fn issue9_sigterm_at_the_prompt_exits_130() {
    interrupted_at_the_prompt("-TERM");
}

#[test]
fn issue9_sigint_at_the_prompt_exits_130() {
    interrupted_at_the_prompt("-INT");
}

// --------------------------------------- item 19: each letter's own Date

#[test]
fn issue9_each_letter_is_dated_when_it_is_handed_over() {
    let arrivals = Arc::new(Mutex::new(Vec::<(Option<String>, SystemTime)>::new()));
    let log = Arc::clone(&arrivals);
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Dot { message_id, .. } = step {
            log.lock().unwrap().push((message_id.clone(), SystemTime::now()));
        }
        Action::Default
    }));
    let c = campaign(&server, "retries = 0\nrate = \"1/second\"\n");
    // Load time is well before the letters go: the Date must not be it.
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 3);
    let arrivals = arrivals.lock().unwrap().clone();
    let mut dates = Vec::new();
    for m in &got {
        let date = mail_parser::MessageParser::default()
            .parse(&m.data)
            .and_then(|p| p.date().map(mail_parser::DateTime::to_timestamp))
            .expect("a Date header");
        let id = m.message_id();
        let (_, arrived) = arrivals.iter().find(|(i, _)| *i == id).unwrap();
        let arrived = arrived.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        // Date has whole seconds: stamped at hand-over, just before the dot.
        assert!(
            date <= arrived && arrived - date <= 3,
            "Date {date} vs arrival {arrived}: {}",
            m.text()
        );
        dates.push(date);
    }
    assert!(
        dates.windows(2).all(|w| w[0] < w[1]),
        "one letter a second: each Date its own: {dates:?}"
    );
    // The Message-ID does not change with the Date.
    let ids: BTreeSet<String> = got.iter().filter_map(Received::message_id).collect();
    assert_eq!(ids.len(), 3);
}
