//! Reading one message from the bounce mailbox: is it a delivery status
//! notification (RFC 3464), and what does it say? Pure: bytes in, facts out.
//!
//! Only the machine-readable part is trusted (`message/delivery-status`);
//! each server words its human part differently. MIME structure and
//! transfer encodings are left to `mail-parser`.

use std::fmt::Write as _;

use mail_parser::{MessageParser, MimeHeaders as _, PartType};
use sha2::{Digest as _, Sha256};

use crate::ui::printable;

/// One message from the mailbox, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    /// Identifies the message for idempotency: `mid:` + its Message-ID, or
    /// `sha256:` + a digest of its bytes.
    pub(crate) source: String,
    /// Addresses it was delivered to (`To`, `Delivered-To`,
    /// `X-Original-To`, `Envelope-To`, `X-Envelope-To`): a VERP token
    /// is found here.
    pub(crate) addressed_to: Vec<String>,
    /// Its `Date`, unix seconds.
    pub(crate) date: Option<i64>,
    /// What kind of message it is.
    pub(crate) kind: Kind,
}

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A delivery status notification.
    Dsn(Dsn),
    /// An automatic reply (out of office, vacation, challenge-response).
    AutoReply,
    /// Anything else, including bounces without a machine-readable part.
    Other,
}

/// The machine-readable content of a DSN.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Dsn {
    /// `Reporting-MTA`, without its type (`dns; `).
    pub(crate) reporting_mta: Option<String>,
    /// One entry per recipient the report is about.
    pub(crate) recipients: Vec<Recipient>,
    /// The Message-ID of the returned message (angle brackets included),
    /// from `text/rfc822-headers` or `message/rfc822`.
    pub(crate) original_message_id: Option<String>,
}

/// One per-recipient block of a DSN.
// NOTE: the field names are RFC 3464's.
#[allow(clippy::struct_field_names)]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Recipient {
    /// `Final-Recipient` address (lower-cased, type removed).
    pub(crate) final_recipient: Option<String>,
    /// `Original-Recipient` address, when given.
    pub(crate) original_recipient: Option<String>,
    /// `Action`, lower-cased: failed, delayed, delivered, relayed, expanded.
    pub(crate) action: String,
    /// `Status`, e.g. `5.1.1`.
    pub(crate) status: String,
    /// `Diagnostic-Code` without its type, on one line.
    pub(crate) diagnostic: Option<String>,
    /// `Remote-MTA` without its type.
    pub(crate) remote_mta: Option<String>,
    /// `Last-Attempt-Date`, unix seconds.
    pub(crate) last_attempt: Option<i64>,
}

impl Recipient {
    /// A final failure: `Action: failed` (a 5.x.x refusal, or a relay that
    /// gave up retrying), or a 5.x.x status without an action.
    #[must_use]
    pub(crate) fn is_failure(&self) -> bool {
        match self.action.as_str() {
            "failed" => true,
            "" => self.status.starts_with('5'),
            _ => false,
        }
    }

    /// A transient notice: `Action: delayed`, or 4.x.x without an action.
    #[must_use]
    pub(crate) fn is_delay(&self) -> bool {
        match self.action.as_str() {
            "delayed" => true,
            "" => self.status.starts_with('4'),
            _ => false,
        }
    }
}

/// Longest diagnostic kept, in characters.
const MAX_DIAGNOSTIC: usize = 500;

/// Reads one raw message.
#[must_use]
pub(crate) fn read(raw: &[u8]) -> Read {
    let digest = || {
        let d = Sha256::digest(raw);
        d.iter().fold(String::from("sha256:"), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let Some(message) = MessageParser::default().parse(raw) else {
        return Read {
            source: digest(),
            addressed_to: Vec::new(),
            date: None,
            kind: Kind::Other,
        };
    };
    let source = message
        .message_id()
        .filter(|id| !id.trim().is_empty())
        .map_or_else(digest, |id| format!("mid:{}", id.trim()));
    let mut addressed_to = Vec::new();
    for (name, value) in message.headers_raw() {
        let name = name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "to" | "delivered-to" | "x-original-to" | "envelope-to" | "x-envelope-to"
        ) {
            addressed_to.extend(addresses(value));
        }
    }
    let date = message.date().map(mail_parser::DateTime::to_timestamp);

    let mut dsn: Option<Dsn> = None;
    let mut original = None;
    for part in &message.parts {
        let Some(ct) = part.content_type() else { continue };
        let ctype = ct.ctype().to_ascii_lowercase();
        let subtype = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ctype.as_str(), subtype.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") if dsn.is_none() => {
                dsn = Some(delivery_status(&String::from_utf8_lossy(part.contents())));
            }
            ("text", "rfc822-headers") | ("message", "global-headers") if original.is_none() => {
                // The part ends where its headers end: give the parser the blank line.
                let mut headers = part.contents().to_vec();
                headers.extend_from_slice(b"\r\n\r\n");
                original = MessageParser::default()
                    .parse_headers(&headers)
                    .and_then(|m| m.message_id().map(|id| format!("<{}>", id.trim())));
            }
            ("message", "rfc822" | "global") if original.is_none() => {
                if let PartType::Message(inner) = &part.body {
                    original = inner.message_id().map(|id| format!("<{}>", id.trim()));
                }
            }
            _ => {}
        }
    }
    let kind = match dsn {
        Some(mut d) if !d.recipients.is_empty() => {
            d.original_message_id = original;
            Kind::Dsn(d)
        }
        _ if is_auto_reply(&message) => Kind::AutoReply,
        _ => Kind::Other,
    };
    Read {
        source,
        addressed_to,
        date,
        kind,
    }
}

