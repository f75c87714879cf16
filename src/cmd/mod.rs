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

use crate::config::Smtp;
use crate::exit::{Exit, Failure};
use crate::secret::{self, Secret};
use crate::smtp::Connector;
use crate::ui::Ui;

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

/// The relay's connector for `send`: the password source is settled first
/// (the variable is set, the command prints a password: its value is not
/// kept), then [`connector_asking`].
pub(crate) fn connector(smtp: &Smtp, ui: &Ui) -> Result<Connector> {
    password_source(smtp, ui)?;
    connector_asking(smtp, ui)
}

/// The relay's connector; at a terminal with no password set, the password
/// is asked for first (no echo) and used for this run only. Without a
/// terminal, a missing password is left for the connection to report.
pub(crate) fn connector_asking(smtp: &Smtp, ui: &Ui) -> Result<Connector> {
    match ask_password(smtp, ui)? {
        Some(typed) => Connector::new(&typed),
        None => Connector::new(smtp),
    }
}

/// Settles the password source before anything is asked. A variable that
/// is not set is fine on a terminal ([`ask_password`] asks for it).
fn password_source(smtp: &Smtp, ui: &Ui) -> Result<()> {
    if smtp.username.is_none() || (ui.interactive() && smtp.password.is_unset_env()) {
        return Ok(());
    }
    smtp.password
        .resolve()
        .map(drop)
        .map_err(|e| Failure::error(Exit::BadInput, format!("cannot get the SMTP password: {e:#}")))
}

/// On a terminal with no password set: asks for it (no echo) and returns
/// `[smtp]` with it, for this run only.
fn ask_password(smtp: &Smtp, ui: &Ui) -> Result<Option<Smtp>> {
    let Some(user) = &smtp.username else {
        return Ok(None);
    };
    if !ui.interactive() || !smtp.password.is_unset_env() {
        return Ok(None);
    }
    let password = secret::ask(&format!(
        "SMTP password for {user} at {} (not stored): ",
        smtp.host
    ))?;
    Ok(Some(Smtp {
        password: Secret::Literal(password),
        ..smtp.clone()
    }))
}
