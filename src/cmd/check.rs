//! `mailer check [--smtp]`: every problem in config, letter and rows, before
//! anything is sent; optionally a full SMTP handshake.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;

use crate::campaign::{Campaign, Prepared, TemplateError};
use crate::exit::{Exit, Failure};
use crate::placeholder;
use crate::provider;
use crate::report::{out, thousands};
use crate::roster::{Duplicate, Malformed, Skipped};
use crate::smtp::ConnectError;
use crate::targets::Unmatched;
use crate::ui::Ui;
use crate::uniformity::{Meter, Uniformity};

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
#[allow(clippy::too_many_lines)] // one pass over the rows, each kind counted in place
pub(crate) fn run(campaign: &Campaign, opts: Options, ui: &Ui) -> Result<Exit> {
    let Options { smtp, strict } = opts;
    let file = campaign.config.supporters_file.display().to_string();
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
    for prepared in campaign.prepared(false)? {
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
                    blocking += 1;
                }
                Err(e) => match e.downcast::<Malformed>() {
                    // The file cannot be read past this line: list it with
                    // the rest, and stop reading rows.
                    Ok(Malformed { at, hint }) => {
                        problems += 1;
                        blocking += 1;
                        out(&format!("{at}\n"))?;
                        ui.hint(hint);
                        break;
                    }
                    Err(e) => return Err(e),
                },
            },
        }
    }
    note_repeats(&template_errors, ui);
    problems += shape_lines(campaign, &unmatched, &languages, ui)?;
    if let Some(scan) = placeholders {
        let n = report_placeholders(campaign, scan, ui)?;
        problems += n;
        blocking += n;
    }
    let unwritten = report_unwritten(campaign)?;
    problems += unwritten;
    blocking += unwritten;
    if !smtp && report_password(campaign, ui)? {
        problems += 1;
        blocking += 1;
    }
    if let Some(from) = &from {
        sender_warnings(campaign, from.domain(), ui);
        if let Some(problem) = crate::bounces::misaligned(&campaign.config, from.domain()) {
            // A misaligned return path is the config's problem, not a row's.
            problems += 1;
            blocking += 1;
            out(&format!("{problem}\n"))?;
        }
    }
    unknown_target_warnings(campaign, ui)?;
    print_summary(campaign, [supporters, letters, problems], ui)?;
    let rows = problems - blocking;
    if rows > 0 && blocking == 0 && !strict {
        skip_hint(rows, ui);
    }
    uniformity_lines(meter, ui)?;
    if smtp {
        check_smtp(campaign, ui)?;
    }
    Ok(if blocking > 0 || (strict && rows > 0) {
        Exit::BadInput
    } else {
        Exit::Done
    })
}

/// Lists each letter file that is still `mailer init`'s skeleton (nobody
/// wrote the letter yet); returns how many.
fn report_unwritten(campaign: &Campaign) -> Result<u64> {
    let found = crate::cmd::init::unwritten_letters(campaign);
    for at in &found {
        out(&format!(
            "{at}: the letter still says \"{}\": write your letter there first\n",
            crate::cmd::init::UNWRITTEN
        ))?;
    }
    Ok(found.len() as u64)
}

/// The SMTP password source, tried now (`check --smtp` tries it by
/// logging in). A command that fails stops `send`: a problem (true). A
/// variable that is not set is a warning: `send` asks for the password at
/// a terminal, but not under cron.
fn report_password(campaign: &Campaign, ui: &Ui) -> Result<bool> {
    let Some(smtp) = campaign.config.smtp.as_ref().filter(|s| s.username.is_some()) else {
        return Ok(false);
    };
    let Err(e) = smtp.password.resolve() else {
        return Ok(false);
    };
    let why = format!("{e:#}");
    let why = why.split("\n\nhint:").next().unwrap_or(&why);
    let why = crate::ui::printable(why);
    if smtp.password.is_unset_env() {
        ui.warn(&format!(
            "the SMTP password: {why}\n\nhint: `mailer send` at a terminal asks for it (not stored); \
             for cron, set the variable in the job's environment or `password_command` in [smtp]"
        ));
        return Ok(false);
    }
    let config = campaign.config.path.display();
    out(&format!("{config}: [smtp] password: {why}\n"))?;
    Ok(true)
}

/// Rows that only `send` would skip: what happens to them, and `--strict`.
fn skip_hint(rows: u64, ui: &Ui) {
    ui.hint(&format!(
        "`mailer send` skips {} and sends the rest; `mailer check --strict` treats skipped rows as errors",
        if rows == 1 { "that row" } else { "those rows" }
    ));
}

/// The campaign's shape: supporters who match no target (returns how
/// many: rows `send` skips), the languages found, heavy attachments.
fn shape_lines(
    campaign: &Campaign,
    unmatched: &Unmatched,
    languages: &BTreeMap<String, u64>,
    ui: &Ui,
) -> Result<u64> {
    if unmatched.total > 0 {
        out(&format!("{unmatched}\n"))?;
    }
    language_lines(campaign, languages, ui)?;
    let attached: usize = campaign.attachments().iter().map(|a| a.bytes.len()).sum();
    if attached > ATTACHMENTS_WARN_BYTES {
        ui.warn(&format!(
            "the attachments ([campaign] attachments) weigh {:.1} MB together, more than 10 MB: many \
             mail servers refuse large messages, and every letter carries them\n\nhint: link to the \
             file instead, or make it smaller",
            attached as f64 / 1_000_000.0
        ));
    }
    Ok(unmatched.total)
}

