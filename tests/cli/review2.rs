//! Review of session 2's changes: hostile files beside the ledger that
//! `daily_limit` and the resend check now open.

use std::fmt::Write as _;
use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::wait::wait_for;

/// A campaign whose `daily_limit` is its relay account's: every other
/// `*.sqlite3` in `.mailer/` is read. No server: only dry runs and status.
fn limited() -> Campaign {
    Campaign::new().section(
        "[smtp]\nhost = \"127.0.0.1\"\nport = 2525\nsecurity = \"starttls\"\n\
         username = \"letters@org.example\"\n\n[delivery]\ndaily_limit = 3\n",
    )
}

#[test]
fn review2_a_fifo_named_like_a_ledger_beside_does_not_block_the_run() {
    let c = limited().env("MAILER_SMTP_PASSWORD", "pw");
    std::fs::create_dir_all(c.join(".mailer")).unwrap();
    let fifo = c.join(".mailer/other.sqlite3");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let r = wait_for(c.spawn(&["send", "--dry-run"]), Duration::from_secs(30));
    r.code(0)
        .stdout_has("This run would send at most 3 ")
        .stderr_has("other.sqlite3")
        .stderr_has("not a regular file");
}

#[test]
fn review2_a_device_or_folder_named_like_a_ledger_is_not_a_ledger() {
    let c = limited().env("MAILER_SMTP_PASSWORD", "pw");
    std::fs::create_dir_all(c.join(".mailer/folder.sqlite3")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", c.join(".mailer/zero.sqlite3")).unwrap();
    let r = wait_for(c.spawn(&["send", "--dry-run"]), Duration::from_secs(30));
    r.code(0)
        .stdout_has("This run would send at most 3 ")
        .stderr_has("ledger `.mailer/folder.sqlite3` is not a mailer ledger: not a regular file")
        .stderr_has("ledger `.mailer/zero.sqlite3` is not a mailer ledger: not a regular file");
    assert!(!r.stderr.contains("disk I/O error"), "{}", r.stderr);
}

/// A crafted ledger beside: campaign id with terminal controls and a
/// right-to-left override in its id and name, 3 letters through the same account just now.
fn crafted_ledger(c: &Campaign) {
    std::fs::create_dir_all(c.join(".mailer")).unwrap();
    let conn = rusqlite::Connection::open(c.join(".mailer/e\u{1b}[2Jvil.sqlite3")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    conn.execute_batch(&format!(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
         CREATE TABLE attempts (supporter TEXT, target TEXT, at INTEGER, outcome TEXT,
             reply TEXT, handed_over INTEGER, relay TEXT);
         CREATE TABLE letters (supporter TEXT, target TEXT, state TEXT);
         INSERT INTO meta VALUES ('campaign_id', 'ev' || char(27) || ']0;owned' || char(7)
             || char(27) || '[2J' || char(8238) || 'il');
         INSERT INTO letters VALUES ('a@x.example', 'ceo@corp.example', 'sent');
         INSERT INTO attempts VALUES ('a', 'b', {now}, 'sent', NULL, 1, '127.0.0.1:2525 letters@org.example');
         INSERT INTO attempts VALUES ('c', 'b', {now}, 'sent', NULL, 1, '127.0.0.1:2525 letters@org.example');
         INSERT INTO attempts VALUES ('d', 'b', {now}, 'sent', NULL, 1, '127.0.0.1:2525 letters@org.example');"
    ))
    .unwrap();
}

#[track_caller]
fn no_controls(text: &str) {
    assert!(
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "raw control characters reached the output:\n{text:?}"
    );
}

#[test]
fn review2_another_ledgers_campaign_id_reaches_the_terminal_escaped() {
    let c = limited()
        .env("MAILER_SMTP_PASSWORD", "pw")
        .section("[schedule]\nstart = 2026-01-01\nend = 2030-12-31\ntimezone = \"UTC\"\n");
    crafted_ledger(&c);
    let r = c.run(&["send", "--dry-run"]);
    r.code(0)
        .stdout_has("This run would send at most 0 ")
        .stderr_has("shared with campaign `ev\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{202e}il` (3 letters)");
    no_controls(&r.stdout);
    no_controls(&r.stderr);
    let r = c.run(&["send", "--yes"]);
    r.code(0).stderr_has("daily_limit 3/3 (shared with `ev\\u{1b}");
    no_controls(&r.stdout);
    no_controls(&r.stderr);
    let r = c.run(&["status"]);
    no_controls(&r.stdout);
    no_controls(&r.stderr);
}

#[test]
fn review2_check_lists_row_problems_as_it_reads_them_in_bounded_memory() {
    // A million rows that are all skipped: `check` lists each as it is
    // read, as it always did; kept for the end they took ~300 MB.
    let mut rows = String::from("email,first_name,last_name,city,note\n");
    for i in 0..1_000_000 {
        let _ = writeln!(rows, "not-an-email-{i},Ana,Lopez,Tucson,");
    }
    let c = Campaign::new().file("supporters.csv", rows);
    c.write_config();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--data=200000000")
        .arg(env!("CARGO_BIN_EXE_mailer"))
        .arg("check");
    let base = c.command(&["check"]);
    cmd.current_dir(c.path()).env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every row skipped: nothing to send, so `check` fails (exit 1).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.starts_with("supporters.csv:2: invalid email `not-an-email-0`"),
        "{}",
        &stdout[..stdout.len().min(300)]
    );
    assert!(
        stdout.ends_with(
            "`supporters.csv`: none of its 1,000,000 rows gives a letter (1,000,000 invalid): \
             there is nothing to send\n\
             0 supporters × 1 target = 0 letters ready; 1,000,001 problems\n"
        ),
        "{}",
        &stdout[stdout.len().saturating_sub(300)..]
    );
}

#[test]
fn review2_status_shows_a_daily_limit_used_up_by_another_campaign_before_this_one_sent() {
    let c = limited()
        .env("MAILER_SMTP_PASSWORD", "pw")
        .section("[schedule]\nstart = 2026-01-01\nend = 2030-12-31\ntimezone = \"UTC\"\n");
    std::fs::create_dir_all(c.join(".mailer")).unwrap();
    let conn = rusqlite::Connection::open(c.join(".mailer/spring.sqlite3")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut sql = String::from(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
         INSERT INTO meta VALUES ('campaign_id', 'spring');
         CREATE TABLE attempts (supporter TEXT, target TEXT, at INTEGER, outcome TEXT,
             reply TEXT, handed_over INTEGER, relay TEXT);",
    );
    for who in ["a", "b", "c"] {
        let _ = write!(
            sql,
            "INSERT INTO attempts VALUES ('{who}', 't', {now}, 'sent', NULL, 1, '127.0.0.1:2525 letters@org.example');"
        );
    }
    conn.execute_batch(&sql).unwrap();
    // `send` holds every letter: the account's day is used up.
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("This run would send at most 0 ");
    assert!(!c.ledger().exists(), "this campaign has not sent yet");
    // `status` says so too, before this campaign's first letter.
    c.run(&["status"])
        .code(0)
        .stdout_has("daily_limit 3/3 (shared: `spring` 3) — next letter allowed");
    c.run(&["status", "--json"]).code(0).stdout_has(
        "\"daily_limit\":{\"used\":3,\"limit\":3,\"shared\":[{\"campaign\":\"spring\",\"letters\":3}]",
    );
}

#[test]
fn review2_status_names_a_ledger_beside_it_could_not_count_against_daily_limit() {
    let c = limited()
        .section("[schedule]\nstart = 2026-01-01\nend = 2030-12-31\ntimezone = \"UTC\"\n")
        .file(
            ".mailer/broken.sqlite3",
            "this is no SQLite database, just text\n".repeat(200),
        );
    for args in [&["status"][..], &["status", "--json"]] {
        let r = c.run(args);
        r.code(0)
            .stderr_has("ledger `.mailer/broken.sqlite3` is not a mailer ledger")
            .stderr_has("its letters are not counted against daily_limit");
    }
    c.run(&["status"]).stdout_has("daily_limit 0/3");
    let r = c.run(&["status", "--json"]);
    assert!(
        r.stdout.starts_with('{') && r.stdout.ends_with("}\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn review2_status_failed_shows_an_invalid_rows_address_escaped() {
    let c = Campaign::new().file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         a\u{1b}]0;owned\u{7}@mail.example,Ana,L,T,\n\
         b\u{202e}ob@mail.example,Bob,O,M,\n\
         sam@mail.example,Sam,O,M,\n",
    );
    let r = c.run(&["status", "--failed"]);
    r.code(0)
        .stdout_has("skipped  a\\u{1b}]0;owned\\u{7}@mail.example (supporters.csv:2)")
        .stdout_has("skipped  b\\u{202e}ob@mail.example (supporters.csv:3)");
    no_controls(&r.stdout);
    no_controls(&r.stderr);
}
