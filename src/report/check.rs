//! What `mailer check` found, and how it reads: the row problems, the
//! campaign's shape, the sender warnings, the summary line, uniformity.
//!
//! `cmd::check` gathers a [`CheckReport`]; this module only formats it, so
//! every line is tested here without a campaign.

use std::fmt::Write as _;

use crate::placeholder::Found;
use crate::report::{Line, thousands};
use crate::targets::Unmatched;
use crate::ui::Ui;
use crate::uniformity::Uniformity;

/// Everything `check` has to say, in the order it says it. A section left
/// empty says nothing, so a report cut short by an error renders what was
/// found up to it.
#[derive(Debug, Default)]
pub(crate) struct CheckReport {
    /// The supporters file, as row problems name it.
    pub(crate) file: String,
    /// Row problems in file order (a letter error only at its first row).
    pub(crate) rows: Vec<RowProblem>,
    /// Each distinct letter error with how many rows it failed for.
    pub(crate) repeats: Vec<(String, u64)>,
    /// Valid supporters who match no target.
    pub(crate) unmatched: Unmatched,
    /// Every row is skipped: the campaign has nothing to send (an error).
    pub(crate) every_row_skipped: Option<String>,
    /// Supporters per value of the language column (`""` for empty).
    pub(crate) languages: Vec<(String, u64)>,
    /// Languages found with no letter of their own.
    pub(crate) without_letter: Vec<String>,
    /// The attachments' total weight, when above the warning threshold.
    pub(crate) heavy_attachments: Option<usize>,
    /// Placeholder addresses a real relay would get.
    pub(crate) placeholders: Vec<Found>,
    /// That relay's host (for the hint).
    pub(crate) relay: Option<String>,
    /// `FILE:LINE` of each letter file still `mailer init`'s skeleton.
    pub(crate) unwritten: Vec<String>,
    /// The SMTP password source, when it cannot be resolved now.
    pub(crate) password: Option<Password>,
    /// DMARC and DKIM advice about the sender.
    pub(crate) sender: Vec<SenderWarning>,
    /// A return path that does not align with From.
    pub(crate) misaligned: Option<String>,
    /// Targets whose letters bounced as an unknown address.
    pub(crate) unknown_targets: Vec<UnknownTarget>,
    /// The counts; `None` when the check stopped before them.
    pub(crate) totals: Option<CheckTotals>,
    /// One line per target.
    pub(crate) uniformity: Vec<Uniformity>,
}

/// A row `send` skips or cannot write, as `check` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowProblem {
    /// An invalid row.
    Skipped {
        /// Its line.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A repeated address.
    Duplicate {
        /// Its line.
        line: u64,
        /// The address.
        email: String,
        /// The line that counts.
        first_line: u64,
    },
    /// A letter that cannot render (its full message, first row only).
    Letter(String),
    /// The file cannot be read past this point.
    Malformed {
        /// `FILE:LINE: reason`.
        at: String,
        /// What to do about it.
        hint: &'static str,
    },
}

/// Why the SMTP password is not at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Password {
    /// `password_env` names a variable that is not set: a warning.
    Unset {
        /// The reason, printable.
        why: String,
    },
    /// The source failed: `send` would stop.
    Failed {
        /// The config file.
        config: String,
        /// The reason, printable.
        why: String,
    },
}

/// Advice about the sender (warnings, never errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SenderWarning {
    /// From is a free-mail domain.
    FreeMail {
        /// From's domain.
        from: String,
    },
    /// From's domain is not the SMTP login's.
    LoginDomain {
        /// From's domain.
        from: String,
        /// The login's domain.
        login: String,
    },
    /// No `[dkim]` and a relay not known to sign.
    NoDkim {
        /// From's domain.
        from: String,
    },
    /// `[dkim]` signs for another domain.
    DkimMisaligned {
        /// The signing domain.
        dkim: String,
        /// From's domain.
        from: String,
    },
}

/// A target whose letters bounced as an unknown address (5.1.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownTarget {
    /// Its address.
    pub(crate) target: String,
    /// Letters that bounced so.
    pub(crate) letters: u64,
    /// The first diagnostic.
    pub(crate) diagnostic: String,
}

/// The summary line's counts and what decides the exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CheckTotals {
    /// Valid supporters.
    pub(crate) supporters: u64,
    /// Letters ready.
    pub(crate) letters: u64,
    /// Targets (configured, or routed).
    pub(crate) targets: u64,
    /// Supporters are routed to their own targets (no product to show).
    pub(crate) routed: bool,
    /// Every problem listed.
    pub(crate) problems: u64,
    /// Those that stop `send` (the rest are rows it skips).
    pub(crate) blocking: u64,
    /// `--strict`: skipped rows are errors.
    pub(crate) strict: bool,
}

