//! The policy breaker: when the server refuses the letters of several
//! supporters in a row for policy (5.7.x), that is a sender problem (SPF,
//! DKIM, sending rights), not theirs: the run stops and those letters go
//! back to `deferred` with the usual backoff. One supporter's letters to
//! many targets are that supporter's problem.

use std::collections::HashSet;

use crate::ledger::{Record, State};
use crate::smtp::Attempt;

/// Distinct supporters whose letters the server refused for policy (5.7.x),
/// with no letter delivered in between, that stop the run as a sender problem.
pub(crate) const POLICY_STREAK: usize = 3;

/// The breaker's state.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    /// Consecutive 5.7.x refusals: (supporter, target, when to retry).
    streak: Vec<(String, String, i64)>,
    /// It tripped: later policy refusals (letters in flight) are held too.
    tripped: bool,
    /// Letters put back from `failed` to `deferred`.
    pub(crate) requeued: u64,
}

/// What the breaker asks of the engine after one attempt.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Put these letters back to `deferred`: (supporter, target, when).
    pub(crate) requeue: Vec<(String, String, i64)>,
    /// It tripped just now: stop the run.
    pub(crate) trips: bool,
}

impl Breaker {
    fn supporters(&self) -> usize {
        self.streak
            .iter()
            .map(|(s, _, _)| s)
            .collect::<HashSet<_>>()
            .len()
    }

    /// Counts one attempt of (`supporter`, `target`); `held`: the breaker
    /// held this letter back once already, so a refusal now is its own.
    /// `next`: when a requeued letter may go again.
    pub(crate) fn track(
        &mut self,
        supporter: &str,
        target: &str,
        held: bool,
        attempt: &Attempt,
        next: i64,
    ) -> Verdict {
        let policy = attempt.policy().is_some() && !held;
        match attempt {
            _ if policy => {
                self.streak.push((supporter.into(), target.into(), next));
                let trips = !self.tripped && self.supporters() >= POLICY_STREAK;
                // After the trip, letters other workers had in flight are held the same way.
                if trips || self.tripped {
                    self.tripped = true;
                    return Verdict {
                        requeue: std::mem::take(&mut self.streak),
                        trips,
                    };
                }
            }
            // Other refusals neither extend nor break a streak.
            Attempt::Failed { .. } | Attempt::Deferred { .. } => {}
            _ if self.tripped => {}
            _ => self.streak.clear(),
        }
        Verdict::default()
    }
}

/// A `deferred` letter whose last reply is a 5xx: only the policy breaker
/// defers a permanent refusal.
pub(crate) fn held_by_breaker(r: &Record) -> bool {
    r.state == State::Deferred
        && r.reply
            .as_deref()
            .and_then(|t| t.get(..3))
            .is_some_and(|code| code.starts_with('5') && code.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{End, Reply, classify};

    fn at_body(code: u16, text: &str) -> Attempt {
        let reply = Reply {
            code,
            text: text.into(),
        };
        classify(End::Reply(reply), true, Vec::new())
    }

    #[test]
    fn distinct_supporters_trip_it_and_one_supporter_does_not() {
        let spam = at_body(554, "5.7.1 spam");
        let mut b = Breaker::default();
        // One supporter's letters to three targets: that supporter's problem.
        for t in ["t1", "t2", "t3"] {
            assert!(!b.track("a", t, false, &spam, 60).trips);
        }
        let v = b.track("b", "t1", false, &spam, 60);
        assert!(!v.trips && v.requeue.is_empty());
        let v = b.track("c", "t1", false, &spam, 60);
        assert!(v.trips);
        assert_eq!(v.requeue.len(), 5);
        // A letter in flight refused after the trip is held too, without tripping again.
        let v = b.track("d", "t1", false, &spam, 60);
        assert_eq!((v.trips, v.requeue.len()), (false, 1));
    }

    #[test]
    fn a_delivery_breaks_the_streak_and_other_refusals_do_not() {
        let spam = at_body(554, "5.7.1 spam");
        let mut b = Breaker::default();
        b.track("a", "t", false, &spam, 60);
        b.track("b", "t", false, &at_body(550, "5.1.1 unknown user"), 60);
        b.track("c", "t", false, &at_body(451, "4.3.0 later"), 60);
        b.track("d", "t", false, &spam, 60);
        b.track("e", "t", false, &at_body(250, "ok"), 60);
        b.track("f", "t", false, &spam, 60);
        b.track("g", "t", false, &spam, 60);
        assert!(!b.tripped);
        // A letter it held once counts no more.
        assert!(!b.track("h", "t", true, &spam, 60).trips);
        assert!(b.track("i", "t", false, &spam, 60).trips);
    }

    #[test]
    fn only_a_deferred_5xx_was_held_by_it() {
        let r = |state, reply: &str| Record {
            supporter: "a".into(),
            target: "t".into(),
            state,
            attempts: 1,
            line: None,
            message_id: None,
            reply: Some(reply.into()),
            next_attempt_at: None,
            sent_at: None,
            held: false,
        };
        assert!(held_by_breaker(&r(State::Deferred, "554 5.7.1 spam")));
        assert!(!held_by_breaker(&r(State::Deferred, "451 later")));
        assert!(!held_by_breaker(&r(State::Failed, "554 5.7.1 spam")));
    }
}
