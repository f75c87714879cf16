//! A rendered letter → a finished email (lettre's builder), ready for SMTP.
//!
//! Owns: header safety (no CR/LF/control characters, bounded lengths), the
//! deterministic Message-ID, the envelope (target first), body line endings
//! and DKIM signing. Sending is `transport.rs`'s business.

use std::fmt::Write as _;
use std::time::SystemTime;

use lettre::address::Envelope;
use lettre::message::dkim::DkimConfig;
use lettre::message::header::{ContentTransferEncoding, ContentType, Date};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use sha2::{Digest as _, Sha256};

use std::sync::Arc;

use crate::config::{AttachmentFile, Target};
use crate::letter::{Part, Rendered, RenderedMailbox, Variant};
use crate::roster::Supporter;

/// Longest subject accepted, in characters. Keeps every header line under
/// RFC 5322's 998 octets even when lettre encodes it as one word.
pub(crate) const MAX_SUBJECT_CHARS: usize = 250;
/// Longest display name accepted, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 200;

/// Campaign-wide message settings.
pub(crate) struct Envelopes<'a> {
    /// `campaign.id`, part of the Message-ID.
    pub(crate) campaign_id: &'a str,
    /// Cc the supporter.
    pub(crate) cc_supporter: bool,
    /// Extra Bcc recipients.
    pub(crate) bcc: &'a [Mailbox],
    /// DKIM signing, if configured.
    pub(crate) dkim: Option<&'a DkimConfig>,
    /// Encode the message (`bytes`). `check`, `status` and plans only need
    /// the validation, the Message-ID and the summary: skipping MIME
    /// encoding makes them several times faster.
    pub(crate) encode: bool,
    /// Files attached to every letter.
    pub(crate) attachments: &'a [Attachment],
}

/// One file of `[campaign] attachments`, read.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    /// The file name the recipient sees.
    pub(crate) filename: String,
    /// Its MIME type, from the extension.
    pub(crate) content_type: ContentType,
    /// Its bytes.
    pub(crate) bytes: Arc<[u8]>,
}

/// Reads `[campaign] attachments`: a missing or unreadable file is an
/// error at its config line.
pub(crate) fn read_attachments(files: &[AttachmentFile]) -> anyhow::Result<Vec<Attachment>> {
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(&f.path).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read attachment `{}`: {e}\n\nhint: check [campaign] attachments",
                    f.at,
                    f.path.display()
                )
            })?;
            let filename = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if filename.chars().any(char::is_control) {
                anyhow::bail!(
                    "{}: attachment name `{}` holds a control character",
                    f.at,
                    filename.escape_debug()
                );
            }
            Ok(Attachment {
                content_type: content_type_of(&filename),
                filename,
                bytes: bytes.into(),
            })
        })
        .collect()
}

/// The MIME type for a file name's extension (`application/octet-stream`
/// when it is not a common document, image or archive type).
#[must_use]
pub(crate) fn content_type_of(filename: &str) -> ContentType {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let mime = match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "txt" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "ics" => "text/calendar; charset=utf-8",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        "rtf" => "application/rtf",
        "zip" => "application/zip",
        "json" => "application/json",
        _ => "application/octet-stream",
    };
    ContentType::parse(mime).unwrap_or(ContentType::TEXT_PLAIN)
}

/// A finished message and its SMTP envelope.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    /// `<HEX@DOMAIN>`.
    pub(crate) message_id: String,
    /// MAIL FROM.
    pub(crate) from: Address,
    /// RCPT TO, the target first.
    pub(crate) recipients: Vec<Address>,
    /// The main headers, readable (not MIME-encoded), for previews.
    pub(crate) summary: Vec<(&'static str, String)>,
    /// The text/plain body as rendered.
    pub(crate) text: String,
    /// The text/html body of a `.md` letter, when it was rendered (`encode`).
    pub(crate) html: Option<String>,
    /// The whole message, CRLF line endings, not yet dot-stuffed.
    pub(crate) bytes: Vec<u8>,
    /// The message before signing, to date it again at hand-over ([`Built::stamp`]).
    unsigned: Option<Message>,
    /// Where the `Date` value starts in `bytes` while they are unsigned:
    /// [`Built::stamp`] rewrites those bytes in place instead of encoding
    /// the message again.
    date_at: Option<usize>,
    /// Which text it is (letter file, subject variant, version); with
    /// `encode`, also its body's fingerprint.
    pub(crate) variant: Variant,
}

