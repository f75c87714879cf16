//! Review of session 2's changes: hostile files beside the ledger that
//! `daily_limit` and the resend check now open.

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
