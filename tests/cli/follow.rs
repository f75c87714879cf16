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
