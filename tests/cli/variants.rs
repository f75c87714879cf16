//! Issue 12: letters that read as people — subject and letter variants,
//! `one_of`, the `uniformity:` line, which text each letter went with
//! (ledger, export), the changed-letter warning and `preview --variants`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Server, ServerOptions};

// ---- helpers ----

/// The shipped example letter, the campaign's real text.
const EXAMPLE_LETTER: &str = include_str!("../../letters/letter.md");

/// One previewed message: its headers and body.
#[derive(Debug, Clone)]
struct Shown {
    headers: BTreeMap<String, String>,
    body: String,
}

impl Shown {
    /// The supporter it is from (Reply-To) and the target (To).
    fn key(&self) -> (String, String) {
        (self.headers["Reply-To"].clone(), self.headers["To"].clone())
    }
}

/// Parses `mailer preview` output into messages.
fn shown(stdout: &str) -> Vec<Shown> {
    let separator = format!("\n{}\n", "-".repeat(72));
    stdout
        .split(&separator)
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let (head, body) = m.split_once("\n\n").unwrap_or((m, ""));
            let headers = head
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Shown {
                headers,
                body: body.trim_end().to_string(),
            }
        })
        .collect()
}

/// Every letter's subject and body, keyed by (supporter, target).
fn letters(c: &Campaign) -> BTreeMap<(String, String), Shown> {
    let run = c.run(&["preview"]);
    run.code(0);
    shown(&run.stdout).into_iter().map(|s| (s.key(), s)).collect()
}

/// `n` supporters `s0001@mail.example`…, in this order of indexes.
fn supporters(order: impl Iterator<Item = usize>, note: impl Fn(usize) -> String) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in order {
        let _ = writeln!(
            csv,
            "s{i:04}@mail.example,First{i},Last{i},City{},{}",
            i % 7,
            note(i)
        );
    }
    csv
}

/// The default config head with `from` replaced by `to` (exactly once).
fn head_with(from: &str, to: &str) -> String {
    let text = Campaign::new().config_text();
    assert!(text.contains(from), "the default config lacks {from:?}");
    text.replacen(from, to, 1)
}

const SUBJECT_LINE: &str =
    "subject = \"{{ supporter.first_name }} from {{ supporter.city }}: drop the contract\"";

/// Three subject variants, told apart by their first word.
const THREE_SUBJECTS: &str = "subject = [\n  \"Alpha: {{ supporter.first_name }} asks you\",\n  \
     \"Beta: a letter from {{ supporter.city }}\",\n  \"Gamma: please drop the contract\",\n]";

/// The `uniformity:` line of a `check` run.
fn uniformity(c: &Campaign) -> String {
    let run = c.run(&["check"]);
    run.code(0);
    run.stdout
        .lines()
        .find(|l| l.starts_with("uniformity: "))
        .unwrap_or_else(|| panic!("no uniformity line:\n{}", run.stdout))
        .to_string()
}

/// The near-identical percentage of a `uniformity:` line.
fn near_identical(line: &str) -> u32 {
    line.strip_prefix("uniformity: ")
        .and_then(|r| r.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("line: {line}"))
}

// ---- item 1: variants, chosen stably ----

#[test]
fn subject_variants_are_stable_and_spread_over_letters() {
    let c = Campaign::new()
        .head(&head_with(SUBJECT_LINE, THREE_SUBJECTS))
        .file("supporters.csv", supporters(0..600, |_| String::new()));
    let first = letters(&c);
    assert_eq!(first.len(), 600);
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for s in first.values() {
        let word = s.headers["Subject"].split(':').next().unwrap().to_string();
        *uses.entry(word).or_default() += 1;
    }
    assert_eq!(uses.len(), 3, "{uses:?}");
    for (word, n) in &uses {
        assert!(
            (150..=252).contains(n),
            "{word} is used by {n} of 600 letters: {uses:?}"
        );
    }
    // The same letter gets the same subject: on another run, with the rows
    // reversed, with rows appended, and in a preview of that one letter.
    assert_eq!(
        letters(&c)
            .values()
            .map(|s| &s.headers["Subject"])
            .collect::<Vec<_>>(),
        first.values().map(|s| &s.headers["Subject"]).collect::<Vec<_>>()
    );
    let c = c.file("supporters.csv", supporters((0..700).rev(), |_| String::new()));
    let reordered = letters(&c);
    for (key, s) in &first {
        assert_eq!(reordered[key].headers["Subject"], s.headers["Subject"], "{key:?}");
    }
    let one = c.run(&["preview", "--supporter", "s0042@mail.example"]);
    let one = shown(&one.code(0).stdout);
    assert_eq!(one[0].headers["Subject"], first[&one[0].key()].headers["Subject"]);
}

