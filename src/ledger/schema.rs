//! The ledger's tables, and the upgrades of ledgers older versions wrote
//! (variant columns, the `bounced` state, holds, the relay account): each
//! adds only what is missing, in place, keeping every letter.

use anyhow::{Result, bail};
use rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS letters (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('pending','sending','sent','deferred','failed','unknown','skipped','bounced')),
    attempts INTEGER NOT NULL DEFAULT 0,
    line INTEGER,
    message_id TEXT,
    reply TEXT,
    next_attempt_at INTEGER,
    sent_at INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (supporter, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reply TEXT,
    handed_over INTEGER NOT NULL,
    relay TEXT
);
-- No index on attempts: it is read once per run (the daily quota), and an
-- index would cost a page write on every letter.
CREATE TABLE IF NOT EXISTS bounces (
    source TEXT NOT NULL,
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    diagnostic TEXT NOT NULL,
    reporter TEXT NOT NULL,
    permanent INTEGER NOT NULL,
    PRIMARY KEY (source, supporter, target)
) WITHOUT ROWID;
-- Cc/Bcc copies the server refused while it took the letter (which stays
-- `sent`). Added after the first release: a ledger without it reads as none.
CREATE TABLE IF NOT EXISTS refused_copies (
    supporter TEXT NOT NULL,
    target TEXT NOT NULL,
    recipient TEXT NOT NULL,
    reply TEXT NOT NULL,
    at INTEGER NOT NULL,
    UNIQUE (supporter, target, recipient)
);
";

/// The schema, and the upgrades of ledgers older versions wrote: each
/// writes only what is missing, so on a current ledger it writes nothing.
pub(super) fn set_up(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    allow_bounced(conn)?;
    add_held_column(conn)?;
    add_relay_column(conn)?;
    add_variant_columns(conn)
}

/// Ledgers written before `bounced` existed have a CHECK that refuses it:
/// rebuild `letters` from its own stored definition with the state added
/// (keeping every column and index it has), in one transaction.
fn allow_bounced(conn: &Connection) -> Result<()> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'letters'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains("'bounced'") {
        return Ok(());
    }
    let old = "'unknown','skipped')";
    if !sql.contains(old) {
        bail!("unexpected `letters` table definition");
    }
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'letters' AND sql IS NOT NULL",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let create =
        sql.replacen(old, "'unknown','skipped','bounced')", 1)
            .replacen("letters", "letters_upgraded", 1);
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "{create};
         INSERT INTO letters_upgraded SELECT * FROM letters;
         DROP TABLE letters;
         ALTER TABLE letters_upgraded RENAME TO letters;"
    ))?;
    for index in indexes {
        tx.execute_batch(&index)?;
    }
    tx.commit()?;
    Ok(())
}

/// Whether `letters` has the `held` column (ledgers written before holds
/// do not; opened read-only, they are not upgraded).
pub(super) fn has_held_column(conn: &Connection) -> Result<bool> {
    has_column(conn, "letters", "held")
}

