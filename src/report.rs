//! Everything `mailer` prints as data: plans, previews, summaries, status.
//!
//! Commands build the values; this module formats them (tables on a
//! terminal, one line on a pipe, JSON on request). `check` and `status`
//! have their own submodules.

pub(crate) mod check;
pub(crate) mod status;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::campaign::Campaign;
use crate::message::Built;
use crate::targets::Unmatched;
use crate::ui::Ui;

/// A run of this many letters or fewer shows them all before `[y/N]`.
pub(crate) const SHOWN: usize = 3;

/// What `send` found due (pass 1).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Valid supporters.
    pub(crate) supporters: u64,
    /// Letters due now.
    pub(crate) due: u64,
    /// Supporters with at least one letter due now.
    pub(crate) due_supporters: u64,
    /// Due letters per target, in config order.
    pub(crate) per_target: Vec<u64>,
    /// Every letter per target, due or not (its supporters routed to it).
    pub(crate) routed_per_target: Vec<u64>,
    /// Already delivered.
    pub(crate) already_sent: u64,
    /// Deferred, waiting for their backoff.
    pub(crate) waiting: u64,
    /// Failed, held for `--retry-failed`.
    pub(crate) held_failed: u64,
    /// Unknown, held for `--resend-unknown`.
    pub(crate) held_unknown: u64,
    /// Skipped by hand (`mailer skip`), held until `mailer requeue`.
    pub(crate) held_by_hand: u64,
    /// Invalid rows.
    pub(crate) skipped_rows: u64,
    /// Repeated rows.
    pub(crate) duplicates: u64,
    /// The first due letter, shown in full by `--dry-run`.
    pub(crate) first: Option<Built>,
    /// The first [`SHOWN`] letters due, for the confirmation of a small run.
    pub(crate) shown: Vec<Built>,
    /// Valid supporters who match no target.
    pub(crate) unmatched: Unmatched,
    /// Due letters per (letter file, language).
    pub(crate) per_letter: BTreeMap<(Arc<str>, Arc<str>), u64>,
}

impl Plan {
    /// Counts a due letter under its letter file and language.
    pub(crate) fn count_letter(&mut self, built: &Built) {
        let v = &built.variant;
        *self
            .per_letter
            .entry((Arc::clone(&v.letter_file), Arc::clone(&v.language)))
            .or_insert(0) += 1;
    }
}

/// How a `send` run went.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// What was due.
    pub(crate) plan: Plan,
    /// Delivered this run.
    pub(crate) sent: u64,
    /// Deferred this run.
    pub(crate) deferred: u64,
    /// Failed this run.
    pub(crate) failed: u64,
    /// Unknown this run.
    pub(crate) unknown: u64,
    /// Cc/Bcc copies the server refused with letters it took this run.
    pub(crate) refused_copies: u64,
    /// Due but left for a later run (limits, a stop).
    pub(crate) not_reached: u64,
    /// Wall time.
    pub(crate) elapsed: Duration,
    /// The run ended early (a signal or a run-wide error), not by its limits.
    pub(crate) stopped: bool,
    /// `the relay throttled us at 14:02; slowed to 12/minute`, if it did.
    pub(crate) throttled: Option<String>,
}

impl Summary {
    /// Letters that reached an outcome this run.
    #[must_use]
    pub(crate) fn attempted(&self) -> u64 {
        self.sent + self.deferred + self.failed + self.unknown
    }
}

/// Writes data to stdout. A reader that went away (`mailer preview | head`)
/// comes back as a `BrokenPipe` error, which `main` ends quietly.
pub(crate) fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// One piece of a command's output, in the order it is shown: data for
/// stdout, or words to the person on stderr (hidden by `-q`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// Data for stdout, with its newline.
    Data(String),
    /// `warning: …`; a `\n\nhint: …` tail is shown as its hint.
    Warn(String),
    /// `hint: …`.
    Hint(String),
    /// A plain note.
    Note(String),
}

