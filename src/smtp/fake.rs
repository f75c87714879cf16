//! A scripted relay for the engine's unit tests (lettre's `StubTransport`,
//! with a script): each connection and each letter takes the next scripted
//! answer, and every letter that reached the body is logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;

use crate::message::Built;
use crate::smtp::{Attempt, ConnectError, Dialer, End, Reply, Session, classify};

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

    /// Message-IDs of the letters whose body went.
    pub(crate) fn bodies(&self) -> Vec<String> {
        self.script().bodies.clone()
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
        }))
    }

    fn describe(&self) -> String {
        "fake:25 (none)".into()
    }
}

struct FakeSession {
    fake: Fake,
    open: bool,
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

    fn send(&mut self, letter: &Built, before_body: &mut dyn FnMut() -> Result<()>) -> Result<Attempt> {
        let answer = self.fake.script().letters.pop_front();
        let answer = answer.unwrap_or(Answer::Body(250, "2.0.0 ok"));
        let (end, body_went) = match answer {
            Answer::Envelope(code, text) => (reply(code, text), false),
            Answer::LostBefore => (End::Lost("the server closed the connection".into()), false),
            Answer::Body(code, text) => (reply(code, text), true),
            Answer::LostAfter => (End::Lost("the server closed the connection".into()), true),
        };
        if body_went {
            before_body()?;
            self.fake.script().bodies.push(letter.message_id.clone());
        }
        if matches!(end, End::Lost(_)) {
            self.open = false;
        }
        Ok(classify(end, body_went, Vec::new()))
    }

    fn quit(self: Box<Self>) {}
}
