//! `mailer check [--smtp]`: every problem in config, letter and rows, before
//! anything is sent; optionally a full SMTP handshake.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::campaign::{Campaign, Prepared, TemplateError};
use crate::exit::{Exit, Failure};
use crate::placeholder;
use crate::provider;
use crate::report::{
    self, SkippedRows,
    check::{CheckReport, CheckTotals, Password, RowProblem, SenderWarning, SmtpCheck, UnknownTarget},
};
use crate::roster::{Duplicate, Malformed, Skipped};
use crate::smtp::ConnectError;
use crate::targets::Unmatched;
use crate::ui::Ui;
use crate::uniformity::Meter;

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

/// Attachments heavier than this in total get a warning (10 MB).
const ATTACHMENTS_WARN_BYTES: usize = 10_000_000;

/// `check` flags, free of clap.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Also connect, negotiate TLS, authenticate and quit.
    pub(crate) smtp: bool,
    /// Rows `send` would skip are errors, not warnings.
    pub(crate) strict: bool,
}

/// Runs `mailer check`.
///
/// Exit 1 for what would stop `send` (config, letter, the supporters file
/// itself, a letter that cannot render); rows `send` would merely skip are
/// listed too but only fail the check with `--strict` (SPEC "Commands").
/// What was found before an error is still shown.
pub(crate) fn run(campaign: &Campaign, opts: Options, ui: &Ui) -> Result<Exit> {
    let mut found = CheckReport {
        file: campaign.config.supporters_file.display().to_string(),
        ..CheckReport::default()
    };
    let gathered = gather(campaign, opts, &mut found, ui);
    report::emit(&report::check::render(&found, ui.quiet), ui)?;
    gathered?;
    if opts.smtp {
        let checked = check_smtp(campaign, ui)?;
        report::emit(&report::check::smtp_line(&checked, ui), ui)?;
    }
    let totals = found.totals.unwrap_or_default();
    Ok(if totals.blocking > 0 || (opts.strict && totals.rows() > 0) {
        Exit::BadInput
    } else {
        Exit::Done
    })
}

