//! `[schedule]` end to end (issue 11): each target's letters spread over its
//! open hours, cron runs that send exactly their share, `send --follow`.
//!
//! Real time, a real SMTP server, the real binary. Windows are placed around
//! the current time so each case is deterministic: a share computed with a
//! 30-second margin, open hours two hours from now.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Security, Server, ServerOptions};

/// `n` valid supporters.
fn supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

/// The config head with one target in `zone` (a target's own `timezone`).
fn head(zone: &str) -> String {
    format!(
        r#"[campaign]
id = "test-campaign"
name = "Drop the contract"
org = "Test Org"
letter = "letters/letter.txt"
subject = "{{{{ supporter.first_name }}}}: drop the contract"

[sender]
from = "{{{{ supporter.name }}}} via Test Org <letters@org.example>"

[[targets]]
name = "Satya Nadella"
email = "ceo@corp.example"
timezone = "{zone}"

[supporters]
file = "supporters.csv"
"#
    )
}

/// Now, as a TOML local date-time in UTC, moved by `secs`.
fn utc(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn scheduled(server: &Server, n: usize, zone: &str, schedule: &str) -> Campaign {
    Campaign::new()
        .head(&head(zone))
        .file("supporters.csv", supporters(n))
        .smtp_plain(server)
        .section(&format!("[schedule]\n{schedule}"))
}

/// Hand-over times of the letters, from the ledger.
fn hand_overs(c: &Campaign) -> Vec<i64> {
    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    let mut stmt = conn
        .prepare("SELECT at FROM attempts WHERE handed_over = 1 ORDER BY at")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn issue11_a_cron_run_sends_the_share_of_the_window_that_passed() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // 6 hours of 24 passed (less 30 s, so the share is exactly a quarter):
    // ⌈40 × 0.2496⌉ = 10.
    let c = scheduled(
        &server,
        40,
        "UTC",
        &format!("start = {}\nend = {}\n", utc(-6 * 3600 + 30), utc(18 * 3600 + 30)),
    );
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 10);
    // At once again: nothing more is due yet, and the output says when.
    let again = c.run(&["send", "--yes"]);
    again
        .code(0)
        .stderr_has("its share of the window so far went — next letter allowed ");
    assert_eq!(server.received().len(), 10);
    assert_eq!(c.states(), [("sent".to_string(), 10)]);
}

#[test]
fn issue11_a_target_outside_its_open_hours_gets_nothing_and_the_run_says_when() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // Open for one hour, starting two hours from now in the target's zone
    // (UTC); the schedule's own zone is elsewhere and must not matter.
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let open = (i32::from(now.hour()) + 2) % 24;
    let opens = if open >= 2 {
        now.date()
    } else {
        now.date().tomorrow().unwrap()
    };
    let c = scheduled(
        &server,
        5,
        "UTC",
        &format!(
            "hours = \"{open:02}:00-{:02}:00\"\ntimezone = \"Asia/Tokyo\"\n",
            open + 1
        ),
    );
    let run = c.run(&["send", "--yes"]);
    run.code(0).stderr_has(&format!(
        "`ceo@corp.example`: 5 due, outside its open hours ({open:02}:00-{:02}:00, every day, UTC) \
         — next letter allowed {opens} {open:02}:00 UTC",
        open + 1
    ));
    assert!(server.received().is_empty());
    // Nothing was handed over, nothing recorded as sent.
    assert!(c.states().iter().all(|(s, _)| s != "sent"), "{:?}", c.states());
}

#[test]
fn issue11_after_the_window_per_target_hourly_caps_each_run() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = scheduled(
        &server,
        30,
        "UTC",
        "start = 2026-01-05\nend = 2026-01-09\nper_target_hourly = 10\n",
    );
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 10);
    let again: Run = c.run(&["send", "--yes"]);
    again
        .code(0)
        .stderr_has("`ceo@corp.example`: 20 due, per_target_hourly 10/10 — next letter allowed ");
    assert_eq!(server.received().len(), 10);
}

