//! Bounces: mailbox → delivery status notification → letter.
//!
//! Owns the VERP token (which letter a return path belongs to), reading the
//! bounce mailbox (Maildir, mbox, or IMAP over TLS via `imap`), and judging
//! each message (`dsn` parses it). The ledger records the outcome;
//! `cmd/bounces` orchestrates and reports.

pub(crate) mod dsn;
pub(crate) mod imap;

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use lettre::Address;

use crate::config::{Config, ReturnPath};
use crate::ledger::{Bounce, Ledger, Record};

/// Bytes of HMAC kept in a token: 80 bits, 16 base32 characters.
const TOKEN_BYTES: usize = 10;

/// The VERP token of a letter: a keyed hash (HMAC-SHA256 with the ledger's
/// secret) of the campaign and the letter's identity, base32 lower-case.
/// Stable across resends; not guessable without the secret.
#[must_use]
pub(crate) fn token(secret: &[u8], campaign_id: &str, supporter: &str, target: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    for part in [campaign_id, supporter, target] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    base32(&ctx.sign().as_ref()[..TOKEN_BYTES])
}

/// RFC 4648 base32, lower-case, no padding (safe in any local part or URL).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Per-letter return paths for a send run.
pub(crate) struct Verp {
    return_path: ReturnPath,
    secret: Vec<u8>,
    campaign_id: String,
}

impl Verp {
    /// VERP for this run, when `[bounces] return_path` is set. Reads the
    /// ledger's secret (`send` creates it when it opens the ledger).
    pub(crate) fn new(config: &Config, ledger: &Ledger) -> Result<Option<Verp>> {
        let Some(return_path) = config.bounces.as_ref().and_then(|b| b.return_path.clone()) else {
            return Ok(None);
        };
        let secret = ledger
            .stored_verp_secret()?
            .context("the ledger has no VERP secret yet")?;
        Ok(Some(Verp {
            return_path,
            secret,
            campaign_id: config.campaign.id.clone(),
        }))
    }

    /// The MAIL FROM address of one letter.
    pub(crate) fn address(&self, supporter: &str, target: &str) -> Result<Address> {
        let t = token(&self.secret, &self.campaign_id, supporter, target);
        let text = self.return_path.with_token(&t);
        text.parse()
            .with_context(|| format!("return path `{text}` is not a valid address"))
    }
}

/// Which letter a notification is about: by VERP token, else by Message-ID.
pub(crate) struct Index {
    return_path: Option<ReturnPath>,
    by_token: HashMap<String, (String, String)>,
    by_message_id: HashMap<String, (String, String)>,
    copies: Vec<String>,
}

impl Index {
    /// Indexes every letter the ledger holds.
    #[must_use]
    pub(crate) fn new(config: &Config, records: &[Record], secret: Option<&[u8]>) -> Index {
        let return_path = config.bounces.as_ref().and_then(|b| b.return_path.clone());
        let mut by_token = HashMap::new();
        let mut by_message_id = HashMap::new();
        for r in records {
            let letter = (r.supporter.clone(), r.target.clone());
            if let Some(secret) = secret {
                by_token.insert(
                    token(secret, &config.campaign.id, &r.supporter, &r.target),
                    letter.clone(),
                );
            }
            if let Some(id) = &r.message_id {
                by_message_id.insert(id.trim().to_string(), letter);
            }
        }
        Index {
            return_path,
            by_token,
            by_message_id,
            copies: config
                .sender
                .bcc
                .iter()
                .map(|m| m.email.to_string().to_ascii_lowercase())
                .collect(),
        }
    }

    /// The letter a notification names, and how it was matched.
    fn letter(&self, read: &dsn::Read, d: &dsn::Dsn) -> Option<((String, String), Matched)> {
        if let Some(rp) = &self.return_path {
            for to in &read.addressed_to {
                if let Some(letter) = rp.token_of(to).and_then(|t| self.by_token.get(&t)) {
                    return Some((letter.clone(), Matched::Token));
                }
            }
        }
        let id = d.original_message_id.as_deref()?;
        self.by_message_id
            .get(id)
            .map(|letter| (letter.clone(), Matched::MessageId))
    }
}

