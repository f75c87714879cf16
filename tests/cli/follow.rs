//! `send --follow` across rounds (each note once, the relay's pace carried
//! over), unreadable ledgers beside this one, and which section holds a
//! literal password.

use std::os::unix::fs::PermissionsExt as _;

use crate::support::campaign::Campaign;

// ---- a literal password names its section ----

#[test]
fn a_literal_bounces_password_in_a_readable_config_names_bounces() {
    let c = Campaign::new().section(
        "[bounces]\nmailbox = \"imaps://imap.example\"\nusername = \"bounces\"\npassword = \"hunter2\"\n",
    );
    let config = c.write_config();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = c.run(&["check"]);
    run.code(1)
        .stderr_has("holds a literal password in [bounces]")
        .stderr_has("chmod 600");
    assert!(!run.stderr.contains("SMTP password"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

// ---- another ledger beside this one that cannot be read ----

#[test]
fn a_ledger_beside_that_cannot_be_read_is_named_by_the_resend_check() {
    // No daily_limit: only the check for letters another campaign sent reads it.
    let c = Campaign::new().file(
        ".mailer/broken.sqlite3",
        "this is no SQLite database, just text\n".repeat(200),
    );
    let r = c.run(&["send", "--dry-run"]);
    r.code(0)
        .stderr_has("warning: ledger `")
        .stderr_has("broken.sqlite3` is not a mailer ledger: ")
        .stderr_has("whether its campaign already wrote to these targets is not checked");
}