#[test]
fn issue11_follow_sends_each_letter_at_its_time_then_exits() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // Eight letters over a 16-second window: one every 2 seconds.
    let c = scheduled(
        &server,
        8,
        "UTC",
        &format!("start = {}\nend = {}\njitter = 0.25\n", utc(0), utc(16)),
    );
    let started = Instant::now();
    let child = c.spawn(&["send", "--yes", "--follow"]);
    // A cron run meanwhile finds the lock held: 75.
    let mut cron = None;
    while started.elapsed() < Duration::from_secs(10) {
        if !server.received().is_empty() {
            cron = Some(c.run(&["send", "--yes"]));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let run = Run::from(out);
    run.code(0);
    cron.expect("the follower sent a first letter").code(75);
    assert_eq!(server.received().len(), 8);
    let at = hand_overs(&c);
    assert_eq!(at.len(), 8);
    // Spread over the window, not in one burst.
    let span = at[7] - at[0];
    assert!(span >= 10, "hand-overs {at:?} span {span} s");
    assert!(at.windows(2).all(|w| w[1] - w[0] <= 6), "{at:?}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "it ends once every letter went"
    );
}

#[test]
fn issue11_follow_is_interrupted_while_waiting() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // The window opens in an hour: the follower waits.
    let c = scheduled(
        &server,
        3,
        "UTC",
        &format!("start = {}\nend = {}\n", utc(3600), utc(7200)),
    );
    let child = c.spawn(&["send", "--yes", "--follow"]);
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    run.code(130).stderr_has("next letter allowed");
    assert!(server.received().is_empty());
}

#[test]
fn issue11_dry_run_shows_each_targets_plan() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // A five-day window in the future, weekdays 09:00-17:00 in New York.
    let c = scheduled(
        &server,
        200,
        "America/New_York",
        "start = 2030-12-02\nend = 2030-12-06\nhours = \"09:00-17:00\"\n\
         days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nper_target_hourly = 60\n",
    );
    let run = c.run(&["send", "--dry-run"]);
    run.code(0)
        .stdout_has("Schedule for Satya Nadella <ceo@corp.example>: 200 letters, 0 handed over")
        .stdout_has("  window   2030-12-02 00:00 America/New_York → 2030-12-07 00:00 America/New_York")
        .stdout_has("  open     09:00-17:00, mon, tue, wed, thu, fri (America/New_York)")
        .stdout_has("  per day  2030-12-02      40\n")
        .stdout_has("           2030-12-06      40\n")
        .stdout_has("  next     2030-12-02 09:00 America/New_York");
    assert!(server.received().is_empty());
}

#[test]
fn issue11_a_spent_daily_limit_says_when_the_next_letter_is_allowed() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = scheduled(&server, 5, "UTC", "timezone = \"UTC\"\n").section("[delivery]\ndaily_limit = 2\n");
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 2);
    let at = hand_overs(&c);
    let free = jiff::Timestamp::from_second(at[1] + 86_400)
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M")
        .to_string();
    c.run(&["send", "--yes"])
        .code(0)
        .stderr_has(&format!("daily_limit 2/2 — next letter allowed {free} UTC"));
    assert_eq!(server.received().len(), 2);
}

/// Each supporter's letter to their office, routed by `state`, for `[schedule]`.
fn routed(server: &Server, offices: &str, supporters: &str, schedule: &str) -> Campaign {
    let head = head("UTC").replace(
        "[[targets]]\nname = \"Satya Nadella\"\nemail = \"ceo@corp.example\"\ntimezone = \"UTC\"\n",
        "[routing]\ntargets = \"targets.csv\"\nmatch = [\"state\"]\n",
    );
    Campaign::new()
        .head(&head)
        .file("targets.csv", offices)
        .file("supporters.csv", supporters)
        .smtp_plain(server)
        .section(&format!("[schedule]\n{schedule}"))
}

/// Letters received per recipient.
fn to(server: &Server, who: &str) -> usize {
    server
        .received()
        .iter()
        .filter(|r| r.rcpt_to.iter().any(|t| t == who))
        .count()
}

#[test]
fn issue11_a_routed_targets_share_counts_only_its_own_supporters() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // 40 supporters in CA, 8 in NY; a quarter of the window passed (less
    // 30 s): ⌈40 × 0.2496⌉ = 10 to CA, ⌈8 × 0.2496⌉ = 2 to NY (not 8, as
    // it would be if NY's total were every supporter).
    let mut csv = String::from("email,first_name,last_name,city,state\n");
    for i in 1..=48 {
        let state = if i <= 8 { "NY" } else { "CA" };
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},{state}");
    }
    let c = routed(
        &server,
        "name,email,state\nCA Office,ca@gov.example,CA\nNY Office,ny@gov.example,NY\n",
        &csv,
        &format!("start = {}\nend = {}\n", utc(-6 * 3600 + 30), utc(18 * 3600 + 30)),
    );
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(to(&server, "ca@gov.example"), 10);
    assert_eq!(to(&server, "ny@gov.example"), 2);
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Schedule for NY Office <ny@gov.example>: 8 letters, 2 handed over")
        .stdout_has("Schedule for CA Office <ca@gov.example>: 40 letters, 10 handed over");
}

