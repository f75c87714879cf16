//! How one attempt at one letter ended: the one result type from the wire
//! (the session classifies each exchange) through the engine (retries, the
//! policy breaker, pacing) to the ledger (the letter's new state) and the
//! report. [`classify`] is the one pure rule from the phase and the reply.

use std::fmt;

use crate::smtp::wire::Reply;

/// What the server said last, or that it said nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// A reply (to MAIL, a RCPT, DATA or the body).
    Reply(Reply),
    /// The connection failed: why, as a person reads it.
    Lost(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Reply(r) => write!(f, "{r}"),
            End::Lost(why) => f.write_str(why),
        }
    }
}

/// A Cc or Bcc copy the server refused while it took the letter itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefusedCopy {
    /// The copy's address.
    pub(crate) recipient: String,
    /// The server's RCPT reply.
    pub(crate) reply: Reply,
}

/// How one attempt at one letter ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// 2xx after the final dot. `refused`: Cc/Bcc copies the server would
    /// not take (the target got the letter).
    Sent { reply: Reply, refused: Vec<RefusedCopy> },
    /// A 4xx, or a connection lost before the body went: try again.
    /// `handed_over`: the body had been sent.
    Deferred { end: End, handed_over: bool },
    /// A 5xx: not again without `--retry-failed`.
    Failed { reply: Reply, handed_over: bool },
    /// The body went and no reply came: it may have been delivered.
    Unknown(String),
}

impl Attempt {
    /// The server's words (or why there were none), as stored and shown.
    pub(crate) fn text(&self) -> String {
        match self {
            Attempt::Sent { reply, .. } | Attempt::Failed { reply, .. } => reply.to_string(),
            Attempt::Deferred { end, .. } => end.to_string(),
            Attempt::Unknown(why) => why.clone(),
        }
    }

    /// Whether the body had been sent.
    pub(crate) fn handed_over(&self) -> bool {
        match self {
            Attempt::Sent { .. } | Attempt::Unknown(_) => true,
            Attempt::Deferred { handed_over, .. } | Attempt::Failed { handed_over, .. } => *handed_over,
        }
    }

    /// The relay asked us to slow down (see [`Reply::is_throttle`]): the
    /// letter is deferred, never failed, for it.
    pub(crate) fn throttled(&self) -> Option<&Reply> {
        match self {
            Attempt::Deferred {
                end: End::Reply(reply),
                ..
            } if reply.is_throttle() => Some(reply),
            _ => None,
        }
    }

    /// A refusal for policy (5.7.x): what the breaker counts.
    pub(crate) fn policy(&self) -> Option<&Reply> {
        match self {
            Attempt::Failed { reply, .. } if reply.is_policy() => Some(reply),
            _ => None,
        }
    }
}

/// The one rule: how an exchange that ended with `end` comes out, given
/// whether the body had been handed over (`body_went`). A 2xx before the
/// body cannot end an exchange; the session never asks.
pub(crate) fn classify(end: End, body_went: bool, refused: Vec<RefusedCopy>) -> Attempt {
    match end {
        End::Reply(reply) if reply.is_positive() => Attempt::Sent { reply, refused },
        End::Reply(reply) if reply.is_transient() => Attempt::Deferred {
            end: End::Reply(reply),
            handed_over: body_went,
        },
        End::Reply(reply) => Attempt::Failed {
            reply,
            handed_over: body_went,
        },
        End::Lost(why) if body_went => Attempt::Unknown(why),
        end @ End::Lost(_) => Attempt::Deferred {
            end,
            handed_over: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> End {
        End::Reply(Reply {
            code,
            text: text.into(),
        })
    }

    #[test]
    fn the_phase_and_the_reply_decide() {
        let lost = || End::Lost("the server closed the connection".into());
        // (end, body went, state, handed over, policy)
        let table = [
            (reply(250, "ok"), true, "sent", true, false),
            (reply(451, "4.3.0 later"), false, "deferred", false, false),
            (reply(451, "4.3.0 later"), true, "deferred", true, false),
            (reply(421, "4.7.0 closing"), false, "deferred", false, false),
            (reply(550, "5.1.1 no such user"), false, "failed", false, false),
            (reply(554, "5.7.1 spam"), true, "failed", true, true),
            (reply(503, "bad sequence"), false, "failed", false, false),
            (lost(), false, "deferred", false, false),
            (lost(), true, "unknown", true, false),
        ];
        for (end, body_went, state, handed_over, policy) in table {
            let shown = format!("{end} (body went: {body_went})");
            let a = classify(end, body_went, Vec::new());
            let got = match a {
                Attempt::Sent { .. } => "sent",
                Attempt::Deferred { .. } => "deferred",
                Attempt::Failed { .. } => "failed",
                Attempt::Unknown(_) => "unknown",
            };
            assert_eq!(got, state, "{shown}");
            assert_eq!(a.handed_over(), handed_over, "{shown}");
            assert_eq!(a.policy().is_some(), policy, "{shown}");
        }
    }

    #[test]
    fn the_text_is_the_servers() {
        let a = classify(reply(451, "4.3.0 later"), false, Vec::new());
        assert_eq!(a.text(), "451 4.3.0 later");
        let a = classify(End::Lost("reset".into()), true, Vec::new());
        assert_eq!(a.text(), "reset");
    }
}