#[test]
fn letter_files_are_per_supporter_and_one_of_is_stable_per_letter() {
    let two_targets = "[[targets]]\nname = \"Satya Nadella\"\nemail = \"ceo@corp.example\"\n\
                       title = \"CEO\"\n\n[[targets]]\nname = \"Brad Smith\"\nemail = \"brad@corp.example\"\n\
                       title = \"President\"\n";
    let head = head_with(
        "letter = \"letters/letter.txt\"",
        "letter = [\"letters/a.txt\", \"letters/b.txt\"]",
    )
    .replace(
        "[[targets]]\nname = \"Satya Nadella\"\nemail = \"ceo@corp.example\"\ntitle = \"CEO\"\n",
        two_targets,
    );
    let body = |file: &str| {
        format!(
            "LETTER-{file}\n{{{{ one_of(options=[\"I urge you\", \"I ask you\", \"I call on you\"]) }}}} to act.\n\
             {{{{ one_of(options=[\"Thank you.\", \"Sincerely.\"]) }}}}\n"
        )
    };
    let c = Campaign::new()
        .head(&head)
        .file("letters/a.txt", body("A"))
        .file("letters/b.txt", body("B"))
        .file("supporters.csv", supporters(0..200, |_| String::new()));
    let first = letters(&c);
    assert_eq!(first.len(), 400);
    let mut files = BTreeSet::new();
    let mut phrasings = BTreeSet::new();
    let mut per_supporter: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut differs_across_targets = false;
    for ((supporter, target), s) in &first {
        let file = s.body.lines().next().unwrap().to_string();
        files.insert(file.clone());
        per_supporter.entry(supporter.clone()).or_default().insert(file);
        phrasings.insert(s.body.lines().nth(1).unwrap().to_string());
        if target.contains("ceo@") {
            let other = &first[&(supporter.clone(), "Brad Smith <brad@corp.example>".to_string())];
            differs_across_targets |= other.body.lines().nth(1) != s.body.lines().nth(1);
        }
    }
    assert_eq!(files.len(), 2, "both files are used: {files:?}");
    assert!(
        per_supporter.values().all(|f| f.len() == 1),
        "a supporter writes the same letter file to every target"
    );
    assert_eq!(phrasings.len(), 3, "every phrasing is used: {phrasings:?}");
    assert!(
        differs_across_targets,
        "one_of is chosen per letter, not per supporter"
    );
    // Stable across runs, row order and appended rows.
    let c = c.file("supporters.csv", supporters((0..260).rev(), |_| String::new()));
    let again = letters(&c);
    for (key, s) in &first {
        assert_eq!(again[key].body, s.body, "{key:?}");
    }
}

#[test]
fn one_of_without_options_is_a_letter_error_with_its_line() {
    let c = Campaign::new().file("letters/letter.txt", "Dear {{ target.name }},\n{{ one_of() }}\n");
    let run = c.run(&["check"]);
    run.code(1)
        .stdout_has("letters/letter.txt:2:")
        .stdout_has("one_of(options=");
}

#[test]
fn an_empty_list_is_a_config_error() {
    let c = Campaign::new().head(&head_with(SUBJECT_LINE, "subject = []"));
    c.run(&["check"])
        .code(1)
        .stderr_has("mailer.toml:6: `subject` is an empty list");
}

// ---- item 2: the uniformity line ----

/// The example letter (letters/letter.md) with `n` supporters; `note(i)`
/// is supporter i's note.
fn example_campaign(n: usize, note: impl Fn(usize) -> String) -> Campaign {
    Campaign::new()
        .head(&head_with("letters/letter.txt", "letters/letter.md"))
        .file("letters/letter.md", EXAMPLE_LETTER)
        .file("supporters.csv", supporters(0..n, note))
}