impl Built {
    /// Dates the message `date` (when it is handed over) and signs it, so
    /// its `Date` and the DKIM `t=` say when it went, not when the run
    /// started. The Message-ID stays. No-op for a message built without
    /// `encode`. An unsigned message only has its `Date` value rewritten in
    /// place (it has the same length on every date), so nothing is encoded
    /// twice; a signed one is dated, then signed over the final headers.
    pub(crate) fn stamp(&mut self, date: SystemTime, dkim: Option<&DkimConfig>) {
        let Some(unsigned) = &self.unsigned else {
            return;
        };
        if dkim.is_none()
            && let Some(at) = self.date_at
            && let Some(value) = date_value(date)
            && let Some(old) = self.bytes.get(at..at + value.len())
            && !old.iter().any(|b| matches!(b, b'\r' | b'\n'))
            && self.bytes.get(at + value.len()) == Some(&b'\r')
        {
            self.bytes[at..at + value.len()].copy_from_slice(value.as_bytes());
            return;
        }
        let mut message = unsigned.clone();
        message.headers_mut().set(Date::new(date));
        if let Some(dkim) = dkim {
            message.sign(dkim);
        }
        self.bytes = message.formatted();
        self.date_at = dkim.is_none().then(|| date_offset(&self.bytes)).flatten();
    }
}

/// The `Date` header's value for `date`, as lettre writes it.
fn date_value(date: SystemTime) -> Option<String> {
    let mut headers = lettre::message::header::Headers::new();
    headers.set(Date::new(date));
    headers.get_raw("Date").map(str::to_string)
}

/// Where the one `Date` header's value starts in a formatted message's
/// header section.
fn date_offset(bytes: &[u8]) -> Option<usize> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &bytes[..end];
    let at = if head.starts_with(b"Date: ") {
        0
    } else {
        head.windows(8).position(|w| w == b"\r\nDate: ")? + 2
    };
    // Exactly one: a second `Date:` would be rewritten in the wrong place.
    let rest = &head[at + 6..];
    if rest.windows(8).any(|w| w == b"\r\nDate: ") {
        return None;
    }
    Some(at + 6)
}

#[cfg(test)]
impl Built {
    /// A letter with this Message-ID from `from@example.org` to `to`, for
    /// tests that need a letter but not its making.
    pub(crate) fn sample(message_id: &str, to: &str) -> Built {
        Built {
            message_id: message_id.into(),
            from: "from@example.org".parse().expect("address"),
            recipients: vec![to.parse().expect("address")],
            summary: Vec::new(),
            text: "text\n".into(),
            bytes: b"Subject: s\r\n\r\ntext\r\n".to_vec(),
            unsigned: None,
            date_at: None,
            html: None,
            variant: crate::letter::Variant::default(),
        }
    }
}

/// The Message-ID SPEC.md defines: stable per (campaign, supporter, target).
#[must_use]
pub(crate) fn message_id(campaign_id: &str, supporter_key: &str, target_key: &str, domain: &str) -> String {
    let mut h = Sha256::new();
    for part in [campaign_id, supporter_key, target_key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex = digest[..16].iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    format!("<{hex}@{domain}>")
}

/// What a part is called in reasons, and its longest accepted value.
fn describe(part: Part) -> (&'static str, usize) {
    match part {
        Part::Subject => ("Subject", MAX_SUBJECT_CHARS),
        Part::FromName => ("From name", MAX_NAME_CHARS),
        Part::FromAddress => ("From address", MAX_NAME_CHARS),
        Part::ReplyToName => ("Reply-To name", MAX_NAME_CHARS),
        Part::ReplyToAddress => ("Reply-To address", MAX_NAME_CHARS),
    }
}

/// Checks a header value that is the same for every supporter, as
/// [`build`] would: an `Err` means no letter could ever be built.
pub(crate) fn check_part(part: Part, value: &str) -> Result<(), String> {
    let (what, max) = describe(part);
    Headers(None).value(what, value, max)?;
    if matches!(part, Part::FromAddress | Part::ReplyToAddress) {
        value
            .parse::<Address>()
            .map_err(|e| format!("the {what} `{value}` is invalid: {e}"))?;
    }
    Ok(())
}

/// Checks the text every rendering of a header contains (its literal
/// `pieces`, in order): what [`build`] would refuse in any of them, or in
/// their total length, it refuses for every supporter.
pub(crate) fn check_part_floor(part: Part, pieces: &[&str]) -> Result<(), String> {
    let (what, max) = describe(part);
    // Joined by a space so that no piece's end and the next one's start make
    // a pattern (`=?`) that a rendering would not contain.
    Headers(None).value(what, &pieces.join(" "), usize::MAX)?;
    let n: usize = pieces.iter().map(|p| p.chars().count()).sum();
    if n > max {
        return Err(format!(
            "the {what} would be at least {n} characters long (at most {max})"
        ));
    }
    Ok(())
}

/// Validates header-bound values before lettre sees them (lettre panics on
/// CR/LF in display names and writes overlong lines). The supporter, when
/// there is one, is whose columns to name in a reason.
struct Headers<'a>(Option<&'a Supporter>);

