//! When each target's letters may go: pure functions over an instant.
//!
//! `[schedule]` spreads a target's letters over the open hours (`hours` on
//! `days`, in the target's time zone) between `start` and `end`. Instants
//! are Unix seconds; civil dates and hours become instants through jiff's
//! time-zone database, so a daylight-saving change moves the clock, never the
//! share. The ledger supplies what already went; `cmd/` supplies the time.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;

/// One hour, in seconds: the window of `per_target_hourly`.
pub(crate) const HOUR: i64 = 3600;

/// `start` or `end` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A whole day: `start` is its first moment, `end` its last.
    Date(Date),
    /// A local date-time, read in the target's zone.
    Local(DateTime),
    /// A date-time with an offset: one instant everywhere.
    Instant(Timestamp),
}

impl Bound {
    /// The instant this bound means in `tz`; `end` of a date is the next midnight.
    fn at(self, tz: &TimeZone, end: bool) -> i64 {
        let civil = match self {
            Bound::Instant(t) => return t.as_second(),
            Bound::Date(d) if end => d.tomorrow().unwrap_or(d).to_datetime(Time::midnight()),
            Bound::Date(d) => d.to_datetime(Time::midnight()),
            Bound::Local(dt) => dt,
        };
        instant_of(civil, tz)
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Date(d) => write!(f, "{d}"),
            Bound::Local(dt) => write!(f, "{}", dt.strftime("%Y-%m-%d %H:%M")),
            Bound::Instant(t) => write!(f, "{t}"),
        }
    }
}

/// `hours = "09:00-17:00"`: minutes after midnight, `open < close <= 24:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hours {
    /// Opening, in minutes after midnight.
    pub(crate) open: u32,
    /// Closing, in minutes after midnight (1440 = midnight at the day's end).
    pub(crate) close: u32,
}

impl Hours {
    /// All day.
    pub(crate) const ALL_DAY: Hours = Hours { open: 0, close: 1440 };
}

impl FromStr for Hours {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text;
        let bad = || format!("hours `{s}` must look like `09:00-17:00` (HH:MM-HH:MM, 24-hour clock)");
        let (from, to) = s.split_once('-').ok_or_else(bad)?;
        let minutes = |hh_mm: &str| -> Option<u32> {
            let (h, m) = hh_mm.trim().split_once(':')?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (open, close) = (minutes(from).ok_or_else(bad)?, minutes(to).ok_or_else(bad)?);
        if open >= close {
            return Err(format!(
                "hours `{s}` open no time: the closing time must come after the opening time \
                 (a window over midnight is two days' hours, e.g. `18:00-24:00`)"
            ));
        }
        Ok(Hours { open, close })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.open / 60,
            self.open % 60,
            self.close / 60,
            self.close % 60
        )
    }
}

/// The three-letter day names of `days`, Monday first.
pub(crate) const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `[schedule]`, typed.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// First moment (default: the first letter handed over to the target).
    pub(crate) start: Option<Bound>,
    /// Last moment (default: no spreading, only `per_target_hourly`).
    pub(crate) end: Option<Bound>,
    /// Open hours (default all day).
    pub(crate) hours: Hours,
    /// Open days, Monday first (default every day).
    pub(crate) days: [bool; 7],
    /// The zone of targets without their own (default: the machine's).
    pub(crate) timezone: TimeZone,
    /// At most this many letters to one target in any rolling hour.
    pub(crate) per_target_hourly: Option<u64>,
    /// Each letter's slot varies by up to ± this share of the spacing (0 to 0.5).
    pub(crate) jitter: f64,
}

/// What a target already received, from the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Letters handed over so far (each counted once).
    pub(crate) letters: u64,
    /// The first hand-over, if any: the window's start when `start` is absent.
    pub(crate) first_at: Option<i64>,
    /// Hand-overs in the last hour before the moment asked about, ascending.
    pub(crate) last_hour: Vec<i64>,
}

/// What bounds a target's letters at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Nothing: every letter due may go.
    None,
    /// The window has not started.
    NotStarted,
    /// Outside the open hours.
    Closed,
    /// The even spread: its share so far went.
    Share,
    /// `per_target_hourly` letters went within the last hour.
    Hourly,
}