/// Fills `found` section by section, in the order they are shown; an error
/// leaves the sections after it empty.
#[allow(clippy::too_many_lines)] // one pass over the rows, each kind counted in place
fn gather(campaign: &Campaign, opts: Options, found: &mut CheckReport, ui: &Ui) -> Result<()> {
    let Options { smtp, strict } = opts;
    let (mut supporters, mut letters, mut problems) = (0u64, 0u64, 0u64);
    // Problems that stop `send`, as opposed to rows it skips.
    let mut blocking = 0u64;
    let mut template_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut from = None;
    // Placeholders matter only where a real relay would deliver them.
    let mut placeholders = placeholder::real_relay(campaign).map(|_| placeholder::Scan::new(campaign));
    let routing_file = campaign
        .config
        .routing
        .as_ref()
        .map(|r| r.file.display().to_string());
    let mut meter = Meter::new(&campaign.config.targets, routing_file.as_deref());
    let mut unmatched = Unmatched::default();
    let mut languages: BTreeMap<String, u64> = BTreeMap::new();
    let mut skipped = SkippedRows::default();
    // Row problems are shown as they are found (in file order, before
    // anything else the report says), not kept: one per row adds up.
    let shown = |found: &mut CheckReport| -> Result<()> {
        if !found.rows.is_empty() {
            report::emit(&report::check::rows(&found.file, &found.rows), ui)?;
            found.rows.clear();
        }
        Ok(())
    };
    for prepared in campaign.prepared(false)? {
        shown(found)?;
        match prepared {
            Ok(Prepared::Letters {
                letters: built,
                supporter,
            }) => {
                if let Some(scan) = &mut placeholders {
                    scan.observe(&supporter, &built);
                }
                meter.add(&supporter, &built);
                supporters += 1;
                letters += built.len() as u64;
                if from.is_none() {
                    from = built.first().map(|(_, b)| b.from.clone());
                }
                if let Some(column) = campaign.letter.language_column() {
                    let l = supporter.get(column).unwrap_or("").trim().to_lowercase();
                    *languages.entry(l).or_insert(0) += 1;
                }
            }
            Ok(Prepared::Unmatched { label, .. }) => unmatched.add(label),
            Ok(Prepared::Skipped(Skipped { line, reason, .. })) => {
                problems += 1;
                skipped.invalid += 1;
                found.rows.push(RowProblem::Skipped { line, reason });
            }
            Ok(Prepared::Duplicate(Duplicate {
                line,
                email,
                first_line,
            })) => {
                problems += 1;
                skipped.duplicates += 1;
                found.rows.push(RowProblem::Duplicate {
                    line,
                    email,
                    first_line,
                });
            }
            Err(e) => match e.downcast::<TemplateError>() {
                Ok(TemplateError(msg)) => {
                    // List each distinct template error once (with its first row).
                    let key = msg
                        .split(" (rendering the letter for")
                        .next()
                        .unwrap_or(&msg)
                        .to_string();
                    let seen = template_errors.entry(key).or_insert(0);
                    if *seen == 0 {
                        found.rows.push(RowProblem::Letter(msg));
                    }
                    *seen += 1;
                    problems += 1;
                    blocking += 1;
                }
                Err(e) => match e.downcast::<Malformed>() {
                    // The file cannot be read past this line: list it with
                    // the rest, and stop reading rows.
                    Ok(Malformed { at, hint }) => {
                        problems += 1;
                        blocking += 1;
                        found.rows.push(RowProblem::Malformed { at, hint });
                        break;
                    }
                    Err(e) => return Err(e),
                },
            },
        }
    }
    shown(found)?;
    found.repeats = template_errors.into_iter().collect();
    problems += unmatched.total;
    skipped.unmatched = unmatched.total;
    // Only when the whole file was read: a file cut short says so itself.
    if blocking == 0 {
        found.every_row_skipped = skipped.every_row(&found.file, supporters);
        if found.every_row_skipped.is_some() {
            problems += 1;
            blocking += 1;
        }
    }
    shape(campaign, unmatched, &languages, found);
    if let Some(scan) = placeholders {
        found.placeholders = scan.finish();
        found.relay = placeholder::real_relay(campaign).map(str::to_owned);
        let n = found.placeholders.len() as u64;
        problems += n;
        blocking += n;
    }
    found.unwritten = crate::cmd::init::unwritten_letters(campaign)
        .iter()
        .map(ToString::to_string)
        .collect();
    let unwritten = found.unwritten.len() as u64;
    problems += unwritten;
    blocking += unwritten;
    if !smtp {
        found.password = password(campaign);
        if matches!(found.password, Some(Password::Failed { .. })) {
            problems += 1;
            blocking += 1;
        }
    }
    if let Some(from) = &from {
        found.sender = sender_warnings(campaign, from.domain());
        found.misaligned = crate::bounces::misaligned(&campaign.config, from.domain());
        if found.misaligned.is_some() {
            // A misaligned return path is the config's problem, not a row's.
            problems += 1;
            blocking += 1;
        }
    }
    found.unknown_targets = unknown_targets(campaign)?;
    found.totals = Some(CheckTotals {
        supporters,
        letters,
        targets: campaign.target_count() as u64,
        routed: campaign.is_routed(),
        problems,
        blocking,
        strict,
    });
    found.uniformity = meter.finish();
    Ok(())
}

/// The campaign's shape: supporters who match no target (rows `send`
/// skips), the languages found, heavy attachments.
fn shape(
    campaign: &Campaign,
    unmatched: Unmatched,
    languages: &BTreeMap<String, u64>,
    found: &mut CheckReport,
) {
    found.unmatched = unmatched;
    found.languages = languages.iter().map(|(l, n)| (l.clone(), *n)).collect();
    found.without_letter = languages
        .keys()
        .filter(|l| !l.is_empty() && !campaign.letter.has_language(l))
        .cloned()
        .collect();
    let attached: usize = campaign.attachments().iter().map(|a| a.bytes.len()).sum();
    found.heavy_attachments = (attached > ATTACHMENTS_WARN_BYTES).then_some(attached);
}

/// The SMTP password source, tried now (`check --smtp` tries it by
/// logging in). A command that fails stops `send`: a problem. A variable
/// that is not set is a warning: `send` asks for the password at a
/// terminal, but not under cron.
fn password(campaign: &Campaign) -> Option<Password> {
    let smtp = campaign.config.smtp.as_ref().filter(|s| s.username.is_some())?;
    let e = smtp.password.resolve().err()?;
    let why = format!("{e:#}");
    let why = why.split("\n\nhint:").next().unwrap_or(&why);
    let why = crate::ui::printable(why).into_owned();
    Some(if smtp.password.is_unset_env() {
        Password::Unset { why }
    } else {
        Password::Failed {
            config: campaign.config.path.display().to_string(),
            why,
        }
    })
}

