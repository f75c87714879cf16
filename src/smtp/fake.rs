//! A scripted relay for the engine's unit tests (lettre's `StubTransport`,
//! with a script): each connection and each letter takes the next scripted
//! answer, and every letter that reached the body is logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;

use crate::message::Built;
use crate::smtp::{Attempt, ConnectError, Dialer, End, Envelope, Reply, Session, classify};

/// What one letter gets from the fake.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// This reply to the envelope (before the body).
    Envelope(u16, &'static str),
    /// The connection is lost before the body.
    LostBefore,
    /// The body goes; then this reply.
    Body(u16, &'static str),
    /// The body goes; then the connection is lost.
    LostAfter,
}

#[derive(Default)]
struct Script {
    connects: VecDeque<ConnectError>,
    letters: VecDeque<Answer>,
    /// Message-IDs of letters whose body went, in order.
    bodies: Vec<String>,
    connections: usize,
    /// Letters whose envelope rode with an earlier body.
    primed: usize,
    /// A session primed for one letter was handed another.
    mixed_up: bool,
    /// The replies to a primed envelope come after the last letter's
    /// outcome, not with it.
    late: bool,
}

/// The fake relay: `Clone` shares its script.
#[derive(Clone, Default)]
pub(crate) struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next connection fails so.
    pub(crate) fn refuse_connect(&self, e: ConnectError) -> &Fake {
        self.script().connects.push_back(e);
        self
    }

    /// The next letter gets `answer` (after the scripted ones, 250).
    pub(crate) fn answer(&self, answer: Answer) -> &Fake {
        self.script().letters.push_back(answer);
        self
    }

    /// The replies to each primed envelope come later than the outcome
    /// of the body they rode with.
    pub(crate) fn late_replies(&self) -> &Fake {
        self.script().late = true;
        self
    }

    /// Message-IDs of the letters whose body went.
    pub(crate) fn bodies(&self) -> Vec<String> {
        self.script().bodies.clone()
    }

    /// Letters whose envelope rode with an earlier body.
    pub(crate) fn primed(&self) -> usize {
        self.script().primed
    }

    /// Whether a session primed for one letter was handed another.
    pub(crate) fn mixed_up(&self) -> bool {
        self.script().mixed_up
    }

    /// Connections opened.
    pub(crate) fn connections(&self) -> usize {
        self.script().connections
    }
}

impl Dialer for Fake {
    fn connect(&self) -> Result<Box<dyn Session>, ConnectError> {
        let mut s = self.script();
        if let Some(e) = s.connects.pop_front() {
            return Err(e);
        }
        s.connections += 1;
        Ok(Box::new(FakeSession {
            fake: self.clone(),
            open: true,
            primed: None,
        }))
    }

    fn describe(&self) -> String {
        "fake:25 (none)".into()
    }
}

struct FakeSession {
    fake: Fake,
    open: bool,
    /// The letter whose envelope rode with the last body.
    primed: Option<String>,
}

fn reply(code: u16, text: &str) -> End {
    End::Reply(Reply {
        code,
        text: text.into(),
    })
}

impl Session for FakeSession {
    fn is_ready(&self) -> bool {
        self.open
    }

    fn send(
        &mut self,
        letter: &Built,
        before_body: &mut dyn FnMut() -> Result<Option<Envelope>>,
    ) -> Result<Attempt> {
        if self.primed.take().is_some_and(|id| id != letter.message_id) {
            self.fake.script().mixed_up = true;
        }
        let answer = self.fake.script().letters.pop_front();
        let answer = answer.unwrap_or(Answer::Body(250, "2.0.0 ok"));
        let (end, body_went) = match answer {
            Answer::Envelope(code, text) => (reply(code, text), false),
            Answer::LostBefore => (End::Lost("the server closed the connection".into()), false),
            Answer::Body(code, text) => (reply(code, text), true),
            Answer::LostAfter => (End::Lost("the server closed the connection".into()), true),
        };
        let mut next = None;
        if body_went {
            next = before_body()?;
            self.fake.script().bodies.push(letter.message_id.clone());
        }
        if matches!(end, End::Lost(_)) {
            self.open = false;
        } else if body_went {
            self.primed = next.map(|n| n.message_id);
            if self.primed.is_some() {
                self.fake.script().primed += 1;
            }
        }
        Ok(classify(end, body_went, Vec::new()))
    }

    fn primed(&self) -> Option<&str> {
        self.primed.as_deref()
    }

    fn primed_replied(&self) -> bool {
        self.primed.is_some() && !self.fake.script().late
    }

    fn quit(self: Box<Self>) {}
}
