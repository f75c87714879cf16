//! Time, injected: the real clock for runs, a manual one for tests.
//!
//! Everything that reads the wall clock or sleeps goes through [`Clock`], so
//! the throttle and the ledger's time rules can be tested without waiting.
//! Two clocks: the wall clock (`now`: dates, the ledger) and a monotonic one
//! (`instant`: pacing and waits), which a wall-clock step never moves.

use std::process::{Child, ExitStatus};
#[cfg(test)]
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Reads the time and sleeps.
pub(crate) trait Clock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
    /// The monotonic clock: for spacing and waiting, never for dates.
    fn instant(&self) -> Instant;
    /// Blocks the calling thread for `d`.
    fn sleep(&self, d: Duration);

    /// Seconds since the Unix epoch, as stored in the ledger.
    fn unix(&self) -> i64 {
        unix_secs(self.now())
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that may read the real clock
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }

    #[allow(clippy::disallowed_methods)] // the one place that may really sleep
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A clock that only moves when slept on or advanced: for tests.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock(Mutex<Manual>);

#[cfg(test)]
#[derive(Debug)]
struct Manual {
    wall: SystemTime,
    /// Where the monotonic clock started, and how far it went since.
    base: Instant,
    elapsed: Duration,
}

#[cfg(test)]
impl ManualClock {
    /// A clock stopped at `start`.
    #[must_use]
    pub(crate) fn new(start: SystemTime) -> Self {
        ManualClock(Mutex::new(Manual {
            wall: start,
            base: Instant::now(),
            elapsed: Duration::ZERO,
        }))
    }

    /// Moves the clock (wall and monotonic) forward.
    pub(crate) fn advance(&self, d: Duration) {
        let mut m = self.0.lock().expect("clock lock");
        m.wall += d;
        m.elapsed += d;
    }

    /// Sets the wall clock (as NTP or an administrator might, also
    /// backwards); the monotonic clock does not move.
    pub(crate) fn set_wall(&self, t: SystemTime) {
        self.0.lock().expect("clock lock").wall = t;
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.0.lock().expect("clock lock").wall
    }

    fn instant(&self) -> Instant {
        let m = self.0.lock().expect("clock lock");
        m.base + m.elapsed
    }

    fn sleep(&self, d: Duration) {
        self.advance(d);
    }
}

/// Waits for a child process at most `limit`; `None` if it is still running.
pub(crate) fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let clock = SystemClock;
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if waited >= limit {
            return Ok(None);
        }
        clock.sleep(step);
        waited += step;
    }
}
