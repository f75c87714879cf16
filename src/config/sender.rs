//! `[sender]` and `[dkim]`: who the letters are from, and how the sending
//! domain signs them.
//!
//! The From and Reply-To templates stay text here; `letter.rs` renders them
//! and `dkim.rs` signs with the key.

use std::path::PathBuf;

use lettre::message::Mailbox;
use serde::Deserialize;
use toml::Spanned;

use super::Source;

/// `[sender]`
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    /// From template, e.g. `{{ supporter.name }} via Org <letters@org.example>`.
    pub(crate) from: Source,
    /// Reply-To template (optional).
    pub(crate) reply_to: Option<Source>,
    /// Cc the supporter (default false).
    pub(crate) cc_supporter: bool,
    /// Extra Bcc recipients (default none).
    pub(crate) bcc: Vec<Mailbox>,
}

/// `[dkim]`
#[derive(Debug, Clone)]
pub(crate) struct Dkim {
    /// The signing domain (`d=`).
    pub(crate) domain: String,
    /// The selector (`s=`).
    pub(crate) selector: String,
    /// The private key PEM file, resolved.
    pub(crate) private_key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSender {
    from: Spanned<String>,
    reply_to: Option<Spanned<String>>,
    #[serde(default)]
    cc_supporter: bool,
    #[serde(default)]
    bcc: Vec<Mailbox>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    domain: String,
    selector: String,
    private_key_file: PathBuf,
}

/// `[sender]`, with each template's line.
pub(super) fn sender_from_raw(raw: RawSender, at: &dyn Fn(std::ops::Range<usize>) -> String) -> Sender {
    let source = |s: Spanned<String>| Source {
        location: at(s.span()),
        text: s.into_inner(),
    };
    Sender {
        from: source(raw.from),
        reply_to: raw.reply_to.map(source),
        cc_supporter: raw.cc_supporter,
        bcc: raw.bcc,
    }
}

/// `[dkim]`, its key file resolved.
pub(super) fn dkim_from_raw(k: RawDkim, resolve: &dyn Fn(PathBuf) -> PathBuf) -> Dkim {
    Dkim {
        domain: k.domain,
        selector: k.selector,
        private_key_file: resolve(k.private_key_file),
    }
}
