//! [`SharedLedger`]: the ledger as the send workers share it, claims
//! batched into one commit (group commit), and the [`Outcome`]s that wait
//! to ride with the next claim.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Result;

use super::{Key, Ledger};
use crate::letter::Variant;
use crate::smtp::Attempt;

/// The ledger as the send workers share it. Claims go through a group
/// commit: a worker that finds the ledger busy queues its claim, and the
/// next committer writes every queued claim in one transaction, one fsync.
pub(crate) struct SharedLedger {
    ledger: Mutex<Ledger>,
    queue: Mutex<ClaimQueue>,
}

#[derive(Default)]
struct ClaimQueue {
    next: u64,
    pending: Vec<(u64, OwnedKey, Option<Outcome>)>,
    done: HashMap<u64, Result<(), String>>,
}

struct OwnedKey {
    supporter: String,
    target: String,
    line: u64,
    message_id: String,
    variant: Variant,
}

impl OwnedKey {
    fn new(key: &Key<'_>) -> OwnedKey {
        OwnedKey {
            supporter: key.supporter.to_string(),
            target: key.target.to_string(),
            line: key.line,
            message_id: key.message_id.to_string(),
            variant: key.variant.clone(),
        }
    }

    fn key(&self) -> Key<'_> {
        Key {
            supporter: &self.supporter,
            target: &self.target,
            line: self.line,
            message_id: &self.message_id,
            variant: &self.variant,
        }
    }
}

/// A letter's outcome waiting to be written with the next claim on its
/// connection ([`SharedLedger::claim`]), or alone ([`Outcome::record`]).
pub(crate) struct Outcome {
    key: OwnedKey,
    attempt: Attempt,
    next: i64,
    claimed: bool,
    now: i64,
}

impl Outcome {
    /// What [`Ledger::record`] would write now.
    pub(crate) fn new(key: &Key<'_>, attempt: &Attempt, next: i64, claimed: bool, now: i64) -> Outcome {
        Outcome {
            key: OwnedKey::new(key),
            attempt: attempt.clone(),
            next,
            claimed,
            now,
        }
    }

    /// Writes it inside the caller's transaction ([`Ledger::claim_many`]).
    pub(super) fn write(&self, ledger: &Ledger) -> rusqlite::Result<()> {
        ledger.write_outcome(&self.key.key(), &self.attempt, self.next, self.claimed, self.now)
    }

    /// Writes it alone (no fsync, like [`Ledger::record`]).
    pub(crate) fn record(&self, ledger: &Ledger) -> Result<()> {
        ledger.record(&self.key.key(), &self.attempt, self.next, self.claimed, self.now)
    }
}

impl SharedLedger {
    /// Wraps an open ledger.
    #[must_use]
    pub(crate) fn new(ledger: Ledger) -> SharedLedger {
        SharedLedger {
            ledger: Mutex::new(ledger),
            queue: Mutex::default(),
        }
    }

    /// Exclusive use of the ledger (reads, outcomes).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, ClaimQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Ledger::claim`], batched with whatever other workers are claiming.
    /// Returns only once this letter's `sending` is on disk. `outcome`, an
    /// earlier letter's, is written first in the same commit.
    pub(crate) fn claim(&self, key: &Key<'_>, outcome: Option<Outcome>, now: i64) -> Result<()> {
        let ticket = {
            let mut q = self.queue();
            let ticket = q.next;
            q.next += 1;
            q.pending.push((ticket, OwnedKey::new(key), outcome));
            ticket
        };
        let ledger = self.lock();
        let batch = {
            let mut q = self.queue();
            if let Some(result) = q.done.remove(&ticket) {
                return result.map_err(|e| anyhow::anyhow!(e));
            }
            std::mem::take(&mut q.pending)
        };
        let keys: Vec<Key<'_>> = batch.iter().map(|(_, k, _)| k.key()).collect();
        let outcomes: Vec<&Outcome> = batch.iter().filter_map(|(_, _, o)| o.as_ref()).collect();
        let outcome = ledger.claim_many(&keys, &outcomes, now);
        let mut q = self.queue();
        let mut mine = Ok(());
        match outcome {
            Ok(results) => {
                for ((t, _, _), r) in batch.iter().zip(results) {
                    if *t == ticket {
                        mine = r;
                    } else {
                        q.done.insert(*t, r);
                    }
                }
                mine.map_err(|e| anyhow::anyhow!(e))
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for (t, _, _) in &batch {
                    if *t != ticket {
                        q.done.insert(*t, Err(msg.clone()));
                    }
                }
                Err(e)
            }
        }
    }

    /// The ledger back, once the workers are done.
    #[must_use]
    pub(crate) fn into_inner(self) -> Ledger {
        self.ledger.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::State;
    use crate::ledger::tests::{ledger, sent};

    #[test]
    fn group_commit_claims_every_letter_once() {
        let (_d, l) = ledger();
        let shared = std::sync::Arc::new(SharedLedger::new(l));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let shared = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || {
                    let s = format!("s{i}@x.org");
                    let key = Key {
                        supporter: &s,
                        target: "t@x.org",
                        line: i,
                        message_id: "<m@o>",
                        variant: &Variant::default(),
                    };
                    shared.claim(&key, None, 1).unwrap();
                    shared
                        .lock()
                        .record(&key, &sent("250", "ok", &[]), 0, true, 2)
                        .unwrap();
                    // A second claim of a sent letter is refused.
                    assert!(shared.claim(&key, None, 3).is_err());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let l = std::sync::Arc::try_unwrap(shared).ok().unwrap().into_inner();
        assert_eq!(l.counts().unwrap(), vec![(State::Sent, 8)]);
    }
}