/// RFC 3834 `Auto-Submitted`, and the headers vacation responders use.
fn is_auto_reply(message: &mail_parser::Message<'_>) -> bool {
    let raw = |name: &str| {
        message
            .headers_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    raw("Auto-Submitted").is_some_and(|v| v != "no")
        || raw("X-Autoreply").is_some()
        || raw("X-Autorespond").is_some()
        || raw("Precedence").is_some_and(|v| v == "auto_reply")
        || message.subject().is_some_and(|s| {
            let s = s.to_ascii_lowercase();
            [
                "out of office",
                "automatic reply",
                "auto-reply",
                "autoreply",
                "vacation",
            ]
            .iter()
            .any(|w| s.contains(w))
        })
}

/// Parses a `message/delivery-status` body: a per-message group, then one
/// group per recipient, separated by blank lines; fields fold like headers.
fn delivery_status(text: &str) -> Dsn {
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !groups.last().is_some_and(Vec::is_empty) {
                groups.push(Vec::new());
            }
            continue;
        }
        let group = groups.last_mut().expect("one group at least");
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    groups.retain(|g| !g.is_empty());
    let get = |g: &[(String, String)], name: &str| {
        g.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let mut dsn = Dsn::default();
    for group in &groups {
        let is_recipient = get(group, "final-recipient").is_some()
            || get(group, "original-recipient").is_some()
            || get(group, "action").is_some();
        if !is_recipient {
            if dsn.reporting_mta.is_none() {
                dsn.reporting_mta = get(group, "reporting-mta").map(|v| one_line(&untyped(&v)));
            }
            continue;
        }
        let status = get(group, "status")
            .map(|s| {
                one_line(
                    s.split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_end_matches([';', ',']),
                )
            })
            .unwrap_or_default();
        dsn.recipients.push(Recipient {
            final_recipient: get(group, "final-recipient").map(|v| address_of(&v)),
            original_recipient: get(group, "original-recipient").map(|v| address_of(&v)),
            action: get(group, "action")
                .map(|a| a.split_whitespace().next().unwrap_or("").to_ascii_lowercase())
                .unwrap_or_default(),
            status,
            diagnostic: get(group, "diagnostic-code").map(|v| one_line(&untyped(&v))),
            remote_mta: get(group, "remote-mta").map(|v| one_line(&untyped(&v))),
            last_attempt: get(group, "last-attempt-date")
                .and_then(|d| mail_parser::DateTime::parse_rfc822(&d))
                .map(|d| d.to_timestamp()),
        });
    }
    dsn
}

/// `rfc822; Jane@Corp.example` → `jane@corp.example`.
fn address_of(value: &str) -> String {
    untyped(value).trim_matches(['<', '>', ' ']).to_ascii_lowercase()
}

/// `smtp; 550 …` → `550 …`: drops the type before the first `;`, when
/// it looks like one (`dns`, `smtp`, `rfc822`, `x-…`).
fn untyped(value: &str) -> String {
    match value.split_once(';') {
        Some((kind, rest))
            if !kind.is_empty()
                && kind
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            rest.trim().to_string()
        }
        _ => value.trim().to_string(),
    }
}

/// One line, control characters escaped (`ui::printable`), bounded.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    printable(&joined).chars().take(MAX_DIAGNOSTIC).collect()
}

