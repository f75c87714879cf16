//! Waiting in the integration tests: on a condition, on a child process, on
//! the test SMTP server going idle. The tests' own delays, not mailer's clock
//! (which `clippy.toml` guards).
#![allow(dead_code)]

use std::process::Child;
use std::time::{Duration, Instant};

use crate::support::campaign::Run;
use crate::support::smtp::Server;

/// The test's own delay.
#[allow(clippy::disallowed_methods)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Polls `cond` every 2 ms for at most `limit`; whether it came true.
pub fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        pause(Duration::from_millis(2));
    }
    true
}

/// Waits for a child at most `limit`; kills it and panics on timeout.
pub fn wait_for(mut child: Child, limit: Duration) -> Run {
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

/// Waits until the server has no open connection (at most 10 s).
#[track_caller]
pub fn idle(server: &Server) {
    assert!(
        server.wait_idle(Duration::from_secs(10)),
        "the server still has an open connection"
    );
}
