//! Sending rate: evenly spaced letters, never bursts.
//!
//! The schedule is pure ([`Throttle::reserve`] hands out start times); the
//! caller sleeps through the injected clock with [`sleep_until`], which a
//! signal can cut short.

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

    /// Takes the next free slot at or after `now`: when the next letter may start.
    pub fn reserve(&mut self, now: SystemTime) -> SystemTime {
        let slot = self.next.map_or(now, |n| n.max(now));
        if let Some(i) = self.interval {
            self.next = Some(slot + i);
        }
        slot
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

    /// Takes the next slot and sleeps until it, as a worker does.
    fn wait(t: &mut Throttle, clock: &ManualClock) {
        let slot = t.reserve(clock.now());
        sleep_until(clock, slot, &|| false);
    }

    /// How long the next letter would wait at `now`.
    fn delay(t: &Throttle, now: SystemTime) -> Duration {
        t.clone()
            .reserve(now)
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    #[test]
    fn spaces_letters_evenly() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("10/second".parse().unwrap()));
        let mut times = Vec::new();
        for _ in 0..5 {
            wait(&mut t, &clock);
            times.push(clock.now().duration_since(SystemTime::UNIX_EPOCH).unwrap());
        }
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 100, 200, 300, 400]);
    }

    #[test]
    fn slow_sends_do_not_bank_a_burst() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("1/second".parse().unwrap()));
        wait(&mut t, &clock);
        clock.advance(Duration::from_secs(10)); // a slow letter
        wait(&mut t, &clock);
        assert_eq!(delay(&t, clock.now()), Duration::from_secs(1));
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
        wait(&mut t, &clock);
        assert_eq!(delay(&t, clock.now()), Duration::ZERO);
    }
}