impl Headers<'_> {
    /// The columns whose value matches `bad`, to name in a reason.
    fn columns(&self, bad: impl Fn(&str) -> bool) -> String {
        let Some(s) = self.0 else {
            return String::new();
        };
        let cols: Vec<&str> = s
            .headers
            .iter()
            .zip(&s.values)
            .filter(|(_, v)| bad(v))
            .map(|(h, _)| h.as_str())
            .collect();
        if cols.is_empty() {
            String::new()
        } else {
            format!(" (column `{}`)", cols.join("`, `"))
        }
    }

    fn value(&self, what: &str, value: &str, max: usize) -> Result<(), String> {
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            let kind = match c {
                '\r' | '\n' => "a line break",
                '\0' => "a NUL character",
                _ => "a control character",
            };
            return Err(format!(
                "the {what} would contain {kind}{}",
                self.columns(|v| v.chars().any(char::is_control))
            ));
        }
        // `=?utf-8?b?…?=` in a value would be decoded by mail readers: a
        // supporter could make the From name or Subject say anything.
        if let Some(start) = value.find("=?")
            && value[start + 2..].contains("?=")
        {
            return Err(format!(
                "the {what} would contain `=?…?=`, which mail readers decode as an encoded word{}",
                self.columns(|v| v.contains("=?"))
            ));
        }
        let n = value.chars().count();
        if n > max {
            return Err(format!("the {what} would be {n} characters long (at most {max})"));
        }
        Ok(())
    }

    fn mailbox(&self, name_part: Part, address_part: Part, m: &RenderedMailbox) -> Result<Mailbox, String> {
        if let Some(name) = &m.name {
            let (what, max) = describe(name_part);
            self.value(what, name, max)?;
        }
        let (what, max) = describe(address_part);
        self.value(what, &m.address, max)?;
        let address: Address = m
            .address
            .parse()
            .map_err(|e| format!("the {what} `{}` is invalid: {e}", m.address))?;
        Ok(Mailbox::new(m.name.clone().filter(|n| !n.is_empty()), address))
    }
}