/// How many letters may go now, and what stops more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowance {
    /// Letters that may go now.
    pub(crate) letters: u64,
    /// What bounds `letters`.
    pub(crate) limit: Limit,
}

/// One target's view of the schedule: its zone and its window as instants.
#[derive(Debug, Clone)]
pub(crate) struct Window<'a> {
    schedule: &'a Schedule,
    /// The target's zone.
    pub(crate) tz: TimeZone,
    /// `start` in the target's zone, if given.
    start: Option<i64>,
    /// `end` in the target's zone, if given.
    end: Option<i64>,
    /// Seeds the jitter: the same target always gets the same slots.
    seed: u64,
}

impl Schedule {
    /// The window of a target in zone `tz` (its own, or `None` for the default);
    /// `key` seeds its jitter.
    #[must_use]
    pub(crate) fn window(&self, tz: Option<&TimeZone>, key: &str) -> Window<'_> {
        let tz = tz.unwrap_or(&self.timezone).clone();
        Window {
            schedule: self,
            start: self.start.map(|b| b.at(&tz, false)),
            end: self.end.map(|b| b.at(&tz, true)),
            seed: fnv(key.as_bytes()),
            tz,
        }
    }

    /// The open days, as written (`mon, tue, …`), or `every day`.
    #[must_use]
    pub(crate) fn days_text(&self) -> String {
        if self.days.iter().all(|d| *d) {
            return "every day".to_owned();
        }
        DAY_NAMES
            .iter()
            .zip(self.days)
            .filter(|(_, open)| *open)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Window<'_> {
    /// `start` as an instant, if given.
    #[must_use]
    pub(crate) fn start(&self) -> Option<i64> {
        self.start
    }

    /// `end` as an instant, if given.
    #[must_use]
    pub(crate) fn end(&self) -> Option<i64> {
        self.end
    }

    /// The open intervals `[a, b)` that meet `[from, to)`, clipped to it.
    #[must_use]
    pub(crate) fn open_spans(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let mut spans = Vec::new();
        if from >= to {
            return spans;
        }
        let Some(mut day) = date_of(from, &self.tz).yesterday().ok() else {
            return spans;
        };
        loop {
            if let Some((a, b)) = self.day_span(day) {
                if a >= to {
                    break;
                }
                let (a, b) = (a.max(from), b.min(to));
                if a < b {
                    spans.push((a, b));
                }
            }
            let midnight = instant_of(day.to_datetime(Time::midnight()), &self.tz);
            if midnight >= to {
                break;
            }
            match day.tomorrow() {
                Ok(d) => day = d,
                Err(_) => break,
            }
        }
        spans
    }

    /// The open interval of a civil day, if it is an open day.
    fn day_span(&self, day: Date) -> Option<(i64, i64)> {
        let wd = day.weekday().to_monday_zero_offset() as usize;
        if !self.schedule.days[wd] {
            return None;
        }
        let h = self.schedule.hours;
        let at = |minutes: u32| -> i64 {
            if minutes >= 1440 {
                let next = day.tomorrow().unwrap_or(day);
                instant_of(next.to_datetime(Time::midnight()), &self.tz)
            } else {
                let time =
                    Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).unwrap_or(Time::midnight());
                instant_of(day.to_datetime(time), &self.tz)
            }
        };
        let (a, b) = (at(h.open), at(h.close));
        (a < b).then_some((a, b))
    }

    /// Seconds of open time in `[from, to)`.
    #[must_use]
    pub(crate) fn open_between(&self, from: i64, to: i64) -> i64 {
        self.open_spans(from, to).iter().map(|(a, b)| b - a).sum()
    }

    /// Whether `t` is within the open hours.
    #[must_use]
    pub(crate) fn is_open(&self, t: i64) -> bool {
        self.open_between(t, t + 1) == 1
    }

    /// The first open instant at or after `t` (within three weeks).
    #[must_use]
    pub(crate) fn next_open(&self, t: i64) -> Option<i64> {
        self.open_spans(t, t + 21 * 86_400).first().map(|(a, _)| *a)
    }

    /// The instant at which `secs` of open time have passed since `from`.
    fn after_open(&self, from: i64, secs: i64) -> Option<i64> {
        let mut left = secs;
        let mut cursor = from;
        // Windows of years are fine: walk them a quarter at a time.
        for _ in 0..400 {
            let to = cursor + 90 * 86_400;
            for (a, b) in self.open_spans(cursor, to) {
                if left <= b - a {
                    return Some(a + left);
                }
                left -= b - a;
            }
            cursor = to;
        }
        None
    }

    /// Where the spread begins: `start`, else the first hand-over, else now.
    fn spread_start(&self, sent: &Sent, now: i64) -> i64 {
        self.start.or(sent.first_at).unwrap_or(now)
    }

    /// When the `k`-th letter (0-based) of `total` may go, in seconds of open
    /// time since the start (`open` in all): its even slot, delayed by its
    /// jitter. Never before `k × open / total`, so jitter never breaks the
    /// bound; never past the next slot, so the slots stay in order.
    fn slot(&self, k: u64, total: u64, open: i64) -> f64 {
        let spacing = open as f64 / total as f64;
        let j = self.schedule.jitter;
        // u in [-1, 1): a fixed draw per (target, k).
        let u = (mix(self.seed ^ k) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        k as f64 * spacing + j * spacing * (1.0 + u)
    }

    /// Letters of `total` that the spread allows after `p` seconds of open
    /// time (of `open`): ⌈total × p / open⌉, each letter at the end of its
    /// slot. `lead` (no `start`: the window begins with the first letter):
    /// each at the beginning of its slot, so the first goes at once.
    fn spread_count(&self, total: u64, open: i64, p: i64, lead: bool) -> u64 {
        if total == 0 {
            return 0;
        }
        let (t, p, o) = (u128::from(total), p.max(0) as u128, open as u128);
        // The bound jitter must respect, exactly.
        let exact = if lead { t * p / o + 1 } else { (t * p).div_ceil(o) };
        let before = |k: u64| {
            let slot = self.slot(k, total, open);
            if lead {
                k == 0 || slot <= p as f64
            } else {
                slot < p as f64
            }
        };
        // The slots ascend: count those before p.
        let (mut lo, mut hi) = (0u64, total);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.min(exact.min(t) as u64)
    }

    /// Seconds of open time after which the `k`-th letter (0-based) may go.
    fn open_needed(&self, k: u64, total: u64, open: i64, lead: bool) -> i64 {
        let slot = self.slot(k, total, open);
        let even = u128::from(k) * open as u128;
        let t = u128::from(total);
        if lead {
            (slot.ceil() as i64).max(even.div_ceil(t) as i64)
        } else {
            (slot.floor() as i64).max((even / t) as i64) + 1
        }
    }

    /// The letters one target may receive at `now`: `total` is its letters in
    /// today's CSV, `sent` what the ledger says went (its `last_hour` as of `now`).
    #[must_use]
    pub(crate) fn allowance(&self, now: i64, total: u64, sent: &Sent) -> Allowance {
        let due = total.saturating_sub(sent.letters);
        let start = self.spread_start(sent, now);
        if self.start.is_some_and(|s| now < s) {
            return Allowance {
                letters: 0,
                limit: Limit::NotStarted,
            };
        }
        if !self.is_open(now) {
            return Allowance {
                letters: 0,
                limit: Limit::Closed,
            };
        }
        let mut out = Allowance {
            letters: due,
            limit: Limit::None,
        };
        if let Some(end) = self.end
            && now < end
        {
            let open = self.open_between(start, end);
            if open > 0 {
                let p = self.open_between(start, now);
                let share = self.spread_count(total, open, p, self.start.is_none());
                let n = share.saturating_sub(sent.letters);
                if n < out.letters {
                    out = Allowance {
                        letters: n,
                        limit: Limit::Share,
                    };
                }
            }
        }
        if let Some(cap) = self.schedule.per_target_hourly {
            let recent = sent
                .last_hour
                .iter()
                .filter(|t| **t > now - HOUR && **t <= now)
                .count() as u64;
            let n = cap.saturating_sub(recent);
            if n < out.letters {
                out = Allowance {
                    letters: n,
                    limit: Limit::Hourly,
                };
            }
        }
        out
    }

    /// The first instant at or after `now` when one more letter may go (if
    /// nothing else goes before), or `None` when none is due.
    #[must_use]
    pub(crate) fn next_letter(&self, now: i64, total: u64, sent: &Sent) -> Option<i64> {
        if sent.letters >= total {
            return None;
        }
        let mut t = now.max(self.start.unwrap_or(now));
        for _ in 0..64 {
            t = self.next_open(t)?;
            if let Some(cap) = self.schedule.per_target_hourly {
                let recent: Vec<i64> = sent.last_hour.iter().copied().filter(|x| *x > t - HOUR).collect();
                if recent.len() as u64 >= cap.max(1) {
                    // The oldest that must leave the hour for one more to fit.
                    let free = recent[recent.len() - cap.max(1) as usize] + HOUR;
                    if free > t {
                        t = free;
                        continue;
                    }
                }
            }
            if let Some(end) = self.end
                && t < end
            {
                let start = self.spread_start(sent, now);
                let open = self.open_between(start, end);
                if open > 0 {
                    let p = self.open_between(start, t);
                    let lead = self.start.is_none();
                    if self.spread_count(total, open, p, lead) <= sent.letters {
                        let need = self.open_needed(sent.letters, total, open, lead);
                        let at = self.after_open(start, need).unwrap_or(end).min(end);
                        t = at.max(t + 1);
                        continue;
                    }
                }
            }
            if self.allowance(t, total, sent).letters > 0 {
                return Some(t);
            }
            t += 1;
        }
        None
    }

    /// Letters per open day from `now` on if each goes at its slot: `(date,
    /// letters)` in the target's zone, for the dry-run plan. `due` letters are
    /// left of `total`.
    #[must_use]
    pub(crate) fn per_day(&self, now: i64, total: u64, sent: &Sent) -> Vec<(Date, u64)> {
        let mut days: Vec<(Date, u64)> = Vec::new();
        let mut sent = sent.clone();
        let mut t = now;
        // Simulate each letter going at its first allowed instant.
        while sent.letters < total && days.len() <= 366 {
            let Some(at) = self.next_letter(t, total, &sent) else {
                break;
            };
            let n = self
                .allowance(at, total, &sent)
                .letters
                .max(1)
                .min(total - sent.letters);
            sent.letters += n;
            sent.first_at.get_or_insert(at);
            sent.last_hour.retain(|x| *x > at - HOUR);
            sent.last_hour.extend(std::iter::repeat_n(at, n as usize));
            let date = date_of(at, &self.tz);
            match days.last_mut() {
                Some((d, count)) if *d == date => *count += n,
                _ => days.push((date, n)),
            }
            t = at + 1;
        }
        days
    }

    /// `2026-12-01 09:00 America/New_York`
    #[must_use]
    pub(crate) fn show(&self, t: i64) -> String {
        show(t, &self.tz)
    }
}