/// How a notification was tied to its letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched {
    /// The VERP token in the address it was delivered to.
    Token,
    /// The Message-ID of the returned headers.
    MessageId,
}

/// What one message from the mailbox is, for the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A notification about one of our letters (a failure or a delay).
    Letter(Bounce, Matched),
    /// A notification about our letter, but only about a copy (the
    /// supporter's Cc or a Bcc), or a success report: nothing to record.
    Copy,
    /// A notification about mail that is not one of this campaign's letters.
    NotOurs,
    /// An automatic reply.
    AutoReply,
    /// Anything else: left alone.
    Other,
}

/// Judges one raw message. `now` dates notifications that carry no date.
#[must_use]
pub(crate) fn judge(raw: &[u8], index: &Index, now: i64) -> Verdict {
    let read = dsn::read(raw);
    let d = match &read.kind {
        dsn::Kind::Dsn(d) => d,
        dsn::Kind::AutoReply => return Verdict::AutoReply,
        dsn::Kind::Other => return Verdict::Other,
    };
    let Some(((supporter, target), matched)) = index.letter(&read, d) else {
        return Verdict::NotOurs;
    };
    // Blocks about the supporter's Cc or a Bcc copy are not about the letter.
    let is_copy = |r: &dsn::Recipient| {
        let addr = r.original_recipient.as_ref().or(r.final_recipient.as_ref());
        addr.is_some_and(|a| *a != target && (*a == supporter || index.copies.contains(a)))
    };
    let about_target: Vec<&dsn::Recipient> = d.recipients.iter().filter(|r| !is_copy(r)).collect();
    let pick = about_target
        .iter()
        .find(|r| r.is_failure())
        .or_else(|| about_target.iter().find(|r| r.is_delay()));
    let Some(r) = pick else { return Verdict::Copy };
    let permanent = r.is_failure();
    let diagnostic = r
        .diagnostic
        .clone()
        .unwrap_or_else(|| format!("status {} (no diagnostic given)", r.status));
    Verdict::Letter(
        Bounce {
            source: read.source.clone(),
            supporter,
            target,
            at: r.last_attempt.or(read.date).unwrap_or(now),
            action: if r.action.is_empty() {
                if permanent { "failed" } else { "delayed" }.to_string()
            } else {
                r.action.clone()
            },
            status: r.status.clone(),
            diagnostic,
            reporter: r
                .remote_mta
                .clone()
                .or_else(|| d.reporting_mta.clone())
                .unwrap_or_default(),
            permanent,
        },
        matched,
    )
}

/// The messages of a local mailbox: a Maildir folder (`new/` and `cur/`)
/// or an mbox file. Each comes with a name for messages.
pub(crate) fn local_messages(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read the bounce mailbox `{}`\n\nhint: set [bounces] mailbox to a Maildir folder, an mbox file \
             or imaps://host",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    if meta.is_dir() {
        let (new, cur) = (path.join("new"), path.join("cur"));
        if !new.is_dir() && !cur.is_dir() {
            bail!(
                "`{}` is a folder but not a Maildir (no `new/` or `cur/` in it)",
                path.display()
            );
        }
        for sub in [new, cur] {
            let Ok(entries) = std::fs::read_dir(&sub) else {
                continue;
            };
            let mut files: Vec<_> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).with_context(|| format!("cannot read `{}`", f.display()))?;
                out.push((f.display().to_string(), bytes));
            }
        }
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        for (i, m) in mail_parser::mailbox::mbox::MessageIterator::new(BufReader::new(file)).enumerate() {
            let m = m.with_context(|| format!("cannot read mbox file `{}`", path.display()))?;
            out.push((format!("{}#{}", path.display(), i + 1), m.unwrap_contents()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_short_stable_and_keyed() {
        let a = token(b"secret-one", "c", "ana@x.org", "ceo@corp.example");
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(a, token(b"secret-one", "c", "ana@x.org", "ceo@corp.example"));
        assert_ne!(a, token(b"secret-two", "c", "ana@x.org", "ceo@corp.example"));
        assert_ne!(a, token(b"secret-one", "c", "sam@x.org", "ceo@corp.example"));
        assert!(!a.contains("ana"));
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b"f"), "my");
    }
}