/// `languages: es 120, en 3,400, fr 7 (no letter of its own: fr)`.
fn language_lines(campaign: &Campaign, languages: &BTreeMap<String, u64>, ui: &Ui) -> Result<()> {
    if languages.is_empty() || ui.quiet {
        return Ok(());
    }
    let list: Vec<String> = languages
        .iter()
        .map(|(l, n)| {
            let l = if l.is_empty() { "(empty)" } else { l.as_str() };
            format!("{l} {}", thousands(*n))
        })
        .collect();
    let missing: Vec<&str> = languages
        .keys()
        .filter(|l| !l.is_empty() && !campaign.letter.has_language(l))
        .map(String::as_str)
        .collect();
    let mut line = format!("languages: {}", list.join(", "));
    if !missing.is_empty() {
        let _ = write!(
            line,
            "; without a letter of their own (they get the default letter): {}",
            missing.join(", ")
        );
    }
    out(&format!("{line}\n"))?;
    Ok(())
}

/// Says how often each letter error (printed once, with its first row) repeats.
fn note_repeats(template_errors: &BTreeMap<String, u64>, ui: &Ui) {
    for (msg, n) in template_errors {
        if *n > 1 {
            ui.note(&format!(
                "(the same letter error repeats for {} more row{}: {})",
                thousands(n - 1),
                if *n == 2 { "" } else { "s" },
                short(msg)
            ));
        }
    }
}

/// `N supporters × T targets = L letters ready; P problems` (hidden by `-q`).
fn print_summary(campaign: &Campaign, [supporters, letters, problems]: [u64; 3], ui: &Ui) -> Result<()> {
    let targets = campaign.target_count();
    let s = |n: u64| if n == 1 { "" } else { "s" };
    if !ui.quiet && campaign.is_routed() {
        // Each supporter writes to their own targets: no product to show.
        out(&format!(
            "{} supporter{} → {} letter{} to {} target{} ready; {} problem{}\n",
            thousands(supporters),
            s(supporters),
            thousands(letters),
            s(letters),
            thousands(targets as u64),
            s(targets as u64),
            thousands(problems),
            s(problems),
        ))?;
    } else if !ui.quiet {
        out(&format!(
            "{} supporter{} × {targets} target{} = {} letter{} ready; {} problem{}\n",
            thousands(supporters),
            s(supporters),
            s(targets as u64),
            thousands(letters),
            s(letters),
            thousands(problems),
            s(problems),
        ))?;
    }
    Ok(())
}

/// Lists each placeholder address a real relay would get; returns how many.
fn report_placeholders(campaign: &Campaign, scan: placeholder::Scan, ui: &Ui) -> Result<u64> {
    let found = scan.finish();
    for f in &found {
        out(&format!("{f}\n"))?;
    }
    if let (false, Some(host)) = (found.is_empty(), placeholder::real_relay(campaign)) {
        ui.hint(&format!(
            "`mailer send` refuses to give `{host}` a letter with a placeholder address: \
             put real ones in their place"
        ));
    }
    Ok(found.len() as u64)
}

/// One `uniformity:` line per target (stdout), with a hint when high.
fn uniformity_lines(meter: Meter, ui: &Ui) -> Result<()> {
    if ui.quiet {
        return Ok(());
    }
    let lines = meter.finish();
    for line in &lines {
        out(&format!("{line}\n"))?;
    }
    if lines.iter().any(Uniformity::is_high) {
        ui.hint(
            "letters that read alike are grouped by mail filters and discounted by staff: add a \
             `note` field to your signup form and `{{ supporter.note }}` to the letter, or use \
             subject/letter variants and `one_of(options=[…])` (see the README, \"Variation\")",
        );
    }
    Ok(())
}

/// The gist of a template error: without its location and the list of
/// available fields.
fn short(msg: &str) -> &str {
    let body = msg.split_once(": ").map_or(msg, |(_, rest)| rest);
    let body = body.split(". Available").next().unwrap_or(body);
    body.lines().next().unwrap_or(body)
}

/// The warnings `check` gives about the sender and the targets, for `send`'s
/// confirmation (`from_domain`: the first letter's From).
pub(crate) fn send_warnings(campaign: &Campaign, from_domain: &str, ui: &Ui) -> Result<()> {
    sender_warnings(campaign, from_domain, ui);
    unknown_target_warnings(campaign, ui)
}

/// DMARC alignment and DKIM advice (warnings, never errors).
fn sender_warnings(campaign: &Campaign, from_domain: &str, ui: &Ui) {
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
        // Gmail, Outlook, Fastmail… sign every letter they take.
        None if provider::always_signs(host) => {}
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
            "target `{target}`: {n} letter{} bounced as an unknown address ({})\n\n\
             hint: check the address in [[targets]]; letters already sent to it are not resent",
            if n == 1 { "" } else { "s" },
            crate::ui::printable(&diagnostic)
        ));
    }
    Ok(())
}

/// `check --smtp`: connect, TLS, AUTH, QUIT; says which step failed.
fn check_smtp(campaign: &Campaign, ui: &Ui) -> Result<()> {
    let smtp = campaign.config.smtp()?;
    // At a terminal with no password set, asked for now (not stored).
    let connector = super::connector_asking(smtp, ui)?;
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
