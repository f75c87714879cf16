//! `mailer check [--smtp]`: every problem in config, letter and rows, before
//! anything is sent; optionally a full SMTP handshake.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::campaign::{Campaign, Prepared, TemplateError};
use crate::exit::{Exit, Failure};
use crate::report::{out, thousands};
use crate::roster::{Duplicate, Malformed, Skipped};
use crate::smtp::{ConnectError, Connector};
use crate::ui::Ui;

/// Free-mail domains whose DMARC policy rejects mail "from" them sent elsewhere.
const FREE_MAIL: [&str; 14] = [
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "ymail.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
];

/// Runs `mailer check`.
pub(crate) fn run(campaign: &Campaign, smtp: bool, ui: &Ui) -> Result<Exit> {
    let file = campaign.config.supporters_file.display().to_string();
    let (mut supporters, mut letters, mut problems) = (0u64, 0u64, 0u64);
    let mut template_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut from = None;
    for prepared in campaign.prepared(false)? {
        match prepared {
            Ok(Prepared::Letters { letters: built, .. }) => {
                supporters += 1;
                letters += built.len() as u64;
                if from.is_none() {
                    from = built.first().map(|b| b.from.clone());
                }
            }
            Ok(Prepared::Skipped(Skipped { line, reason, .. })) => {
                problems += 1;
                out(&format!("{file}:{line}: {reason}\n"))?;
            }
            Ok(Prepared::Duplicate(Duplicate {
                line,
                email,
                first_line,
            })) => {
                problems += 1;
                out(&format!(
                    "{file}:{line}: `{email}` repeats line {first_line}; only the first row counts\n"
                ))?;
            }
            Err(e) => match e.downcast::<TemplateError>() {
                Ok(TemplateError(msg)) => {
                    // Print each distinct template error once (with its first row).
                    let key = msg
                        .split(" (rendering the letter for")
                        .next()
                        .unwrap_or(&msg)
                        .to_string();
                    let seen = template_errors.entry(key).or_insert(0);
                    if *seen == 0 {
                        out(&format!("{msg}\n"))?;
                    }
                    *seen += 1;
                    problems += 1;
                }
                Err(e) => match e.downcast::<Malformed>() {
                    // The file cannot be read past this line: list it with
                    // the rest, and stop reading rows.
                    Ok(Malformed { at, hint }) => {
                        problems += 1;
                        out(&format!("{at}\n"))?;
                        ui.hint(hint);
                        break;
                    }
                    Err(e) => return Err(e),
                },
            },
        }
    }
    for (msg, n) in &template_errors {
        if *n > 1 {
            ui.note(&format!(
                "(the same letter error repeats for {} more rows: {})",
                n - 1,
                short(msg)
            ));
        }
    }
    if let Some(from) = &from {
        sender_warnings(campaign, from.domain(), ui);
        if let Some(problem) = return_path_problem(campaign, from.domain()) {
            problems += 1;
            out(&format!("{problem}\n"))?;
        }
    }
    unknown_target_warnings(campaign, ui)?;
    let targets = campaign.target_count();
    let s = |n: u64| if n == 1 { "" } else { "s" };
    let summary = format!(
        "{} supporter{} × {targets} target{} = {} letter{} ready; {} problem{}",
        thousands(supporters),
        s(supporters),
        s(targets as u64),
        thousands(letters),
        s(letters),
        thousands(problems),
        s(problems),
    );
    if !ui.quiet {
        out(&format!("{summary}\n"))?;
    }
    if smtp {
        check_smtp(campaign, ui)?;
    }
    Ok(if problems == 0 { Exit::Done } else { Exit::BadInput })
}

/// The gist of a template error: without its location and the list of
/// available fields.
fn short(msg: &str) -> &str {
    let body = msg.split_once(": ").map_or(msg, |(_, rest)| rest);
    let body = body.split(". Available").next().unwrap_or(body);
    body.lines().next().unwrap_or(body)
}