/// `held` marks a letter skipped by hand (`mailer skip`), as opposed to one
/// skipped for its row's data, which every run re-evaluates.
fn add_held_column(conn: &Connection) -> Result<()> {
    if !has_held_column(conn)? {
        conn.execute_batch("ALTER TABLE letters ADD COLUMN held INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Whether `attempts` records the relay account (ledgers written before
/// it do not; opened read-only, they are not upgraded).
pub(super) fn has_relay_column(conn: &Connection) -> Result<bool> {
    has_column(conn, "attempts", "relay")
}

/// Whether `table` has the column `name`.
fn has_column(conn: &Connection, table: &str, name: &str) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Ledgers written before the relay account was recorded: add the column
/// (NULL for the attempts already there: their account is not known).
fn add_relay_column(conn: &Connection) -> Result<()> {
    if !has_relay_column(conn)? {
        conn.execute_batch("ALTER TABLE attempts ADD COLUMN relay TEXT")?;
    }
    Ok(())
}

/// The columns that say which text a handed-over letter was (issue 12).
const VARIANT_COLUMNS: [(&str, &str); 5] = [
    ("fingerprint", "TEXT"),
    ("letter_file", "TEXT"),
    ("language", "TEXT"),
    ("subject_variant", "INTEGER"),
    ("letter_version", "TEXT"),
];

/// Ledgers written before variants were recorded lack their columns: add
/// them (NULL for the letters already there: their text is not known), in
/// one transaction. `ALTER TABLE … ADD COLUMN` keeps every row, index and
/// constraint, and a later rebuild (see [`allow_bounced`]) keeps the columns.
fn add_variant_columns(conn: &Connection) -> Result<()> {
    let have = letter_columns(conn)?;
    let missing: Vec<_> = VARIANT_COLUMNS
        .iter()
        .filter(|(name, _)| !have.iter().any(|h| h == name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    for (name, kind) in missing {
        tx.execute_batch(&format!("ALTER TABLE letters ADD COLUMN {name} {kind}"))?;
    }
    tx.commit()?;
    Ok(())
}

/// The `letters` table's column names.
pub(super) fn letter_columns(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('letters')")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sent::SentVersion;
    use crate::ledger::tests::{ledger, sent};
    use crate::ledger::{Bounce, BounceEffect, Key, Ledger, State, hand_overs_elsewhere};
    use crate::letter::Variant;

    #[test]
    fn old_ledgers_gain_the_held_column_and_read_as_none_held_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // A ledger as the version before holds wrote it: no `held` column.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        assert!(!has_held_column(&old).unwrap());
        old.execute_batch(
            "INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO letters (supporter, target, state, attempts, reply, updated_at)
             VALUES ('a@x.org', 't@x.org', 'skipped', 0, 'bad email', 5);",
        )
        .unwrap();
        drop(old);
        // Read-only and not upgraded: its letters read as not held.
        let ro = Ledger::open_existing(&path, "c").unwrap().unwrap();
        assert!(!ro.get("a@x.org", "t@x.org").unwrap().unwrap().held);
        assert!(ro.holds().unwrap().is_empty());
        drop(ro);
        // Opened to write: the column is added, the letter is still not held.
        let l = Ledger::open(&path, "c").unwrap();
        assert!(has_held_column(&l.conn).unwrap());
        assert!(!l.get("a@x.org", "t@x.org").unwrap().unwrap().held);
        l.hold("a@x.org", "t@x.org", None, "asked", 6).unwrap();
        assert!(l.get("a@x.org", "t@x.org").unwrap().unwrap().held);
        // A ledger without `attempts.relay` still has `letters.held`, and
        // the other way round: each check reads its own table.
        let (_d, fresh) = ledger();
        fresh
            .conn
            .execute_batch("ALTER TABLE letters DROP COLUMN held")
            .unwrap();
        assert!(!has_held_column(&fresh.conn).unwrap());
        assert!(has_relay_column(&fresh.conn).unwrap());
    }

    #[test]
    fn old_ledgers_gain_the_variant_columns_and_keep_their_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // A ledger as the previous version wrote it: no variant columns,
        // no `bounced` either (both upgrades run, in order).
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&SCHEMA.replace(",'bounced'", "")).unwrap();
        old.execute_batch(
            "INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO letters (supporter, target, state, attempts, message_id, sent_at, updated_at)
             VALUES ('a@x.org', 't@x.org', 'sent', 1, '<m@o>', 5, 5);",
        )
        .unwrap();
        drop(old);
        // Read-only, before any upgrade: no variants, no error.
        let ro = Ledger::open_existing(&path, "c").unwrap().unwrap();
        assert_eq!(ro.variant("a@x.org", "t@x.org").unwrap(), None);
        assert!(ro.sent_versions().unwrap().is_empty());
        drop(ro);
        let l = Ledger::open(&path, "c").unwrap();
        let cols = letter_columns(&l.conn).unwrap();
        for (name, _) in VARIANT_COLUMNS {
            assert!(cols.iter().any(|c| c == name), "{name} missing: {cols:?}");
        }
        assert_eq!(l.get("a@x.org", "t@x.org").unwrap().unwrap().state, State::Sent);
        // The old letter's text is unknown; a new one records its own.
        assert_eq!(l.variant("a@x.org", "t@x.org").unwrap(), None);
        let v = Variant {
            letter_file: "letters/a.md".into(),
            language: "".into(),
            subject: 2,
            version: "00112233aabbccdd".into(),
            fingerprint: "ffeeddccbbaa9988".into(),
        };
        let key = Key {
            supporter: "b@x.org",
            target: "t@x.org",
            line: 3,
            message_id: "<n@o>",
            variant: &v,
        };
        l.claim(&key, 6).unwrap();
        l.record(&key, &sent("250", "", &[]), 0, true, 7).unwrap();
        assert_eq!(l.variant("b@x.org", "t@x.org").unwrap(), Some(v));
        assert_eq!(
            l.sent_versions().unwrap(),
            vec![SentVersion {
                letter_file: "letters/a.md".into(),
                language: String::new(),
                subject: 2,
                version: "00112233aabbccdd".into(),
                letters: 1,
            }]
        );
        drop(l);
        // Opening again changes nothing.
        let l = Ledger::open(&path, "c").unwrap();
        assert_eq!(letter_columns(&l.conn).unwrap().len(), cols.len());
    }

    #[test]
    fn old_ledgers_gain_the_relay_column_and_count_for_the_account_they_may_have_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // Attempts as the previous version wrote them: no relay account.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&SCHEMA.replace(",\n    relay TEXT", ""))
            .unwrap();
        assert!(!has_relay_column(&old).unwrap());
        old.execute_batch(
            "INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO attempts VALUES ('a@x.org', 't@x.org', 100, 'sent', '250', 1);
             INSERT INTO attempts VALUES ('b@x.org', 't@x.org', 110, 'failed', '550', 1);
             INSERT INTO attempts VALUES ('c@x.org', 't@x.org', 120, 'deferred', '451', 0);
             INSERT INTO attempts VALUES ('z@x.org', 't@x.org', 10, 'sent', '250', 1);",
        )
        .unwrap();
        drop(old);
        // Read-only and not upgraded: every letter counts, for any account.
        assert_eq!(
            hand_overs_elsewhere(&path, 50, "h:587 u").unwrap(),
            Some(("c".to_string(), vec![110, 100]))
        );
        // Opened to write: the column is added, the old rows keep NULL and
        // still count (this ledger never named another account).
        let mut l = Ledger::open(&path, "c").unwrap();
        assert!(has_relay_column(&l.conn).unwrap());
        assert_eq!(l.hand_overs(50, Some("h:587 u")).unwrap(), vec![110, 100]);
        l.set_relay("h:587 v".into());
        let v = Variant::default();
        let key = Key {
            supporter: "d@x.org",
            target: "t@x.org",
            line: 5,
            message_id: "<d@o>",
            variant: &v,
        };
        l.claim(&key, 130).unwrap();
        l.record(&key, &sent("250", "", &[]), 0, true, 130).unwrap();
        // Once it names another account, its unnamed rows are that one's.
        assert_eq!(l.hand_overs(50, Some("h:587 u")).unwrap(), Vec::<i64>::new());
        assert_eq!(l.hand_overs(50, Some("h:587 v")).unwrap(), vec![130, 110, 100]);
        assert_eq!(l.hand_overs(50, None).unwrap(), vec![130, 110, 100]);
        drop(l);
        // Opening again changes nothing; a new ledger has the column.
        let l = Ledger::open(&path, "c").unwrap();
        assert_eq!(l.hand_overs(0, None).unwrap().len(), 4);
        let (_d, fresh) = ledger();
        assert!(has_relay_column(&fresh.conn).unwrap());
    }

    #[test]
    fn old_ledgers_learn_bounced_and_bounces_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // A ledger as the previous version wrote it (no `bounced`, no bounces table),
        // with an extra column and index another change might have added.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&SCHEMA.replace(",'bounced'", "").replace(
            "CREATE TABLE IF NOT EXISTS bounces",
            "CREATE TABLE IF NOT EXISTS unused_bounces",
        ))
        .unwrap();
        old.execute_batch(
            "ALTER TABLE letters ADD COLUMN extra TEXT;
             CREATE INDEX letters_by_state ON letters (state);
             INSERT INTO meta VALUES ('campaign_id', 'c');
             INSERT INTO letters (supporter, target, state, attempts, message_id, sent_at, updated_at, extra)
             VALUES ('a@x.org', 't@x.org', 'sent', 1, '<m@o>', 5, 5, 'kept');",
        )
        .unwrap();
        assert!(
            old.execute("UPDATE letters SET state = 'bounced'", []).is_err(),
            "the old CHECK refuses `bounced`"
        );
        drop(old);
        let l = Ledger::open(&path, "c").unwrap();
        let b = Bounce {
            source: "mid:dsn1@relay".into(),
            supporter: "a@x.org".into(),
            target: "t@x.org".into(),
            at: 10,
            action: "failed".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 user unknown".into(),
            reporter: "mx.x.org".into(),
            permanent: true,
        };
        assert_eq!(l.record_bounce(&b, 11).unwrap(), BounceEffect::Bounced);
        assert_eq!(l.record_bounce(&b, 12).unwrap(), BounceEffect::Known);
        let r = l.get("a@x.org", "t@x.org").unwrap().unwrap();
        assert_eq!((r.state, r.sent_at), (State::Bounced, Some(5)));
        let extra: String = l
            .conn
            .query_row("SELECT extra FROM letters", [], |r| r.get(0))
            .unwrap();
        assert_eq!(extra, "kept");
        let index: i64 = l
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'letters_by_state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 1);
        // A bounced letter is never claimed (sent) again.
        let key = Key {
            supporter: "a@x.org",
            target: "t@x.org",
            line: 2,
            message_id: "<m@o>",
            variant: &Variant::default(),
        };
        assert!(l.claim(&key, 20).is_err());
        assert_eq!(l.bounces().unwrap(), vec![b]);
        // The VERP secret is made once and kept.
        let secret = l.verp_secret().unwrap();
        assert_eq!(secret.len(), 32);
        assert_eq!(l.verp_secret().unwrap(), secret);
        assert_eq!(l.stored_verp_secret().unwrap(), Some(secret));
    }
}
