//! The review of issue 9's fixes, at the file edges: a stray quote closed at
//! the end of a later row (item 4 again), a ledger deleted under a running
//! `send` (item 5 again), and a supporters file that is not a regular file.
//!
//! Real binary, real files, real FIFOs, the scripted SMTP server.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};

// ---------------------------------------------------------------- helpers

/// The supporters file as mailer names it.
const CSV: &str = "supporters.csv";

/// The test's own delay (not mailer's clock, which `clippy.toml` guards).
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Waits for a child at most `limit`; kills it and panics on timeout.
fn wait_for(mut child: std::process::Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let run = Run::from(child.wait_with_output().unwrap());
            panic!("mailer still running after {limit:?}: {run:?}");
        }
        pause(Duration::from_millis(5));
    }
    Run::from(child.wait_with_output().unwrap())
}

/// Polls `cond` every 2 ms for at most `limit`.
fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        pause(Duration::from_millis(2));
    }
    true
}

fn idle(server: &Server) {
    assert!(server.wait_idle(Duration::from_secs(10)), "server still busy");
}

// ---------------------------------------------------------------- a quote closed at a row's end

/// Ana's note opens a quote that the end of Cat's row closes: valid CSV, so
/// the csv crate reads Bob's and Cat's rows as Ana's note, addresses and all.
const QUOTE_AT_LINE_END: &str = "email,first_name,last_name,city,note\n\
ana@mail.example,Ana,Lopez,Tucson,\"I support this\n\
bob@mail.example,Bob,Ray,Austin,count me in\n\
cat@mail.example,Cat,Lin,Reno,I am 6 foot tall\"\n\
dan@mail.example,Dan,Cho,Boise,hi\n";

const RAN_OVER: &str = "supporters.csv:2: a quoted value here runs over 2 lines that look like \
                        supporter rows (from line 3): a quote is probably missing its end";

#[test]
fn review_a_quote_closed_at_the_end_of_a_later_row_breaks_the_file() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().file(CSV, QUOTE_AT_LINE_END).smtp_plain(&server);
    let check = c.run(&["check"]);
    check.code(1).stdout_has(RAN_OVER);
    assert!(!check.stdout.contains("0 problems"), "{}", check.stdout);

    let preview = c.run(&["preview", "--all"]);
    assert_eq!(preview.code, 1, "{preview:?}");
    assert!(
        !preview.stdout.contains("bob@mail.example") && !preview.stdout.contains("6 foot"),
        "another row leaked into a letter:\n{}",
        preview.stdout
    );

    c.run(&["send", "--yes"])
        .code(1)
        .stderr_has(&format!("error: {RAN_OVER}"))
        .stderr_has("hint: close the quote");
    idle(&server);
    assert!(server.received().is_empty(), "nothing may go");
}

#[test]
fn review_a_multi_line_note_is_still_accepted() {
    // Prose over several lines, with commas; an address on a line with too
    // few commas for a row; a row's worth of commas with no address.
    let note = "Dear Satya,\nas a parent, a voter, and a customer:\nwrite to me at \
                ana@mail.example, any time.\none, two, three, four, five\nAna";
    let csv = format!(
        "email,first_name,last_name,city,note\nana@mail.example,Ana,Lopez,Tucson,\"{note}\"\n\
         bob@mail.example,Bob,Ray,Austin,\n"
    );
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().file(CSV, csv).smtp_plain(&server);
    c.run(&["check"]).code(0).stdout_has("0 problems");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
    idle(&server);
    let got = server.received();
    assert_eq!(got.len(), 2);
    let ana = got
        .iter()
        .find(|m| m.text().contains("I am Ana"))
        .expect("Ana's letter");
    assert!(
        ana.text().contains("one, two, three, four, five"),
        "{}",
        ana.text()
    );
    assert!(!ana.text().contains("I am Bob"));
}
