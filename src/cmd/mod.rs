//! One module per subcommand: load → plan → act → report.
pub(crate) mod bounces;
pub(crate) mod check;
pub(crate) mod export;
pub(crate) mod init;
pub(crate) mod preview;
pub(crate) mod requeue;
pub(crate) mod send;
pub(crate) mod send_test;
pub(crate) mod skip;
pub(crate) mod status;

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Creates `path` for supporters' data (`export --out`, `preview --out`):
/// mode 0600 like the ledger, replacing a regular file already there, and
/// never writing through a symlink planted in its place.
pub(crate) fn create_private(path: &Path) -> Result<File> {
    let shown = path.display();
    // `create_new` (`O_CREAT | O_EXCL`) never follows a symlink: the file
    // it opens is always one it just made, with its mode.
    let create = || {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)
    };
    match create() {
        Ok(file) => return Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot write `{shown}`")),
    }
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("cannot write `{shown}`"))?;
    if meta.file_type().is_symlink() {
        bail!(
            "`{shown}` is a symbolic link: refusing to write through it\n\n\
             hint: remove it, or write to another path"
        );
    }
    if !meta.is_file() {
        bail!("`{shown}` exists and is not a regular file");
    }
    std::fs::remove_file(path).with_context(|| format!("cannot replace `{shown}`"))?;
    create().with_context(|| format!("cannot write `{shown}`"))
}
