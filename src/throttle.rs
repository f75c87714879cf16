//! Sending rate: evenly spaced letters, never bursts, and a pace that
//! adapts to the relay.
//!
//! The schedule is pure ([`Throttle::reserve`] hands out start times); the
//! caller sleeps through the injected clock with [`sleep_until`], which a
//! signal can cut short. Both run on the monotonic clock: a wall-clock step
//! (NTP, a suspended laptop's catch-up) neither stalls nor bursts the run.
//!
//! When the relay throttles ([`Throttle::slow_down`]), the pace halves (from
//! the configured `rate`, or without one from the pace observed so far);
//! after each quiet stretch it climbs back additively, never above `rate`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::Rate;

/// How long without a throttling reply before the pace climbs one step.
const QUIET: Duration = Duration::from_secs(30);
/// The slowest pace throttling can bring: one letter a minute.
const SLOWEST: Duration = Duration::from_secs(60);
/// Starts remembered to observe the pace of an unpaced run.
const OBSERVED: usize = 32;
/// Steps from the slowed pace back to the pace that was throttled.
const STEPS: f64 = 8.0;

/// Spaces letters `rate.interval()` apart; slower while the relay throttles.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    /// The spacing now; `None`: unpaced.
    interval: Option<Duration>,
    /// The configured spacing: never faster than this.
    configured: Option<Duration>,
    next: Option<Instant>,
    /// Recent starts, for the pace of an unpaced run.
    recent: VecDeque<Instant>,
    /// Since the last throttling reply or climb; `None`: not slowed.
    quiet_since: Option<Instant>,
    /// Letters per second added per quiet stretch.
    step: f64,
    /// The pace that was throttled first, letters per second: an unpaced
    /// run climbs back to it, then runs unpaced again.
    throttled_at: f64,
}

impl Throttle {
    /// No rate: never waits (until the relay throttles).
    #[must_use]
    pub(crate) fn new(rate: Option<Rate>) -> Throttle {
        let configured = rate.map(Rate::interval);
        Throttle {
            interval: configured,
            configured,
            next: None,
            recent: VecDeque::with_capacity(OBSERVED),
            quiet_since: None,
            step: 0.0,
            throttled_at: 0.0,
        }
    }

    /// Whether letters are spaced at all (a `rate` is set, or the relay throttled).
    pub(crate) fn is_paced(&self) -> bool {
        self.interval.is_some()
    }

    /// Takes the next free slot at or after `now`: when the next letter may start.
    pub(crate) fn reserve(&mut self, now: Instant) -> Instant {
        self.recover(now);
        let slot = self.next.map_or(now, |n| n.max(now));
        if let Some(i) = self.interval {
            self.next = Some(slot + i);
        }
        if self.recent.len() == OBSERVED {
            self.recent.pop_front();
        }
        self.recent.push_back(slot);
        slot
    }

    /// The relay asked us to slow down at `now`: halves the pace and returns
    /// the new spacing. The next slot moves out by it, so the connection that
    /// got the reply pauses too.
    pub(crate) fn slow_down(&mut self, now: Instant) -> Duration {
        let current = self.interval.unwrap_or_else(|| self.observed(now));
        let slowed = (current * 2).clamp(Duration::from_millis(1), SLOWEST);
        if self.quiet_since.is_none() {
            let throttled = 1.0 / current.as_secs_f64();
            self.throttled_at = throttled;
            self.step = (throttled - 1.0 / slowed.as_secs_f64()) / STEPS;
        }
        self.interval = Some(slowed);
        self.quiet_since = Some(now);
        self.next = Some(self.next.map_or(now, |n| n.max(now)).max(now + slowed));
        slowed
    }

    /// Starts another round of sending with the state the last one left
    /// (`send --follow`): the slowed pace and its climb back go on, but the
    /// starts observed so far are forgotten, so an unpaced round's pace is
    /// its own and not diluted by the wait between rounds. Returns the
    /// spacing while throttling still holds the pace down (`None`: not
    /// slowed, or climbed back).
    pub(crate) fn resume(&mut self, now: Instant) -> Option<Duration> {
        self.recent.clear();
        self.recover(now);
        self.quiet_since.and(self.interval)
    }

    /// The spacing now, if any.
    #[cfg(test)]
    fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// The spacing of the recent starts up to `now`.
    fn observed(&self, now: Instant) -> Duration {
        match self.recent.front() {
            Some(first) if !self.recent.is_empty() => {
                now.saturating_duration_since(*first) / self.recent.len() as u32
            }
            _ => Duration::from_secs(1),
        }
    }