/// The warnings `check` gives about the sender and the targets, for `send`'s
/// confirmation (`from_domain`: the first letter's From).
pub(crate) fn send_warnings(campaign: &Campaign, from_domain: &str, ui: &Ui) -> Result<()> {
    report::emit(
        &report::check::sender_lines(&sender_warnings(campaign, from_domain)),
        ui,
    )?;
    report::emit(
        &report::check::unknown_target_lines(&unknown_targets(campaign)?),
        ui,
    )?;
    Ok(())
}

/// DMARC alignment and DKIM advice (warnings, never errors).
fn sender_warnings(campaign: &Campaign, from_domain: &str) -> Vec<SenderWarning> {
    let mut warnings = Vec::new();
    let from_domain = from_domain.to_ascii_lowercase();
    let host = campaign.config.smtp.as_ref().map_or("", |s| s.host.as_str());
    let login_domain = campaign
        .config
        .smtp
        .as_ref()
        .and_then(|s| s.username.as_deref())
        .and_then(|u| u.rsplit_once('@'))
        .map(|(_, d)| d);
    // A volunteer sending as themselves through their provider's own server
    // is exactly what that provider's DMARC policy allows.
    let as_itself = provider::sends_as_itself(host, &from_domain, login_domain);
    if FREE_MAIL.contains(&from_domain.as_str()) && !as_itself {
        warnings.push(SenderWarning::FreeMail {
            from: from_domain.clone(),
        });
    }
    if let Some(user_domain) = login_domain.map(str::to_ascii_lowercase)
        && user_domain != from_domain
    {
        warnings.push(SenderWarning::LoginDomain {
            from: from_domain.clone(),
            login: user_domain,
        });
    }
    match &campaign.config.dkim {
        // Gmail, Outlook, Fastmail… sign every letter they take.
        None if provider::always_signs(host) => {}
        None => warnings.push(SenderWarning::NoDkim { from: from_domain }),
        Some(d)
            if d.domain.to_ascii_lowercase() != from_domain
                && !from_domain.ends_with(&format!(".{}", d.domain.to_ascii_lowercase())) =>
        {
            warnings.push(SenderWarning::DkimMisaligned {
                dkim: d.domain.clone(),
                from: from_domain,
            });
        }
        Some(_) => {}
    }
    warnings
}

/// Each target whose letters bounced as an unknown address (5.1.x).
fn unknown_targets(campaign: &Campaign) -> Result<Vec<UnknownTarget>> {
    let config = &campaign.config;
    let Some(ledger) = crate::ledger::Ledger::open_existing(&config.ledger_path, &config.campaign.id)? else {
        return Ok(Vec::new());
    };
    let mut by_target: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for b in ledger.bounces()? {
        if b.permanent && b.status.starts_with("5.1.") {
            let e = by_target.entry(b.target).or_insert((0, b.diagnostic));
            e.0 += 1;
        }
    }
    Ok(by_target
        .into_iter()
        .map(|(target, (letters, diagnostic))| UnknownTarget {
            target,
            letters,
            diagnostic,
        })
        .collect())
}

/// `check --smtp`: connect, TLS, AUTH, QUIT; says which step failed.
fn check_smtp(campaign: &Campaign, ui: &Ui) -> Result<SmtpCheck> {
    let smtp = campaign.config.smtp()?;
    // At a terminal with no password set, asked for now (not stored).
    let connector = super::connector_asking(smtp, ui)?;
    match connector.connect() {
        Ok(conn) => {
            let checked = SmtpCheck {
                relay: connector.describe(),
                tls: conn.is_tls(),
                user: smtp.username.clone(),
                pipelining: conn.pipelining(),
            };
            conn.quit();
            Ok(checked)
        }
        Err(ConnectError::Unreachable(m) | ConnectError::TimedOut(m)) => {
            Err(Failure::error(Exit::TryLater, format!("SMTP check failed: {m}")))
        }
        Err(ConnectError::Refused(m)) => {
            Err(Failure::error(Exit::BadInput, format!("SMTP check failed: {m}")))
        }
    }
}
