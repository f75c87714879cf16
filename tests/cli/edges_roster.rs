//! Issue 9, the supporters file at its edges: stray quotes that would merge
//! rows (item 4), a repeated address in an invalid row (item 6), and files
//! that never end or hold one giant value (item 16).
//!
//! Each test runs the real binary on a real file; the send tests talk to the
//! scriptable SMTP server in `tests/support/smtp.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};

/// The supporters file as mailer names it.
const CSV: &str = "supporters.csv";
/// The header every file here shares.
const HEADER: &str = "email,first_name,last_name,city,note";

/// Waits until the server has no session open.
fn idle(server: &Server) {
    assert!(server.wait_idle(Duration::from_secs(10)), "server still busy");
}

/// The default campaign with this supporters file.
fn with_supporters(csv: &str) -> Campaign {
    Campaign::new().file(CSV, csv)
}

// ---------------------------------------------------------------- item 6: repeated address

#[test]
fn issue9_an_invalid_row_repeating_an_address_is_a_duplicate_never_recorded() {
    // Ana's letter is deferred by a 451; line 4 repeats her address with a
    // NUL in another cell. It must be ignored as a repeat, not recorded as
    // `skipped` under her key.
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth: 1, .. } => Action::reply("451 4.3.0 try later"),
            _ => Action::Default,
        }),
    );
    let csv = format!(
        "{HEADER}\n\
         ana@mail.example,Ana,Lopez,Tucson,\n\
         sam@mail.example,Sam,Okafor,Minneapolis,\n\
         ANA@mail.example,A\0na,Lopez,Tucson,\n"
    );
    let c = with_supporters(&csv)
        .smtp_plain(&server)
        .section("[delivery]\nretries = 0\n");
    let send = c.run(&["send", "--yes"]);
    send.code(3)
        .stderr_has(&format!("{CSV}:4: `ANA@mail.example` repeats line 2"));
    idle(&server);
    assert_eq!(server.received().len(), 1, "sam's letter only");

    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    let rows: Vec<(String, String, i64)> = conn
        .prepare(
            "SELECT supporter, state, coalesce(next_attempt_at, 0) - updated_at \
             FROM letters ORDER BY supporter",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("ana@mail.example", "deferred")
    );
    assert!(rows[0].2 >= 30, "ana keeps her backoff: {rows:?}");
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("sam@mail.example", "sent")
    );

    let json = c.run(&["status", "--json"]);
    json.code(0);
    let value: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    for (key, n) in [
        ("total", 2),
        ("sent", 1),
        ("deferred", 1),
        ("pending", 0),
        ("skipped", 0),
    ] {
        assert_eq!(value[key], n, "{key} in {value}");
    }

    let export = c.run(&["export"]);
    export.code(0);
    let mut reader = csv::Reader::from_reader(export.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
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
    let listed: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["supporter"].as_str(), r["state"].as_str()))
        .collect();
    assert_eq!(
        listed,
        [("ana@mail.example", "deferred"), ("sam@mail.example", "sent")],
        "{}",
        export.stdout
    );
}