impl CheckTotals {
    /// Rows that `send` would merely skip.
    #[must_use]
    pub(crate) fn rows(&self) -> u64 {
        self.problems - self.blocking
    }
}

/// `check --smtp`'s line once the handshake went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SmtpCheck {
    /// `host:port (security)`.
    pub(crate) relay: String,
    /// TLS was negotiated and verified.
    pub(crate) tls: bool,
    /// The login, when AUTH was used.
    pub(crate) user: Option<String>,
    /// The server offers PIPELINING.
    pub(crate) pipelining: bool,
}

/// The whole report, in order. `quiet` (`-q`) drops the data lines that are
/// not problems (languages, summary, uniformity); warnings, hints and notes
/// are dropped by [`crate::report::emit`].
#[must_use]
pub(crate) fn render(r: &CheckReport, quiet: bool) -> Vec<Line> {
    let mut lines = rows(&r.file, &r.rows);
    for (msg, n) in &r.repeats {
        if *n > 1 {
            lines.push(Line::Note(format!(
                "(the same letter error repeats for {} more row{}: {})",
                thousands(n - 1),
                if *n == 2 { "" } else { "s" },
                short(msg)
            )));
        }
    }
    if r.unmatched.total > 0 {
        lines.push(Line::Data(format!("{}\n", r.unmatched)));
    }
    if let Some(every) = &r.every_row_skipped {
        let (problem, hint) = every.split_once("\n\nhint: ").unwrap_or((every, ""));
        lines.push(Line::Data(format!("{problem}\n")));
        if !hint.is_empty() {
            lines.push(Line::Hint(hint.to_owned()));
        }
    }
    if !quiet && !r.languages.is_empty() {
        lines.push(Line::Data(language_line(&r.languages, &r.without_letter)));
    }
    if let Some(bytes) = r.heavy_attachments {
        lines.push(Line::Warn(format!(
            "the attachments ([campaign] attachments) weigh {:.1} MB together, more than 10 MB: many \
             mail servers refuse large messages, and every letter carries them\n\nhint: link to the \
             file instead, or make it smaller",
            bytes as f64 / 1_000_000.0
        )));
    }
    for f in &r.placeholders {
        lines.push(Line::Data(format!("{f}\n")));
    }
    if let (false, Some(host)) = (r.placeholders.is_empty(), &r.relay) {
        lines.push(Line::Hint(format!(
            "`mailer send` refuses to give `{host}` a letter with a placeholder address: \
             put real ones in their place"
        )));
    }
    for at in &r.unwritten {
        lines.push(Line::Data(format!(
            "{at}: the letter still says \"{}\": write your letter there first\n",
            crate::cmd::init::UNWRITTEN
        )));
    }
    match &r.password {
        Some(Password::Unset { why }) => lines.push(Line::Warn(format!(
            "the SMTP password: {why}\n\nhint: `mailer send` at a terminal asks for it (not stored); \
             for cron, set the variable in the job's environment or `password_command` in [smtp]"
        ))),
        Some(Password::Failed { config, why }) => {
            lines.push(Line::Data(format!("{config}: [smtp] password: {why}\n")));
        }
        None => {}
    }
    lines.extend(sender_lines(&r.sender));
    if let Some(problem) = &r.misaligned {
        lines.push(Line::Data(format!("{problem}\n")));
    }
    lines.extend(unknown_target_lines(&r.unknown_targets));
    if let Some(totals) = &r.totals {
        if !quiet {
            lines.push(Line::Data(summary_line(totals)));
        }
        let rows = totals.rows();
        if rows > 0 && totals.blocking == 0 && !totals.strict {
            lines.push(Line::Hint(format!(
                "`mailer send` skips {} and sends the rest; `mailer check --strict` treats skipped rows as errors",
                if rows == 1 { "that row" } else { "those rows" }
            )));
        }
    }
    if !quiet {
        for u in &r.uniformity {
            lines.push(Line::Data(format!("{u}\n")));
        }
        if r.uniformity.iter().any(Uniformity::is_high) {
            lines.push(Line::Hint(
                "letters that read alike are grouped by mail filters and discounted by staff: add a \
                 `note` field to your signup form and `{{ supporter.note }}` to the letter, or use \
                 subject/letter variants and `one_of(options=[…])` (see the README, \"Variation\")"
                    .to_owned(),
            ));
        }
    }
    lines
}

