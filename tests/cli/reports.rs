//! Reports (issue 13): `status --json` carries the schedule's progress that
//! the human `status` shows (issue 11's leftover), under `schedule`.
//!
//! Real time, a real SMTP server, the real binary; windows are placed
//! around the current time as in `schedule.rs`.

use std::fmt::Write as _;

use serde_json::{Value, json};

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

/// One named target in UTC and `n` supporters.
fn campaign(server: &Server, n: usize) -> Campaign {
    Campaign::new()
        .head(
            r#"[campaign]
id = "test-campaign"
name = "Drop the contract"
org = "Test Org"
letter = "letters/letter.txt"
subject = "{{ supporter.first_name }}: drop the contract"

[sender]
from = "{{ supporter.name }} via Test Org <letters@org.example>"

[[targets]]
name = "Satya Nadella"
email = "ceo@corp.example"
timezone = "UTC"

[supporters]
file = "supporters.csv"
"#,
        )
        .file("supporters.csv", supporters(n))
        .smtp_plain(server)
}

/// The same with `schedule` as `[schedule]`.
fn scheduled(server: &Server, n: usize, schedule: &str) -> Campaign {
    campaign(server, n).section(&format!("[schedule]\n{schedule}"))
}

/// Now, as a TOML local date-time in UTC, moved by `secs`.
fn utc(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn status_json(c: &Campaign) -> Value {
    let run: Run = c.run(&["status", "--json"]);
    run.code(0);
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "one object on one line: {}",
        run.stdout
    );
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// An RFC 3339 UTC time, as `export`'s `sent_at`.
fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && s.parse::<jiff::Timestamp>().is_ok())
}

#[test]
fn issue13_status_json_says_a_target_is_behind_then_on_schedule() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // A quarter of the window passed (less 30 s): 10 of 40 are due by now.
    let c = scheduled(
        &server,
        40,
        &format!("start = {}\nend = {}\n", utc(-6 * 3600 + 30), utc(18 * 3600 + 30)),
    );
    let before = status_json(&c);
    // SPEC's keys are all still there, unchanged.
    assert_eq!(
        (before["total"].clone(), before["pending"].clone()),
        (json!(40), json!(40))
    );
    assert_eq!(
        before["schedule"],
        json!({
            "targets": [{
                "target": "ceo@corp.example",
                "name": "Satya Nadella",
                "handed_over": 0,
                "letters": 40,
                "state": "behind",
                "behind_by": 10
            }],
            "daily_limit": null
        })
    );
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 10);
    let after = status_json(&c);
    let target = &after["schedule"]["targets"][0];
    assert_eq!(target["state"], "on_schedule", "{after}");
    assert_eq!(target["handed_over"], 10, "{after}");
    assert!(is_rfc3339(&target["next_letter"]), "{after}");
}

#[test]
fn issue13_status_json_says_the_window_closed_and_the_daily_limit_is_used() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = scheduled(
        &server,
        30,
        "start = 2026-01-05\nend = 2026-01-09\nper_target_hourly = 10\n",
    )
    .section("[delivery]\ndaily_limit = 10\n");
    c.run(&["send", "--yes"]).code(0);
    assert_eq!(server.received().len(), 10);
    let first: i64 =
        crate::support::campaign::query(&c, "SELECT min(at) FROM attempts WHERE handed_over = 1")[0][0]
            .parse()
            .unwrap();
    let frees = jiff::Timestamp::from_second(first + 86_400).unwrap().to_string();
    assert_eq!(
        status_json(&c)["schedule"],
        json!({
            "targets": [{
                "target": "ceo@corp.example",
                "name": "Satya Nadella",
                "handed_over": 10,
                "letters": 30,
                "state": "window_closed",
                "still_due": 20,
                "per_target_hourly": 10
            }],
            "daily_limit": {"used": 10, "limit": 10, "next_letter_allowed": frees}
        })
    );
}

#[test]
fn issue13_status_json_says_a_target_is_outside_its_open_hours() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    // Open for one hour, starting two hours from now.
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let open = (i32::from(now.hour()) + 2) % 24;
    let c = scheduled(
        &server,
        5,
        &format!(
            "hours = \"{open:02}:00-{:02}:00\"\ntimezone = \"UTC\"\n",
            open + 1
        ),
    );
    let status = status_json(&c);
    let target = &status["schedule"]["targets"][0];
    assert_eq!(target["state"], "outside_open_hours", "{status}");
    let until: jiff::Timestamp = target["until"].as_str().unwrap().parse().unwrap();
    let until = until.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    assert_eq!((i32::from(until.hour()), until.minute()), (open, 0), "{status}");
    // The human `status` says the same.
    c.run(&["status"])
        .code(0)
        .stdout_has("  Satya Nadella: 0 of 5 handed over — outside its open hours until ")
        .stdout_has(&format!(" {open:02}:00 UTC\n"));
}

#[test]
fn issue13_status_json_without_a_schedule_is_spec_s_object_exactly() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, 3);
    c.run(&["send", "--yes"]).code(0);
    let run = c.run(&["status", "--json"]);
    run.code(0);
    assert_eq!(
        run.stdout,
        "{\"campaign\":\"test-campaign\",\"total\":3,\"sent\":3,\"pending\":0,\"deferred\":0,\
         \"failed\":0,\"unknown\":0,\"skipped\":0,\"bounced\":0}\n"
    );
}
