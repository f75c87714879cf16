//! `mailer preview`: `send` without the transport — the same pipeline,
//! printed (or written as .eml files) instead of delivered.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::campaign::{Campaign, Prepared};
use crate::exit::Exit;
use crate::report::{out, preview_text};
use crate::roster::{Duplicate, Skipped};
use crate::ui::Ui;

/// `preview` flags, free of clap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Only this supporter (case-insensitive).
    pub(crate) supporter: Option<String>,
    /// Only this target (case-insensitive).
    pub(crate) target: Option<String>,
    /// At most this many messages.
    pub(crate) limit: Option<u64>,
    /// Write .eml files here.
    pub(crate) out: Option<std::path::PathBuf>,
}

/// Runs `mailer preview`.
pub(crate) fn run(campaign: &Campaign, opts: &Options, ui: &Ui) -> Result<Exit> {
    let file = campaign.config.supporters_file.display().to_string();
    let want_s = opts.supporter.as_deref().map(str::to_lowercase);
    let want_t = opts.target.as_deref().map(str::to_lowercase);
    if let Some(t) = &want_t
        && !campaign.config.targets.iter().any(|x| &x.key() == t)
    {
        anyhow::bail!("no target `{t}` in the config\n\nhint: --target takes one of the [[targets]] emails");
    }
    if let Some(dir) = &opts.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let mut shown = 0u64;
    let mut found_supporter = want_s.is_none();
    'rows: for prepared in campaign.prepared(opts.out.is_some())? {
        let (supporter, letters) = match prepared? {
            Prepared::Letters { supporter, letters } => (supporter, letters),
            Prepared::Skipped(Skipped { line, key, reason }) => {
                if want_s.as_ref().is_none_or(|s| *s == key) {
                    ui.problem(&format!("{file}:{line}: {reason} (skipped)"));
                }
                continue;
            }
            Prepared::Duplicate(Duplicate { .. }) => continue,
        };
        if want_s.as_ref().is_some_and(|s| *s != supporter.key) {
            continue;
        }
        found_supporter = true;
        for (target, built) in campaign.config.targets.iter().zip(letters) {
            if want_t.as_ref().is_some_and(|t| *t != target.key()) {
                continue;
            }
            if opts.limit.is_some_and(|l| shown >= l) {
                break 'rows;
            }
            shown += 1;
            if let Some(dir) = &opts.out {
                let name = format!(
                    "{shown:05}-{}-to-{}.eml",
                    safe(&supporter.key),
                    safe(&target.key())
                );
                write_private(&dir.join(name), &built.bytes)?;
            } else {
                if shown > 1 {
                    out(&format!("{}\n", "-".repeat(72)))?;
                }
                out(&preview_text(&built))?;
            }
        }
    }
    if !found_supporter {
        anyhow::bail!(
            "no valid row for supporter `{}` in `{file}`",
            opts.supporter.as_deref().unwrap_or_default()
        );
    }
    if let Some(dir) = &opts.out {
        ui.note(&format!(
            "wrote {shown} .eml file{} to `{}`",
            if shown == 1 { "" } else { "s" },
            dir.display()
        ));
    }
    Ok(Exit::Done)
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Previews hold supporters' data: keep them private like the ledger, and
/// never write through a symlink planted where a preview goes.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    super::create_private(path)?
        .write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))
}