#[test]
fn issue11_a_routed_target_keeps_the_timezone_of_its_row() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // Open for one hour from two hours from now, UTC: closed in UTC, open
    // in UTC+2 (`Etc/GMT-2`), the zone of the CA office's row.
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let open = (i32::from(now.hour()) + 2) % 24;
    let c = routed(
        &server,
        "name,email,state,timezone\nCA Office,ca@gov.example,CA,Etc/GMT-2\nNY Office,ny@gov.example,NY,UTC\n",
        "email,first_name,last_name,city,state\na@mail.example,A,A,X,CA\nb@mail.example,B,B,X,CA\n\
         c@mail.example,C,C,X,CA\nd@mail.example,D,D,X,NY\ne@mail.example,E,E,X,NY\n",
        &format!(
            "hours = \"{open:02}:00-{:02}:00\"\ntimezone = \"UTC\"\n",
            open + 1
        ),
    );
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(to(&server, "ca@gov.example"), 3);
    assert_eq!(to(&server, "ny@gov.example"), 0);
    // The next run sends nothing and says what held it.
    c.run(&["send", "--yes"])
        .code(0)
        .stderr_has("`ny@gov.example`: 2 due, outside its open hours");
    assert_eq!(to(&server, "ny@gov.example"), 0);
    // A zone that is not one is the row's error.
    let bad = routed(
        &server,
        "name,email,state,timezone\nCA Office,ca@gov.example,CA,Mars/Olympus\n",
        "email,first_name,last_name,city,state\na@mail.example,A,A,X,CA\n",
        "",
    );
    bad.run(&["check"])
        .code(1)
        .stderr_has("targets.csv:2: unknown time zone `Mars/Olympus`");
}

#[test]
fn issue11_follow_goes_with_neither_a_dry_run_nor_a_test_letter() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = scheduled(&server, 2, "UTC", "");
    c.run(&["send", "--follow", "--test", "me@org.example"])
        .code(2)
        .stderr_has("--follow");
    c.run(&["send", "--follow", "--dry-run"]).code(2);
    assert!(server.received().is_empty());
}

#[test]
fn issue11_status_shows_a_target_behind_its_schedule_then_on_it() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // A quarter of the window passed (less 30 s): 10 of 40 are due by now.
    let c = scheduled(
        &server,
        40,
        "UTC",
        &format!("start = {}\nend = {}\n", utc(-6 * 3600 + 30), utc(18 * 3600 + 30)),
    );
    c.run(&["status"])
        .code(0)
        .stdout_has("Schedule:\n  Satya Nadella: 0 of 40 handed over — behind by 10\n");
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 10);
    c.run(&["status"])
        .code(0)
        .stdout_has("  Satya Nadella: 10 of 40 handed over — on schedule (next letter ")
        .stdout_has(" UTC)\n");
}

#[test]
fn issue11_status_shows_a_closed_window_and_the_daily_limit() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = scheduled(
        &server,
        30,
        "UTC",
        "start = 2026-01-05\nend = 2026-01-09\nper_target_hourly = 10\n",
    )
    .section("[delivery]\ndaily_limit = 10\n");
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 10);
    let at = hand_overs(&c);
    let free = jiff::Timestamp::from_second(at[0] + 86_400)
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M")
        .to_string();
    c.run(&["status"])
        .code(0)
        .stdout_has(
            "  Satya Nadella: 10 of 30 handed over — window closed \
             (20 still due: they go at per_target_hourly 10 in open hours)\n",
        )
        .stdout_has(&format!("  daily_limit 10/10 — next letter allowed {free} "));
}

#[test]
fn issue11_status_without_a_schedule_shows_no_schedule() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .head(&head("UTC"))
        .file("supporters.csv", supporters(3))
        .smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0);
    let run = c.run(&["status"]);
    run.code(0);
    assert!(!run.stdout.contains("Schedule:"), "{}", run.stdout);
}
