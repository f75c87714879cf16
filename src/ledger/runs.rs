//! How the latest `mailer send` ended, for `status`: noted at the end of a
//! run, or, for a run that never said, the time of its latest attempt.

use anyhow::Result;
use rusqlite::{OptionalExtension as _, params};

use super::Ledger;
use super::error::disk_error;

/// How the latest `mailer send` (not a dry run) ended, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastRun {
    /// Unix second it started.
    pub(crate) started: i64,
    /// Unix second it ended; `None` when no run said how it ended (a
    /// ledger from before runs were noted, or a run that was killed).
    pub(crate) finished: Option<i64>,
    /// Its exit code, when it ended.
    pub(crate) exit: Option<u8>,
    /// Its error, when it ended with one (first line).
    pub(crate) error: String,
    /// Letter attempts during the run, by outcome (`sent`, `deferred` …);
    /// empty when the run did not say how it ended.
    pub(crate) outcomes: Vec<(String, u64)>,
}

impl Ledger {
    /// Notes how a run ended (`status` shows it as "Last run").
    pub(crate) fn note_run(&self, started: i64, finished: i64, exit: u8, error: &str) -> Result<()> {
        let value = serde_json::json!({
            "started": started, "finished": finished, "exit": exit, "error": error,
        });
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_run', ?1)",
                [value.to_string()],
            )
            .map_err(|e| disk_error(e, &self.path))?;
        Ok(())
    }

    /// The latest run: the noted one, unless letters were attempted after
    /// it ended (a run that never said how it ended: the latest attempt).
    pub(crate) fn last_run(&self) -> Result<Option<LastRun>> {
        let noted: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_run'", [], |r| r.get(0))
            .optional()?;
        let noted: Option<serde_json::Value> = noted.and_then(|v| serde_json::from_str(&v).ok());
        let latest: Option<i64> = self
            .conn
            .query_row("SELECT max(at) FROM attempts", [], |r| r.get(0))?;
        let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_i64);
        let mut run = match noted {
            Some(v) if latest.is_none_or(|at| field(&v, "finished").is_some_and(|f| at <= f)) => LastRun {
                started: field(&v, "started").unwrap_or_default(),
                finished: field(&v, "finished"),
                exit: field(&v, "exit").and_then(|e| u8::try_from(e).ok()),
                error: v
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or_default()
                    .to_string(),
                outcomes: Vec::new(),
            },
            _ => match latest {
                // No run noted its end after the latest attempt: say when that was.
                Some(at) => LastRun {
                    started: at,
                    finished: None,
                    exit: None,
                    error: String::new(),
                    outcomes: Vec::new(),
                },
                None => return Ok(None),
            },
        };
        let Some(until) = run.finished else {
            return Ok(Some(run));
        };
        let mut stmt = self.conn.prepare(
            "SELECT outcome, count(*) FROM attempts WHERE at >= ?1 AND at <= ?2
             GROUP BY outcome ORDER BY count(*) DESC, outcome",
        )?;
        run.outcomes = stmt
            .query_map(params![run.started, until], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(run))
    }
}

#[cfg(test)]
mod tests {
    use crate::ledger::tests::{ledger, reply, sent, to_ceo};
    use crate::letter::Variant;
    use crate::smtp::classify;

    #[test]
    fn the_last_run_is_the_noted_one_unless_letters_went_after_it() {
        let (_d, l) = ledger();
        assert_eq!(l.last_run().unwrap(), None);
        let v = Variant::default();
        let key = |supporter| to_ceo(supporter, &v);
        l.record(&key("a@x.org"), &sent("250", "ok", &[]), 0, false, 100)
            .unwrap();
        let deferred = classify(reply(451, "later"), false, Vec::new());
        l.record(&key("b@x.org"), &deferred, 500, false, 101).unwrap();
        l.note_run(99, 102, 3, "").unwrap();
        let run = l.last_run().unwrap().unwrap();
        assert_eq!((run.started, run.finished, run.exit), (99, Some(102), Some(3)));
        assert_eq!(run.outcomes, vec![("deferred".into(), 1), ("sent".into(), 1)]);
        // A run that died without a word: its latest attempt, no outcome.
        l.record(&key("c@x.org"), &sent("250", "ok", &[]), 0, false, 200)
            .unwrap();
        let run = l.last_run().unwrap().unwrap();
        assert_eq!((run.started, run.finished, run.exit), (200, None, None));
    }
}
