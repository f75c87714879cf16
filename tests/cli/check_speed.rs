//! Issues 10 and 12 (speed): `check` prepares rows on several threads, a
//! batch of rows at a time. What it prints must stay what one thread in
//! file order gives: every problem once, in row order, duplicates named
//! with their first line, template errors with their first row, and a row
//! the reader cannot get past stopping the listing there. Files here span
//! several batches (1,024 rows each).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::support::campaign::{Campaign, LETTER};

/// What `check` should say about one row, computed here, not by mailer.
enum Expect {
    /// `FILE:LINE: invalid email …`.
    Invalid(u64),
    /// `FILE:LINE: `EMAIL` repeats line FIRST; only the first row counts`.
    Repeat(u64, String, u64),
}

/// `n` rows: every 701st address is invalid, every 853rd repeats (in upper
/// case) the address of the row ten before, every 977th first name carries
/// an encoded word (its Subject and From cannot be sent). Returns the file
/// and the problems `check` must list, in order, with the count of valid
/// supporters.
fn rows(n: u64) -> (String, Vec<Expect>, u64) {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut expect = Vec::new();
    let mut valid = 0;
    for i in 1..=n {
        let line = i + 1;
        let email = if i % 701 == 0 {
            format!("bad-{i}")
        } else if i % 853 == 0 {
            format!("S{}@MAIL.EXAMPLE", i - 10)
        } else {
            format!("s{i}@mail.example")
        };
        let first = if i % 977 == 0 {
            "=?utf-8?b?QQ==?=".to_string()
        } else {
            format!("First{i}")
        };
        writeln!(csv, "{email},{first},Last{i},City{},", i % 7).unwrap();
        if let Some(first_line) = seen.get(&email.to_lowercase()) {
            expect.push(Expect::Repeat(line, email, *first_line));
            continue;
        }
        seen.insert(email.to_lowercase(), line);
        if i % 701 == 0 || i % 977 == 0 {
            expect.push(Expect::Invalid(line));
        } else {
            valid += 1;
        }
    }
    (csv, expect, valid)
}

/// The `supporters.csv:` lines of `out`, in order.
fn problem_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("supporters.csv:")).collect()
}

/// Asserts `got` lists exactly `expect`, in order.
#[track_caller]
fn assert_problems(got: &[&str], expect: &[Expect]) {
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for (g, e) in got.iter().zip(expect) {
        match e {
            Expect::Invalid(line) => {
                assert!(g.starts_with(&format!("supporters.csv:{line}: ")), "{g}");
                assert!(!g.contains("repeats line"), "{g}");
            }
            Expect::Repeat(line, email, first) => assert_eq!(
                *g,
                format!("supporters.csv:{line}: `{email}` repeats line {first}; only the first row counts"),
            ),
        }
    }
}

#[test]
fn check_lists_every_problem_once_in_row_order_across_batches() {
    let (csv, expect, valid) = rows(5_000);
    assert!(expect.iter().any(|e| matches!(e, Expect::Repeat(..))));
    let c = Campaign::new().file("supporters.csv", &csv);
    let run = c.run(&["check"]);
    run.code(0);
    assert_problems(&problem_lines(&run.stdout), &expect);
    run.stdout_has(&format!(
        "{} supporters × 1 target = {} letters ready; {} problems",
        thousands(valid),
        thousands(valid),
        expect.len()
    ));
    // The same rows, the same listing, on every run.
    let again = c.run(&["check", "--strict"]);
    again.code(1);
    assert_eq!(again.stdout, run.stdout);
}

#[test]
fn a_template_error_in_a_late_batch_is_listed_once_with_its_first_row() {
    let (csv, _, _) = rows(4_000);
    // Two rows, in the third and fourth batches, hit an undefined value:
    // rows 2,500 and 3,600 (lines 2,501 and 3,601), found by last name.
    let letter = format!(
        "{LETTER}{{% if supporter.last_name == \"Last2500\" or supporter.last_name == \"Last3600\" %}}{{{{ supporter.nowhere }}}}{{% endif %}}\n"
    );
    let c = Campaign::new()
        .file("supporters.csv", &csv)
        .file("letters/letter.txt", letter);
    let run = c.run(&["check"]);
    run.code(1);
    let errors: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("rendering the letter for"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stdout);
    assert!(
        errors[0].ends_with("(rendering the letter for supporters.csv:2501)"),
        "{}",
        errors[0]
    );
    run.stderr_has("repeats for 1 more row");
}

#[test]
fn a_row_the_reader_cannot_pass_ends_the_listing_in_a_late_batch() {
    let (csv, expect, _) = rows(5_000);
    // Line 3,001 opens a quote that closes two lines later, with text after it.
    let csv: String = csv
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == 3_001 {
                "late@mail.example,\"Una,closed,Lyon,\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let c = Campaign::new().file("supporters.csv", &csv);
    let run = c.run(&["check"]);
    run.code(1);
    let got = problem_lines(&run.stdout);
    let before: Vec<Expect> = expect
        .into_iter()
        .filter(|e| match e {
            Expect::Invalid(line) | Expect::Repeat(line, ..) => *line < 3_001,
        })
        .collect();
    let (last, listed) = got.split_last().expect("a problem");
    assert_problems(listed, &before);
    assert!(
        last.starts_with("supporters.csv:3001: the quote opened in this row"),
        "{last}"
    );
}

/// `1,234`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
