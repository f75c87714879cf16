//! The command line, as clap derive types. The `///` on each item is its `--help`.
//!
//! Nothing here reaches below `cmd/`: `lib::run` turns these into plain options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Deliver a campaign's personalized letters over SMTP, exactly once.
///
/// A campaign folder holds mailer.toml, a Tera letter and a supporters CSV.
/// Start with `mailer init`, then `mailer check`, `mailer preview`,
/// `mailer send --dry-run` and `mailer send`.
#[derive(Debug, Parser)]
#[command(name = "mailer", version, after_long_help = crate::exit::EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (listed apart, under "Global options").
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Campaign config file [default: ./mailer.toml]
    #[arg(short, long, global = true, env = "MAILER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (never a secret)
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// When to use colour on stderr; `NO_COLOR` turns it off under `auto`
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scaffold a campaign: mailer.toml, letters/letter.md, supporters.csv
    ///
    /// On a terminal, asks your name and email, the target's name and email,
    /// the subject and how you send mail (Gmail, Outlook / Microsoft 365,
    /// Fastmail or another SMTP server), then writes a letter skeleton to the
    /// target, you as the only supporter, and From your own address. Without
    /// a terminal it writes the same with placeholder addresses, which
    /// `mailer check` names and `mailer send` refuses. Never overwrites a file.
    #[command(after_help = "Example:\n  mailer init my-letter && cd my-letter && mailer check")]
    Init {
        /// Folder to create the campaign in [default: .]
        dir: Option<PathBuf>,
    },
    /// Validate the config, the letter and every supporter's letter
    ///
    /// Prints every problem, one per line with its `FILE:LINE`. Sends nothing.
    /// Exits 1 when something would stop `mailer send` (config, letter, the
    /// supporters file, a letter that cannot render); rows `send` would only
    /// skip (invalid, duplicate) are listed but exit 0 unless `--strict`.
    #[command(after_help = "Example:\n  mailer check --strict --smtp")]
    Check {
        /// Also connect to the SMTP server, negotiate TLS, authenticate and quit
        #[arg(long)]
        smtp: bool,
        /// Fail (exit 1) on rows `send` would skip, too
        #[arg(long)]
        strict: bool,
    },
    /// Show the rendered messages, without sending anything
    ///
    /// At a terminal, shows 3 letters by default and says how many more.
    #[command(
        after_help = "Examples:\n  mailer preview --supporter ana@example.org\n  mailer preview --html --out previews/"
    )]
    Preview {
        /// Only this supporter's letters
        #[arg(long, value_name = "EMAIL")]
        supporter: Option<String>,
        /// Only letters to this target
        #[arg(long, value_name = "EMAIL")]
        target: Option<String>,
        /// At most N messages [default at a terminal: 3]
        #[arg(long, value_name = "N", conflicts_with = "all")]
        limit: Option<u64>,
        /// Every message, even at a terminal
        #[arg(long)]
        all: bool,
        /// Write one .eml file per message into DIR instead of printing them
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// One letter per distinct letter file, language and subject variant,
        /// with how many letters use it
        #[arg(long, conflicts_with = "out")]
        variants: bool,
        /// Show the HTML part (of a .md letter) instead of the text; with
        /// --out, write one .html file per message to open in a browser
        #[arg(long)]
        html: bool,
    },
    /// Send the letters that are due, recording each in the ledger
    ///
    /// Asks for confirmation on a terminal. A letter recorded as sent is never
    /// sent again. Failed and unknown letters wait for the flags below.
    #[command(
        after_help = "Examples:\n  mailer send --dry-run\n  mailer -q send --yes --limit 200    # from cron"
    )]
    Send(SendArgs),
    /// Read [bounces].mailbox; mark letters that bounced
    ///
    /// Reads a Maildir folder, an mbox file or an IMAP folder (imaps://),
    /// finds delivery status notifications and records each letter they
    /// name as `bounced` (5.x.x) or notes a delay (4.x.x). Reading the same
    /// messages again changes nothing; over IMAP, processed messages are
    /// marked \Seen and nothing is deleted. Exit 0 when the mailbox was
    /// read, 75 when its server is unreachable, 1 on config errors.
    #[command(after_help = "Example:\n  mailer bounces && mailer status --failed")]
    Bounces,
    /// Hold a supporter's letters back until `mailer requeue`
    ///
    /// The letters become `skipped` with the reason, and no `mailer send`
    /// sends them (nor any other letter of that supporter) until requeued.
    /// A letter already sent is never changed.
    #[command(after_help = "Example:\n  mailer skip --supporter ana@example.org --reason \"asked to wait\"")]
    Skip {
        /// The supporter's email address
        #[arg(long, value_name = "EMAIL")]
        supporter: String,
        /// Only the letter to this target [default: every target]
        #[arg(long, value_name = "EMAIL")]
        target: Option<String>,
        /// Why (kept in the ledger; shown by `status` and `export`)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Put a supporter's failed, unknown or skipped letters back in the queue
    ///
    /// Ends a hold from `mailer skip`; the next `mailer send` sends them
    /// (an unknown letter with the same Message-ID). A sent letter is never
    /// sent again.
    #[command(after_help = "Example:\n  mailer requeue --supporter ana@example.org")]
    Requeue {
        /// The supporter's email address
        #[arg(long, value_name = "EMAIL")]
        supporter: String,
        /// Only the letter to this target [default: every target]
        #[arg(long, value_name = "EMAIL")]
        target: Option<String>,
    },
    /// Counts by state, the last run, each target, and every failure with the server's reply
    ///
    /// The letter count agrees with `mailer check` (supporters × targets),
    /// with the rows `send` skips and the letters whose row has left the
    /// supporters file (those are never sent) counted apart.
    #[command(after_help = "Examples:\n  mailer status --failed\n  mailer status --json | jq .sent")]
    Status {
        /// Print one JSON object instead of a table
        #[arg(long, conflicts_with = "failed")]
        json: bool,
        /// List only what needs attention: failed, unknown and bounced letters,
        /// invalid rows, and letters whose row has left the supporters file
        #[arg(long)]
        failed: bool,
    },
    /// One CSV row per letter: supporter, target, state, attempts, reply, `sent_at`, `message_id`
    ///
    /// Then `refused_copies`, `bounce_status`, `bounce_diagnostic`,
    /// `bounced_at`, `supporter_name`, `target_name` and `csv_line` (the
    /// supporter's line in the supporters file).
    #[command(after_help = "Example:\n  mailer export --out letters.csv")]
    Export {
        /// Write to FILE instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Example:\n  mailer completions bash > ~/.local/share/bash-completion/completions/mailer"
    )]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout
    #[command(after_help = "Example:\n  mailer man > mailer.1 && man ./mailer.1")]
    Man,
}

