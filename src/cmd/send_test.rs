//! `mailer send --test EMAIL`: the campaign's real letters, to one inbox.
//!
//! One letter for each distinct (target, letter file, language, subject
//! variant), at most `--limit` (default 10), addressed to EMAIL alone with
//! `[TEST] ` before the subject and no Cc or Bcc, through the configured
//! relay (TLS, AUTH, DKIM) on one connection. Never touches the ledger, so
//! `daily_limit` and the campaign's letters stay as they were.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use lettre::Address;

use crate::campaign::{Campaign, Prepared};
use crate::config::Target;
use crate::exit::{Exit, Failure};
use crate::message::Built;
use crate::placeholder;
use crate::report::out;
use crate::roster::Supporter;
use crate::smtp::{Attempt, ConnectError, Session as _};
use crate::ui::Ui;

/// Test letters sent when `--limit` is not given.
pub(crate) const DEFAULT_LIMIT: u64 = 10;

/// A combination worth a test letter: (target, letter file, language, subject variant).
type Combination = (String, Arc<str>, Arc<str>, u32);

/// Runs `mailer send --test EMAIL [--limit N]`.
pub(crate) fn run(campaign: &Campaign, to: &str, limit: Option<u64>, ui: &Ui) -> Result<Exit> {
    let to: Address = crate::roster::validate_email(to.trim())
        .map_err(|why| Failure::error(Exit::Usage, format!("--test: {why}")))?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let smtp = campaign.config.smtp()?;
    let picked = pick(campaign, limit)?;
    if picked.is_empty() {
        ui.note("No letter to test: no supporter has a letter.");
        return Ok(Exit::Done);
    }
    let file = campaign.config.supporters_file.display().to_string();
    let mut letters = Vec::with_capacity(picked.len());
    for (supporter, target) in &picked {
        let built = campaign
            .test_letter(supporter, target, &to, &file)?
            .map_err(|why| anyhow!("{file}:{}: {why}", supporter.line))?;
        letters.push(built);
    }
    if let Some(host) = placeholder::real_relay(campaign) {
        for built in &letters {
            for (name, value) in &built.summary {
                if matches!(*name, "From" | "Reply-To")
                    && let Some(domain) = placeholder::reserved_domain(value.trim_end_matches('>'))
                {
                    return Err(Failure::error(
                        Exit::BadInput,
                        format!(
                            "not sending through `{host}`: the test letter's {name} `{value}` is in the \
                             reserved domain `{domain}`\n\nhint: put a real address in [sender]"
                        ),
                    ));
                }
            }
        }
    }
    // At a terminal with no password set, asked for now (not stored).
    let connector = super::connector_asking(smtp, ui)?;
    let mut conn = connector.connect().map_err(|e| match e {
        ConnectError::Unreachable(m) | ConnectError::TimedOut(m) => Failure::error(Exit::TryLater, m),
        ConnectError::Refused(m) => Failure::error(Exit::BadInput, m),
    })?;
    let mut failed = 0u64;
    let total = letters.len();
    for (i, ((supporter, target), built)) in picked.iter().zip(&letters).enumerate() {
        let what = describe(target, built);
        let how = match conn.send(built, &mut || Ok(None))? {
            Attempt::Sent { reply, .. } => format!("accepted: {reply}"),
            Attempt::Failed { reply, .. } => {
                failed += 1;
                format!("refused: {reply}")
            }
            Attempt::Deferred { end, .. } => {
                failed += 1;
                format!("not taken now: {end}")
            }
            Attempt::Unknown(why) => {
                failed += 1;
                format!("connection lost: {why}")
            }
        };
        out(&format!(
            "test {}/{total}: {what} (from {file}:{}) → {to}: {how}\n",
            i + 1,
            supporter.line
        ))?;
        if !conn.is_ready() && i + 1 < total {
            conn = connector
                .connect()
                .map_err(|e| Failure::error(Exit::TryLater, e.to_string()))?;
        }
    }
    conn.quit();
    ui.hint(&format!(
        "open the letters in `{to}` and use \"show original\" to see the SPF, DKIM and DMARC results; \
         the ledger is unchanged"
    ));
    Ok(if failed > 0 { Exit::Partial } else { Exit::Done })
}

/// The first supporter (in file order) of each combination, at most `limit`.
fn pick(campaign: &Campaign, limit: u64) -> Result<Vec<(Supporter, Arc<Target>)>> {
    let mut seen: HashSet<Combination> = HashSet::new();
    let mut picked = Vec::new();
    for prepared in campaign.prepared(false)? {
        if picked.len() as u64 >= limit {
            break;
        }
        let Prepared::Letters { supporter, letters } = prepared? else {
            continue;
        };
        for (target, built) in letters {
            if picked.len() as u64 >= limit {
                break;
            }
            let v = &built.variant;
            let combination = (
                target.key(),
                Arc::clone(&v.letter_file),
                Arc::clone(&v.language),
                v.subject,
            );
            if seen.insert(combination) {
                picked.push((supporter.clone(), target));
            }
        }
    }
    Ok(picked)
}

/// `to Satya Nadella <ceo@…> · letters/letter.es.md (es) · subject 2`.
fn describe(target: &Target, built: &Built) -> String {
    let v = &built.variant;
    let language = if v.language.is_empty() {
        String::new()
    } else {
        format!(" ({})", v.language)
    };
    let subject = if v.subject == 0 {
        "its own subject".to_string()
    } else {
        format!("subject {}", v.subject)
    };
    format!(
        "to {} · {}{language} · {subject}",
        target.mailbox(),
        v.letter_file
    )
}
