//! `[schedule]`: when each target's letters may go, typed and checked to open
//! some time; also the time zone names `[[targets]] timezone` uses.
//!
//! `crate::schedule` owns the types and the arithmetic; this file only reads
//! the section into them, with each error at its line.

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    start: Option<Spanned<toml::value::Datetime>>,
    end: Option<Spanned<toml::value::Datetime>>,
    hours: Option<Spanned<String>>,
    days: Option<Spanned<Vec<Spanned<String>>>>,
    timezone: Option<Spanned<String>>,
    per_target_hourly: Option<Spanned<u64>>,
    jitter: Option<Spanned<f64>>,
}

/// An IANA time zone, or an error that says how to name one.
pub(crate) fn time_zone(name: &str) -> std::result::Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
        format!(
            "unknown time zone `{name}`\n\nhint: use an IANA name such as `America/New_York`, \
             `Europe/Berlin` or `UTC`"
        )
    })
}

/// `start` / `end`: a date, a local date-time, or one with an offset.
fn bound(
    d: &Spanned<toml::value::Datetime>,
    key: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<crate::schedule::Bound> {
    use crate::schedule::Bound;
    let v = d.get_ref();
    let bad = |why: &str| {
        anyhow!(
            "{}: `{key}` {why}\n\nhint: {key} = 2026-12-01 (a day) or {key} = 2026-12-01T09:00 \
             (a local time in each target's zone)",
            at(d.span())
        )
    };
    let date = v
        .date
        .map(|x| jiff::civil::Date::new(x.year as i16, x.month as i8, x.day as i8));
    let date = match date {
        Some(Ok(x)) => x,
        Some(Err(_)) => return Err(bad("is not a valid date")),
        None => return Err(bad("needs a date")),
    };
    let Some(t) = v.time else {
        return Ok(Bound::Date(date));
    };
    let time = jiff::civil::Time::new(t.hour as i8, t.minute as i8, t.second.unwrap_or(0) as i8, 0)
        .map_err(|_| bad("is not a valid time"))?;
    let local = date.to_datetime(time);
    Ok(match v.offset {
        None => Bound::Local(local),
        Some(_) => Bound::Instant(
            v.to_string()
                .parse::<jiff::Timestamp>()
                .map_err(|_| bad("is not a valid date-time"))?,
        ),
    })
}

/// `days = ["mon", …]`: at least one, each a day's name.
fn days(
    list: &Spanned<Vec<Spanned<String>>>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<[bool; 7]> {
    let mut days = [false; 7];
    for d in list.get_ref() {
        let name = d.get_ref().trim().to_lowercase();
        let Some(i) = crate::schedule::DAY_NAMES
            .iter()
            .position(|n| name.starts_with(n) && name.len() >= 3)
        else {
            bail!(
                "{}: unknown day `{}`\n\nhint: days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
                at(d.span()),
                d.get_ref()
            );
        };
        days[i] = true;
    }
    if !days.contains(&true) {
        bail!(
            "{}: `days` is empty: the window would never open\n\nhint: days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
            at(list.span())
        );
    }
    Ok(days)
}

/// `[schedule]`: typed, and checked to open some time.
pub(super) fn schedule_from_raw(
    raw: Spanned<RawSchedule>,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<crate::schedule::Schedule> {
    use crate::schedule::{Hours, Schedule};
    let section = at(raw.span());
    let raw = raw.into_inner();
    let timezone = match &raw.timezone {
        Some(tz) => time_zone(tz.get_ref()).map_err(|e| anyhow!("{}: {e}", at(tz.span())))?,
        None => jiff::tz::TimeZone::system(),
    };
    let start = raw.start.as_ref().map(|d| bound(d, "start", at)).transpose()?;
    let end = raw.end.as_ref().map(|d| bound(d, "end", at)).transpose()?;
    let hours = match &raw.hours {
        Some(h) => h
            .get_ref()
            .parse::<Hours>()
            .map_err(|e| anyhow!("{}: {e}", at(h.span())))?,
        None => Hours::ALL_DAY,
    };
    let days = raw.days.as_ref().map_or(Ok([true; 7]), |d| days(d, at))?;
    let per_target_hourly = match raw.per_target_hourly {
        Some(n) if *n.get_ref() == 0 => bail!(
            "{}: `per_target_hourly` must be at least 1 (leave it out for no hourly cap)",
            at(n.span())
        ),
        Some(n) => Some(n.into_inner()),
        None => None,
    };
    let jitter = match raw.jitter {
        Some(j) if !(0.0..=0.5).contains(j.get_ref()) => bail!(
            "{}: `jitter` must be between 0 and 0.5 (a share of the spacing between letters), not `{}`",
            at(j.span()),
            j.get_ref()
        ),
        Some(j) => j.into_inner(),
        None => 0.0,
    };
    let schedule = Schedule {
        start,
        end,
        hours,
        days,
        timezone,
        per_target_hourly,
        jitter,
    };
    let w = schedule.window(None, "");
    if let (Some(s), Some(e)) = (w.start(), w.end()) {
        let where_ = raw.end.as_ref().map_or_else(|| section.clone(), |e| at(e.span()));
        if e <= s {
            bail!(
                "{where_}: `end` ({}) comes before `start` ({})",
                schedule.end.map(|b| b.to_string()).unwrap_or_default(),
                schedule.start.map(|b| b.to_string()).unwrap_or_default()
            );
        }
        if w.open_between(s, e) == 0 {
            bail!(
                "{where_}: the window from `start` to `end` has no open hours ({} on {}): \
                 no letter could go\n\nhint: widen `hours` or `days`, or move `end`",
                schedule.hours,
                schedule.days_text()
            );
        }
    }
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{MINIMAL, parse};

    /// `MINIMAL` plus `extra`; the error and the line of `needle` in the text.
    fn schedule_error(extra: &str, needle: &str) -> (String, usize) {
        let text = format!("{MINIMAL}\n{extra}");
        let line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        (format!("{:#}", parse(&text).unwrap_err()), line)
    }

    #[test]
    fn schedule_parses_into_typed_values() {
        let c = parse(&format!(
            "{MINIMAL}\n[schedule]\nstart = 2026-12-01\nend = 2026-12-05T17:30\nhours = \"09:00-17:00\"\n\
             days = [\"mon\", \"Tuesday\", \"fri\"]\ntimezone = \"America/New_York\"\n\
             per_target_hourly = 60\njitter = 0.25\n"
        ))
        .unwrap();
        let s = c.schedule.unwrap();
        assert_eq!(s.start.unwrap().to_string(), "2026-12-01");
        assert_eq!(s.end.unwrap().to_string(), "2026-12-05 17:30");
        assert_eq!(s.hours.to_string(), "09:00-17:00");
        assert_eq!(s.days_text(), "mon, tue, fri");
        assert_eq!(s.timezone.iana_name(), Some("America/New_York"));
        assert_eq!((s.per_target_hourly, s.jitter), (Some(60), 0.25));
        assert!(parse(MINIMAL).unwrap().schedule.is_none());
    }

    #[test]
    fn schedule_errors_name_file_and_line() {
        let cases = [
            (
                "[schedule]\ntimezone = \"Mars/Olympus\"\n",
                "timezone =",
                "unknown time zone `Mars/Olympus`",
            ),
            (
                "[schedule]\nstart = 2026-12-05\nend = 2026-12-01\n",
                "end =",
                "`end` (2026-12-01) comes before `start` (2026-12-05)",
            ),
            (
                "[schedule]\nstart = 2026-12-05\nend = 2026-12-06\ndays = [\"mon\"]\n",
                "end =",
                "has no open hours (00:00-24:00 on mon)",
            ),
            (
                "[schedule]\nhours = \"9am-5pm\"\n",
                "hours =",
                "hours `9am-5pm` must look like `09:00-17:00`",
            ),
            ("[schedule]\nhours = \"17:00-09:00\"\n", "hours =", "open no time"),
            (
                "[schedule]\ndays = [\"mon\", \"someday\"]\n",
                "days =",
                "unknown day `someday`",
            ),
            ("[schedule]\ndays = []\n", "days =", "`days` is empty"),
            (
                "[schedule]\njitter = 0.9\n",
                "jitter =",
                "`jitter` must be between 0 and 0.5",
            ),
            (
                "[schedule]\nper_target_hourly = 0\n",
                "per_target_hourly",
                "at least 1",
            ),
            ("[schedule]\nhourly = 5\n", "hourly =", "unknown field `hourly`"),
        ];
        for (extra, needle, says) in cases {
            let (err, line) = schedule_error(extra, needle);
            assert!(
                err.starts_with(&format!("camp/mailer.toml:{line}")),
                "{extra}: {err}"
            );
            assert!(err.contains(says), "{extra}: {err}");
        }
    }
}
