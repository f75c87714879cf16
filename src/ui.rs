//! What a person sees on stderr: errors, warnings, hints, the prompt and the
//! progress bar. Terminal detection and colour (`--color`, `NO_COLOR`) live here.
//!
//! Data (previews, status, summaries) goes to stdout through `report.rs`.

use std::collections::HashSet;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anstyle::{AnsiColor, Style};

use crate::cli::ColorChoice;

/// How loud to be and what the terminal can do.
#[derive(Debug, Clone)]
pub struct Ui {
    /// `-q`: only errors.
    pub(crate) quiet: bool,
    /// `-v`: more detail.
    pub(crate) verbose: bool,
    color: bool,
    stderr_tty: bool,
    stdin_tty: bool,
    stdout_tty: bool,
    /// What was shown already, when each thing is to be shown once
    /// ([`Ui::remembering`]).
    shown: Option<Arc<Mutex<HashSet<String>>>>,
}

const RED: Style = AnsiColor::Red.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const CYAN: Style = AnsiColor::Cyan.on_default().bold();
const GREEN: Style = AnsiColor::Green.on_default().bold();

impl Ui {
    /// Detects terminals; colour per `--color` and `NO_COLOR`.
    #[must_use]
    pub fn new(quiet: bool, verbose: bool, color: ColorChoice) -> Ui {
        let stderr_tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                stderr_tty && !no_color && std::env::var("TERM").map_or(true, |t| t != "dumb")
            }
        };
        Ui {
            quiet,
            verbose,
            color,
            stderr_tty,
            stdin_tty: std::io::stdin().is_terminal(),
            stdout_tty: std::io::stdout().is_terminal(),
            shown: None,
        }
    }

    /// A copy that shows each warning, hint and problem line once, however
    /// often it is told to, and remembers for [`Ui::first_time`]: for
    /// `send --follow`, whose rounds would repeat them.
    #[must_use]
    pub(crate) fn remembering(&self) -> Ui {
        Ui {
            shown: Some(Arc::default()),
            ..self.clone()
        }
    }

    /// Whether `key` is news: always true, except on a [`Ui::remembering`]
    /// copy that saw it before.
    pub(crate) fn first_time(&self, key: &str) -> bool {
        self.shown.as_ref().is_none_or(|shown| {
            shown
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.to_owned())
        })
    }

    /// Whether a person is at the keyboard (prompts allowed).
    #[must_use]
    pub(crate) fn interactive(&self) -> bool {
        self.stdin_tty && self.stderr_tty
    }

    /// Whether stdout is a terminal (tables) or a pipe (one line).
    #[must_use]
    pub(crate) fn stdout_is_terminal(&self) -> bool {
        self.stdout_tty
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    /// `error: …` (always shown). A `\n\nhint: …` tail is coloured as a hint.
    pub fn error(&self, message: &str) {
        let (main, hint) = split_hint(message);
        eprintln!("{} {main}", self.paint(RED, "error:"));
        if let Some(h) = hint {
            eprintln!("\n{} {h}", self.paint(CYAN, "hint:"));
        }
    }

    /// `warning: …` (hidden by `-q`; once on a [`Ui::remembering`] copy).
    pub(crate) fn warn(&self, message: &str) {
        if !self.quiet && self.first_time(&format!("warning\0{message}")) {
            let (main, hint) = split_hint(message);
            eprintln!("{} {main}", self.paint(YELLOW, "warning:"));
            if let Some(h) = hint {
                eprintln!("{} {h}", self.paint(CYAN, "hint:"));
            }
        }
    }

    /// A problem line such as `FILE:LINE: reason` (hidden by `-q`; once on a
    /// [`Ui::remembering`] copy).
    pub(crate) fn problem(&self, message: &str) {
        if !self.quiet && self.first_time(&format!("problem\0{message}")) {
            eprintln!("{message}");
        }
    }

    /// A failure during a send: shown even with `-q` (cron mails it).
    // NOTE: a method like its siblings, so every word to the person goes through `Ui`.
    #[allow(clippy::unused_self)]
    pub(crate) fn failure(&self, message: &str) {
        eprintln!("{message}");
    }

    /// `hint: …` (hidden by `-q`; once on a [`Ui::remembering`] copy).
    pub(crate) fn hint(&self, message: &str) {
        if !self.quiet && self.first_time(&format!("hint\0{message}")) {
            eprintln!("{} {message}", self.paint(CYAN, "hint:"));
        }
    }

    /// Progress notes (hidden by `-q`).
    pub(crate) fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// Detail for `-v`.
    pub(crate) fn detail(&self, message: &str) {
        if self.verbose {
            eprintln!("{} {message}", self.paint(CYAN, "debug:"));
        }
    }

    /// A green `ok` mark for step lists.
    #[must_use]
    pub(crate) fn ok(&self, text: &str) -> String {
        self.paint(GREEN, text)
    }

    /// Asks a yes/no question on stderr; only `y`/`yes` is yes.
    // NOTE: a method like its siblings, so every word to the person goes through `Ui`.
    #[allow(clippy::unused_self)]
    pub(crate) fn confirm(&self, question: &str) -> bool {
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        match std::io::stdin().lock().read_line(&mut answer) {
            Ok(0) | Err(_) => {
                eprintln!(); // end of input (Ctrl-D): end the prompt's line
                return false;
            }
            Ok(_) => {}
        }
        matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    }

    /// Asks for a line (terminal only): the answer trimmed, `default` when
    /// it is empty (shown in brackets when there is one), `None` at the end
    /// of input (Ctrl-D).
    // NOTE: a method like its siblings, so every word to the person goes through `Ui`.
    #[allow(clippy::unused_self)]
    pub(crate) fn ask_line(&self, question: &str, default: Option<&str>) -> Option<String> {
        match default {
            Some(d) if !d.is_empty() => eprint!("{question} [{d}]: "),
            _ => eprint!("{question}: "),
        }
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        match std::io::stdin().lock().read_line(&mut answer) {
            Ok(0) | Err(_) => {
                eprintln!();
                return None;
            }
            Ok(_) => {}
        }
        let answer = answer.trim();
        Some(match default {
            Some(d) if answer.is_empty() => d.to_string(),
            _ => answer.to_string(),
        })
    }

    /// A progress bar on a terminal; hidden otherwise.
    #[must_use]
    pub(crate) fn progress(&self, total: u64) -> indicatif::ProgressBar {
        if !self.stderr_tty || self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(total);
        let template = if self.color {
            "{spinner:.green} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} letters · {rate} · ETA {eta} · {msg}"
        } else {
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} letters · {rate} · ETA {eta} · {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            let style = style.progress_chars("=> ").with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            );
            bar.set_style(style);
        }
        bar.set_message("0 not delivered");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// Text from outside (a server's replies) made safe for a terminal, a log or
/// a spreadsheet: every control character (C0, DEL, C1) and every invisible
/// direction or line-separator mark is written as Rust's `escape_debug` does
/// (`\u{1b}`), so an `ESC [2J` shows as text instead of clearing the screen.
/// Everything else, quotes and backslashes included, is kept as it is.
#[must_use]
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let escaped = c.escape_debug();
            if escaped.len() > 1 {
                out.extend(escaped);
            } else {
                out.extend(c.escape_unicode());
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn split_hint(message: &str) -> (&str, Option<&str>) {
    match message.split_once("\n\nhint: ") {
        Some((main, hint)) => (main, Some(hint)),
        None => (message, None),
    }
}

#[cfg(test)]
mod tests {
    use super::{Ui, printable};
    use crate::cli::ColorChoice;

    #[test]
    fn a_remembering_copy_knows_what_it_showed_and_its_clones_share_that() {
        let plain = Ui::new(false, false, ColorChoice::Never);
        assert!(plain.first_time("a") && plain.first_time("a"));
        let once = plain.remembering();
        let worker = once.clone();
        assert!(once.first_time("a"));
        assert!(!worker.first_time("a"));
        assert!(worker.first_time("b"));
        // The original forgets nothing because it never remembered.
        assert!(plain.first_time("a"));
    }

    #[test]
    fn printable_escapes_controls_and_keeps_the_rest() {
        assert_eq!(printable("550 5.1.1 no such user"), "550 5.1.1 no such user");
        assert_eq!(
            printable("550 \u{1b}[2J\u{7} \u{9b}31m \\ \"q\" é"),
            "550 \\u{1b}[2J\\u{7} \\u{9b}31m \\ \"q\" é"
        );
        assert_eq!(printable("a\tb\r\n\u{202e}"), "a\\tb\\r\\n\\u{202e}");
        assert_eq!(printable("\u{7f}\u{0}\u{200b}"), "\\u{7f}\\0\\u{200b}");
        // Escaping escaped text changes nothing.
        let once = printable("\u{1b}x").into_owned();
        assert_eq!(printable(&once), once);
    }
}
