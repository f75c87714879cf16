//! Sending rate: evenly spaced letters, never bursts.
//!
//! The schedule is pure ([`Throttle::delay`] / [`Throttle::mark`]); the
//! caller sleeps through the injected clock.

use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::config::Rate;

/// Spaces letters `rate.interval()` apart.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Option<Duration>,
    next: Option<SystemTime>,
}

impl Throttle {
    /// No rate: never waits.
    #[must_use]
    pub fn new(rate: Option<Rate>) -> Throttle {
        Throttle {
            interval: rate.map(Rate::interval),
            next: None,
        }
    }

    /// How long to wait at `now` before the next letter may go.
    #[must_use]
    pub fn delay(&self, now: SystemTime) -> Duration {
        match self.next {
            Some(next) => next.duration_since(now).unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        }
    }

    /// A letter went at `now`: the next may go one interval later.
    pub fn mark(&mut self, now: SystemTime) {
        if let Some(i) = self.interval {
            let base = self.next.map_or(now, |n| n.max(now));
            self.next = Some(base + i);
        }
    }

    /// Waits for the next slot and takes it.
    pub fn wait(&mut self, clock: &dyn Clock) {
        let d = self.delay(clock.now());
        if !d.is_zero() {
            clock.sleep(d);
        }
        self.mark(clock.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn spaces_letters_evenly() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("10/second".parse().unwrap()));
        let mut times = Vec::new();
        for _ in 0..5 {
            t.wait(&clock);
            times.push(clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap());
        }
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 100, 200, 300, 400]);
    }

    #[test]
    fn slow_sends_do_not_bank_a_burst() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("1/second".parse().unwrap()));
        t.wait(&clock);
        clock.advance(Duration::from_secs(10)); // a slow letter
        t.wait(&clock);
        assert_eq!(t.delay(clock.now()), Duration::from_secs(1));
    }

    #[test]
    fn no_rate_never_waits() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(None);
        t.wait(&clock);
        assert_eq!(t.delay(clock.now()), Duration::ZERO);
    }
}
