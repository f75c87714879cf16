//! Letters that would go a second time: sent to a target the config no
//! longer names (a changed address), or recorded in another campaign's
//! ledger beside this one (a changed `[campaign] id`). Warnings for the dry
//! run and the confirmation.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::Result;

use crate::campaign::Campaign;
use crate::ledger::{self, Ledger};
use crate::report::thousands;

/// The warnings, each a message with its hint.
pub(crate) fn warnings(campaign: &Campaign, ledger: Option<&Ledger>) -> Result<Vec<String>> {
    let config = &campaign.config;
    let current: BTreeSet<String> = config.targets.iter().map(|t| t.key()).collect();
    let mut out = Vec::new();
    if let Some(ledger) = ledger {
        let gone: Vec<(String, u64)> = ledger
            .sent_per_target()?
            .into_iter()
            .filter(|(t, _)| !current.contains(t))
            .collect();
        if !gone.is_empty() {
            out.push(format!(
                "letters were already sent to {} no longer in the config: {}; if a target's address \
                 changed, every supporter writes to them again\n\nhint: put the old address back in \
                 [[targets]] to send nothing twice, or go on to write to the new address",
                if gone.len() == 1 { "a target" } else { "targets" },
                listing(&gone)
            ));
        }
    }
    for path in ledger::beside(&config.ledger_path) {
        let (id, sent) = match ledger::sent_elsewhere(&path) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                out.push(ledger::unreadable(
                    &e,
                    "whether its campaign already wrote to these targets is not checked",
                ));
                continue;
            }
        };
        let same: Vec<(String, u64)> = sent.into_iter().filter(|(t, _)| current.contains(t)).collect();
        if id == config.campaign.id || same.is_empty() {
            continue;
        }
        out.push(format!(
            "`{}` (campaign `{id}`) already sent letters to this campaign's targets: {}; this \
             campaign (`{}`) keeps its own ledger and would send them again\n\nhint: if it is the \
             same campaign, set [campaign] id back to `{id}`",
            crate::ui::printable(&path.display().to_string()),
            listing(&same),
            config.campaign.id
        ));
    }
    Ok(out)
}

/// `` `a@x.org` (1,200), `b@x.org` (3) ``
fn listing(per_target: &[(String, u64)]) -> String {
    let mut text = String::new();
    for (i, (target, n)) in per_target.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "`{}` ({})", crate::ui::printable(target), thousands(*n));
    }
    text
}