/// `mailer send` flags.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Do everything but talk to the server; writes nothing to the ledger
    #[arg(long)]
    pub dry_run: bool,
    /// Send at most N letters this run (overrides `delivery.max_per_run`)
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub yes: bool,
    /// Also retry letters the server rejected permanently (5xx)
    #[arg(long)]
    pub retry_failed: bool,
    /// Also resend letters whose delivery is unknown (same Message-ID)
    #[arg(long)]
    pub resend_unknown: bool,
    /// Keep running: send each letter at its `[schedule]` time until every one
    /// is handed over; re-reads the supporters file each time it wakes and holds
    /// the ledger's lock meanwhile (cron runs then exit 75)
    #[arg(long, conflicts_with_all = ["dry_run", "test"])]
    pub follow: bool,
    /// Send test letters to EMAIL only: one per distinct target, letter
    /// file, language and subject variant (at most --limit, default 10)
    ///
    /// Subjects start with `[TEST] `; no Cc or Bcc; same relay, TLS and
    /// DKIM. The ledger and `daily_limit` are untouched.
    #[arg(long, value_name = "EMAIL", conflicts_with_all = ["dry_run", "retry_failed", "resend_unknown"])]
    pub test: Option<String>,
}

/// The command line as `mailer` parses it: the derive's, with the global
/// `--config` hidden from `init` (which writes a campaign, reads none).
#[must_use]
pub fn command() -> clap::Command {
    use clap::CommandFactory as _;
    // NOTE: clap copies a global argument into each subcommand that lacks
    // one by that id, so a hidden `config` of init's own keeps it out of
    // `init --help` (and init never reads it).
    Cli::command().mut_subcommands(|sub| {
        if sub.get_name() != "init" {
            return sub;
        }
        sub.arg(
            clap::Arg::new("config")
                .short('c')
                .long("config")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .hide(true),
        )
    })
}

/// Parses the process's arguments (exits on a usage error, like `Cli::parse`).
#[must_use]
pub fn parse() -> Cli {
    use clap::FromArgMatches as _;
    let mut matches = command().get_matches();
    Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut command()).exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        command().debug_assert();
    }
}
