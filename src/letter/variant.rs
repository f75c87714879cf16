//! Which variant a letter gets, stably: its letter file, its subject and each
//! `one_of(...)` phrasing, chosen by hashing the letter's identity; and the
//! version fingerprints of the templates that the ledger records.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tera::{Kwargs, State, TeraResult, Value};

use super::{Body, HeaderTemplate, Part};

/// Which text a letter used: recorded per handed-over letter in the ledger,
/// shown by `preview --variants`, exported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Variant {
    /// The letter file, as `[campaign] letter` names it.
    pub(crate) letter_file: Arc<str>,
    /// The letter file's language (`es` for `letter.es.md`); empty for a
    /// file without one (also when the supporter's language has no file).
    pub(crate) language: Arc<str>,
    /// The subject variant: its 1-based position in `[campaign] subject`;
    /// 0 when the letter file's front matter or the target gives the subject.
    pub(crate) subject: u32,
    /// A fingerprint of the templates this letter came from (the letter
    /// file and everything it includes, the subject variant, From and
    /// Reply-To): it changes when the organizer edits any of them.
    pub(crate) version: Arc<str>,
    /// A fingerprint of this letter's rendered text body; set when the
    /// message is encoded for sending (empty in `check`).
    pub(crate) fingerprint: String,
}

/// A stable choice among `n` from a letter's identity: SHA-256 of the parts
/// (never row order, row count, the run or the Rust version), reduced mod `n`.
#[must_use]
pub(super) fn pick(parts: &[&str], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (digest64(parts) % n as u64) as usize
}

/// The first 8 bytes of SHA-256 over `parts`, each ended by a NUL.
pub(super) fn digest64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// 16 hex digits of SHA-256: the fingerprints the ledger records.
#[must_use]
pub(crate) fn fingerprint(text: &str) -> String {
    hex16(&Sha256::digest(text.as_bytes()))
}

/// The first 8 bytes of a digest as 16 hex digits.
fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

thread_local! {
    /// The letter being rendered on this thread, for `one_of`: set by
    /// [`Letter::render`] around each rendering.
    ///
    /// NOTE: a thread-local rather than a context variable, so `one_of`
    /// works the same inside includes and macros, and templates cannot
    /// read or overwrite it.
    static LETTER_SEED: Cell<u64> = const { Cell::new(0) };
}

/// `one_of(options=["…", "…"])`: one of the phrasings, the same one every
/// time for a given letter and call (its options), a different one across
/// letters. `key="…"` tells apart two calls with the same options.
#[allow(clippy::needless_pass_by_value)] // the signature Tera calls
pub(super) fn one_of(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let usage = || {
        tera::Error::message(
            "one_of takes a list of phrasings: one_of(options=[\"I urge you\", \"I ask you\"])",
        )
    };
    let options: &[Value] = kwargs.get("options")?.ok_or_else(usage)?;
    if options.is_empty() {
        return Err(usage());
    }
    let key: Option<&str> = kwargs.get("key")?;
    let seed = LETTER_SEED.with(Cell::get).to_be_bytes();
    let mut h = Sha256::new();
    h.update(seed);
    h.update(key.unwrap_or_default().as_bytes());
    for o in options {
        h.update([0]);
        h.update(o.to_string().as_bytes());
    }
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    Ok(options[(n % options.len() as u64) as usize].clone())
}

/// Sets [`LETTER_SEED`] for one rendering, and back to 0 after.
pub(super) struct Seeded;

impl Seeded {
    pub(super) fn new(seed: u64) -> Seeded {
        LETTER_SEED.with(|s| s.set(seed));
        Seeded
    }
}

impl Drop for Seeded {
    fn drop(&mut self) {
        LETTER_SEED.with(|s| s.set(0));
    }
}

/// The text version of each (letter file, subject variant): SHA-256 over
/// the letter file and every template it includes, the subject variant's
/// template, and the From / Reply-To templates (16 hex digits).
pub(super) fn versions(headers: &[HeaderTemplate], bodies: &[Body]) -> Vec<Vec<Arc<str>>> {
    bodies
        .iter()
        .map(|b| {
            headers
                .iter()
                .filter(|s| s.part == Part::Subject)
                .map(|s| version_with(headers, b, &s.text))
                .collect()
        })
        .collect()
}

/// The version of one body with a subject of its own (front matter or the
/// target's), as [`versions`] computes it for the campaign's subjects.
pub(super) fn version_with(headers: &[HeaderTemplate], body: &Body, subject: &str) -> Arc<str> {
    let mut h = Sha256::new();
    for t in headers.iter().filter(|h| h.part != Part::Subject) {
        h.update(t.key.as_bytes());
        h.update([0]);
        h.update(t.text.as_bytes());
        h.update([0]);
    }
    for (name, text) in &body.texts {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.update(subject.as_bytes());
    Arc::from(hex16(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    use tera::Tera;

    use super::*;

    fn header(part: Part, key: &str, text: &str) -> HeaderTemplate {
        HeaderTemplate {
            part,
            text: text.into(),
            location: "mailer.toml:1".into(),
            key: key.into(),
        }
    }

    #[test]
    fn versions_are_stable_fingerprints_of_every_template_a_letter_uses() {
        let headers = [
            header(Part::Subject, "config:subject", "Drop ICE"),
            header(
                Part::Subject,
                "config:subject.2",
                "{{ supporter.name }}: drop ICE",
            ),
            header(Part::FromAddress, "config:from.address", "letters@org.example"),
        ];
        let body = Body {
            file: Arc::from("letters/l.txt"),
            plain: Tera::new(),
            markdown: None,
            name: "l.txt".into(),
            dir: PathBuf::from("letters"),
            texts: BTreeMap::from([
                ("l.txt".to_string(), "Dear {{ target.name }}".to_string()),
                ("sig.txt".to_string(), "Ana".to_string()),
            ]),
            language: Arc::from(""),
            subject: None,
            languages: HashMap::new(),
        };
        let all = versions(&headers, std::slice::from_ref(&body));
        // SHA-256 over `key\0text\0` of From / Reply-To, `name\0text\0` of each
        // file, then the subject: what ledgers already hold (checked with Python's hashlib).
        let pinned = ["97e776d2c01dcd80", "652c5a65c796bd06"];
        assert_eq!(all[0].len(), 2);
        for (s, (version, subject)) in all[0]
            .iter()
            .zip(["Drop ICE", "{{ supporter.name }}: drop ICE"])
            .enumerate()
        {
            assert_eq!(&**version, pinned[s], "subject variant {}", s + 1);
            assert_eq!(*version, version_with(&headers, &body, subject));
        }
        assert_eq!(fingerprint("Dear Satya"), "99b2e0c41f8680ae");
    }
}
