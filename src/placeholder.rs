//! Placeholder addresses: domains reserved for examples and tests
//! (`.example`, `.test`, `.invalid`, `.localhost`, and `example.com`/`.net`/
//! `.org`), which a real relay must never be asked to deliver.
//!
//! `check` lists each placeholder; `send` refuses to start on a relay that
//! is not loopback while any letter would carry one (SPEC "Commands").

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;

use crate::campaign::{Campaign, Prepared};
use crate::config::{Target, is_loopback};
use crate::message::Built;
use crate::roster::Supporter;

/// Top-level domains reserved by RFC 2606 / RFC 6761.
const RESERVED_TLDS: [&str; 4] = ["example", "test", "invalid", "localhost"];
/// Second-level domains reserved for documentation (RFC 2606).
const RESERVED_DOMAINS: [&str; 3] = ["example.com", "example.net", "example.org"];

/// The reserved domain `address` is in, if any (`.example`, `example.com` …).
#[must_use]
pub(crate) fn reserved_domain(address: &str) -> Option<String> {
    let domain = address.rsplit_once('@').map_or(address, |(_, d)| d);
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let tld = domain.rsplit('.').next().unwrap_or(&domain);
    if RESERVED_TLDS.contains(&tld) {
        return Some(format!(".{tld}"));
    }
    RESERVED_DOMAINS
        .iter()
        .find(|d| domain == **d || domain.ends_with(&format!(".{d}")))
        .map(|d| (*d).to_string())
}

/// The `[smtp].host` when it is a real relay (not loopback).
#[must_use]
pub(crate) fn real_relay(campaign: &Campaign) -> Option<&str> {
    campaign
        .config
        .smtp
        .as_ref()
        .map(|s| s.host.as_str())
        .filter(|h| !is_loopback(h))
}

/// One placeholder address, where it first shows up and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// `From`, `Reply-To` or `target`.
    pub(crate) field: &'static str,
    /// The address.
    pub(crate) address: String,
    /// The reserved domain it is in.
    pub(crate) domain: String,
    /// `FILE` (the config) or `FILE:LINE` (a supporter's row).
    pub(crate) at: String,
    /// Letters that carry it.
    pub(crate) letters: u64,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} `{}` is a placeholder address (`{}` is a reserved domain: nothing sent there arrives)",
            self.at, self.field, self.address, self.domain
        )?;
        if self.letters > 1 {
            write!(f, " — in {} letters", crate::report::thousands(self.letters))?;
        }
        Ok(())
    }
}

/// The address inside `Name <addr>`, or the whole text.
fn address_of(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(a), Some(b)) if a < b => &mailbox[a + 1..b],
        _ => mailbox.trim(),
    }
}

/// Collects placeholder addresses letter by letter, so `check` finds them
/// in the pass it already makes.
pub(crate) struct Scan {
    config_file: String,
    csv: String,
    /// `[routing] targets`, where a routed target's address comes from.
    routing_file: Option<String>,
    /// (field, lower-cased address) → (order first seen, finding).
    found: BTreeMap<(&'static str, String), (usize, Found)>,
}

impl Scan {
    /// An empty scan for this campaign.
    #[must_use]
    pub(crate) fn new(campaign: &Campaign) -> Scan {
        Scan {
            config_file: campaign.config.path.display().to_string(),
            csv: campaign.config.supporters_file.display().to_string(),
            routing_file: campaign
                .config
                .routing
                .as_ref()
                .map(|r| r.file.display().to_string()),
            found: BTreeMap::new(),
        }
    }

    /// Looks at one supporter's letters.
    pub(crate) fn observe(&mut self, supporter: &Supporter, letters: &[(Arc<Target>, Built)]) {
        for (target, built) in letters {
            for (name, value) in &built.summary {
                let field = match *name {
                    "From" => "From",
                    "Reply-To" => "Reply-To",
                    "To" => "target",
                    _ => continue,
                };
                let address = address_of(value);
                let Some(domain) = reserved_domain(address) else {
                    continue;
                };
                let next = self.found.len();
                let entry = self
                    .found
                    .entry((field, address.to_ascii_lowercase()))
                    .or_insert_with(|| {
                        // A supporter's own address comes from their row; the rest from the config.
                        let at = if address.eq_ignore_ascii_case(&supporter.key) {
                            format!("{}:{}", self.csv, supporter.line)
                        } else if let (Some(file), Some(line), "target") =
                            (&self.routing_file, target.routed, field)
                        {
                            format!("{file}:{line}")
                        } else {
                            self.config_file.clone()
                        };
                        let found = Found {
                            field,
                            address: address.to_string(),
                            domain,
                            at,
                            letters: 0,
                        };
                        (next, found)
                    });
                entry.1.letters += 1;
            }
        }
    }

    /// Every placeholder, in the order first seen.
    #[must_use]
    pub(crate) fn finish(self) -> Vec<Found> {
        let mut list: Vec<(usize, Found)> = self.found.into_values().collect();
        list.sort_by_key(|(i, _)| *i);
        list.into_iter().map(|(_, f)| f).collect()
    }
}

/// Every placeholder address the campaign's letters would carry, in the
/// order first seen. Rows that cannot be built are `check`'s business.
pub(crate) fn find(campaign: &Campaign) -> Result<Vec<Found>> {
    let mut scan = Scan::new(campaign);
    for prepared in campaign.prepared(false)? {
        if let Ok(Prepared::Letters { supporter, letters }) = prepared {
            scan.observe(&supporter, &letters);
        }
    }
    Ok(scan.finish())
}

/// `send`'s gate: on a real relay, no letter may carry a placeholder.
pub(crate) fn refuse_on_real_relay(campaign: &Campaign) -> Result<()> {
    let Some(host) = real_relay(campaign) else {
        return Ok(());
    };
    let found = find(campaign)?;
    if found.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = found
        .iter()
        .take(5)
        .map(|f| format!("{} `{}`", f.field, f.address))
        .collect();
    let more = found.len().saturating_sub(5);
    anyhow::bail!(
        "not sending through `{host}`: the letters carry placeholder addresses ({}{}), \
         and a real relay would deliver them nowhere\n\n\
         hint: put real addresses in `{}` and the supporters file; `mailer check` lists each one \
         (`mailer send --dry-run` still works)",
        list.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        campaign.config.path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_domains_are_found_and_real_ones_are_not() {
        for (addr, domain) in [
            ("letters@org.example", ".example"),
            ("a@b.TEST", ".test"),
            ("x@nowhere.invalid", ".invalid"),
            ("me@localhost", ".localhost"),
            ("me@app.localhost.", ".localhost"),
            ("jane@example.com", "example.com"),
            ("jane@mail.example.org", "example.org"),
        ] {
            assert_eq!(reserved_domain(addr).as_deref(), Some(domain), "{addr}");
        }
        for addr in [
            "satya@microsoft.com",
            "a@examples.com",
            "a@myexample.org",
            "a@testing.org",
            "a@example.co",
        ] {
            assert_eq!(reserved_domain(addr), None, "{addr}");
        }
    }

    #[test]
    fn the_address_is_taken_from_a_mailbox() {
        assert_eq!(
            address_of("Ana via Org <letters@org.example>"),
            "letters@org.example"
        );
        assert_eq!(address_of("\"A <b>\" <c@d.example>"), "c@d.example");
        assert_eq!(address_of(" ceo@corp.example "), "ceo@corp.example");
    }
}