/// DMARC alignment and DKIM advice (warnings, never errors).
fn sender_warnings(campaign: &Campaign, from_domain: &str, ui: &Ui) {
    let from_domain = from_domain.to_ascii_lowercase();
    if FREE_MAIL.contains(&from_domain.as_str()) {
        ui.warn(&format!(
            "From uses `{from_domain}`, a free-mail domain: its DMARC policy makes receivers reject mail \
             from it sent through other servers\n\nhint: send From an address on your organization's own \
             domain, with the supporter's name as display name and Reply-To the supporter"
        ));
    }
    if let Some(user_domain) = campaign
        .config
        .smtp
        .as_ref()
        .and_then(|s| s.username.as_deref())
        .and_then(|u| u.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase())
        && user_domain != from_domain
    {
        ui.warn(&format!(
            "From's domain `{from_domain}` differs from the SMTP login's `{user_domain}`: DMARC passes only \
             when SPF or DKIM aligns with From's domain, so check your relay may send for `{from_domain}`"
        ));
    }
    match &campaign.config.dkim {
        None => ui.warn(&format!(
            "no [dkim] section: letters are not signed by mailer\n\nhint: fine if your relay DKIM-signs for \
             `{from_domain}`; otherwise add [dkim] (see config.example.toml)"
        )),
        Some(d)
            if d.domain.to_ascii_lowercase() != from_domain
                && !from_domain.ends_with(&format!(".{}", d.domain.to_ascii_lowercase())) =>
        {
            ui.warn(&format!(
                "DKIM signs as `{}` but From is `{from_domain}`: the signature will not align for DMARC",
                d.domain
            ));
        }
        Some(_) => {}
    }
}

/// `[bounces] return_path` must share From's domain (or be a subdomain of
/// it, or the reverse): DMARC's SPF alignment compares the two.
fn return_path_problem(campaign: &Campaign, from_domain: &str) -> Option<String> {
    let bounces = campaign.config.bounces.as_ref()?;
    let rp = bounces.return_path.as_ref()?;
    let (from, verp) = (from_domain.to_ascii_lowercase(), rp.domain().to_ascii_lowercase());
    let aligned = from == verp || from.ends_with(&format!(".{verp}")) || verp.ends_with(&format!(".{from}"));
    (!aligned).then(|| {
        format!(
            "{}: [bounces] return_path is in `{verp}`, From in `{from}`: receivers check SPF for the \
             return path's domain, and DMARC passes on SPF only when that domain aligns with From's\n\n\
             hint: return_path = \"bounces+{{token}}@{from}\"",
            bounces.at
        )
    })
}

/// Names each target whose letters bounced as an unknown address (5.1.x).
fn unknown_target_warnings(campaign: &Campaign, ui: &Ui) -> Result<()> {
    let config = &campaign.config;
    let Some(ledger) = crate::ledger::Ledger::open_existing(&config.ledger_path, &config.campaign.id)? else {
        return Ok(());
    };
    let mut by_target: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for b in ledger.bounces()? {
        if b.permanent && b.status.starts_with("5.1.") {
            let e = by_target.entry(b.target).or_insert((0, b.diagnostic));
            e.0 += 1;
        }
    }
    for (target, (n, diagnostic)) in by_target {
        ui.warn(&format!(
            "target `{target}`: {n} letter{} bounced as an unknown address ({diagnostic})\n\n\
             hint: check the address in [[targets]]; letters already sent to it are not resent",
            if n == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

/// `check --smtp`: connect, TLS, AUTH, QUIT; says which step failed.
fn check_smtp(campaign: &Campaign, ui: &Ui) -> Result<()> {
    let smtp = campaign.config.smtp()?;
    let connector = Connector::new(smtp)?;
    match connector.connect() {
        Ok(conn) => {
            let tls = if conn.is_tls() { "TLS verified" } else { "no TLS" };
            let auth = smtp
                .username
                .as_deref()
                .map_or("no AUTH".to_string(), |u| format!("authenticated as {u}"));
            let pipe = if conn.pipelining() { ", PIPELINING" } else { "" };
            conn.quit();
            if !ui.quiet {
                out(&format!(
                    "SMTP {}: {} — connected, {tls}, {auth}{pipe}\n",
                    connector.describe(),
                    ui.ok("ok")
                ))?;
            }
            Ok(())
        }
        Err(ConnectError::Unreachable(m) | ConnectError::TimedOut(m)) => {
            Err(Failure::error(Exit::TryLater, format!("SMTP check failed: {m}")))
        }
        Err(ConnectError::Refused(m)) => {
            Err(Failure::error(Exit::BadInput, format!("SMTP check failed: {m}")))
        }
    }
}