/// Shows rendered lines: data on stdout, the rest through `ui` on stderr.
pub(crate) fn emit(lines: &[Line], ui: &Ui) -> std::io::Result<()> {
    for line in lines {
        match line {
            Line::Data(text) => out(text)?,
            Line::Warn(text) => ui.warn(text),
            Line::Hint(text) => ui.hint(text),
            Line::Note(text) => ui.note(text),
        }
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
#[must_use]
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The end-of-run report: a table on a terminal, one line otherwise.
pub(crate) fn print_summary(s: &Summary, budget: Option<u64>, ui: &Ui) {
    if ui.quiet {
        return;
    }
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        s.attempted() as f64 / secs
    } else {
        0.0
    };
    let p = &s.plan;
    if ui.stdout_is_terminal() {
        let mut t = String::new();
        let _ = writeln!(t, "\n  sent       {:>8}", thousands(s.sent));
        let _ = writeln!(t, "  deferred   {:>8}", thousands(s.deferred));
        let _ = writeln!(t, "  failed     {:>8}", thousands(s.failed));
        let _ = writeln!(t, "  unknown    {:>8}", thousands(s.unknown));
        let _ = writeln!(t, "  skipped    {:>8}  (invalid rows)", thousands(p.skipped_rows));
        if s.refused_copies > 0 {
            let _ = writeln!(
                t,
                "  refused    {:>8}  (Cc/Bcc copies of sent letters)",
                thousands(s.refused_copies)
            );
        }
        if s.not_reached > 0 {
            let _ = writeln!(
                t,
                "  left       {:>8}  (for the next run)",
                thousands(s.not_reached)
            );
        }
        if let Some(throttled) = &s.throttled {
            let _ = writeln!(t, "  {throttled}");
        }
        let _ = writeln!(t, "  elapsed    {secs:>8.1}s  ({rate:.1} letters/s)");
        // The run is over; its exit code matters more than a closed stdout.
        let _ = out(&t);
    } else {
        let copies = if s.refused_copies > 0 {
            let n = s.refused_copies;
            format!(
                " ({} cop{} refused)",
                thousands(n),
                if n == 1 { "y" } else { "ies" }
            )
        } else {
            String::new()
        };
        let throttled = s.throttled.as_ref().map_or(String::new(), |t| format!("; {t}"));
        let _ = out(&format!(
            "sent {} deferred {} failed {} unknown {} skipped {} left {} in {secs:.1}s ({rate:.1}/s){copies}{throttled}\n",
            s.sent, s.deferred, s.failed, s.unknown, p.skipped_rows, s.not_reached
        ));
    }
    if p.due == 0 && s.attempted() == 0 {
        ui.note(&format!(
            "Nothing due: {} already sent.",
            thousands(p.already_sent)
        ));
    } else if s.not_reached > 0 && budget.is_some() && !s.stopped {
        ui.note(&format!(
            "{} wait{} for the next run (max_per_run, --limit or daily_limit).",
            if s.not_reached == 1 {
                "1 letter".to_string()
            } else {
                format!("{} letters", thousands(s.not_reached))
            },
            if s.not_reached == 1 { "s" } else { "" }
        ));
    }
    if let Some(line) = held_by_hand(p) {
        ui.note(&line);
    }
    if s.failed + p.held_failed > 0 {
        ui.hint("`mailer status` lists the failures; `mailer send --retry-failed` retries them");
    }
    if s.unknown + p.held_unknown > 0 {
        ui.hint("some letters may or may not have arrived: `mailer send --resend-unknown` resends them (same Message-ID)");
    }
    if s.deferred + p.waiting > 0 {
        ui.hint("deferred letters are retried by the next `mailer send`");
    }
    if s.refused_copies > 0 {
        ui.hint("the letters reached their targets and are not sent again; `mailer status` lists the refused copies");
    }
}

/// `2 letters held by `mailer skip` (…)`: letters a person held back,
/// which no run sends until they are requeued. `None` when there are none.
fn held_by_hand(p: &Plan) -> Option<String> {
    let n = p.held_by_hand;
    (n > 0).then(|| {
        format!(
            "{} held by `mailer skip` (`mailer requeue --supporter EMAIL` puts {} back)",
            letters(n),
            if n == 1 { "it" } else { "them" }
        )
    })
}

/// `1 letter`, `1,200 letters`.
#[must_use]
pub(crate) fn letters(n: u64) -> String {
    format!("{} letter{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// Rows `send` would skip, by kind: when they are every row of the file,
/// the campaign has nothing to send, and that is the config's or the
/// file's mistake (a wrong `email_column`, `delimiter` or `match`), not a
/// run that quietly skips everyone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SkippedRows {
    /// Invalid rows.
    pub(crate) invalid: u64,
    /// Repeated addresses.
    pub(crate) duplicates: u64,
    /// Valid supporters who match no target.
    pub(crate) unmatched: u64,
}

impl SkippedRows {
    /// The error when every row is skipped (and there was at least one).
    #[must_use]
    pub(crate) fn every_row(self, file: &str, valid: u64) -> Option<String> {
        let total = self.invalid + self.duplicates + self.unmatched;
        if valid > 0 || total == 0 {
            return None;
        }
        let kinds: Vec<String> = [
            (self.invalid, "invalid"),
            (self.duplicates, "repeated"),
            (self.unmatched, "matching no target"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{} {what}", thousands(*n)))
        .collect();
        Some(format!(
            "`{file}`: none of its {} row{} gives a letter ({}): there is nothing to send\n\n\
             hint: the rows are listed above; when every row is skipped, the config usually names the \
             wrong `email_column`, `delimiter` or `match` column: fix it, then run `mailer check`",
            thousands(total),
            if total == 1 { "" } else { "s" },
            kinds.join(", ")
        ))
    }
}

/// Routed targets shown by name in a dry run; the rest are summed up.
const ROUTED_SHOWN: usize = 10;

/// Due letters per target: each `[[targets]]` entry, then the routed ones
/// grouped (the 10 with the most letters, then "… N more").
fn plan_targets(text: &mut String, campaign: &Campaign, p: &Plan) {
    let count = |i: usize| p.per_target.get(i).copied().unwrap_or(0);
    let mut routed = Vec::new();
    for t in &campaign.config.targets {
        if t.routed.is_some() {
            routed.push((count(t.index), t));
        } else {
            let _ = writeln!(text, "  {:>8}  to {}", thousands(count(t.index)), t.mailbox());
        }
    }
    if routed.is_empty() {
        return;
    }
    let total: u64 = routed.iter().map(|(n, _)| n).sum();
    let file = campaign
        .config
        .routing
        .as_ref()
        .map_or_else(String::new, |r| r.file.display().to_string());
    let _ = writeln!(
        text,
        "  {:>8}  to the {} targets of `{file}`:",
        thousands(total),
        thousands(routed.len() as u64)
    );
    routed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.index.cmp(&b.1.index)));
    for (n, t) in routed.iter().take(ROUTED_SHOWN) {
        let _ = writeln!(text, "    {:>8}  to {}", thousands(*n), t.mailbox());
    }
    if routed.len() > ROUTED_SHOWN {
        let rest = &routed[ROUTED_SHOWN..];
        let letters: u64 = rest.iter().map(|(n, _)| n).sum();
        let _ = writeln!(
            text,
            "    {:>8}  … {} more",
            thousands(letters),
            thousands(rest.len() as u64)
        );
    }
}

/// `send --dry-run`: letters per target, the limits, the first letter.
pub(crate) fn print_plan(campaign: &Campaign, p: &Plan, budget: Option<u64>) -> std::io::Result<()> {
    let mut text = String::new();
    let _ = writeln!(text, "Dry run: nothing will be sent and nothing recorded.\n");
    let _ = writeln!(
        text,
        "Campaign   {} ({})",
        campaign.config.campaign.name, campaign.config.campaign.id
    );
    let _ = writeln!(
        text,
        "Supporters {} valid, {} skipped, {} duplicate rows",
        thousands(p.supporters),
        p.skipped_rows,
        p.duplicates
    );
    if p.unmatched.total > 0 {
        let _ = writeln!(text, "No letter: {}", p.unmatched);
    }
    let _ = writeln!(text, "Letters due now: {}", thousands(p.due));
    plan_targets(&mut text, campaign, p);
    if p.per_letter.len() > 1 || p.per_letter.keys().any(|(_, l)| !l.is_empty()) {
        let _ = writeln!(text, "Letters due per letter file:");
        for ((file, language), n) in &p.per_letter {
            let language = if language.is_empty() {
                String::new()
            } else {
                format!(" (language {language})")
            };
            let _ = writeln!(text, "  {:>8}  {file}{language}", thousands(*n));
        }
    }
    if p.already_sent + p.waiting + p.held_failed + p.held_unknown + p.held_by_hand > 0 {
        let _ = writeln!(
            text,
            "Not due: {} sent, {} deferred (waiting), {} failed, {} unknown, {} skipped by hand",
            p.already_sent, p.waiting, p.held_failed, p.held_unknown, p.held_by_hand
        );
    }
    if let Some(line) = held_by_hand(p) {
        let _ = writeln!(text, "{line}");
    }
    if let Some(b) = budget {
        let _ = writeln!(
            text,
            "This run would send at most {} (max_per_run / --limit / daily_limit).",
            thousands(b)
        );
    }
    if let Some(rate) = campaign.config.delivery.rate {
        let _ = writeln!(
            text,
            "Rate: one letter every {:.1}s.",
            rate.interval().as_secs_f64()
        );
    }
    match &p.first {
        Some(first) => {
            let _ = writeln!(text, "\nThe first letter:\n");
            text.push_str(&preview_text(first));
        }
        None => {
            let _ = writeln!(text, "\nNo letter is due.");
        }
    }
    out(&text)
}

/// What the confirmation shows before `[y/N]`: every letter of a run of
/// [`SHOWN`] or fewer in full; otherwise the first one's From, To and Subject.
#[must_use]
pub(crate) fn confirmation_text(p: &Plan, to_send: u64) -> String {
    let mut text = String::new();
    if to_send <= SHOWN as u64 && !p.shown.is_empty() {
        let n = p.shown.len().min(to_send as usize);
        for (i, b) in p.shown.iter().take(n).enumerate() {
            let _ = writeln!(text, "--- letter {}/{n}", i + 1);
            text.push_str(&preview_text(b));
        }
        let _ = writeln!(text, "---");
    } else if let Some(first) = &p.first {
        let _ = writeln!(text, "The first letter:");
        for (name, value) in first
            .summary
            .iter()
            .filter(|(n, _)| matches!(*n, "From" | "To" | "Subject"))
        {
            let _ = writeln!(text, "  {name}: {value}");
        }
    }
    text
}

/// A message as a person reads it: main headers unencoded, then the text.
#[must_use]
pub(crate) fn preview_text(b: &Built) -> String {
    let mut out = String::new();
    for (name, value) in &b.summary {
        let _ = writeln!(out, "{name}: {value}");
    }
    out.push('\n');
    out.push_str(&b.text);
    if !b.text.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `status --json`, exactly as SPEC.md fixes it.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct StatusCounts {
    /// `campaign.id`
    pub(crate) campaign: String,
    /// Letters implied by today's CSV × targets, plus ledger letters whose row left the CSV.
    pub(crate) total: u64,
    /// Delivered.
    pub(crate) sent: u64,
    /// Not yet attempted.
    pub(crate) pending: u64,
    /// Waiting for a retry.
    pub(crate) deferred: u64,
    /// Rejected.
    pub(crate) failed: u64,
    /// May have been delivered.
    pub(crate) unknown: u64,
    /// Invalid rows.
    pub(crate) skipped: u64,
    /// Sent, then refused by the target's mail system (a DSN came back).
    pub(crate) bounced: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_skipped_is_an_error_only_with_rows_and_no_valid_one() {
        let rows = |invalid, duplicates, unmatched| SkippedRows {
            invalid,
            duplicates,
            unmatched,
        };
        assert_eq!(rows(0, 0, 0).every_row("s.csv", 0), None, "no rows at all");
        assert_eq!(rows(5, 1, 2).every_row("s.csv", 1), None, "one valid supporter");
        let e = rows(1_200, 3, 0).every_row("s.csv", 0).unwrap();
        assert!(
            e.starts_with("`s.csv`: none of its 1,203 rows gives a letter (1,200 invalid, 3 repeated): there is nothing to send\n\nhint: "),
            "{e}"
        );
        let e = rows(0, 0, 1).every_row("s.csv", 0).unwrap();
        assert!(
            e.starts_with("`s.csv`: none of its 1 row gives a letter (1 matching no target)"),
            "{e}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn status_json_keys_are_the_spec_ones() {
        let json = serde_json::to_string(&StatusCounts {
            campaign: "c".into(),
            ..StatusCounts::default()
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"campaign":"c","total":0,"sent":0,"pending":0,"deferred":0,"failed":0,"unknown":0,"skipped":0,"bounced":0}"#
        );
    }
}
