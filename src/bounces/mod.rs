//! Bounces: mailbox → delivery status notification → letter.
//!
//! Owns the VERP token (which letter a return path belongs to), reading the
//! bounce mailbox (Maildir, mbox, or IMAP over TLS via `imap`), and judging
//! each message (`dsn` parses it). The ledger records the outcome;
//! `cmd/bounces` orchestrates and reports.

pub(crate) mod dsn;
pub(crate) mod imap;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use lettre::Address;

use crate::campaign::{Campaign, Prepared};
use crate::config::{Config, ReturnPath};
use crate::exit::{Exit, Failure};
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

/// `[bounces] return_path` must share From's domain (or be a subdomain of
/// it, or the reverse): DMARC's SPF alignment compares the two. The reason,
/// when it does not.
#[must_use]
pub(crate) fn misaligned(config: &Config, from_domain: &str) -> Option<String> {
    let bounces = config.bounces.as_ref()?;
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

/// For `send`: a misaligned return path is a config error (exit 1, nothing
/// sent). From is a template: its domain is the first letter's, as `check`
/// judges it.
pub(crate) fn refuse_misaligned(campaign: &Campaign) -> Result<()> {
    if campaign
        .config
        .bounces
        .as_ref()
        .and_then(|b| b.return_path.as_ref())
        .is_none()
    {
        return Ok(());
    }
    for prepared in campaign.prepared(false)? {
        if let Ok(Prepared::Letters { letters, .. }) = prepared
            && let Some(first) = letters.first()
        {
            return match misaligned(&campaign.config, first.1.from.domain()) {
                Some(problem) => Err(Failure::error(Exit::BadInput, problem)),
                None => Ok(()),
            };
        }
    }
    Ok(())
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
    ///
    /// NOTE: with a `return_path`, only a keyed VERP token names a letter.
    /// Message-IDs are an unkeyed hash and the target receives every one,
    /// so a target could forge bounces with them; they are the fallback
    /// only for campaigns that send without VERP.
    fn letter(&self, read: &dsn::Read, d: &dsn::Dsn) -> Option<((String, String), Matched)> {
        if let Some(rp) = &self.return_path {
            return read.addressed_to.iter().find_map(|to| {
                rp.token_of(to)
                    .and_then(|t| self.by_token.get(&t))
                    .map(|letter| (letter.clone(), Matched::Token))
            });
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

impl std::fmt::Display for Matched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Matched::Token => "matched by its VERP token",
            Matched::MessageId => "matched by the Message-ID of the returned letter",
        })
    }
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
    /// A notification tied to one of our letters that names another
    /// recipient than the letter's target (forged, or misrouted): ignored.
    Mismatched,
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
    // Each block must name the letter's target, or one of its copies (the
    // supporter's Cc, a Bcc): a block about anyone else is not this letter's.
    let named = |r: &dsn::Recipient| {
        [&r.original_recipient, &r.final_recipient]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<String>>()
    };
    let is_target = |r: &dsn::Recipient| named(r).iter().any(|a| a.eq_ignore_ascii_case(&target));
    let is_copy = |r: &dsn::Recipient| {
        named(r)
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&supporter) || index.copies.contains(a))
    };
    if d.recipients.iter().any(|r| !is_target(r) && !is_copy(r)) {
        return Verdict::Mismatched;
    }
    let about_target: Vec<&dsn::Recipient> = d.recipients.iter().filter(|r| is_target(r)).collect();
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

/// Largest message judged (a bounce report is a few kilobytes); a larger
/// one is skipped and counted, never read whole.
pub(crate) const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// One entry of a mailbox, as it is read.
pub(crate) enum Entry<'a> {
    /// A message's bytes.
    Message(&'a [u8]),
    /// A message that was not judged, and why.
    Skipped(&'static str),
}

/// Why an entry is skipped.
const TOO_LARGE: &str = "larger than 10 MB, not a bounce report";
const NOT_A_FILE: &str = "not a regular file (a link to nothing or to a folder, a pipe, a device)";
const VANISHED: &str = "gone before it could be read (moved or deleted by a mail client)";

/// Reads a local mailbox — a Maildir folder (`new/` and `cur/`) or an mbox
/// file — one message at a time, handing each to `visit` with a name for
/// messages. Memory stays bounded by [`MAX_MESSAGE`], whatever the size of
/// the mailbox. `at` is `FILE:LINE` of `[bounces]`, for errors.
pub(crate) fn read_local(
    path: &Path,
    at: &str,
    visit: &mut dyn FnMut(&str, Entry<'_>) -> Result<()>,
) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "{at}: cannot read the bounce mailbox `{}`\n\nhint: set [bounces] mailbox to a Maildir folder, an mbox \
             file or imaps://host",
            path.display()
        )
    })?;
    if meta.is_dir() {
        read_maildir(path, visit)
    } else if meta.is_file() {
        let file = File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        read_mbox(path, file, visit)
    } else {
        bail!(
            "{at}: [bounces] mailbox `{}` is neither a Maildir folder nor an mbox file\n\nhint: set [bounces] \
             mailbox to a Maildir folder, an mbox file or imaps://host",
            path.display()
        )
    }
}

