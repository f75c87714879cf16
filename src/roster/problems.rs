//! What a row or the file can be wrong with: a row that cannot be sent
//! ([`Skipped`]), a repeated address ([`Duplicate`]), and a file broken at a
//! line ([`Malformed`]), which the scanner reports as a [`Broken`].

use std::path::Path;

use super::scan::Broken;

/// A row that cannot be sent: reported, and recorded as `skipped` by `send`.
#[derive(Debug, Clone)]
pub(crate) struct Skipped {
    /// 1-based line.
    pub(crate) line: u64,
    /// Ledger key: the lower-cased email as written, or `line:N` when empty.
    pub(crate) key: String,
    /// Why.
    pub(crate) reason: String,
}

/// A later row repeating an earlier email; only the first counts.
#[derive(Debug, Clone)]
pub(crate) struct Duplicate {
    /// 1-based line.
    pub(crate) line: u64,
    /// The repeated address.
    pub(crate) email: String,
    /// The line that holds it first.
    pub(crate) first_line: u64,
}

/// The supporters file is broken at a line: reading cannot go on, because
/// what follows cannot be trusted to be rows. `check` lists it as a problem,
/// every other command stops with it (exit 1) before anything is sent.
#[derive(Debug)]
pub(crate) struct Malformed {
    /// `FILE:LINE: reason`.
    pub(crate) at: String,
    /// What to do about it.
    pub(crate) hint: &'static str,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\nhint: {}", self.at, self.hint)
    }
}

impl std::error::Error for Malformed {}

/// The [`Malformed`] error a csv error carries, if it is one of ours.
pub(super) fn malformed(path: &Path, e: &csv::Error) -> Option<anyhow::Error> {
    let csv::ErrorKind::Io(io) = e.kind() else {
        return None;
    };
    let broken = io.get_ref()?.downcast_ref::<Broken>()?;
    Some(anyhow::Error::new(Malformed {
        at: format!("{}:{}: {}", path.display(), broken.line, broken.reason),
        hint: broken.hint,
    }))
}
