//! Issue 13: the delivery engine in its own module, one round trip per
//! letter, a sender that adapts to the relay.

use std::fmt::Write as _;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Security, Server, ServerOptions};

/// `n` valid supporters, `s0001@mail.example` …
fn supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

/// A campaign on `server` with `[delivery]` as given.
fn campaign(server: &Server, delivery: &str) -> Campaign {
    Campaign::new()
        .smtp_plain(server)
        .section(&format!("[delivery]\n{delivery}"))
}

#[test]
fn issue13_dry_run_on_a_fresh_campaign_applies_the_daily_limit() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = campaign(&server, "daily_limit = 2\n").file("supporters.csv", supporters(5));
    // No ledger yet: the dry run and the real run use one budget rule.
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("This run would send at most 2 (");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 2");
}
