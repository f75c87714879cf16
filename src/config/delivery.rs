//! `[delivery]`: how fast and how much to send: rate, daily and per-run
//! limits, concurrent connections and retries.
//!
//! Only the numbers live here; `throttle.rs` paces by them and `delivery/`
//! spends them.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// `[delivery]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Spacing between letters (absent = as fast as allowed).
    pub(crate) rate: Option<Rate>,
    /// Letters per rolling 24 h, counted from the ledger.
    pub(crate) daily_limit: Option<u64>,
    /// Letters per run (`send --limit` overrides).
    pub(crate) max_per_run: Option<u64>,
    /// SMTP connections at once (default 1).
    pub(crate) concurrency: usize,
    /// Immediate retries of a transient failure within a run (default 3).
    pub(crate) retries: u32,
}

/// A sending rate such as `30/minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Letters per `per`.
    pub(crate) count: u32,
    /// The period.
    pub(crate) per: Duration,
}

impl Rate {
    /// The spacing between two letters.
    #[must_use]
    pub(crate) fn interval(self) -> Duration {
        self.per / self.count
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate `{s}`: expected N/second, N/minute, N/hour or N/day");
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate `{s}`: N must be at least 1"));
        }
        let secs = match unit.trim() {
            "second" | "sec" | "s" => 1,
            "minute" | "min" | "m" => 60,
            "hour" | "h" => 3600,
            "day" | "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    rate: Option<Rate>,
    daily_limit: Option<u64>,
    max_per_run: Option<u64>,
    #[serde(default = "default_concurrency")]
    concurrency: Spanned<usize>,
    #[serde(default = "default_retries")]
    retries: u32,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            rate: None,
            daily_limit: None,
            max_per_run: None,
            concurrency: default_concurrency(),
            retries: default_retries(),
        }
    }
}

fn default_concurrency() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}

fn default_retries() -> u32 {
    3
}

/// `[delivery]`, validated: between 1 and 64 connections.
pub(super) fn delivery_from_raw(
    d: RawDelivery,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Delivery> {
    if *d.concurrency.get_ref() == 0 || *d.concurrency.get_ref() > 64 {
        bail!(
            "{}: concurrency must be between 1 and 64",
            at(d.concurrency.span())
        );
    }
    Ok(Delivery {
        rate: d.rate,
        daily_limit: d.daily_limit,
        max_per_run: d.max_per_run,
        concurrency: d.concurrency.into_inner(),
        retries: d.retries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{MINIMAL, parse};

    #[test]
    fn rates_parse() {
        assert_eq!(
            "30/minute".parse::<Rate>().unwrap().interval(),
            Duration::from_secs(2)
        );
        assert_eq!(
            "10/second".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(100)
        );
        assert!("0/minute".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        let text = format!("{MINIMAL}\n[delivery]\nrate = \"5/fortnight\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("camp/mailer.toml:18:8: invalid rate `5/fortnight`"),
            "{err}"
        );
    }
}
