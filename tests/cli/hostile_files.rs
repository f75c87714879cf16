//! The review of issue 9's fixes, at the file edges: a stray quote closed at
//! the end of a later row (item 4 again), a ledger deleted under a running
//! `send` (item 5 again), and a supporters file that is not a regular file.
//!
//! Real binary, real files, real FIFOs, the scripted SMTP server.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};
use crate::support::wait::{idle, pause, wait_for, wait_until};

// ---------------------------------------------------------------- helpers

/// The supporters file as mailer names it.
const CSV: &str = "supporters.csv";

/// `n` valid supporters, `s0001@mail.example` …
fn supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

/// How often each Message-ID reached the server.
fn copies(server: &Server) -> std::collections::HashMap<String, usize> {
    let mut n = std::collections::HashMap::new();
    for m in server.received().iter().chain(&server.dropped_after_dot()) {
        *n.entry(m.message_id().unwrap()).or_insert(0) += 1;
    }
    n
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

// ---------------------------------------------------------------- a supporters file that is not a file

/// Review: a FIFO as the supporters file made `send` block in `open()` for
/// its second pass, holding the ledger lock, deaf to a single SIGTERM; with
/// no writer at all, every command blocked at once. mailer reads the file
/// twice and needs one that stays put: a FIFO or a device is refused at
/// load, by every command, without opening it.
#[test]
fn review_a_supporters_file_that_is_not_a_regular_file_is_refused_at_load() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    let fifo = c.join(CSV);
    std::fs::remove_file(&fifo).unwrap();
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // No writer: opening the FIFO to read would block for ever.
    for args in [
        &["check"][..],
        &["send", "--yes"],
        &["send", "--dry-run"],
        &["preview"],
        &["status"],
    ] {
        let run = wait_for(c.spawn(args), Duration::from_secs(15));
        run.code(1)
            .stderr_has(&format!(
                "error: supporters file `{CSV}` is a named pipe (FIFO), not a regular file: mailer \
                 reads the supporters twice"
            ))
            .stderr_has("hint: export the supporters to a file");
    }
    // A later run is not locked out: nothing held the ledger.
    let again = wait_for(c.spawn(&["send", "--yes"]), Duration::from_secs(15));
    assert_ne!(again.code, 75, "{again:?}");

    // A device too, whatever it would read.
    let head = Campaign::new().config_text();
    for dev in ["/dev/null", "/dev/zero"] {
        let c = Campaign::new()
            .head(&head.replace(&format!("file = \"{CSV}\""), &format!("file = \"{dev}\"")))
            .smtp_plain(&server);
        let run = wait_for(c.spawn(&["check"]), Duration::from_secs(15));
        run.code(1).stderr_has(&format!(
            "error: supporters file `{dev}` is a character device, not a regular file"
        ));
    }
    idle(&server);
    assert!(server.received().is_empty(), "nothing may go");
}

/// The reviewer's FIFO, written once: before, `send` read it for its first
/// pass, then blocked re-opening it for the second with the ledger locked.
#[test]
fn review_a_fifo_written_once_does_not_hang_send() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    let fifo = c.join(CSV);
    std::fs::remove_file(&fifo).unwrap();
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let send = c.spawn(&["send", "--yes"]);
    // Feed it once, as `mkfifo` + `printf > fifo` would; give up if nobody
    // opens it (mailer refused it without opening, as it should).
    let path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let _ = std::io::Write::write_all(
            &mut f,
            b"email,first_name,last_name,city,note\nana@mail.example,Ana,Lopez,Tucson,\n",
        );
    });
    let run = wait_for(send, Duration::from_secs(15));
    run.code(1)
        .stderr_has("is a named pipe (FIFO), not a regular file");
    if !writer.is_finished() {
        drop(std::fs::File::open(&fifo));
    }
    writer.join().unwrap();
    idle(&server);
    assert!(server.received().is_empty(), "nothing may go");
}

// ---------------------------------------------------------------- a ledger deleted mid-run

/// Review: `rm .mailer/ID.sqlite3` during a run (its `-wal` and `-shm`
/// left) let a second run in: the first run's lock was on the deleted
/// inode, both shared the old WAL, the ledger ended with letters missing,
/// and a third run resent them (29 messages for 20 letters). Now the second
/// run refuses (the journal says a ledger was there), the first stops at its
/// next letter and saves its record, the next run names that copy, and once
/// it is put back the rest go: no letter twice.
#[test]
fn review_deleting_the_ledger_mid_run_never_sends_a_letter_twice() {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        if matches!(step, Step::Dot { .. }) {
            pause(Duration::from_millis(100));
        }
        Action::Default
    }));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[delivery]\nretries = 1\n")
        .file(CSV, supporters(20));
    let ledger = c.ledger();
    let first = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() >= 3));
    std::fs::remove_file(&ledger).unwrap();
    assert!(c.join(".mailer/test-campaign.sqlite3-wal").exists());

    // The second run: no ledger, but its journal is there.
    let second = c.run(&["send", "--yes"]);
    second
        .code(1)
        .stderr_has("test-campaign.sqlite3` is missing but its journal `")
        .stderr_has("another run may hold a deleted ledger")
        .stderr_has("hint: restore the ledger from a backup");

    // The first run notices at its next letter and stops, letters having gone.
    let first = wait_for(first, Duration::from_secs(30));
    first
        .code(3)
        .stderr_has("test-campaign.sqlite3` was deleted while this run was using it: stopped")
        .stderr_has("is saved in `");
    idle(&server);
    let went = copies(&server).len();
    assert!((3..20).contains(&went), "{went} letters went in the first run");

    // Its record is saved beside the ledger; the next run will not start
    // afresh past it.
    let saved: Vec<_> = std::fs::read_dir(c.join(".mailer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".sqlite3.rescued-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(!ledger.exists());
    c.run(&["send", "--yes"])
        .code(1)
        .stderr_has("holds the record a run saved when the ledger was deleted under it")
        .stderr_has("hint: once that run has ended, put it back (`rm ");
    idle(&server);
    assert_eq!(copies(&server).len(), went, "nothing may go meanwhile");

    // Put back as the hint says, the rest go, and none twice.
    for journal in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(c.join(&format!(".mailer/test-campaign.sqlite3{journal}")));
    }
    std::fs::rename(&saved[0], &ledger).unwrap();
    let last = c.run(&["send", "--yes"]);
    assert!(last.code == 0 || last.code == 3, "{last:?}");
    idle(&server);
    let got = copies(&server);
    assert!(got.values().all(|&n| n == 1), "a letter went twice: {got:?}");
    let unknown = c
        .states()
        .iter()
        .find(|(s, _)| s == "unknown")
        .map_or(0, |(_, n)| *n);
    assert_eq!(got.len() as i64 + unknown, 20, "{:?}", c.states());
    assert_eq!(
        unknown,
        0,
        "the run stopped before its next claim: {:?}",
        c.states()
    );
}
