//! Letters held back by hand (`mailer skip`) and put back in the queue
//! (`mailer requeue`): a held letter is `skipped` and flagged, so that no run
//! sends it or re-evaluates it. Never a `sent` or `sending` one.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::error::disk_error;
use super::schema::has_held_column;
use super::{Ledger, State};

/// What [`Ledger::hold`] or [`Ledger::release`] did to one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Changed; the state it had before (`None`: no row yet, i.e. pending).
    Changed(Option<State>),
    /// Left as it is, in this state.
    Untouched(State),
}

impl Ledger {
    /// Holds a letter back by hand: `skipped` with `reason`, flagged so that
    /// no run sends it (nor re-evaluates it) until [`Ledger::release`].
    /// Never touches a letter that is `sent` or in flight (`sending`).
    pub(crate) fn hold(
        &self,
        supporter: &str,
        target: &str,
        line: Option<u64>,
        reason: &str,
        now: i64,
    ) -> Result<Change> {
        let tx = self.conn.unchecked_transaction()?;
        let before = state_of(&tx, supporter, target)?;
        if let Some(s @ (State::Sent | State::Sending)) = before {
            return Ok(Change::Untouched(s));
        }
        tx.execute(
            "INSERT INTO letters (supporter, target, state, line, reply, held, updated_at)
             VALUES (?1, ?2, 'skipped', ?3, ?4, 1, ?5)
             ON CONFLICT (supporter, target) DO UPDATE SET state = 'skipped', line = coalesce(?3, line),
                reply = ?4, held = 1, next_attempt_at = NULL, updated_at = ?5
             WHERE state NOT IN ('sent', 'sending')",
            params![supporter, target, line.map(|l| l as i64), reason, now],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(Change::Changed(before))
    }

    /// Puts a `failed`, `unknown` or `skipped` letter back in the queue
    /// (`pending`, no longer held). Any other state is left as it is.
    pub(crate) fn release(&self, supporter: &str, target: &str, now: i64) -> Result<Change> {
        let tx = self.conn.unchecked_transaction()?;
        let before = state_of(&tx, supporter, target)?;
        match before {
            Some(State::Failed | State::Unknown | State::Skipped) => {}
            Some(s) => return Ok(Change::Untouched(s)),
            None => return Ok(Change::Untouched(State::Pending)),
        }
        tx.execute(
            "UPDATE letters SET state = 'pending', held = 0, reply = NULL, next_attempt_at = NULL,
                updated_at = ?3
             WHERE supporter = ?1 AND target = ?2 AND state IN ('failed', 'unknown', 'skipped')",
            params![supporter, target, now],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(Change::Changed(before))
    }

    /// Letters held back by hand: (supporter, target, reason).
    pub(crate) fn holds(&self) -> Result<Vec<(String, String, String)>> {
        if !has_held_column(&self.conn)? {
            return Ok(Vec::new()); // a ledger written before holds existed
        }
        let mut stmt = self.conn.prepare(
            "SELECT supporter, target, coalesce(reply, '') FROM letters
             WHERE held = 1 AND state = 'skipped' ORDER BY supporter, target",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }

    /// Every target this supporter has a ledger row for.
    pub(crate) fn targets_of(&self, supporter: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT target FROM letters WHERE supporter = ?1 ORDER BY target")?;
        let rows = stmt.query_map([supporter], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(Into::into)
    }
}

/// A letter's state as `conn` (the caller's transaction) sees it; `None`:
/// no row yet.
fn state_of(conn: &Connection, supporter: &str, target: &str) -> Result<Option<State>> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM letters WHERE supporter = ?1 AND target = ?2",
            [supporter, target],
            |r| r.get(0),
        )
        .optional()?;
    state.as_deref().map(State::parse).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Key;
    use crate::ledger::tests::ledger;
    use crate::letter::Variant;

    #[test]
    fn hold_and_release_never_touch_a_sent_letter() {
        let (_d, l) = ledger();
        let sent = Key {
            supporter: "a@x.org",
            target: "t@x.org",
            line: 2,
            message_id: "<a@o>",
            variant: &Variant::default(),
        };
        l.claim(&sent, 1).unwrap();
        l.record(&sent, &crate::ledger::tests::sent("250", "ok", &[]), 0, true, 2)
            .unwrap();
        assert_eq!(
            l.hold("a@x.org", "t@x.org", Some(2), "asked", 3).unwrap(),
            Change::Untouched(State::Sent)
        );
        assert_eq!(
            l.release("a@x.org", "t@x.org", 3).unwrap(),
            Change::Untouched(State::Sent)
        );
        let r = l.get("a@x.org", "t@x.org").unwrap().unwrap();
        assert_eq!((r.state, r.reply.as_deref()), (State::Sent, Some("250 ok")));

        // A letter never tried is held with its reason, and listed as held.
        assert_eq!(
            l.hold("b@x.org", "t@x.org", Some(3), "asked to wait", 4).unwrap(),
            Change::Changed(None)
        );
        let r = l.get("b@x.org", "t@x.org").unwrap().unwrap();
        assert_eq!(
            (r.state, r.reply.as_deref()),
            (State::Skipped, Some("asked to wait"))
        );
        assert_eq!(
            l.holds().unwrap(),
            vec![("b@x.org".into(), "t@x.org".into(), "asked to wait".into())]
        );
        // A skip for invalid data is not a hold.
        l.skip("c@x.org", "t@x.org", 4, "bad email", 4).unwrap();
        assert_eq!(l.holds().unwrap().len(), 1);
        // Release puts it back in the queue.
        assert_eq!(
            l.release("b@x.org", "t@x.org", 5).unwrap(),
            Change::Changed(Some(State::Skipped))
        );
        assert_eq!(
            l.get("b@x.org", "t@x.org").unwrap().unwrap().state,
            State::Pending
        );
        assert!(l.holds().unwrap().is_empty());
        // A pending letter is already queued.
        assert_eq!(
            l.release("b@x.org", "t@x.org", 6).unwrap(),
            Change::Untouched(State::Pending)
        );
    }
}