/// A Maildir: `new/` then `cur/`, each in name order, listed once up front.
/// A message a mail client moves from `new/` to `cur/` meanwhile is read
/// from `cur/` (once); links are followed to regular files.
fn read_maildir(path: &Path, visit: &mut dyn FnMut(&str, Entry<'_>) -> Result<()>) -> Result<()> {
    let (new, cur) = (path.join("new"), path.join("cur"));
    if !new.is_dir() && !cur.is_dir() {
        bail!(
            "`{}` is a folder but not a Maildir (no `new/` or `cur/` in it)",
            path.display()
        );
    }
    let list = |dir: &Path| -> Vec<OsString> {
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let (in_new, in_cur) = (list(&new), list(&cur));
    // Messages of `new/` found in `cur/` after a move: not read twice.
    let mut moved: HashSet<OsString> = HashSet::new();
    for name in &in_new {
        let file = new.join(name);
        let shown = file.display().to_string();
        match load(&file)? {
            Loaded::Gone => match moved_to_cur(&cur, name) {
                Some(found) => {
                    let shown = cur.join(&found).display().to_string();
                    let loaded = load(&cur.join(&found))?;
                    moved.insert(found);
                    visit_loaded(&shown, loaded, visit)?;
                }
                None => visit(&shown, Entry::Skipped(VANISHED))?,
            },
            loaded => visit_loaded(&shown, loaded, visit)?,
        }
    }
    for name in in_cur.iter().filter(|n| !moved.contains(*n)) {
        let file = cur.join(name);
        visit_loaded(&file.display().to_string(), load(&file)?, visit)?;
    }
    Ok(())
}

/// The name in `cur/` of a message once called `name` in `new/`: the same
/// name, or the same name with flags (`name:2,S`).
fn moved_to_cur(cur: &Path, name: &OsString) -> Option<OsString> {
    let base = name.to_string_lossy();
    std::fs::read_dir(cur)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .find(|n| {
            let n = n.to_string_lossy();
            n == base
                || n.strip_prefix(base.as_ref())
                    .is_some_and(|rest| rest.starts_with(':'))
        })
}

/// One Maildir file, read.
enum Loaded {
    Message(Vec<u8>),
    Skipped(&'static str),
    Gone,
}

fn visit_loaded(
    name: &str,
    loaded: Loaded,
    visit: &mut dyn FnMut(&str, Entry<'_>) -> Result<()>,
) -> Result<()> {
    match loaded {
        Loaded::Message(bytes) => visit(name, Entry::Message(&bytes)),
        Loaded::Skipped(why) => visit(name, Entry::Skipped(why)),
        Loaded::Gone => visit(name, Entry::Skipped(VANISHED)),
    }
}

/// Reads one Maildir file, following a link to a regular file.
fn load(file: &Path) -> Result<Loaded> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let context = || format!("cannot read `{}`", file.display());
    match std::fs::symlink_metadata(file) {
        Err(e) if gone(&e) => return Ok(Loaded::Gone),
        Err(e) => return Err(e).with_context(context),
        Ok(_) => {}
    }
    let meta = match std::fs::metadata(file) {
        Err(e) if gone(&e) => return Ok(Loaded::Skipped(NOT_A_FILE)),
        other => other.with_context(context)?,
    };
    if !meta.is_file() {
        return Ok(Loaded::Skipped(NOT_A_FILE));
    }
    if meta.len() > MAX_MESSAGE as u64 {
        return Ok(Loaded::Skipped(TOO_LARGE));
    }
    let f = match File::open(file) {
        Err(e) if gone(&e) => return Ok(Loaded::Gone),
        other => other.with_context(context)?,
    };
    let mut bytes = Vec::new();
    f.take(MAX_MESSAGE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(context)?;
    Ok(if bytes.len() > MAX_MESSAGE {
        Loaded::Skipped(TOO_LARGE)
    } else {
        Loaded::Message(bytes)
    })
}

/// An mbox file: messages start at `From ` lines. Read in bounded chunks;
/// a message past [`MAX_MESSAGE`] is dropped as it streams by and counted.
/// Text before the first `From ` line is a message of its own.
fn read_mbox(path: &Path, file: File, visit: &mut dyn FnMut(&str, Entry<'_>) -> Result<()>) -> Result<()> {
    const CHUNK: u64 = 64 * 1024;
    let context = || format!("cannot read mbox file `{}`", path.display());
    let mut reader = BufReader::with_capacity(CHUNK as usize, file);
    let (mut message, mut chunk) = (Vec::new(), Vec::new());
    let (mut n, mut too_large, mut at_line_start) = (0usize, false, true);
    let mut emit = |n: usize, message: &mut Vec<u8>, too_large: bool| -> Result<()> {
        let name = format!("{}#{n}", path.display());
        if too_large {
            visit(&name, Entry::Skipped(TOO_LARGE))?;
        } else {
            // The blank line before the next `From ` belongs to the mbox.
            if message.ends_with(b"\n\n") || message.ends_with(b"\r\n\r\n") {
                message.truncate(message.len() - if message.ends_with(b"\r\n") { 2 } else { 1 });
            }
            visit(&name, Entry::Message(message))?;
        }
        message.clear();
        Ok(())
    };
    loop {
        chunk.clear();
        let read = (&mut reader)
            .take(CHUNK)
            .read_until(b'\n', &mut chunk)
            .with_context(context)?;
        if read == 0 {
            break;
        }
        let line_start = at_line_start;
        at_line_start = chunk.ends_with(b"\n");
        if line_start && chunk.starts_with(b"From ") {
            if n > 0 {
                emit(n, &mut message, too_large)?;
            }
            n += 1;
            too_large = false;
            continue;
        }
        if n == 0 {
            if chunk.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            n = 1;
        }
        if too_large {
            continue;
        }
        if message.len() + chunk.len() > MAX_MESSAGE {
            too_large = true;
            message = Vec::new();
            continue;
        }
        message.extend_from_slice(&chunk);
    }
    if n > 0 {
        emit(n, &mut message, too_large)?;
    }
    Ok(())
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
