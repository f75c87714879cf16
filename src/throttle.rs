//! Sending rate: evenly spaced letters, never bursts.
//!
//! The schedule is pure ([`Throttle::reserve`] hands out start times); the
//! caller sleeps through the injected clock with [`sleep_until`], which a
//! signal can cut short. Both run on the monotonic clock: a wall-clock step
//! (NTP, a suspended laptop's catch-up) neither stalls nor bursts the run.

use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::Rate;

/// Spaces letters `rate.interval()` apart.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Throttle {
    /// No rate: never waits.
    #[must_use]
    pub(crate) fn new(rate: Option<Rate>) -> Throttle {
        Throttle {
            interval: rate.map(Rate::interval),
            next: None,
        }
    }

    /// Whether letters are spaced at all (a `rate` is set).
    pub(crate) fn is_paced(&self) -> bool {
        self.interval.is_some()
    }

    /// Takes the next free slot at or after `now`: when the next letter may start.
    pub(crate) fn reserve(&mut self, now: Instant) -> Instant {
        let slot = self.next.map_or(now, |n| n.max(now));
        if let Some(i) = self.interval {
            self.next = Some(slot + i);
        }
        slot
    }
}

/// Sleeps until `when` in short steps, giving up early once `cancel()` is true.
/// Returns false if cancelled.
pub(crate) fn sleep_until(clock: &dyn Clock, when: Instant, cancel: &dyn Fn() -> bool) -> bool {
    const STEP: Duration = Duration::from_millis(50);
    loop {
        if cancel() {
            return false;
        }
        let left = when.saturating_duration_since(clock.instant());
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
    use std::time::SystemTime;

    /// Takes the next slot and sleeps until it, as a worker does.
    fn wait(t: &mut Throttle, clock: &ManualClock) {
        let slot = t.reserve(clock.instant());
        sleep_until(clock, slot, &|| false);
    }

    /// How long the next letter would wait at `now`.
    fn delay(t: &Throttle, now: Instant) -> Duration {
        t.clone().reserve(now).saturating_duration_since(now)
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
        assert_eq!(delay(&t, clock.instant()), Duration::from_secs(1));
    }

    #[test]
    fn reserved_slots_are_spaced_for_concurrent_workers() {
        let mut t = Throttle::new(Some("4/second".parse().unwrap()));
        let t0 = ManualClock::new(SystemTime::UNIX_EPOCH).instant();
        let slots: Vec<_> = (0..3).map(|_| t.reserve(t0)).collect();
        assert_eq!(slots[1] - slots[0], Duration::from_millis(250));
        assert_eq!(slots[2] - slots[1], Duration::from_millis(250));
    }

    #[test]
    fn sleep_until_can_be_cancelled() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let later = clock.instant() + Duration::from_secs(60);
        assert!(!sleep_until(&clock, later, &|| true));
        assert!(sleep_until(&clock, later, &|| false));
        assert!(clock.instant() >= later);
    }

    #[test]
    fn a_wall_clock_step_back_does_not_stall_pacing() {
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        let clock = ManualClock::new(day);
        let mut t = Throttle::new(Some("1/second".parse().unwrap()));
        wait(&mut t, &clock);
        let before = clock.instant();
        // NTP steps the wall clock back an hour between two letters.
        clock.set_wall(day - Duration::from_secs(3600));
        wait(&mut t, &clock);
        assert_eq!(clock.instant() - before, Duration::from_secs(1));
    }

    #[test]
    fn no_rate_never_waits() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(None);
        wait(&mut t, &clock);
        assert_eq!(delay(&t, clock.instant()), Duration::ZERO);
    }
}