/// Row problems of `file`, as [`render`] begins: `check` shows them as it
/// finds them, so a file of a million bad rows is not held in memory.
pub(crate) fn rows(file: &str, rows: &[RowProblem]) -> Vec<Line> {
    let mut lines = Vec::new();
    for row in rows {
        row_lines(&mut lines, file, row);
    }
    lines
}

/// One row problem (a malformed file adds its hint).
fn row_lines(lines: &mut Vec<Line>, file: &str, row: &RowProblem) {
    match row {
        RowProblem::Skipped { line, reason } => lines.push(Line::Data(format!("{file}:{line}: {reason}\n"))),
        RowProblem::Duplicate {
            line,
            email,
            first_line,
        } => lines.push(Line::Data(format!(
            "{file}:{line}: `{email}` repeats line {first_line}; only the first row counts\n"
        ))),
        RowProblem::Letter(msg) => lines.push(Line::Data(format!("{msg}\n"))),
        RowProblem::Malformed { at, hint } => {
            lines.push(Line::Data(format!("{at}\n")));
            lines.push(Line::Hint((*hint).to_owned()));
        }
    }
}

/// `languages: es 120, en 3,400, fr 7; without a letter of their own …`.
fn language_line(languages: &[(String, u64)], without_letter: &[String]) -> String {
    let list: Vec<String> = languages
        .iter()
        .map(|(l, n)| {
            let l = if l.is_empty() { "(empty)" } else { l.as_str() };
            format!("{l} {}", thousands(*n))
        })
        .collect();
    let mut line = format!("languages: {}", list.join(", "));
    if !without_letter.is_empty() {
        let _ = write!(
            line,
            "; without a letter of their own (they get the default letter): {}",
            without_letter.join(", ")
        );
    }
    line.push('\n');
    line
}

/// `N supporters × T targets = L letters ready; P problems`, or with
/// routing `N supporters → L letters to T targets ready; P problems`.
fn summary_line(t: &CheckTotals) -> String {
    let s = |n: u64| if n == 1 { "" } else { "s" };
    if t.routed {
        format!(
            "{} supporter{} → {} letter{} to {} target{} ready; {} problem{}\n",
            thousands(t.supporters),
            s(t.supporters),
            thousands(t.letters),
            s(t.letters),
            thousands(t.targets),
            s(t.targets),
            thousands(t.problems),
            s(t.problems),
        )
    } else {
        format!(
            "{} supporter{} × {} target{} = {} letter{} ready; {} problem{}\n",
            thousands(t.supporters),
            s(t.supporters),
            t.targets,
            s(t.targets),
            thousands(t.letters),
            s(t.letters),
            thousands(t.problems),
            s(t.problems),
        )
    }
}

/// The sender warnings (also shown by `send` before its confirmation).
#[must_use]
pub(crate) fn sender_lines(warnings: &[SenderWarning]) -> Vec<Line> {
    warnings
        .iter()
        .map(|w| {
            Line::Warn(match w {
                SenderWarning::FreeMail { from } => format!(
                    "From uses `{from}`, a free-mail domain: its DMARC policy makes receivers reject mail \
                     from it sent through other servers\n\nhint: send From an address on your organization's own \
                     domain, with the supporter's name as display name and Reply-To the supporter"
                ),
                SenderWarning::LoginDomain { from, login } => format!(
                    "From's domain `{from}` differs from the SMTP login's `{login}`: DMARC passes only \
                     when SPF or DKIM aligns with From's domain, so check your relay may send for `{from}`"
                ),
                SenderWarning::NoDkim { from } => format!(
                    "no [dkim] section: letters are not signed by mailer\n\nhint: fine if your relay DKIM-signs for \
                     `{from}`; otherwise add [dkim] (see config.example.toml)"
                ),
                SenderWarning::DkimMisaligned { dkim, from } => format!(
                    "DKIM signs as `{dkim}` but From is `{from}`: the signature will not align for DMARC"
                ),
            })
        })
        .collect()
}

/// One warning per target that bounced as an unknown address.
#[must_use]
pub(crate) fn unknown_target_lines(targets: &[UnknownTarget]) -> Vec<Line> {
    targets
        .iter()
        .map(|t| {
            Line::Warn(format!(
                "target `{}`: {} letter{} bounced as an unknown address ({})\n\n\
                 hint: check the address in [[targets]]; letters already sent to it are not resent",
                t.target,
                t.letters,
                if t.letters == 1 { "" } else { "s" },
                crate::ui::printable(&t.diagnostic)
            ))
        })
        .collect()
}

