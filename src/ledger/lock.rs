//! The run lock (an exclusive `flock` on the ledger file itself) and what
//! keeps it meaningful: a ledger deleted or replaced under a run stops the
//! run, which saves its record beside the path; a later run refuses to start
//! afresh while that copy or the journal is there.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use super::Ledger;
use super::error::{disk_error, write_error};
use super::file::{folder_of, new_private_file, sync_dir};
use crate::exit::{Exit, Failure};

/// Takes the run lock: an exclusive `flock` on the ledger file itself.
///
/// NOTE: the lock is on the database's own inode, not on a side file that
/// anyone could delete (a deleted lock file let a second run in beside the
/// first). `File::try_lock` is `flock(2)`; `SQLite` locks with POSIX `fcntl`
/// locks. On Linux and the BSDs the two kinds are independent, so this lock
/// never blocks `SQLite` and `status` keeps reading during a run. The trap
/// is the other POSIX rule: closing *any* descriptor of a file drops every
/// `fcntl` lock the process holds on it, including `SQLite`'s (its own
/// descriptors are pooled to avoid this; ours is not). So this descriptor
/// is opened before the run's connection and closed after it (`Ledger`
/// drops `conn` first), and `open_existing` never opens the file itself.
/// On NFS, Linux emulates `flock` with `fcntl`; `SQLite` is not safe there
/// anyway.
pub(super) fn run_lock(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| write_error(&e, path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::error(
            Exit::TryLater,
            format!(
                "another run holds the ledger `{}`: try again when it has finished",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock ledger `{}`", path.display()))
        }
    }
}

/// A file's (device, inode).
pub(super) fn identity_of(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
}

/// With no ledger at `path`, refuses to start afresh when what is beside
/// it says letters were recorded: its `-wal` or `-shm` journal (a run may
/// hold the deleted ledger, or a copy missed the main file), or a copy a
/// run saved when its ledger was deleted under it.
///
/// NOTE: exit 1, not 75: if a run does hold a deleted ledger it stops at
/// its next letter and saves its record, and then this refusal names that
/// copy; either way a person must put a ledger back. "Try later" would let
/// cron retry until the journal is gone and start afresh, resending.
pub(super) fn refuse_leftovers(path: &Path) -> Result<()> {
    let shown = path.display();
    let journals: Vec<PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut journal = path.as_os_str().to_owned();
            journal.push(suffix);
            PathBuf::from(journal)
        })
        .filter(|j| std::fs::symlink_metadata(j).is_ok())
        .collect();
    if let Some(saved) = rescued_copy(path) {
        // NOTE: the deleted ledger's journal stays behind (SQLite neither
        // checkpoints nor deletes the WAL of an unlinked database); its
        // frames belong to the deleted file and would corrupt the copy.
        let rm = if journals.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = journals.iter().map(|j| j.display().to_string()).collect();
            format!("rm {} && ", names.join(" "))
        };
        bail!(
            "the ledger `{shown}` is missing, but `{}` holds the record a run saved when the \
             ledger was deleted under it\n\nhint: once that run has ended, put it back \
             (`{rm}mv {} {shown}`), then run again",
            saved.display(),
            saved.display()
        );
    }
    if let Some(journal) = journals.first() {
        bail!(
            "the ledger `{shown}` is missing but its journal `{}` is there: another run may hold \
             a deleted ledger, or a copy was incomplete\n\nhint: restore the ledger from a \
             backup; if a run is still going, wait for it to end (it saves its record as \
             `{shown}.rescued-PID`). Do not delete the journal to get past this: letters \
             would be sent twice",
            journal.display()
        );
    }
    Ok(())
}

/// A copy [`Ledger::still_ours`] saved beside `path`, if any.
fn rescued_copy(path: &Path) -> Option<PathBuf> {
    let dir = folder_of(path)?;
    let mut prefix = path.file_name()?.to_owned();
    prefix.push(".rescued-");
    let prefix = prefix.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| path.with_file_name(e.file_name()))
}