/// The addresses in a header value (`Name <a@b>, c@d`), lower-cased.
fn addresses(value: &str) -> Vec<String> {
    value
        .split([',', ' ', '\t', '\r', '\n', '<', '>', '"', ';'])
        .map(str::trim)
        .filter(|w| w.contains('@') && !w.starts_with('@'))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The group key for a diagnostic: what recipient-specific detail (an
/// address, a queue id, a host name) removed, so that one problem across
/// 500 letters reads as one line.
#[must_use]
pub(crate) fn problem_key(diagnostic: &str) -> String {
    let words: Vec<String> = diagnostic
        .split_whitespace()
        .map(|w| {
            let core = w.trim_matches(|c: char| !c.is_alphanumeric());
            let digits = core.bytes().filter(u8::is_ascii_digit).count();
            let letters = core.bytes().filter(u8::is_ascii_alphabetic).count();
            if core.contains('@') {
                "…".to_string()
            } else if core.len() >= 8 && digits >= 2 && (letters >= 2 || digits >= 6) {
                // queue ids, session ids, time stamps, host names like BN8NAM12FT045.
                "…".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    for w in words {
        if !(w == "…" && out.last().is_some_and(|l| l == "…")) {
            out.push(w);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX: &str = "From: MAILER-DAEMON@relay.org.example (Mail Delivery System)\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
To: bounces+abc123@org.example\r\n\
Message-ID: <20261201.AB12@relay.org.example>\r\n\
Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1\"\r\n\
\r\n\
--B1\r\n\
Content-Type: text/plain\r\n\
\r\n\
I'm sorry to have to inform you that your message could not be delivered.\r\n\
--B1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; relay.org.example\r\n\
Arrival-Date: Tue,  1 Dec 2026 09:59:58 +0000 (UTC)\r\n\
\r\n\
Final-Recipient: rfc822; CEO@corp.example\r\n\
Original-Recipient: rfc822;ceo@corp.example\r\n\
Action: failed\r\n\
Status: 5.7.1\r\n\
Remote-MTA: dns; mx.corp.example\r\n\
Diagnostic-Code: smtp; 550 5.7.1 Message rejected as bulk\r\n\
\x20   mail (queue id 4XyZ12abQ9)\r\n\
\r\n\
--B1\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: Ana via Org <letters@org.example>\r\n\
Message-ID: <0123abcd@org.example>\r\n\
--B1--\r\n";

    #[test]
    fn reads_the_machine_part() {
        let r = read(POSTFIX.as_bytes());
        assert_eq!(r.source, "mid:20261201.AB12@relay.org.example");
        assert_eq!(r.addressed_to, vec!["bounces+abc123@org.example"]);
        let Kind::Dsn(d) = r.kind else {
            panic!("{:?}", r.kind)
        };
        assert_eq!(d.reporting_mta.as_deref(), Some("relay.org.example"));
        assert_eq!(d.original_message_id.as_deref(), Some("<0123abcd@org.example>"));
        let rcpt = &d.recipients[0];
        assert_eq!(rcpt.final_recipient.as_deref(), Some("ceo@corp.example"));
        assert_eq!((rcpt.action.as_str(), rcpt.status.as_str()), ("failed", "5.7.1"));
        assert_eq!(
            rcpt.diagnostic.as_deref(),
            Some("550 5.7.1 Message rejected as bulk mail (queue id 4XyZ12abQ9)")
        );
        assert_eq!(rcpt.remote_mta.as_deref(), Some("mx.corp.example"));
        assert!(rcpt.is_failure() && !rcpt.is_delay());
    }

    #[test]
    fn a_message_without_a_machine_part_is_not_a_dsn() {
        let plain = "From: MAILER-DAEMON@x.example\r\nSubject: failure notice\r\n\r\nSorry, it bounced.\r\n";
        assert_eq!(read(plain.as_bytes()).kind, Kind::Other);
        let ooo =
            "From: ceo@corp.example\r\nAuto-Submitted: auto-replied\r\nSubject: Re: hi\r\n\r\nAway.\r\n";
        assert_eq!(read(ooo.as_bytes()).kind, Kind::AutoReply);
        assert!(read(b"").source.starts_with("sha256:"));
    }

    #[test]
    fn diagnostics_keep_their_controls_escaped() {
        let text = POSTFIX.replace(
            "Diagnostic-Code: smtp; 550 5.7.1 Message rejected as bulk\r\n",
            "Diagnostic-Code: smtp; 550 5.7.1 \u{1b}[2Jrejected \u{202e}moc.x\r\n",
        );
        let Kind::Dsn(d) = read(text.as_bytes()).kind else {
            panic!("not a DSN")
        };
        assert_eq!(
            d.recipients[0].diagnostic.as_deref(),
            Some("550 5.7.1 \\u{1b}[2Jrejected \\u{202e}moc.x mail (queue id 4XyZ12abQ9)")
        );
    }

    #[test]
    fn status_classes() {
        let r = |action: &str, status: &str| Recipient {
            action: action.into(),
            status: status.into(),
            ..Recipient::default()
        };
        assert!(r("failed", "5.1.1").is_failure());
        assert!(r("failed", "4.4.7").is_failure());
        assert!(r("", "5.0.0").is_failure());
        assert!(r("delayed", "4.4.1").is_delay() && !r("delayed", "4.4.1").is_failure());
        assert!(r("", "4.2.2").is_delay());
        assert!(!r("delivered", "2.0.0").is_failure() && !r("relayed", "2.0.0").is_delay());
    }

    #[test]
    fn problems_group_without_their_ids() {
        let a = problem_key(
            "550 5.7.1 Rejected as bulk mail [BN8NAM12FT045.eop.outlook.com 2026-12-01T10:00:00]",
        );
        let b = problem_key(
            "550 5.7.1 Rejected as bulk mail [CY4PR02MB2214.eop.outlook.com 2026-12-02T11:30:00]",
        );
        assert_eq!(a, b);
        assert_eq!(
            problem_key("550 5.1.1 <ceo@corp.example>: Recipient address rejected"),
            "550 5.1.1 … Recipient address rejected"
        );
    }
}