/// `SMTP host:587 (starttls): ok — connected, TLS verified, authenticated as …`.
#[must_use]
pub(crate) fn smtp_line(c: &SmtpCheck, ui: &Ui) -> Vec<Line> {
    if ui.quiet {
        return Vec::new();
    }
    let tls = if c.tls { "TLS verified" } else { "no TLS" };
    let auth = c
        .user
        .as_deref()
        .map_or("no AUTH".to_string(), |u| format!("authenticated as {u}"));
    let pipe = if c.pipelining { ", PIPELINING" } else { "" };
    vec![Line::Data(format!(
        "SMTP {}: {} — connected, {tls}, {auth}{pipe}\n",
        c.relay,
        ui.ok("ok")
    ))]
}

/// The gist of a template error: without its location and the list of
/// available fields.
fn short(msg: &str) -> &str {
    let body = msg.split_once(": ").map_or(msg, |(_, rest)| rest);
    let body = body.split(". Available").next().unwrap_or(body);
    body.lines().next().unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(lines: &[Line]) -> String {
        lines
            .iter()
            .filter_map(|l| match l {
                Line::Data(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn totals(supporters: u64, letters: u64, targets: u64, problems: u64) -> CheckTotals {
        CheckTotals {
            supporters,
            letters,
            targets,
            problems,
            ..CheckTotals::default()
        }
    }

    #[test]
    fn an_empty_campaign_says_zero_of_everything() {
        let r = CheckReport {
            totals: Some(totals(0, 0, 1, 0)),
            ..CheckReport::default()
        };
        assert_eq!(
            render(&r, false),
            [Line::Data(
                "0 supporters × 1 target = 0 letters ready; 0 problems\n".into()
            )]
        );
        assert!(render(&r, true).is_empty());
    }

    #[test]
    fn the_summary_has_thousands_separators_and_plurals() {
        let one = totals(1, 1, 1, 1);
        assert_eq!(
            summary_line(&one),
            "1 supporter × 1 target = 1 letter ready; 1 problem\n"
        );
        let many = totals(1_234_567, 2_469_134, 2, 12_345);
        assert_eq!(
            summary_line(&many),
            "1,234,567 supporters × 2 targets = 2,469,134 letters ready; 12,345 problems\n"
        );
        let routed = CheckTotals {
            routed: true,
            ..totals(3_000, 4_500, 1_200, 0)
        };
        assert_eq!(
            summary_line(&routed),
            "3,000 supporters → 4,500 letters to 1,200 targets ready; 0 problems\n"
        );
    }

    #[test]
    fn rows_come_first_in_file_order_then_the_summary_and_the_skip_hint() {
        let r = CheckReport {
            file: "s.csv".into(),
            rows: vec![
                RowProblem::Skipped {
                    line: 3,
                    reason: "invalid email `x`".into(),
                },
                RowProblem::Duplicate {
                    line: 9,
                    email: "a@b.example".into(),
                    first_line: 2,
                },
            ],
            totals: Some(totals(7, 7, 1, 2)),
            ..CheckReport::default()
        };
        let lines = render(&r, false);
        assert_eq!(
            data(&lines),
            "s.csv:3: invalid email `x`\n\
             s.csv:9: `a@b.example` repeats line 2; only the first row counts\n\
             7 supporters × 1 target = 7 letters ready; 2 problems\n"
        );
        assert_eq!(
            lines.last(),
            Some(&Line::Hint(
                "`mailer send` skips those rows and sends the rest; `mailer check --strict` treats \
                 skipped rows as errors"
                    .into()
            ))
        );
        // One row: "that row". Under --strict, or with a blocking problem, no hint.
        let one = CheckReport {
            rows: r.rows[..1].to_vec(),
            totals: Some(totals(7, 7, 1, 1)),
            ..CheckReport::default()
        };
        assert!(matches!(render(&one, false).last(), Some(Line::Hint(h)) if h.contains("skips that row")));
        for t in [
            CheckTotals {
                strict: true,
                ..totals(7, 7, 1, 1)
            },
            CheckTotals {
                blocking: 1,
                ..totals(7, 7, 1, 2)
            },
        ] {
            let r = CheckReport {
                totals: Some(t),
                ..CheckReport::default()
            };
            assert!(!render(&r, false).iter().any(|l| matches!(l, Line::Hint(_))));
        }
    }

    #[test]
    fn a_letter_error_is_listed_once_and_its_repeats_counted() {
        let msg = "letters/letter.md:3: undefined variable `supporter.nickname`. Available: a, b \
                   (rendering the letter for s.csv:2)";
        let r = CheckReport {
            rows: vec![RowProblem::Letter(msg.into())],
            repeats: vec![("a".into(), 1), (msg.into(), 1_001), ("b".into(), 2)],
            ..CheckReport::default()
        };
        assert_eq!(
            render(&r, false),
            [
                Line::Data(format!("{msg}\n")),
                Line::Note(
                    "(the same letter error repeats for 1,000 more rows: undefined variable \
                     `supporter.nickname`)"
                        .into()
                ),
                Line::Note("(the same letter error repeats for 1 more row: b)".into()),
            ]
        );
    }

    #[test]
    fn a_malformed_file_is_followed_by_its_hint() {
        let r = CheckReport {
            rows: vec![RowProblem::Malformed {
                at: "s.csv:4: unterminated quote".into(),
                hint: "close the quote",
            }],
            ..CheckReport::default()
        };
        assert_eq!(
            render(&r, false),
            [
                Line::Data("s.csv:4: unterminated quote\n".into()),
                Line::Hint("close the quote".into())
            ]
        );
    }

    #[test]
    fn languages_show_counts_and_those_without_a_letter_and_hide_under_quiet() {
        let r = CheckReport {
            languages: vec![(String::new(), 2), ("en".into(), 3_400), ("fr".into(), 7)],
            without_letter: vec!["fr".into()],
            ..CheckReport::default()
        };
        assert_eq!(
            data(&render(&r, false)),
            "languages: (empty) 2, en 3,400, fr 7; without a letter of their own (they get the \
             default letter): fr\n"
        );
        assert!(render(&r, true).is_empty());
    }

    #[test]
    fn sender_and_bounce_warnings_read_in_full() {
        let lines = sender_lines(&[
            SenderWarning::LoginDomain {
                from: "org.example".into(),
                login: "relay.example".into(),
            },
            SenderWarning::DkimMisaligned {
                dkim: "other.example".into(),
                from: "org.example".into(),
            },
        ]);
        assert_eq!(
            lines[1],
            Line::Warn(
                "DKIM signs as `other.example` but From is `org.example`: the signature will not \
                 align for DMARC"
                    .into()
            )
        );
        let one = unknown_target_lines(&[UnknownTarget {
            target: "gone@corp.example".into(),
            letters: 1,
            diagnostic: "550 5.1.1 no\x07such user".into(),
        }]);
        assert_eq!(
            one,
            [Line::Warn(
                "target `gone@corp.example`: 1 letter bounced as an unknown address (550 5.1.1 \
                 no\\u{7}such user)\n\nhint: check the address in [[targets]]; letters already sent \
                 to it are not resent"
                    .into()
            )]
        );
    }

    #[test]
    fn password_problems_are_a_line_or_a_warning() {
        let failed = CheckReport {
            password: Some(Password::Failed {
                config: "mailer.toml".into(),
                why: "`pass show x` failed".into(),
            }),
            ..CheckReport::default()
        };
        assert_eq!(
            data(&render(&failed, true)),
            "mailer.toml: [smtp] password: `pass show x` failed\n"
        );
        let unset = CheckReport {
            password: Some(Password::Unset {
                why: "`MAILER_SMTP_PASSWORD` is not set".into(),
            }),
            ..CheckReport::default()
        };
        assert!(
            matches!(&render(&unset, false)[..], [Line::Warn(w)] if w.starts_with("the SMTP password: `MAILER"))
        );
    }

    #[test]
    fn the_smtp_line_names_each_step() {
        let ui = Ui::new(false, false, crate::cli::ColorChoice::Never);
        let checked = SmtpCheck {
            relay: "smtp.org.example:587 (starttls)".into(),
            tls: true,
            user: Some("letters@org.example".into()),
            pipelining: true,
        };
        assert_eq!(
            smtp_line(&checked, &ui),
            [Line::Data(
                "SMTP smtp.org.example:587 (starttls): ok — connected, TLS verified, authenticated \
                 as letters@org.example, PIPELINING\n"
                    .into()
            )]
        );
        let plain = SmtpCheck {
            tls: false,
            user: None,
            pipelining: false,
            ..checked
        };
        assert!(data(&smtp_line(&plain, &ui)).ends_with("ok — connected, no TLS, no AUTH\n"));
        let quiet = Ui::new(true, false, crate::cli::ColorChoice::Never);
        assert!(smtp_line(&plain, &quiet).is_empty());
    }
}
