//! Issue 9, the supporters file at its edges: stray quotes that would merge
//! rows (item 4), a repeated address in an invalid row (item 6), and files
//! that never end or hold one giant value (item 16).
//!
//! Each test runs the real binary on a real file; the send tests talk to the
//! scriptable SMTP server in `tests/support/smtp.rs`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};
use crate::support::wait::idle;

/// The supporters file as mailer names it.
const CSV: &str = "supporters.csv";
/// The header every file here shares.
const HEADER: &str = "email,first_name,last_name,city,note";

/// The default campaign with this supporters file.
fn with_supporters(csv: &str) -> Campaign {
    Campaign::new().file(CSV, csv)
}

// ---------------------------------------------------------------- item 4: quotes

/// Ana's note opens a quote that Cat's `5" tall` closes: rust-csv reads
/// lines 2-4 as one row and Bob and Cat vanish into Ana's letter. CRLF line
/// ends, as spreadsheets write them.
const STRAY_QUOTE: &str = "email,first_name,last_name,city,note\r\n\
ana@mail.example,Ana,Lopez,Tucson,\"oops\r\n\
bob@mail.example,Bob,Ray,Austin,ok\r\n\
cat@mail.example,Cat,Lin,Reno,5\" tall\r\n\
dan@mail.example,Dan,Cho,Boise,\r\n";

#[test]
fn issue9_stray_quote_breaks_the_file_at_the_row_that_opened_it() {
    let c = with_supporters(STRAY_QUOTE);
    let check = c.run(&["check"]);
    check
        .code(1)
        .stdout_has(&format!("{CSV}:2: the quote opened in this row"));
    assert!(
        !check.stdout.contains("0 problems"),
        "a merged row is a problem:\n{}",
        check.stdout
    );

    let preview = c.run(&["preview", "--limit", "100"]);
    assert_eq!(preview.code, 1, "{preview:?}");
    assert!(
        !preview.stdout.contains("bob@mail.example") && !preview.stdout.contains("cat@mail.example"),
        "another row leaked into a letter:\n{}",
        preview.stdout
    );
}

#[test]
fn issue9_stray_quote_stops_send_before_anything_goes() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = with_supporters(STRAY_QUOTE).smtp_plain(&server);
    c.run(&["send", "--yes"])
        .code(1)
        .stderr_has(&format!("error: {CSV}:2: the quote opened in this row"))
        .stderr_has("hint:");
    idle(&server);
    assert!(
        server.received().is_empty(),
        "nothing may go: {:?}",
        server.received()
    );
}

#[test]
fn issue9_a_quoted_value_spanning_lines_still_works_with_honest_line_numbers() {
    // A closed multi-line note and an escaped quote are fine; the bad email
    // after them is reported on its real line (CRLF input, rust-csv #395).
    let csv = format!(
        "{HEADER}\r\n\
         ana@mail.example,Ana,Lopez,Tucson,\"line one\r\nline two\"\r\n\
         bob@mail.example,Bob,Ray,Austin,\"He said \"\"hi\"\"\"\r\n\
         broken,Bad,Row,Nowhere,\r\n\
         cat@mail.example,Cat,Lin,Reno,\r\n"
    );
    let c = with_supporters(&csv);
    c.run(&["check", "--strict"])
        .code(1)
        .stdout_has(&format!("{CSV}:5: invalid email `broken`"))
        .stdout_has("3 supporters × 1 target = 3 letters ready; 1 problem\n");
    c.run(&["preview", "--supporter", "ana@mail.example"])
        .code(0)
        .stdout_has("line one")
        .stdout_has("line two");
    c.run(&["preview", "--supporter", "bob@mail.example"])
        .code(0)
        .stdout_has("He said \"hi\"");
}