/// A distinct 15-word note for supporter `i`: its own words, in its own order.
fn note15(i: usize) -> String {
    const WORDS: [&str; 40] = [
        "my",
        "neighbour",
        "was",
        "detained",
        "for",
        "months",
        "and",
        "her",
        "children",
        "still",
        "ask",
        "when",
        "mother",
        "comes",
        "home",
        "our",
        "church",
        "raised",
        "bail",
        "twice",
        "teachers",
        "saw",
        "empty",
        "desks",
        "grandfather",
        "worked",
        "fields",
        "fifty",
        "years",
        "nobody",
        "told",
        "us",
        "where",
        "they",
        "went",
        "I",
        "cannot",
        "sleep",
        "since",
        "then",
    ];
    (0..15)
        .map(|k| WORDS[(i * 7 + k * 11 + k * k * (i + 3)) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn uniformity_measures_near_identical_letters_and_notes() {
    // 50 letters from one template, no notes.
    let same = uniformity(&example_campaign(50, |_| String::new()));
    assert!(near_identical(&same) >= 90, "{same}");
    assert!(
        same.ends_with("of the 50 letters to Satya Nadella are near-identical; 0% carry a personal note"),
        "{same}"
    );
    // Half of them with distinct 15-word notes: at least 30 points lower.
    let noted = uniformity(&example_campaign(50, |i| {
        if i % 2 == 0 { note15(i) } else { String::new() }
    }));
    assert!(
        near_identical(&noted) + 30 <= near_identical(&same),
        "{same}\n{noted}"
    );
    assert!(noted.ends_with("; 50% carry a personal note"), "{noted}");

    // Two very different templates: near 0% across them.
    let head = head_with(
        "letter = \"letters/letter.txt\"",
        "letter = [\"letters/a.md\", \"letters/b.txt\"]",
    );
    let other = "To {{ target.name }}: our shareholders' group votes against the board at the annual \
                 meeting unless the audit committee publishes every cloud contract with border agencies, \
                 their revenue and their renewal dates, by the end of the quarter. {{ supporter.name }}\n";
    // Find two supporters who got different files, then measure just them.
    let probe = Campaign::new()
        .head(&head)
        .file("letters/a.md", EXAMPLE_LETTER)
        .file("letters/b.txt", other)
        .file("supporters.csv", supporters(0..20, |_| String::new()));
    let all = letters(&probe);
    let by_file = |b: bool| {
        all.values()
            .find(|s| s.body.starts_with("To ") == b)
            .map(|s| s.headers["Reply-To"].clone())
            .unwrap()
    };
    let (a, b) = (by_file(false), by_file(true));
    let mut rows = String::new();
    for l in supporters(0..20, |_| String::new()).lines() {
        if l.starts_with("email") || l.starts_with(&format!("{a},")) || l.starts_with(&format!("{b},")) {
            let _ = writeln!(rows, "{l}");
        }
    }
    let two = probe.file("supporters.csv", rows);
    let across = uniformity(&two);
    assert!(across.starts_with("uniformity: 0% of the 2 letters"), "{across}");
}

#[test]
fn a_high_share_comes_with_a_hint() {
    let c = example_campaign(5, |_| String::new());
    let run = c.run(&["check"]);
    run.code(0)
        .stdout_has("uniformity: 100% of the 5 letters")
        .stderr_has("hint: ")
        .stderr_has("one_of");
}

// ---- item 3: which text each letter went with ----

fn sent_campaign(server: &Server) -> Campaign {
    Campaign::new()
        .head(&head_with(SUBJECT_LINE, THREE_SUBJECTS))
        .smtp_plain(server)
}

#[test]
fn the_ledger_records_and_export_lists_which_text_went() {
    let server = Server::start(ServerOptions::default());
    let c = sent_campaign(&server);
    c.run(&["send", "--yes"]).code(0);
    let got = server.received();
    assert_eq!(got.len(), 3);
    let out = c.run(&["export"]);
    let mut reader = csv::Reader::from_reader(out.code(0).stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    // Appended after SPEC's columns (other columns may follow them).
    let at = header.iter().position(|h| h == "body_fingerprint").unwrap();
    assert!(at >= 7, "{header:?}");
    assert_eq!(
        header[at..at + 5],
        [
            "body_fingerprint",
            "letter_file",
            "language",
            "subject_variant",
            "letter_version"
        ]
    );
    for row in reader.records() {
        let row: BTreeMap<String, String> = header
            .iter()
            .cloned()
            .zip(row.unwrap().iter().map(String::from))
            .collect();
        let fp = &row["body_fingerprint"];
        assert!(
            fp.len() == 16 && fp.chars().all(|c| c.is_ascii_hexdigit()),
            "{row:?}"
        );
        assert_eq!(row["letter_file"], "letters/letter.txt");
        assert_eq!(row["language"], "");
        let received = got
            .iter()
            .find(|r| r.message_id().as_deref() == Some(row["message_id"].as_str()))
            .expect("the exported letter was received");
        let subject = received.header("Subject").unwrap();
        let expected = match subject.split(':').next().unwrap() {
            "Alpha" => "1",
            "Beta" => "2",
            _ => "3",
        };
        assert_eq!(row["subject_variant"], expected, "{row:?} / {subject}");
        assert_eq!(row["letter_version"].len(), 16, "{row:?}");
    }
    // The fingerprint tells two letters' texts apart.
    let export = c.run(&["export"]).stdout.clone();
    let mut reader = csv::Reader::from_reader(export.as_bytes());
    let at = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "body_fingerprint")
        .unwrap();
    let prints: BTreeSet<String> = reader.records().map(|r| r.unwrap()[at].to_string()).collect();
    assert_eq!(prints.len(), 3, "{prints:?}");
}

#[test]
fn dry_run_says_when_the_letter_changed_since_letters_went() {
    let server = Server::start(ServerOptions::default());
    let c = sent_campaign(&server);
    c.run(&["send", "--yes", "--limit", "2"]).code(0);
    let before = c.run(&["send", "--dry-run"]);
    assert!(
        !before.code(0).stderr.contains("changed since"),
        "{}",
        before.stderr
    );

    let c = c.file(
        "letters/letter.txt",
        "Dear {{ target.name }},\n\nI am {{ supporter.name }}. Please drop the contract.\n",
    );
    c.run(&["send", "--dry-run"])
        .code(0)
        .stderr_has("warning: the letter changed since 2 letters were sent; the rest will get the new text");
    // Back to the text they went with: no warning.
    let c = c.file("letters/letter.txt", crate::support::campaign::LETTER);
    let back = c.run(&["send", "--dry-run"]);
    assert!(!back.code(0).stderr.contains("changed since"), "{}", back.stderr);
    // A changed subject variant is a changed letter for those who got it.
    let sent = server.received();
    let (word, n) = ["Alpha", "Beta", "Gamma"]
        .iter()
        .map(|w| {
            (
                *w,
                sent.iter()
                    .filter(|r| r.header("Subject").unwrap().starts_with(w))
                    .count(),
            )
        })
        .find(|(_, n)| *n > 0)
        .unwrap();
    let c = c.head(&head_with(SUBJECT_LINE, &THREE_SUBJECTS.replace(word, "Changed")));
    let s = if n == 1 { " was" } else { "s were" };
    c.run(&["send", "--dry-run"])
        .code(0)
        .stderr_has(&format!("the letter changed since {n} letter{s} sent"));
}

// ---- item 4: preview --variants ----

#[test]
fn preview_variants_shows_each_combination_once_with_its_count() {
    let head = head_with(
        "letter = \"letters/letter.txt\"",
        "letter = [\"letters/a.txt\", \"letters/b.txt\"]",
    )
    .replace(SUBJECT_LINE, "subject = [\"First subject\", \"Second subject\"]");
    let c = Campaign::new()
        .head(&head)
        .file("letters/a.txt", "LETTER-A to {{ target.name }}\n")
        .file("letters/b.txt", "LETTER-B to {{ target.name }}\n")
        .file("supporters.csv", supporters(0..100, |_| String::new()));
    let run = c.run(&["preview", "--variants"]);
    let heads: Vec<&str> = run
        .code(0)
        .stdout
        .lines()
        .filter(|l| l.starts_with("# variant "))
        .collect();
    assert_eq!(heads.len(), 4, "{}", run.stdout);
    let mut total = 0;
    for (i, (file, subject)) in [("a", 1), ("a", 2), ("b", 1), ("b", 2)].iter().enumerate() {
        let h = heads[i];
        assert!(
            h.starts_with(&format!(
                "# variant {}: letter `letters/{file}.txt`, subject {subject} of 2 — used by ",
                i + 1
            )),
            "{h}"
        );
        total += h
            .rsplit("used by ")
            .next()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap();
    }
    assert_eq!(total, 100);
    let messages = shown(&run.stdout);
    assert_eq!(messages.len(), 4);
    assert!(messages[0].body.starts_with("LETTER-A") && messages[3].body.starts_with("LETTER-B"));
    assert_eq!(messages[1].headers["Subject"], "Second subject");
}

// ---- item 5: the shipped example ----

#[test]
fn the_shipped_example_varies_and_check_shows_its_uniformity() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = repo.join("config.example.toml");
    let run = Campaign::new().run(&["-c", config.to_str().unwrap(), "check"]);
    // The example's relay is real (not loopback) and its addresses are
    // placeholders, which `check` names (exit 1); every letter still renders.
    run.code(1)
        .stdout_has("uniformity: ")
        .stdout_has("% of the 12 letters to Satya Nadella are near-identical; ");
    let preview = Campaign::new().run(&["-c", config.to_str().unwrap(), "preview", "--variants"]);
    let heads = preview
        .code(0)
        .stdout
        .lines()
        .filter(|l| l.starts_with("# variant "))
        .count();
    assert_eq!(heads, 2, "two subject variants:\n{}", preview.stdout);
    assert!(EXAMPLE_LETTER.contains("one_of(options=["));
}
