//! What each letter costs the disk: the ledger's WAL is reused after each
//! checkpoint instead of growing through the run, so a commit's sync
//! overwrites data the file already has and writes no inode.

use std::fmt::Write as _;
use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};
use crate::support::wait::{wait_for, wait_until};

/// Letters sent before the server stalls: about 10 MB of WAL frames if
/// the WAL were never reused.
const BEFORE_STALL: usize = 600;

#[test]
fn the_ledger_wal_is_reused_after_checkpoints_not_grown_through_the_run() {
    let server = Server::start(
        ServerOptions::new(Security::Plain).with_script(|step| match step {
            Step::Dot { nth, .. } if *nth == BEFORE_STALL + 1 => Action::Stall(Duration::from_secs(30)),
            _ => Action::Default,
        }),
    );
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=BEFORE_STALL + 1 {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    let c = Campaign::new()
        .file("supporters.csv", csv)
        .smtp_plain(&server)
        .section("[delivery]\nconcurrency = 1\n");
    let mut child = c.spawn(&["send", "--yes"]);
    let stalled = wait_until(Duration::from_secs(120), || server.dots_seen() > BEFORE_STALL);
    let mut wal = c.ledger().into_os_string();
    wal.push("-wal");
    let size = std::fs::metadata(&wal).map(|m| m.len());
    let _ = child.kill();
    let _ = wait_for(child, Duration::from_secs(30));
    assert!(stalled, "the run did not reach letter {}", BEFORE_STALL + 1);
    let size = size.expect("the run's WAL is there while it runs");
    // SQLite's default checkpoint: 1,000 pages of 4 KiB, plus the frames of
    // the commit that crossed it.
    assert!(
        size <= 4_300_000,
        "the WAL grew to {size} bytes over {BEFORE_STALL} letters"
    );
}