/// Builds one message. An `Err` is a reason the supporter's row cannot be sent.
#[allow(clippy::too_many_lines)] // headers, envelope, then the MIME tree, in order
pub(crate) fn build(
    rendered: &Rendered,
    supporter: &Supporter,
    target: &Target,
    settings: &Envelopes<'_>,
    date: SystemTime,
) -> Result<Built, String> {
    let check = Headers(Some(supporter));
    check.value("Subject", &rendered.subject, MAX_SUBJECT_CHARS)?;
    let from = check.mailbox(Part::FromName, Part::FromAddress, &rendered.from)?;
    let reply_to = rendered
        .reply_to
        .as_ref()
        .map(|r| check.mailbox(Part::ReplyToName, Part::ReplyToAddress, r))
        .transpose()?;
    if settings.cc_supporter {
        check.value("Cc name", &supporter.name, MAX_NAME_CHARS)?;
    }

    let mut summary = vec![("From", from.to_string()), ("To", target.mailbox().to_string())];
    let id = message_id(
        settings.campaign_id,
        &supporter.key,
        &target.key(),
        from.email.domain(),
    );
    let mut recipients = vec![target.email.clone()];
    if let Some(r) = &reply_to {
        summary.push(("Reply-To", r.to_string()));
    }
    let cc = settings.cc_supporter.then(|| {
        let name = (!supporter.name.is_empty()).then(|| supporter.name.clone());
        Mailbox::new(name, supporter.email.clone())
    });
    if let Some(cc) = &cc {
        summary.push(("Cc", cc.to_string()));
        recipients.push(supporter.email.clone());
    }
    for b in settings.bcc {
        summary.push(("Bcc", b.to_string()));
        recipients.push(b.email.clone());
    }
    dedup_recipients(&mut recipients);
    summary.push(("Subject", rendered.subject.clone()));
    summary.push(("Message-ID", id.clone()));
    let text = normalize_newlines(&rendered.text);
    if !settings.encode {
        // Validation, the Message-ID and the summary are all done: lettre's
        // builder would only be thrown away (check renders millions).
        return Ok(Built {
            message_id: id,
            from: from.email,
            recipients,
            summary,
            text,
            html: rendered.html.clone(),
            bytes: Vec::new(),
            unsigned: None,
            date_at: None,
            variant: rendered.variant.clone(),
        });
    }
    let mut builder = Message::builder()
        .from(from.clone())
        .to(target.mailbox())
        .subject(rendered.subject.clone())
        .date(date)
        .message_id(Some(id.clone()));
    if let Some(r) = reply_to {
        builder = builder.reply_to(r);
    }
    if let Some(cc) = cc {
        builder = builder.cc(cc);
    }
    for b in settings.bcc {
        builder = builder.bcc(b.clone());
    }
    let envelope = Envelope::new(Some(from.email.clone()), recipients.clone())
        .map_err(|e| format!("cannot build the envelope: {e}"))?;
    builder = builder.envelope(envelope);

    let message = if settings.attachments.is_empty() {
        match &rendered.html {
            Some(html) => builder.multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(text.clone()))
                    .singlepart(SinglePart::html(html.clone())),
            ),
            None => builder.singlepart(SinglePart::plain(text.clone())),
        }
    } else {
        // multipart/mixed: the body (text, or text + HTML), then each file.
        let mut mixed = match &rendered.html {
            Some(html) => MultiPart::mixed().multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(text.clone()))
                    .singlepart(SinglePart::html(html.clone())),
            ),
            None => MultiPart::mixed().singlepart(SinglePart::plain(text.clone())),
        };
        for a in settings.attachments {
            // NOTE: always base64, text files too: a 7bit text part keeps its
            // bare LFs, which the wire turns into CRLF after DKIM signed it.
            let body = Body::new_with_encoding(a.bytes.to_vec(), ContentTransferEncoding::Base64)
                .map_err(|_| format!("cannot encode attachment `{}`", a.filename))?;
            mixed = mixed.singlepart(
                lettre::message::Attachment::new(a.filename.clone()).body(body, a.content_type.clone()),
            );
        }
        builder.multipart(mixed)
    };
    let unsigned = message.map_err(|e| format!("cannot build the message: {e}"))?;
    // Encoded once: signed, or unsigned with its `Date` found for `stamp`.
    let (bytes, date_at) = if let Some(dkim) = settings.dkim {
        let mut message = unsigned.clone();
        message.sign(dkim);
        (message.formatted(), None)
    } else {
        let bytes = unsigned.formatted();
        let at = date_offset(&bytes);
        (bytes, at)
    };
    Ok(Built {
        message_id: id,
        from: from.email,
        recipients,
        summary,
        variant: Variant {
            fingerprint: crate::letter::fingerprint(&text),
            ..rendered.variant.clone()
        },
        text,
        html: rendered.html.clone(),
        bytes,
        unsigned: Some(unsigned),
        date_at,
    })
}

/// Keeps the first of every address, compared ignoring case on the whole
/// address: one mailbox gets one RCPT (a Bcc equal to the target, a
/// supporter also in `bcc`, a supporter who is the target).
///
/// NOTE: RFC 5321 lets a server treat local parts case-sensitively, but no
/// mail system in practice does, and a second RCPT would deliver a second
/// copy; the domain is case-insensitive anyway.
fn dedup_recipients(recipients: &mut Vec<Address>) {
    let mut seen = std::collections::HashSet::with_capacity(recipients.len());
    recipients.retain(|a| seen.insert(a.to_string().to_lowercase()));
}

