//! Our own SMTP client, behind a small seam.
//!
//! `wire` reads replies and writes data under deadlines (and is where server
//! bytes become text); `session` opens TCP, TLS, STARTTLS and AUTH and sends
//! letters; `attempt` says how each letter's exchange ended. The engine sees
//! only [`Dialer`] and [`Session`], so its rules are unit-tested with a
//! scripted fake (`fake`) while the socket tests stay end to end.
//!
//! NOTE: we drive SMTP ourselves instead of lettre's transport because lettre
//! 0.11 cannot say *when* a connection failed (before DATA is safe to retry,
//! after the final dot is not), stalls ~40 ms per message (no `TCP_NODELAY`),
//! has no PIPELINING, sends AUTH over plain connections, and kept bytes a
//! man-in-the-middle injected before STARTTLS. lettre still builds and signs
//! the messages (`message.rs`).

mod attempt;
#[cfg(test)]
pub(crate) mod fake;
mod session;
mod wire;

use anyhow::Result;
use lettre::Address;

pub(crate) use attempt::Attempt;
#[cfg(test)]
pub(crate) use attempt::{End, RefusedCopy, classify};
pub(crate) use session::{ConnectError, Connector, tls_client_config};
pub(crate) use wire::{Reply, watch_stop};

use crate::message::Built;

/// What MAIL and RCPT carry for one letter, and its Message-ID.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) message_id: String,
    pub(crate) from: Address,
    /// The target first, then the copies.
    pub(crate) recipients: Vec<Address>,
}

impl From<&Built> for Envelope {
    fn from(b: &Built) -> Envelope {
        Envelope {
            message_id: b.message_id.clone(),
            from: b.from.clone(),
            recipients: b.recipients.clone(),
        }
    }
}

/// Opens sessions to the relay.
pub(crate) trait Dialer: Send + Sync {
    /// Connects, upgrades to TLS, greets and authenticates.
    fn connect(&self) -> Result<Box<dyn Session>, ConnectError>;
    /// `host:port (SECURITY)` for messages.
    fn describe(&self) -> String;
}

/// One open session, reused for many letters.
pub(crate) trait Session: Send {
    /// Whether another letter may go on it now (not closed, not at its
    /// letter cap, not closed by the server while idle), or it is primed
    /// for the next letter (see [`Session::send`]). Never blocks.
    fn is_ready(&self) -> bool;
    /// Sends one letter. `before_body` runs after the server's `354` and
    /// before the body is written: the ledger commits `sending` there, so a
    /// letter recorded `sending` (later `unknown`) really was about to go.
    /// Its error stops the letter (never sent) and is returned.
    ///
    /// `before_body` also names the letter to send next on this session, if
    /// one is ready. Where the server pipelines, that letter's MAIL, RCPT and
    /// DATA leave in the same write as this body (RFC 2920 §3.1), and their
    /// replies come back with this letter's: one round trip per letter. The
    /// next `send` must then be that letter ([`Session::primed`]); anything
    /// else first quits the session.
    fn send(
        &mut self,
        letter: &Built,
        before_body: &mut dyn FnMut() -> Result<Option<Envelope>>,
    ) -> Result<Attempt>;
    /// The Message-ID of the letter whose envelope went ahead (see `next`).
    fn primed(&self) -> Option<&str>;
    /// Whether every reply to that envelope is already in: it came back
    /// with the last letter's outcome, so the primed letter's `send` reaches
    /// its `before_body` without waiting for the server.
    fn primed_replied(&self) -> bool;
    /// Ends the session politely.
    fn quit(self: Box<Self>);
}