#[test]
fn issue9_a_bare_quote_inside_an_unquoted_value_is_a_literal_on_every_row() {
    // `6'2"` opens nothing: a quote only opens a quoted value as the value's
    // first character (RFC 4180-lenient, like rust-csv, Python and Excel).
    let note = "He is 6'2\" tall";
    let first =
        format!("{HEADER}\nana@mail.example,Ana,Lopez,Tucson,{note}\nbob@mail.example,Bob,Ray,Austin,\n");
    let last =
        format!("{HEADER}\nana@mail.example,Ana,Lopez,Tucson,\nbob@mail.example,Bob,Ray,Austin,{note}\n");
    let unterminated =
        format!("{HEADER}\nana@mail.example,Ana,Lopez,Tucson,\nbob@mail.example,Bob,Ray,Austin,{note}");
    for (csv, who) in [
        (first, "ana@mail.example"),
        (last, "bob@mail.example"),
        (unterminated, "bob@mail.example"),
    ] {
        let c = with_supporters(&csv);
        c.run(&["check"])
            .code(0)
            .stdout_has("2 supporters × 1 target = 2 letters ready; 0 problems");
        c.run(&["preview", "--supporter", who]).code(0).stdout_has(note);
    }
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

// ---------------------------------------------------------------- item 16: bounded memory

/// The most resident memory any run below may use.
const PEAK_LIMIT_KIB: u64 = 100 * 1024;

/// A run and its peak resident memory.
struct Measured {
    run: Run,
    peak_kib: u64,
}

/// Runs `mailer ARGS` under `/usr/bin/time` (peak RSS from wait4), with its
/// address space capped at 2 GiB so a runaway reader cannot take the
/// machine, killed (whole process group) after a generous 60 s.
fn run_measured(c: &Campaign, args: &[&str]) -> Measured {
    let time = Path::new("/usr/bin/time");
    assert!(time.exists(), "GNU time (/usr/bin/time) measures the peak RSS");
    let inner = c.command(args);
    let report = c.join("time.out");
    let mut cmd = Command::new(time);
    cmd.env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(inner.get_current_dir().expect("cwd"))
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .args(["sh", "-c", "ulimit -v 2097152 && exec \"$0\" \"$@\""])
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("spawn /usr/bin/time mailer");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let run = Run::from(child.wait_with_output().unwrap());
            panic!("mailer still running after 60 s: {run:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = Run::from(child.wait_with_output().unwrap());
    let text = std::fs::read_to_string(&report).expect("time's report");
    let peak_kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {text:?}"));
    Measured { run, peak_kib }
}

/// Asserts a clean, bounded failure: exit 1, no abort, no backtrace.
#[track_caller]
fn bounded_failure(m: &Measured) {
    m.run.code(1);
    for bad in ["memory allocation", "panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(
            !m.run.stderr.contains(bad) && !m.run.stdout.contains(bad),
            "{bad}: {:?}",
            m.run
        );
    }
    assert!(
        m.peak_kib < PEAK_LIMIT_KIB,
        "peak RSS {} KiB (limit {PEAK_LIMIT_KIB} KiB)",
        m.peak_kib
    );
}

#[test]
fn issue9_dev_zero_as_the_supporters_file_is_a_clear_error_in_bounded_memory() {
    let c = Campaign::new();
    let head = c
        .config_text()
        .replace("file = \"supporters.csv\"", "file = \"/dev/zero\"");
    let c = c.head(&head);
    // The header row itself is broken: an error, as for a missing header.
    let check = run_measured(&c, &["check"]);
    bounded_failure(&check);
    check
        .run
        .stderr_has("error: supporters file `/dev/zero` is a character device, not a regular file");

    let send = run_measured(&c, &["send", "--dry-run"]);
    bounded_failure(&send);
    send.run
        .stderr_has("error: supporters file `/dev/zero` is a character device");
}

#[test]
fn issue9_a_200_mb_value_stops_the_reader_at_its_line_in_bounded_memory() {
    let c = Campaign::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(c.join(CSV)).unwrap());
        write!(
            f,
            "{HEADER}\nana@mail.example,Ana,Lopez,Tucson,\nbob@mail.example,Bob,Ray,Austin,"
        )
        .unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            f.write_all(&chunk).unwrap();
        }
        write!(f, "\ncat@mail.example,Cat,Lin,Reno,\n").unwrap();
        f.flush().unwrap();
    }
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = c.smtp_plain(&server);
    let check = run_measured(&c, &["check"]);
    bounded_failure(&check);
    check.run.stdout_has(&format!(
        "{CSV}:3: a value in this row is longer than 40000 bytes"
    ));

    let send = run_measured(&c, &["send", "--yes"]);
    bounded_failure(&send);
    send.run.stderr_has(&format!("error: {CSV}:3: "));
    idle(&server);
    assert!(server.received().is_empty(), "nothing may go");
}

#[test]
fn issue9_an_endless_line_from_a_fifo_ends_with_a_clear_error_in_bounded_memory() {
    let c = Campaign::new();
    let fifo = c.join(CSV);
    std::fs::remove_file(&fifo).unwrap();
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // The writer feeds one row that never ends until mailer closes the pipe
    // (EPIPE: the test harness ignores SIGPIPE, as Rust binaries do).
    let path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(format!("{HEADER}\nana@mail.example,Ana,Lopez,Tucson,").as_bytes())
            .unwrap();
        let chunk = ",x".repeat(32 * 1024);
        let mut sent = 0u64;
        while f.write_all(chunk.as_bytes()).is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    let check = run_measured(&c, &["check"]);
    bounded_failure(&check);
    check.run.stderr_has(&format!(
        "error: supporters file `{CSV}` is a named pipe (FIFO), not a regular file"
    ));
    // Had mailer never opened the pipe, the writer would wait in `open`:
    // open the other end to release it.
    let waited = Instant::now();
    while !writer.is_finished() && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !writer.is_finished() {
        // Read a byte before closing: the writer's first write then
        // succeeds and its loop ends on EPIPE.
        let mut end = std::fs::File::open(&fifo).unwrap();
        let _ = std::io::Read::read(&mut end, &mut [0u8; 1]);
    }
    let sent = writer.join().unwrap();
    assert!(sent < 64 << 20, "mailer read {sent} bytes of one line");
}
