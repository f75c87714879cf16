//! A letter's writes: its claim (`sending`, fsynced before the handoff),
//! how the attempt ended, a skip or requeue, and recovery of the letters a
//! dead run left `sending`. Whether to send is `cmd/send`'s.

use anyhow::Result;
use rusqlite::params;

use super::error::disk_error;
use super::{Key, Ledger, Outcome, State};
use crate::smtp::Attempt;

impl Ledger {
    /// Turns `sending` rows left by a run that died into `unknown`, and
    /// records each as a handed-over attempt (it counts against the daily
    /// limit: the server may well have it), with this run's relay account
    /// (set [`Ledger::set_relay`] first): most likely the one it went to.
    pub(crate) fn recover(&self, now: i64) -> Result<usize> {
        let reply = "the run ended after handing the letter over, before the server replied";
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO attempts (supporter, target, at, outcome, reply, handed_over, relay)
             SELECT supporter, target, updated_at, 'unknown', ?1, 1, ?2 FROM letters WHERE state = 'sending'",
            params![reply, self.relay],
        )?;
        let n = tx.execute(
            "UPDATE letters SET state = 'unknown', updated_at = ?1, reply = ?2 WHERE state = 'sending'",
            params![now, reply],
        )?;
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(n)
    }

    /// One letter's [`Ledger::claim_many`] (runs claim through [`SharedLedger`]).
    #[cfg(test)]
    pub(super) fn claim(&self, letter: &Key<'_>, now: i64) -> Result<()> {
        self.claim_many(&[*letter], &[], now)?
            .remove(0)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Claims several letters in one transaction with one fsync (group
    /// commit: workers whose claims arrive together share the disk flush).
    /// The outer `Err` is the commit failing (nothing claimed); an inner
    /// `Err` is a letter already recorded as sent, which must not go again,
    /// or one that is `sending`: another run holds it (the run lock makes
    /// that impossible; this refusal is the ledger's own second line).
    ///
    /// Refuses every letter (outer `Err`) once the ledger's path no longer
    /// names the file this run locked ([`Ledger::still_ours`]).
    ///
    /// `outcomes` are earlier letters' outcomes ([`Ledger::record`]), written
    /// first in the same transaction: a letter's `sent` and the next
    /// letter's `sending` share one commit when their replies came together.
    pub(crate) fn claim_many(
        &self,
        letters: &[Key<'_>],
        outcomes: &[&Outcome],
        now: i64,
    ) -> Result<Vec<Result<(), String>>> {
        let mut outcomes = outcomes;
        if !outcomes.is_empty()
            && self.lost.get().is_none()
            && self.identity.and_then(|i| self.gone(i)).is_some()
        {
            // The ledger went: these outcomes are written first, so the
            // copy `still_ours` saves has them.
            for o in outcomes {
                o.record(self)?;
            }
            outcomes = &[];
        }
        self.still_ours()?;
        self.synchronous("FULL")?;
        let tx = self.conn.unchecked_transaction()?;
        let mut results = Vec::with_capacity(letters.len());
        for o in outcomes {
            o.write(self).map_err(|e| disk_error(e, &self.path))?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO letters (supporter, target, state, attempts, line, message_id, updated_at,
                    fingerprint, letter_file, language, subject_variant, letter_version)
                 VALUES (?1, ?2, 'sending', 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (supporter, target) DO UPDATE SET
                    state = 'sending', attempts = attempts + 1, line = ?3, message_id = ?4, updated_at = ?5,
                    fingerprint = ?6, letter_file = ?7, language = ?8, subject_variant = ?9,
                    letter_version = ?10
                 WHERE state NOT IN ('sent', 'bounced', 'sending')",
            )?;
            let mut held =
                tx.prepare_cached("SELECT state FROM letters WHERE supporter = ?1 AND target = ?2")?;
            for k in letters {
                let v = k.variant;
                let known = !v.version.is_empty();
                let changed = stmt
                    .execute(params![
                        k.supporter,
                        k.target,
                        k.line as i64,
                        k.message_id,
                        now,
                        Some(v.fingerprint.as_str()).filter(|f| !f.is_empty()),
                        known.then_some(&*v.letter_file),
                        known.then_some(&*v.language),
                        known.then_some(v.subject),
                        known.then_some(&*v.version),
                    ])
                    .map_err(|e| disk_error(e, &self.path))?;
                results.push(if changed == 1 {
                    Ok(())
                } else if held.query_row([k.supporter, k.target], |r| r.get::<_, String>(0))? == "sending" {
                    Err(format!(
                        "letter {} → {} is being sent by another run (its ledger row is `sending`); \
                         not sending it",
                        k.supporter, k.target
                    ))
                } else {
                    Err(format!(
                        "letter {} → {} is already recorded as sent; not sending it again",
                        k.supporter, k.target
                    ))
                });
            }
        }
        tx.commit().map_err(|e| disk_error(e, &self.path))?;
        Ok(results)
    }

    /// Records how an attempt ended (with the Cc/Bcc copies the server
    /// refused while it took the letter, in the same transaction); a
    /// `deferred` letter waits until unix second `next_attempt_at`.
    /// `claimed`: [`Ledger::claim`] already counted this attempt. Committed
    /// without an fsync: the next claim's fsync covers it, and if power fails
    /// first the letter reads back as `sending`, which becomes `unknown`,
    /// never resent silently.
    pub(crate) fn record(
        &self,
        letter: &Key<'_>,
        attempt: &Attempt,
        next_attempt_at: i64,
        claimed: bool,
        now: i64,
    ) -> Result<()> {
        // Every failure names the ledger (a busy or full disk included).
        let write = || -> rusqlite::Result<()> {
            self.synchronous("NORMAL")?;
            let tx = self.conn.unchecked_transaction()?;
            self.write_outcome(letter, attempt, next_attempt_at, claimed, now)?;
            tx.commit()
        };
        write().map_err(|e| disk_error(e, &self.path))
    }

    /// [`Ledger::record`]'s writes, inside the caller's transaction.
    pub(super) fn write_outcome(
        &self,
        letter: &Key<'_>,
        attempt: &Attempt,
        next_attempt_at: i64,
        claimed: bool,
        now: i64,
    ) -> rusqlite::Result<()> {
        let (state, next, sent_at) = match attempt {
            Attempt::Sent { .. } => (State::Sent, None, Some(now)),
            Attempt::Deferred { .. } => (State::Deferred, Some(next_attempt_at), None),
            Attempt::Failed { .. } => (State::Failed, None, None),
            Attempt::Unknown(_) => (State::Unknown, None, None),
        };
        let reply = attempt.text();
        let handed_over = attempt.handed_over();
        self.conn
            .prepare_cached(
                "INSERT INTO letters (supporter, target, state, attempts, line, message_id, reply, next_attempt_at,
                    sent_at, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (supporter, target) DO UPDATE SET state = ?3, attempts = attempts + ?10, line = ?4,
                    message_id = ?5, reply = ?6, next_attempt_at = ?7, sent_at = coalesce(?8, sent_at),
                    updated_at = ?9
                 WHERE state NOT IN ('sent', 'bounced')",
            )?
            .execute(params![
                letter.supporter,
                letter.target,
                state.as_str(),
                letter.line as i64,
                letter.message_id,
                reply,
                next,
                sent_at,
                now,
                i64::from(!claimed),
            ])?;
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (supporter, target, at, outcome, reply, handed_over, relay)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                letter.supporter,
                letter.target,
                now,
                state.as_str(),
                reply,
                handed_over,
                self.relay
            ])?;
        if let Attempt::Sent { refused, .. } = attempt {
            for c in refused {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO refused_copies (supporter, target, recipient, reply, at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        letter.supporter,
                        letter.target,
                        c.recipient,
                        c.reply.to_string(),
                        now
                    ])?;
            }
        }
        Ok(())
    }

    /// Sets `synchronous` (`FULL`: this commit is fsynced; `NORMAL`: not),
    /// skipping the statement when it is already so.
    pub(super) fn synchronous(&self, mode: &'static str) -> rusqlite::Result<()> {
        if self.sync.get() != Some(mode) {
            self.conn.pragma_update(None, "synchronous", mode)?;
            self.sync.set(Some(mode));
        }
        Ok(())
    }

    /// The Cc/Bcc copies of a letter the server refused, as `(recipient,
    /// reply)` in the order they were sent. None for a ledger written before
    /// copies were kept (opened read-only, it has no such table).
    pub(crate) fn refused_copies(&self, supporter: &str, target: &str) -> Result<Vec<(String, String)>> {
        let read = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT recipient, reply FROM refused_copies WHERE supporter = ?1 AND target = ?2
                 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([supporter, target], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        match read() {
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.starts_with("no such table") => {
                Ok(Vec::new())
            }
            other => other.map_err(Into::into),
        }
    }

    /// Puts a `failed` letter back to `deferred`, due again at unix second
    /// `next_attempt_at` (a run-wide policy stop was not the letter's fault).
    pub(crate) fn requeue(
        &self,
        supporter: &str,
        target: &str,
        next_attempt_at: i64,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE letters SET state = 'deferred', next_attempt_at = ?3, updated_at = ?4
             WHERE supporter = ?1 AND target = ?2 AND state = 'failed'",
            params![supporter, target, next_attempt_at, now],
        )?;
        Ok(())
    }

    /// Records an invalid row's letter as `skipped` (never over a sent letter).
    pub(crate) fn skip(
        &self,
        supporter: &str,
        target: &str,
        line: u64,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        self.synchronous("NORMAL")?;
        self.conn
            .prepare_cached(
                "INSERT INTO letters (supporter, target, state, line, reply, updated_at)
                 VALUES (?1, ?2, 'skipped', ?3, ?4, ?5)
                 ON CONFLICT (supporter, target) DO UPDATE SET state = 'skipped', line = ?3, reply = ?4,
                    updated_at = ?5
                 WHERE state IN ('pending', 'skipped', 'deferred') AND held = 0",
            )?
            .execute(params![supporter, target, line as i64, reason, now])
            .map_err(|e| disk_error(e, &self.path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::{ledger, reply, sent, to_ceo};
    use crate::letter::Variant;
    use crate::smtp::classify;

    #[test]
    fn an_outcome_rides_with_the_next_claim_in_one_commit() {
        let (_d, l) = ledger();
        let v = Variant::default();
        let key = |supporter| to_ceo(supporter, &v);
        l.claim(&key("a@x.org"), 100).unwrap();
        let sent_a = Outcome::new(
            &key("a@x.org"),
            &sent("250", "ok", &[("cc@x.org", 550, "no")]),
            0,
            true,
            101,
        );
        let before = l.conn.total_changes();
        let results = l.claim_many(&[key("b@x.org")], &[&sent_a], 101).unwrap();
        assert!(results[0].is_ok());
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!((r.state, r.attempts, r.sent_at), (State::Sent, 1, Some(101)));
        assert_eq!(l.refused_copies("a@x.org", "ceo@corp.example").unwrap().len(), 1);
        assert_eq!(
            l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sending
        );
        // a's row, its attempt, its refused copy, b's row.
        assert_eq!(l.conn.total_changes() - before, 4);
        // A claim refused (already sent) still carries the outcome before it.
        let sent_b = Outcome::new(&key("b@x.org"), &sent("250", "ok", &[]), 0, true, 102);
        let results = l.claim_many(&[key("a@x.org")], &[&sent_b], 102).unwrap();
        assert!(results[0].is_err());
        assert_eq!(
            l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sent
        );
    }

    #[test]
    fn transitions_and_recovery() {
        let (_d, l) = ledger();
        let variant = Variant::default();
        let a = to_ceo("a@x.org", &variant);
        l.claim(&a, 100).unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sending
        );
        l.record(&a, &sent("250", "ok", &[]), 0, true, 101).unwrap();
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!(
            (r.state, r.attempts, r.sent_at, r.reply.as_deref()),
            (State::Sent, 1, Some(101), Some("250 ok"))
        );
        // A sent letter can never be claimed again.
        assert!(l.claim(&a, 102).is_err());
        l.record(&a, &classify(reply(550, "no"), false, Vec::new()), 0, false, 102)
            .unwrap();
        // Nor skipped.
        l.skip("a@x.org", "ceo@corp.example", 2, "bad", 103).unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sent
        );

        let b = Key {
            supporter: "b@x.org",
            target: "ceo@corp.example",
            line: 3,
            message_id: "<id2@o>",
            variant: &Variant::default(),
        };
        l.record(
            &b,
            &classify(reply(451, "later"), false, Vec::new()),
            160,
            false,
            100,
        )
        .unwrap();
        l.claim(&b, 100).unwrap();
        assert_eq!(l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().attempts, 2);
        assert_eq!(l.recover(200).unwrap(), 1);
        assert_eq!(
            l.get("b@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Unknown
        );
        // a was delivered; b may have been (recovered): both use the quota.
        assert_eq!(l.hand_overs(0, None).unwrap().len(), 2);
    }

    #[test]
    fn refused_copies_are_kept_with_the_sent_letter() {
        let (_d, l) = ledger();
        let variant = Variant::default();
        let a = to_ceo("a@x.org", &variant);
        l.claim(&a, 100).unwrap();
        let refused = vec![
            ("a@x.org".to_string(), "550 5.1.1 no".to_string()),
            ("archive@o.org".to_string(), "452 4.2.2 full".to_string()),
        ];
        l.record(
            &a,
            &sent(
                "250",
                "ok",
                &[("a@x.org", 550, "5.1.1 no"), ("archive@o.org", 452, "4.2.2 full")],
            ),
            0,
            true,
            101,
        )
        .unwrap();
        assert_eq!(
            l.get("a@x.org", "ceo@corp.example").unwrap().unwrap().state,
            State::Sent
        );
        assert_eq!(l.refused_copies("a@x.org", "ceo@corp.example").unwrap(), refused);
        assert!(
            l.refused_copies("b@x.org", "ceo@corp.example")
                .unwrap()
                .is_empty()
        );
        // A ledger from before the table existed reads as "none refused".
        l.conn.execute_batch("DROP TABLE refused_copies").unwrap();
        assert!(
            l.refused_copies("a@x.org", "ceo@corp.example")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_claim_refuses_a_letter_another_run_holds() {
        let (_d, l) = ledger();
        let variant = Variant::default();
        let a = to_ceo("a@x.org", &variant);
        l.claim(&a, 100).unwrap();
        let err = l.claim(&a, 101).unwrap_err();
        assert!(err.to_string().contains("another run"), "{err}");
        let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
        assert_eq!((r.state, r.attempts), (State::Sending, 1));
    }
}