impl Ledger {
    /// Writes everything to the main database file (end of a run). A
    /// ledger deleted after the run's last claim is saved here.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.still_ours()?;
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }

    /// Checks, with one `stat`, that the ledger's path still names the file
    /// this run locked. If it was deleted (`rm`, with its `-wal` left) or
    /// replaced, the run's lock protects nothing: another run can start on
    /// the path and send the same letters, and when this run ends its record
    /// vanishes with the deleted file. So this run stops handing letters
    /// over, and first saves what it recorded (`PATH.rescued-PID`, a
    /// complete copy, `sending` rows included: they become `unknown`, never
    /// resent by themselves), which a later run refuses to ignore.
    pub(crate) fn still_ours(&self) -> Result<()> {
        let Some(identity) = self.identity else {
            return Ok(());
        };
        if let Some(why) = self.lost.get() {
            return Err(anyhow::anyhow!("{why}"));
        }
        let Some(what) = self.gone(identity) else {
            return Ok(());
        };
        let shown = self.path.display();
        let stop = format!(
            "the ledger `{shown}` was {what} while this run was using it: stopped before handing \
             over another letter, so that none goes twice"
        );
        let why = match self.rescue() {
            Ok(saved) => format!(
                "{stop}; what this run recorded is saved in `{saved}`\n\nhint: when this run has \
                 ended, put it back (`mv {saved} {shown}`{}), then run `mailer send` again",
                if what == "deleted" {
                    ""
                } else {
                    ", after keeping whatever replaced it"
                },
                saved = saved.display()
            ),
            Err(e) => format!(
                "{stop}; saving what it recorded failed ({e:#}), so the letters it sent are known \
                 only from this output\n\nhint: restore the ledger from a backup before the next run"
            ),
        };
        let _ = self.lost.set(why.clone());
        Err(anyhow::anyhow!("{why}"))
    }

    /// How the ledger's path stopped naming the locked file, if it did.
    pub(super) fn gone(&self, identity: (u64, u64)) -> Option<&'static str> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if identity_of(&meta) == identity => None,
            Ok(_) => Some("replaced by another file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("deleted"),
            // Cannot tell (e.g. a permission change): keep going; the lock
            // still holds for any run that can open the file.
            Err(_) => None,
        }
    }

    /// Writes a complete copy of the open (lost) ledger beside its path.
    fn rescue(&self) -> Result<PathBuf> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".rescued-{}", std::process::id()));
        let to = PathBuf::from(name);
        drop(new_private_file(&to).map_err(|e| write_error(&e, &to))?);
        let target = to
            .to_str()
            .with_context(|| format!("`{}` is not valid UTF-8", to.display()))?;
        self.conn
            .execute("VACUUM INTO ?1", [target])
            .map_err(|e| disk_error(e, &to))?;
        File::open(&to)?.sync_all()?;
        sync_dir(&to)?;
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::sent;
    use crate::ledger::{Key, State};
    use crate::letter::Variant;

    #[test]
    fn lock_is_exclusive_and_held_on_the_ledger_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".mailer/l.sqlite3");
        let first = Ledger::open(&path, "c").unwrap();
        let err = Ledger::open(&path, "c").err().unwrap();
        assert_eq!(crate::exit::exit_for(&err), Exit::TryLater);
        assert!(err.to_string().contains("another run holds the ledger"), "{err}");
        // Nothing beside the ledger can be deleted to get around it.
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let p = entry.unwrap().path();
            if p != path {
                std::fs::remove_file(p).unwrap();
            }
        }
        assert_eq!(
            crate::exit::exit_for(&Ledger::open(&path, "c").err().unwrap()),
            Exit::TryLater
        );
        // Readers are never locked out.
        assert!(Ledger::open_existing(&path, "c").unwrap().is_some());
        drop(first);
        Ledger::open(&path, "c").unwrap();
    }

    #[test]
    fn a_deleted_or_replaced_ledger_stops_claims_and_is_saved() {
        let a = Key {
            supporter: "a@x.org",
            target: "ceo@corp.example",
            line: 2,
            message_id: "<a@o>",
            variant: &Variant::default(),
        };
        let b = Key {
            supporter: "b@x.org",
            message_id: "<b@o>",
            ..a
        };
        for replace in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(".mailer/c.sqlite3");
            let l = Ledger::open(&path, "c").unwrap();
            l.claim(&a, 100).unwrap();
            l.record(&a, &sent("250", "ok", &[]), 0, true, 101).unwrap();
            std::fs::remove_file(&path).unwrap();
            if replace {
                std::fs::write(&path, b"another file").unwrap();
            }
            // With the journal left behind, no run may start afresh.
            if !replace {
                let err = format!("{:#}", Ledger::open(&path, "c").err().unwrap());
                assert!(err.contains("is missing but its journal"), "{err}");
            }
            let err = l.claim(&b, 102).unwrap_err().to_string();
            let what = if replace {
                "replaced by another file"
            } else {
                "deleted"
            };
            assert!(
                err.contains(&format!("was {what} while this run was using it")),
                "{err}"
            );
            assert!(l.claim(&b, 103).is_err(), "every later claim is refused too");
            assert!(l.checkpoint().is_err());
            drop(l);
            let saved = rescued_copy(&path).expect("a saved copy");
            assert!(err.contains(&format!("saved in `{}`", saved.display())), "{err}");
            let perms = std::fs::metadata(&saved).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&perms) & 0o777, 0o600);
            if !replace {
                let err = format!("{:#}", Ledger::open(&path, "c").err().unwrap());
                assert!(err.contains("holds the record a run saved"), "{err}");
                assert!(
                    err.contains("hint: once that run has ended, put it back (`rm "),
                    "{err}"
                );
                for j in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{j}", path.display()));
                }
                std::fs::rename(&saved, &path).unwrap();
                let l = Ledger::open(&path, "c").unwrap();
                let r = l.get("a@x.org", "ceo@corp.example").unwrap().unwrap();
                assert_eq!(r.state, State::Sent);
                assert!(l.get("b@x.org", "ceo@corp.example").unwrap().is_none());
            }
        }
    }
}
