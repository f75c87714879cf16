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

    /// Takes the next free slot at or after `now`: when the next letter may start.
    pub fn reserve(&mut self, now: SystemTime) -> SystemTime {
        let slot = self.next.map_or(now, |n| n.max(now));
        if let Some(i) = self.interval {
            self.next = Some(slot + i);
        }
        slot
    }

    /// Waits for the next slot and takes it.
    pub fn wait(&mut self, clock: &dyn Clock) {
        let slot = self.reserve(clock.now());
        sleep_until(clock, slot, &|| false);
    }
}

/// Sleeps until `when` in short steps, giving up early once `cancel()` is true.
/// Returns false if cancelled.
pub fn sleep_until(clock: &dyn Clock, when: SystemTime, cancel: &dyn Fn() -> bool) -> bool {
    const STEP: Duration = Duration::from_millis(50);
    loop {
        if cancel() {
            return false;
        }
        let left = when.duration_since(clock.now()).unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return true;
        }
        clock.sleep(left.min(STEP));
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
    fn reserved_slots_are_spaced_for_concurrent_workers() {
        let mut t = Throttle::new(Some("4/second".parse().unwrap()));
        let t0 = SystemTime::UNIX_EPOCH;
        let slots: Vec<_> = (0..3).map(|_| t.reserve(t0)).collect();
        assert_eq!(
            slots[1].duration_since(slots[0]).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            slots[2].duration_since(slots[1]).unwrap(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn sleep_until_can_be_cancelled() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        assert!(!sleep_until(&clock, later, &|| true));
        assert!(sleep_until(&clock, later, &|| false));
        assert!(clock.now() >= later);
    }

    #[test]
    fn no_rate_never_waits() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(None);
        t.wait(&clock);
        assert_eq!(t.delay(clock.now()), Duration::ZERO);
    }
}
