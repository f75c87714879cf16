//! `mailer bounces`: read the bounce mailbox → judge each message → record
//! bounces in the ledger → one summary line.
//!
//! Idempotent: a notification already recorded changes nothing. Over IMAP,
//! messages about our letters are marked `\Seen` once recorded (after the
//! ledger commit); nothing is ever deleted.

use anyhow::{Context as _, Result, anyhow};

use crate::bounces::imap::{Fetched, ImapError, Session};
use crate::bounces::{self, Entry, Index, Matched, Verdict};
use crate::campaign::Campaign;
use crate::clock::Clock;
use crate::config::{BounceMailbox, Bounces, Config};
use crate::exit::{Exit, Failure};
use crate::ledger::{Bounce, BounceEffect, Ledger};
use crate::report::out;
use crate::ui::{Ui, printable};

/// What one run found.
#[derive(Debug, Default)]
struct Tally {
    read: u64,
    bounced: u64,
    delayed: u64,
    known: u64,
    noted: u64,
    copies: u64,
    not_ours: u64,
    mismatched: u64,
    skipped: u64,
    auto_replies: u64,
    other: u64,
}

/// Runs `mailer bounces`.
pub(crate) fn run(campaign: &Campaign, ui: &Ui, clock: &dyn Clock) -> Result<Exit> {
    let config = &campaign.config;
    let settings = config.bounces.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: no [bounces] section\n\nhint: add [bounces] with return_path and mailbox (see config.example.toml)",
            config.path.display()
        )
    })?;
    let mailbox = settings.mailbox.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: [bounces] has no `mailbox`\n\nhint: mailbox = \"imaps://imap.your-org.example\", or a Maildir \
             folder or mbox file",
            settings.at
        )
    })?;
    // Before any `send` there is no ledger: the mailbox is still read (a
    // config problem shows now, not at the first cron run after sending),
    // but nothing can match and no ledger is created for it.
    let ledger = if config.ledger_path.exists() {
        Some(Ledger::open(&config.ledger_path, &config.campaign.id)?)
    } else {
        None
    };
    let (records, secret) = match &ledger {
        Some(l) => (l.all()?, l.stored_verp_secret()?),
        None => (Vec::new(), None),
    };
    let index = Index::new(config, &records, secret.as_deref());
    let mut tally = Tally::default();
    let mut judge = |name: &str, entry: Entry<'_>| -> Result<bool> {
        let raw = match entry {
            Entry::Message(raw) => raw,
            Entry::Skipped(why) => {
                tally.skipped += 1;
                ui.detail(&format!("{}: skipped: {why}", printable(name)));
                return Ok(false);
            }
        };
        tally.read += 1;
        let now = clock.unix();
        let ours = match bounces::judge(raw, &index, now) {
            Verdict::Letter(b, matched) => {
                let Some(ledger) = &ledger else {
                    tally.not_ours += 1;
                    return Ok(false);
                };
                let effect = ledger.record_bounce(&b, now)?;
                ui.detail(&detail(name, &b, matched));
                match effect {
                    BounceEffect::Bounced => tally.bounced += 1,
                    BounceEffect::Known => tally.known += 1,
                    BounceEffect::Noted if b.permanent => tally.noted += 1,
                    BounceEffect::Noted => tally.delayed += 1,
                }
                true
            }
            Verdict::Copy => {
                tally.copies += 1;
                true
            }
            Verdict::NotOurs => {
                tally.not_ours += 1;
                false
            }
            Verdict::Mismatched => {
                tally.mismatched += 1;
                ui.detail(&format!(
                    "{}: names another recipient than its letter's: ignored",
                    printable(name)
                ));
                false
            }
            Verdict::AutoReply => {
                tally.auto_replies += 1;
                false
            }
            Verdict::Other => {
                tally.other += 1;
                false
            }
        };
        Ok(ours)
    };
    match mailbox {
        BounceMailbox::Local(path) => {
            bounces::read_local(path, &settings.at, &mut |name, entry| {
                judge(name, entry).map(drop)
            })?;
        }
        BounceMailbox::Imap { host, port } => read_imap(settings, host, *port, &mut judge)?,
    }
    finish(ui, &tally, mailbox, ledger.as_ref(), config)?;
    Ok(Exit::Done)
}