/// Bare CR and CRLF become LF; lettre then writes CRLF everywhere.
fn normalize_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            name: Some("Satya Nadella".into()),
            email: "Satya@Corp.example".parse().unwrap(),
            fields: toml::Table::new(),
            timezone: None,
            index: 0,
            letter: None,
            subject: None,
            matcher: Vec::new(),
            routed: None,
        }
    }

    fn supporter(name: &str) -> Supporter {
        Supporter {
            line: 2,
            email: "ana@x.org".parse().unwrap(),
            key: "ana@x.org".into(),
            name: name.into(),
            headers: Arc::from(vec!["first_name".to_string()]),
            values: vec![name.to_string()],
        }
    }

    fn rendered(name: &str, subject: &str) -> Rendered {
        Rendered {
            subject: subject.into(),
            from: RenderedMailbox {
                name: Some(format!("{name} via Org")),
                address: "letters@org.example".into(),
            },
            reply_to: Some(RenderedMailbox {
                name: None,
                address: "ana@x.org".into(),
            }),
            text: "Dear Satya,\r\nline two\rline three\n.leading dot\n".into(),
            html: None,
            variant: Variant::default(),
        }
    }

    fn settings(bcc: &[Mailbox]) -> Envelopes<'_> {
        Envelopes {
            campaign_id: "c",
            cc_supporter: true,
            bcc,
            dkim: None,
            encode: true,
            attachments: &[],
        }
    }

    fn build_one(name: &str, subject: &str) -> Result<Built, String> {
        let bcc = ["archive@org.example".parse().unwrap()];
        build(
            &rendered(name, subject),
            &supporter(name),
            &target(),
            &settings(&bcc),
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn headers_envelope_and_message_id() {
        let b = build_one("José Hernández", "José from Oslo").unwrap();
        let text = String::from_utf8(b.bytes.clone()).unwrap();
        assert!(
            text.contains("To: \"Satya Nadella\" <Satya@Corp.example>\r\n"),
            "{text}"
        );
        assert!(text.contains("Reply-To: ana@x.org\r\n"), "{text}");
        assert!(text.contains("Cc: "), "{text}");
        assert!(!text.contains("Bcc"), "Bcc must not be a header: {text}");
        assert!(
            text.contains(&format!("Message-ID: {}\r\n", b.message_id)),
            "{text}"
        );
        assert!(b.message_id.ends_with("@org.example>"));
        assert_eq!(b.recipients[0].to_string(), "Satya@Corp.example");
        assert_eq!(b.recipients.len(), 3);
        // Every line ends in CRLF: no bare CR or LF.
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "{text:?}");
    }

    #[test]
    fn one_rcpt_per_mailbox_ignoring_case_first_kept() {
        let bcc = [
            "SATYA@corp.example".parse().unwrap(),
            "Archive@Org.example".parse().unwrap(),
            "ANA@X.org".parse().unwrap(),
            "archive@org.example".parse().unwrap(),
        ];
        let b = build(
            &rendered("Ana", "s"),
            &supporter("Ana"),
            &target(),
            &settings(&bcc),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let got: Vec<String> = b.recipients.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["Satya@Corp.example", "ana@x.org", "Archive@Org.example"]);
    }

    #[test]
    fn parts_the_same_for_every_row_are_checked_alone() {
        assert!(check_part(Part::FromAddress, "letters@org.example").is_ok());
        let err = check_part(Part::FromAddress, "not-an-address").unwrap_err();
        assert!(
            err.starts_with("the From address `not-an-address` is invalid"),
            "{err}"
        );
        let err = check_part(Part::Subject, &"s".repeat(MAX_SUBJECT_CHARS + 1)).unwrap_err();
        assert_eq!(err, "the Subject would be 251 characters long (at most 250)");
        assert!(check_part(Part::ReplyToName, "").is_ok());
        let err = check_part_floor(Part::Subject, &[": ", &"x".repeat(249)]).unwrap_err();
        assert_eq!(
            err,
            "the Subject would be at least 251 characters long (at most 250)"
        );
        let err = check_part_floor(Part::FromName, &["Org\tvia"]).unwrap_err();
        assert!(err.contains("a control character"), "{err}");
        // Pieces are never glued into a pattern no rendering holds.
        assert!(check_part_floor(Part::Subject, &["a=", "?b?=c"]).is_ok());
    }

    #[test]
    fn message_id_is_stable_and_case_insensitive_by_key() {
        let a = message_id("c", "ana@x.org", "ceo@corp.example", "org.example");
        assert_eq!(a, message_id("c", "ana@x.org", "ceo@corp.example", "org.example"));
        assert_ne!(a, message_id("c", "ana@x.org", "cfo@corp.example", "org.example"));
        assert_ne!(a, message_id("d", "ana@x.org", "ceo@corp.example", "org.example"));
        assert_eq!(a.len(), 1 + 32 + 1 + "org.example".len() + 1);
    }

    #[test]
    fn stamp_dates_the_message_again_and_keeps_its_id() {
        let mut b = build_one("Ana", "s").unwrap();
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let id = b.message_id.clone();
        b.stamp(later, None);
        let text = String::from_utf8(b.bytes.clone()).unwrap();
        assert!(
            text.contains("Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"),
            "{text}"
        );
        assert!(!text.contains("1970"), "{text}");
        assert!(text.contains(&format!("Message-ID: {id}\r\n")), "{text}");
        assert_eq!(text.matches("Date: ").count(), 1, "{text}");
    }

    #[test]
    fn stamp_rewrites_the_date_in_place_as_a_full_encoding_would() {
        let mut b = build_one("Ana", "s").unwrap();
        for secs in [1_800_000_000, 1_800_086_399, 1_700_000_001] {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            b.stamp(at, None);
            let mut whole = b.unsigned.clone().unwrap();
            whole.headers_mut().set(Date::new(at));
            assert_eq!(
                String::from_utf8(b.bytes.clone()).unwrap(),
                String::from_utf8(whole.formatted()).unwrap()
            );
        }
    }

    #[test]
    fn an_unsigned_build_is_signed_once_when_stamped_over_its_date() {
        let key = lettre::message::dkim::DkimSigningKey::new(
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]),
            lettre::message::dkim::DkimSigningAlgorithm::Ed25519,
        )
        .unwrap();
        let dkim = DkimConfig::default_config("s".into(), "org.example".into(), key);
        let mut b = build_one("Ana", "s").unwrap();
        assert!(!String::from_utf8_lossy(&b.bytes).contains("DKIM-Signature"));
        let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        b.stamp(later, Some(&dkim));
        let text = String::from_utf8(b.bytes.clone()).unwrap();
        assert_eq!(text.matches("DKIM-Signature: ").count(), 1, "{text}");
        assert!(text.contains("h=From:Subject:To:Date;"), "{text}");
        assert!(
            text.contains("Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"),
            "{text}"
        );
    }

    #[test]
    fn encoded_words_in_data_are_refused() {
        let err = build_one("=?utf-8?b?U2F0eWE=?=", "s").unwrap_err();
        assert!(
            err.contains("encoded word") && err.contains("first_name"),
            "{err}"
        );
    }

    #[test]
    fn text_letters_declare_mime() {
        let bcc = [];
        let mut r = rendered("Ana", "s");
        r.html = None;
        let b = build(
            &r,
            &supporter("Ana"),
            &target(),
            &settings(&bcc),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let text = String::from_utf8(b.bytes).unwrap();
        assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8"), "{text}");
    }

    #[test]
    fn header_injection_is_refused_with_the_column() {
        let err = build_one("Eve\r\nBcc: evil@x.org", "s").unwrap_err();
        assert!(err.contains("line break") && err.contains("first_name"), "{err}");
        let err = build_one("ok", "subject\nBcc: evil@x.org").unwrap_err();
        assert!(err.contains("Subject"), "{err}");
    }

    #[test]
    fn long_values_are_refused_and_accepted_ones_fit_in_998() {
        assert!(
            build_one(&"x".repeat(MAX_NAME_CHARS + 1), "s")
                .unwrap_err()
                .contains("characters long")
        );
        assert!(build_one("ok", &"y".repeat(MAX_SUBJECT_CHARS + 1)).is_err());
        for (name, subject) in [
            ("𝔁".repeat(MAX_NAME_CHARS - 8), "𝔂".repeat(MAX_SUBJECT_CHARS)),
            ("n".repeat(MAX_NAME_CHARS - 8), "s".repeat(MAX_SUBJECT_CHARS)),
        ] {
            let b = build_one(&name, &subject).unwrap();
            let text = String::from_utf8(b.bytes).unwrap();
            let longest = text.split("\r\n").map(str::len).max().unwrap();
            assert!(longest <= 998, "a header line of {longest} octets");
        }
    }
}