    /// One additive step per quiet stretch since the last throttling reply,
    /// back to the configured pace (or, unpaced, to none once the throttled
    /// pace is reached again).
    fn recover(&mut self, now: Instant) {
        let (Some(mut since), Some(interval)) = (self.quiet_since, self.interval) else {
            return;
        };
        let mut pace = 1.0 / interval.as_secs_f64();
        while now.saturating_duration_since(since) >= QUIET {
            since += QUIET;
            pace += self.step;
        }
        self.quiet_since = Some(since);
        let limit = match self.configured {
            Some(c) => 1.0 / c.as_secs_f64(),
            None => self.throttled_at,
        };
        if pace >= limit {
            self.interval = self.configured;
            self.quiet_since = None;
        } else {
            self.interval = Some(Duration::from_secs_f64(1.0 / pace));
        }
    }
}

/// A pace as a person reads it: `12/minute`, `3/second`.
pub(crate) fn per_minute(interval: Duration) -> String {
    let per_second = 1.0 / interval.as_secs_f64().max(1e-6);
    if per_second >= 2.0 {
        format!("{}/second", per_second.round())
    } else if per_second * 60.0 >= 1.0 {
        format!("{}/minute", (per_second * 60.0).round())
    } else {
        format!("{}/hour", (per_second * 3600.0).round())
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

    #[test]
    fn throttling_halves_the_configured_pace_and_it_climbs_back_additively() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("60/minute".parse().unwrap()));
        wait(&mut t, &clock);
        assert_eq!(t.slow_down(clock.instant()), Duration::from_secs(2));
        assert_eq!(per_minute(t.interval().unwrap()), "30/minute");
        // The connection that got the reply waits the new spacing.
        assert_eq!(delay(&t, clock.instant()), Duration::from_secs(2));
        // Quiet stretches: one step each, never above the configured rate.
        let mut paces = Vec::new();
        for _ in 0..10 {
            clock.advance(QUIET);
            wait(&mut t, &clock);
            paces.push(per_minute(t.interval().unwrap()));
        }
        assert_eq!(&paces[..3], ["34/minute", "38/minute", "41/minute"]);
        assert_eq!(paces[9], "60/minute");
        assert!(t.quiet_since.is_none());
    }

    #[test]
    fn a_resumed_round_goes_on_at_the_slowed_pace_until_it_has_climbed_back() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("60/minute".parse().unwrap()));
        assert_eq!(t.resume(clock.instant()), None);
        t.slow_down(clock.instant());
        assert_eq!(t.resume(clock.instant()), Some(Duration::from_secs(2)));
        // A round later, after one quiet stretch: one step back up.
        clock.advance(QUIET);
        assert_eq!(
            t.resume(clock.instant()).map(per_minute).as_deref(),
            Some("34/minute")
        );
        // Long enough (a follower's sleep): back at the configured rate.
        clock.advance(QUIET * 10);
        assert_eq!(t.resume(clock.instant()), None);
        assert_eq!(t.interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn an_unpaced_round_observes_its_own_pace_not_the_wait_before_it() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(None);
        for _ in 0..5 {
            wait(&mut t, &clock);
            clock.advance(Duration::from_millis(100));
        }
        // The follower sleeps ten minutes, then a round goes at 10/second.
        clock.advance(Duration::from_secs(600));
        assert_eq!(t.resume(clock.instant()), None);
        for _ in 0..10 {
            wait(&mut t, &clock);
            clock.advance(Duration::from_millis(100));
        }
        assert_eq!(t.slow_down(clock.instant()), Duration::from_millis(200));
    }

    #[test]
    fn a_second_throttle_halves_again_and_restarts_the_quiet() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(Some("60/minute".parse().unwrap()));
        t.slow_down(clock.instant());
        clock.advance(QUIET / 2);
        assert_eq!(t.slow_down(clock.instant()), Duration::from_secs(4));
        clock.advance(QUIET / 2);
        t.reserve(clock.instant());
        assert_eq!(t.interval(), Some(Duration::from_secs(4)));
        // Never slower than one a minute.
        for _ in 0..10 {
            t.slow_down(clock.instant());
        }
        assert_eq!(t.interval(), Some(SLOWEST));
    }

    #[test]
    fn an_unpaced_run_is_paced_at_half_the_observed_rate_once_throttled() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut t = Throttle::new(None);
        // Ten letters in a second: 10/second observed.
        for _ in 0..10 {
            wait(&mut t, &clock);
            clock.advance(Duration::from_millis(100));
        }
        assert!(!t.is_paced());
        assert_eq!(t.slow_down(clock.instant()), Duration::from_millis(200));
        assert!(t.is_paced());
        // It climbs back to the throttled pace, then runs unpaced again.
        for _ in 0..8 {
            clock.advance(QUIET);
            t.reserve(clock.instant());
        }
        assert!(!t.is_paced());
    }

    #[test]
    fn paces_read_as_people_say_them() {
        assert_eq!(per_minute(Duration::from_secs(5)), "12/minute");
        assert_eq!(per_minute(Duration::from_millis(250)), "4/second");
        assert_eq!(per_minute(Duration::from_secs(120)), "30/hour");
    }
}