/// The summary line; checkpoints the ledger, or says nothing was sent yet.
fn finish(
    ui: &Ui,
    tally: &Tally,
    mailbox: &BounceMailbox,
    ledger: Option<&Ledger>,
    config: &Config,
) -> Result<()> {
    if !ui.quiet {
        out(&format!("{}\n", summary(tally, &mailbox.to_string())))?;
    }
    match ledger {
        Some(ledger) => {
            let _ = ledger.checkpoint();
        }
        None if !ui.quiet => out(&format!(
            "Nothing sent yet (no ledger `{}`): no notification can be about this campaign's letters\n",
            config.ledger_path.display()
        ))?,
        None => {}
    }
    Ok(())
}

/// Reads the unseen messages of the IMAP folder; marks `\Seen` those
/// `judge` recorded (it returns `true` once they are in the ledger).
fn read_imap(
    settings: &Bounces,
    host: &str,
    port: u16,
    judge: &mut dyn FnMut(&str, Entry<'_>) -> Result<bool>,
) -> Result<()> {
    let tls = crate::smtp::tls_client_config(settings.ca_file.as_deref())?;
    let user = settings
        .username
        .clone()
        .with_context(|| format!("{}: [bounces] needs `username` to log in to IMAP", settings.at))?;
    let fail = |e: ImapError| match e {
        ImapError::Unreachable(m) => Failure::error(
            Exit::TryLater,
            format!("{m}\n\nhint: the mailbox server may be down; run `mailer bounces` again later"),
        ),
        ImapError::Refused(m) => Failure::error(Exit::BadInput, m),
    };
    let mut session = Session::connect(host, port, tls, settings.timeout).map_err(fail)?;
    let password = settings
        .password
        .resolve()
        .context("cannot get the [bounces] mailbox password")?;
    session.login(&user, &password).map_err(fail)?;
    session.select(&settings.folder).map_err(fail)?;
    for uid in session.unseen().map_err(fail)? {
        let name = format!("{}/{uid}", settings.folder);
        let ours = match session.fetch(uid).map_err(fail)? {
            Fetched::Message(raw) => judge(&name, Entry::Message(&raw))?,
            // Left unseen, for a person to look at.
            Fetched::TooLarge => judge(&name, Entry::Skipped("larger than 10 MB, not a bounce report"))?,
            Fetched::Missing => continue,
        };
        if ours {
            session.mark_seen(uid).map_err(fail)?;
        }
    }
    session.logout();
    Ok(())
}

/// `-v`: one recorded notification (server text escaped).
fn detail(name: &str, b: &Bounce, matched: Matched) -> String {
    format!(
        "{}: {} → {}: {} {} {} ({}, {matched})",
        printable(name),
        printable(&b.supporter),
        printable(&b.target),
        printable(&b.action),
        printable(&b.status),
        printable(&b.diagnostic),
        printable(&b.reporter)
    )
}

/// `Read 7 messages from …: 2 letters bounced, …`.
fn summary(t: &Tally, mailbox: &str) -> String {
    let s = |n: u64| if n == 1 { "" } else { "s" };
    let mut parts = vec![format!("{} letter{} bounced", t.bounced, s(t.bounced))];
    for (n, what) in [
        (t.delayed, "delay notice"),
        (t.known, "already recorded"),
        (t.noted, "bounce for a letter not recorded as sent"),
        (t.copies, "about a copy (Cc/Bcc) or a success"),
        (t.not_ours, "not about this campaign's letters"),
        (t.mismatched, "naming another recipient than its letter's target"),
        (t.auto_replies, "auto-reply"),
        (t.other, "other message"),
        (
            t.skipped,
            "skipped (too large, not a file, or gone; `-v` names them)",
        ),
    ] {
        if n > 0 {
            let plural = if what.ends_with("notice") || what.ends_with("reply") || what.ends_with("message") {
                s(n)
            } else {
                ""
            };
            let what = if plural == "s" && what.ends_with("reply") {
                "auto-replies".to_string()
            } else {
                format!("{what}{plural}")
            };
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "Read {} message{} from {mailbox}: {}",
        t.read,
        s(t.read),
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_well() {
        let t = Tally {
            read: 5,
            bounced: 2,
            delayed: 1,
            auto_replies: 2,
            ..Tally::default()
        };
        assert_eq!(
            summary(&t, "Maildir"),
            "Read 5 messages from Maildir: 2 letters bounced, 1 delay notice, 2 auto-replies"
        );
    }
}