/// `2026-12-01 09:00 America/New_York`, in `tz`.
#[must_use]
pub(crate) fn show(t: i64, tz: &TimeZone) -> String {
    let Ok(ts) = Timestamp::from_second(t) else {
        return t.to_string();
    };
    let z = ts.to_zoned_datetime(tz.clone());
    format!("{} {}", z.strftime("%Y-%m-%d %H:%M"), zone_name(tz))
}

/// The zone's IANA name, or its offset.
#[must_use]
pub(crate) fn zone_name(tz: &TimeZone) -> String {
    tz.iana_name()
        .map_or_else(|| "local time".to_owned(), str::to_owned)
}

/// The civil date of `t` in `tz`.
fn date_of(t: i64, tz: &TimeZone) -> Date {
    Timestamp::from_second(t)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned_datetime(tz.clone())
        .date()
}

/// The instant of a civil date-time in `tz`. A time skipped by a
/// daylight-saving change means the instant just after the gap; a time that
/// happens twice means its first occurrence.
fn instant_of(dt: DateTime, tz: &TimeZone) -> i64 {
    dt.to_zoned_datetime(tz.clone())
        .map_or(0, |z| z.timestamp().as_second())
}

/// FNV-1a: a stable seed from a target's key.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finalizer: spreads a seed over all bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    /// Unix seconds of a local time in `zone`.
    fn at(zone: &str, text: &str) -> i64 {
        instant_of(text.parse::<DateTime>().unwrap(), &tz(zone))
    }

    fn day(text: &str) -> Bound {
        Bound::Date(text.parse().unwrap())
    }

    /// Mon 2026-11-30 … Fri 2026-12-04, 09:00-17:00 weekdays, New York.
    fn week() -> Schedule {
        Schedule {
            start: Some(day("2026-11-30")),
            end: Some(day("2026-12-04")),
            hours: "09:00-17:00".parse().unwrap(),
            days: [true, true, true, true, true, false, false],
            timezone: tz("America/New_York"),
            per_target_hourly: None,
            jitter: 0.0,
        }
    }

    fn sent(letters: u64) -> Sent {
        Sent {
            letters,
            ..Sent::default()
        }
    }

    const NY: &str = "America/New_York";

    #[test]
    fn hours_parse_and_refuse_nonsense() {
        assert_eq!(
            "09:00-17:00".parse::<Hours>().unwrap(),
            Hours {
                open: 540,
                close: 1020
            }
        );
        assert_eq!("00:00-24:00".parse::<Hours>().unwrap(), Hours::ALL_DAY);
        assert_eq!("9:30-17:00".parse::<Hours>().unwrap().open, 570);
        for bad in [
            "9-5",
            "09:00",
            "17:00-09:00",
            "09:00-09:00",
            "25:00-26:00",
            "09:60-10:00",
            "x",
        ] {
            assert!(bad.parse::<Hours>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_window_holds_forty_open_hours() {
        let s = week();
        let w = s.window(None, "ceo@corp.example");
        assert_eq!(w.start(), Some(at(NY, "2026-11-30T00:00")));
        assert_eq!(w.end(), Some(at(NY, "2026-12-05T00:00")));
        assert_eq!(w.open_between(w.start().unwrap(), w.end().unwrap()), 40 * HOUR);
        assert_eq!(w.open_spans(w.start().unwrap(), w.end().unwrap()).len(), 5);
    }

    #[test]
    fn start_middle_and_end_of_the_window() {
        let s = week();
        let w = s.window(None, "t");
        // Before it opens on the first day: nothing.
        let a = w.allowance(at(NY, "2026-11-30T08:59"), 400, &sent(0));
        assert_eq!(
            a,
            Allowance {
                letters: 0,
                limit: Limit::Closed
            }
        );
        // One minute into 40 hours: ⌈400/2400⌉ = 1.
        assert_eq!(w.allowance(at(NY, "2026-11-30T09:01"), 400, &sent(0)).letters, 1);
        // End of the first day: a fifth.
        assert_eq!(
            w.allowance(at(NY, "2026-11-30T16:59:59"), 400, &sent(0)).letters,
            80
        );
        // Wednesday 13:00: 2.5 days of 5 → 200, of which 150 went.
        let mid = w.allowance(at(NY, "2026-12-02T13:00"), 400, &sent(150));
        assert_eq!(
            mid,
            Allowance {
                letters: 50,
                limit: Limit::Share
            }
        );
        // The last open second: everything.
        assert_eq!(
            w.allowance(at(NY, "2026-12-04T16:59:59"), 400, &sent(0)).letters,
            400
        );
        // Never more than the total, whatever went.
        assert_eq!(
            w.allowance(at(NY, "2026-12-02T13:00"), 400, &sent(400)).letters,
            0
        );
    }

    #[test]
    fn closed_hours_and_weekends_send_nothing() {
        let s = week();
        let w = s.window(None, "t");
        for t in [
            "2026-12-01T17:00",
            "2026-12-01T03:00",
            "2026-12-05T12:00",
            "2026-12-06T10:00",
        ] {
            assert_eq!(w.allowance(at(NY, t), 400, &sent(0)).letters, 0, "{t}");
        }
        // The next letter after Tuesday's close is Wednesday 09:00.
        let sent_so_far = w.allowance(at(NY, "2026-12-01T16:59:59"), 400, &sent(0)).letters;
        assert_eq!(
            w.next_letter(at(NY, "2026-12-01T17:30"), 400, &sent(sent_so_far)),
            Some(at(NY, "2026-12-02T09:00")).map(|t| t + 1)
        );
        // A window that reaches past Friday resumes on Monday.
        let mut long = week();
        long.end = Some(day("2026-12-08"));
        let w = long.window(None, "t");
        let t = w.next_letter(at(NY, "2026-12-05T10:00"), 10_000, &sent(5_000));
        assert_eq!(t, Some(at(NY, "2026-12-07T09:00")));
    }

    #[test]
    fn two_targets_in_two_zones_open_at_their_own_nine() {
        let s = week();
        let ny = s.window(None, "ceo@corp.example");
        let berlin_tz = tz("Europe/Berlin");
        let berlin = s.window(Some(&berlin_tz), "cfo@corp.example");
        // 09:30 in Berlin is 03:30 in New York.
        let t = at("Europe/Berlin", "2026-11-30T09:30");
        assert!(berlin.allowance(t, 80, &sent(0)).letters > 0);
        assert_eq!(ny.allowance(t, 80, &sent(0)).letters, 0);
        assert_eq!(
            ny.next_letter(t, 80, &sent(0)).map(|x| ny.show(x)).unwrap(),
            "2026-11-30 09:00 America/New_York"
        );
        assert!(berlin.show(t).ends_with("Europe/Berlin"));
        // Each window holds the same 40 hours, from its own midnight.
        assert_eq!(berlin.start(), Some(at("Europe/Berlin", "2026-11-30T00:00")));
        assert_eq!(
            berlin.open_between(berlin.start().unwrap(), berlin.end().unwrap()),
            40 * HOUR
        );
    }

    #[test]
    fn daylight_saving_changes_neither_double_nor_lose_an_hour() {
        // All day, every day, over the US change (Sun 2026-03-08, 02:00 → 03:00)
        // and the EU change (Sun 2026-03-29, 02:00 → 03:00 in Berlin).
        let mut s = week();
        s.hours = Hours::ALL_DAY;
        s.days = [true; 7];
        s.start = Some(day("2026-03-07"));
        s.end = Some(day("2026-03-08"));
        let ny = s.window(None, "t");
        // Saturday 24 h + Sunday 23 h: the skipped hour is not counted.
        assert_eq!(ny.open_between(ny.start().unwrap(), ny.end().unwrap()), 47 * HOUR);
        // Autumn: Sunday 2026-11-01 holds 25 h in New York, and 01:00-03:00 is 3 real hours.
        s.start = Some(day("2026-11-01"));
        s.end = Some(day("2026-11-01"));
        let ny = s.window(None, "t");
        assert_eq!(ny.open_between(ny.start().unwrap(), ny.end().unwrap()), 25 * HOUR);
        s.hours = "01:00-03:00".parse().unwrap();
        let ny = s.window(None, "t");
        assert_eq!(ny.open_between(ny.start().unwrap(), ny.end().unwrap()), 3 * HOUR);
        // Berlin's spring change, a week for each: 7 × 24 − 1 hours.
        s.hours = Hours::ALL_DAY;
        s.start = Some(day("2026-03-23"));
        s.end = Some(day("2026-03-29"));
        let berlin_tz = tz("Europe/Berlin");
        let berlin = s.window(Some(&berlin_tz), "t");
        assert_eq!(
            berlin.open_between(berlin.start().unwrap(), berlin.end().unwrap()),
            167 * HOUR
        );
        // 09:00-17:00 on the change days: still 8 real hours each.
        s.hours = "09:00-17:00".parse().unwrap();
        let berlin = s.window(Some(&berlin_tz), "t");
        assert_eq!(
            berlin.open_between(berlin.start().unwrap(), berlin.end().unwrap()),
            56 * HOUR
        );
        // The share is by real open time: half of 167 h after 83.5 real hours.
        s.hours = Hours::ALL_DAY;
        let berlin = s.window(Some(&berlin_tz), "t");
        let half = berlin.start().unwrap() + 167 * HOUR / 2;
        assert_eq!(berlin.allowance(half, 1670, &sent(0)).letters, 835);
    }

    #[test]
    fn late_signups_raise_the_total_and_stay_within_the_bound() {
        let s = week();
        let w = s.window(None, "t");
        let wed = at(NY, "2026-12-02T13:00");
        // Half the window passed; 100 letters, 50 went.
        assert_eq!(w.allowance(wed, 100, &sent(50)).letters, 0);
        // 100 more signups: the share is now half of 200.
        let a = w.allowance(wed, 200, &sent(50)).letters;
        assert_eq!(a, 50);
        assert!(50 + a <= (200 * 20u64).div_ceil(40));
        // By the end, all of them.
        assert_eq!(
            w.allowance(at(NY, "2026-12-04T16:59:59"), 200, &sent(100))
                .letters,
            100
        );
    }

    #[test]
    fn the_hourly_cap_holds_over_any_rolling_hour() {
        let mut s = week();
        s.per_target_hourly = Some(10);
        let w = s.window(None, "t");
        let t = at(NY, "2026-12-03T10:00");
        let recent: Vec<i64> = (0..10).map(|i| t - 3000 + i * 60).collect();
        let st = Sent {
            letters: 10,
            first_at: Some(recent[0]),
            last_hour: recent.clone(),
        };
        let a = w.allowance(t, 10_000, &st);
        assert_eq!(
            a,
            Allowance {
                letters: 0,
                limit: Limit::Hourly
            }
        );
        // The next letter may go when the first of those leaves the hour.
        assert_eq!(w.next_letter(t, 10_000, &st), Some(recent[0] + HOUR));
        // After `end`, what is still due goes at the hourly rate in open hours.
        let after = at(NY, "2026-12-07T09:30");
        assert_eq!(
            w.allowance(after, 500, &sent(100)),
            Allowance {
                letters: 10,
                limit: Limit::Hourly
            }
        );
        assert_eq!(
            w.allowance(at(NY, "2026-12-07T08:30"), 500, &sent(100)).letters,
            0
        );
        assert_eq!(
            w.allowance(at(NY, "2026-12-06T10:00"), 500, &sent(100)).letters,
            0
        );
        // No hourly cap: after the end, everything due at once (in open hours).
        let s = week();
        let w = s.window(None, "t");
        assert_eq!(w.allowance(after, 500, &sent(100)).letters, 400);
    }

    #[test]
    fn jitter_never_breaks_the_bound_and_is_stable() {
        let mut s = week();
        s.jitter = 0.5;
        let w = s.window(None, "ceo@corp.example");
        let (start, end) = (w.start().unwrap(), w.end().unwrap());
        let open = w.open_between(start, end);
        let total = 997;
        let mut moved = 0;
        let mut last = 0;
        for step in 0..=400 {
            let p = open * step / 400;
            let n = w.spread_count(total, open, p, false);
            let bound = (u128::from(total) * p as u128).div_ceil(open as u128) as u64;
            assert!(n <= bound, "p={p}: {n} > {bound}");
            assert!(n >= last, "the share never shrinks");
            // Jitter delays a letter by at most one spacing.
            assert!(n + 1 >= bound, "p={p}: {n} lags {bound} by more than one letter");
            moved += u64::from(n != bound);
            last = n;
        }
        assert_eq!(last, total);
        assert!(moved > 0, "jitter moved some letters");
        // The same target gets the same slots every run.
        let again = s.window(None, "ceo@corp.example");
        assert_eq!(
            w.spread_count(total, open, open / 3, false),
            again.spread_count(total, open, open / 3, false)
        );
    }

    #[test]
    fn without_start_the_first_letter_goes_at_once_then_the_spread_follows() {
        let mut s = week();
        s.start = None;
        let w = s.window(None, "t");
        let now = at(NY, "2026-11-30T09:00");
        assert_eq!(w.allowance(now, 40, &sent(0)).letters, 1);
        let st = Sent {
            letters: 1,
            first_at: Some(now),
            last_hour: vec![now],
        };
        // One letter an open hour.
        assert_eq!(w.allowance(now + 1800, 40, &st).letters, 0);
        assert_eq!(w.next_letter(now + 1800, 40, &st), Some(now + HOUR));
    }

    #[test]
    fn the_plan_counts_letters_per_day() {
        let mut s = week();
        s.per_target_hourly = Some(60);
        let w = s.window(None, "t");
        let days = w.per_day(at(NY, "2026-11-29T12:00"), 400, &sent(0));
        let counts: Vec<u64> = days.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [80, 80, 80, 80, 80]);
        assert_eq!(days[0].0.to_string(), "2026-11-30");
        // Before the window, the next letter goes just after it opens.
        let next = w.next_letter(at(NY, "2026-11-29T12:00"), 400, &sent(0)).unwrap();
        assert_eq!(w.show(next), "2026-11-30 09:00 America/New_York");
    }
}
