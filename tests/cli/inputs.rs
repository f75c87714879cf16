//! Malformed inputs, and the commands that only read them: `check`,
//! `preview`, `send --dry-run` and `init`.
//!
//! Every malformed file lives in `tests/fixtures/malformed/` (its README says
//! what each one holds). Each test asserts the exact `FILE:LINE` mailer
//! prints and the exit code. Files print as resolved against the config
//! folder: the harness runs with `./mailer.toml`, so the supporters file is
//! `supporters.csv` and the letter `letters/letter.txt`.

use std::path::Path;

use mail_parser::{Message, MessageParser, MimeHeaders as _, PartType};

use crate::support::campaign::{Campaign, LETTER, Run, SUPPORTERS};

/// A malformed input's bytes.
macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/malformed/",
            $name
        ))
    };
}

/// A malformed input's text (configs, letters).
macro_rules! fixture_str {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/malformed/",
            $name
        ))
    };
}

/// The supporters file as mailer names it.
const CSV: &str = "supporters.csv";
/// The letter as mailer names it.
const TXT: &str = "letters/letter.txt";

/// The default campaign with this supporters file.
fn with_supporters(csv: &[u8]) -> Campaign {
    Campaign::new().file("supporters.csv", csv)
}

/// The default campaign with this letter (as `letters/letter.txt`).
fn with_letter(letter: &str) -> Campaign {
    Campaign::new().file("letters/letter.txt", letter)
}

/// The default config text with `from` replaced by `to`.
fn config_with(from: &str, to: &str) -> String {
    let text = Campaign::new().config_text();
    assert!(text.contains(from), "the default config lacks {from:?}");
    text.replacen(from, to, 1)
}

/// A second `[[targets]]` entry.
const CFO: &str = "[[targets]]\nname = \"Amy Hood\"\nemail = \"CFO@Corp.example\"\ntitle = \"CFO\"\n";

/// The line numbers of the `FILE:LINE: …` lines in `out`, in order.
fn lines_of(out: &str, file: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| {
            l.strip_prefix(file)?
                .strip_prefix(':')?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The `Message-ID:` values of a preview, in order.
fn message_ids(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Message-ID: "))
        .map(str::to_string)
        .collect()
}

/// Runs a prepared command (for extra env or a config removed after writing).
fn run_command(mut cmd: std::process::Command) -> Run {
    Run::from(cmd.output().expect("run mailer"))
}

/// Asserts that nothing panicked or aborted: a clean exit 1 with an `error:`.
#[track_caller]
fn clean_failure(run: &Run) {
    run.code(1).stderr_has("error: ");
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("overflow"),
        "{}",
        run.stderr
    );
}

/// The `.eml` files in `dir`, sorted by name.
fn eml_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the --out folder")
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[track_caller]
fn parse(bytes: &[u8]) -> Message<'_> {
    MessageParser::default()
        .parse(bytes)
        .unwrap_or_else(|| panic!("mail-parser cannot read:\n{}", String::from_utf8_lossy(bytes)))
}

/// `preview --out DIR` into the campaign folder's `out/`; the files.
fn preview_out(c: &Campaign, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    let out = c.join("out");
    let out_arg = out.to_str().unwrap();
    let mut args = vec!["preview", "--out", out_arg];
    args.extend_from_slice(extra);
    c.run(&args).code(0);
    eml_files(&out)
}

// ---------------------------------------------------------------------------
// Supporters files
// ---------------------------------------------------------------------------

#[test]
fn utf8_bom_header_is_accepted_not_an_error() {
    let c = with_supporters(fixture!("bom.csv"));
    let run = c.run(&["check"]);
    run.code(0)
        .stdout_has("2 supporters × 1 target = 2 letters ready; 0 problems");
    // The BOM is not part of the `email` header: the column is found by name.
    c.run(&["preview", "--supporter", "ana@mail.example"])
        .code(0)
        .stdout_has("Reply-To: ana@mail.example")
        .stdout_has("I am Ana López from Tucson.");
}

#[test]
fn utf8_bom_before_a_quoted_header_is_accepted() {
    // Excel's "CSV UTF-8" quotes every cell: the BOM sits before `"Email"`.
    let run = with_supporters(fixture!("bom-quoted-header.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!("{CSV}:3: invalid email `not-an-address`"))
        .stdout_has("1 supporter × 1 target = 1 letter ready; 1 problem");
    assert_eq!(lines_of(&run.stdout, CSV), [3]);
}

#[test]
fn trailing_empty_header_columns_are_accepted() {
    // Spreadsheets often export trailing empty columns: `…,note,,`.
    with_supporters(fixture!("empty-header-name.csv"))
        .run(&["check"])
        .code(0)
        .stdout_has("1 supporter × 1 target = 1 letter ready; 0 problems");
}

#[test]
fn empty_header_name_in_the_middle_is_refused_at_line_1() {
    with_supporters(b"email,,city\nana@mail.example,x,Tucson\n")
        .run(&["check"])
        .code(1)
        .stderr_has(&format!(
            "error: {CSV}:1: header 2 is empty: every column needs a name"
        ));
}

#[test]
fn crlf_with_quoted_newlines_and_blank_lines_reports_the_right_lines() {
    // Lines 2-3 and 5-7 are quoted multi-line notes, line 4 is blank: the bad
    // rows are on lines 8 and 10 (csv's own positions are one low on CRLF).
    let c = with_supporters(fixture!("crlf-quoted-newline.csv"));
    let run = c.run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!(
            "{CSV}:8: invalid email `not-an-address`: Missing domain or user\n"
        ))
        .stdout_has(&format!("{CSV}:10: invalid email `also bad@`"))
        .stdout_has("3 supporters × 1 target = 3 letters ready; 2 problems");
    assert_eq!(lines_of(&run.stdout, CSV), [8, 10]);
    // The quoted CRLF stays inside the note.
    c.run(&["preview", "--supporter", "sam@mail.example"])
        .code(0)
        .stdout_has("Three\nline\nnote");
}

#[test]
fn invalid_utf8_row_is_skipped_with_a_resave_hint() {
    let run = with_supporters(fixture!("invalid-utf8.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!(
            "{CSV}:3: column `first_name` is not valid UTF-8: re-save the file as \"CSV UTF-8\""
        ))
        .stdout_has("2 supporters × 1 target = 2 letters ready; 1 problem");
    assert_eq!(lines_of(&run.stdout, CSV), [3]);
}

#[test]
fn utf16_file_is_refused_at_line_1_with_a_resave_hint() {
    let run = with_supporters(fixture!("invalid-utf8-header.csv")).run(&["check"]);
    run.code(1)
        .stderr_has(&format!("error: {CSV}:1: header 1 is not UTF-8"))
        .stderr_has("re-save the file as \"CSV UTF-8\"");
}

#[test]
fn ragged_rows_are_each_reported_and_the_rest_go_on() {
    let run = with_supporters(fixture!("ragged.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!(
            "{CSV}:2: the row has 6 fields but the header has 5: quote values that contain commas"
        ))
        .stdout_has(&format!("{CSV}:4: the row has 2 fields but the header has 5"))
        .stdout_has(&format!("{CSV}:5: the row has 6 fields but the header has 5"))
        .stdout_has("1 supporter × 1 target = 1 letter ready; 3 problems");
    assert_eq!(lines_of(&run.stdout, CSV), [2, 4, 5]);
}

#[test]
fn duplicate_header_names_are_refused_at_line_1() {
    // `First Name` normalizes to `first_name`, which is also the next column.
    with_supporters(fixture!("duplicate-header.csv"))
        .run(&["check"])
        .code(1)
        .stderr_has(&format!(
            "error: {CSV}:1: column `first_name` appears twice: rename or remove one"
        ));
}

#[test]
fn missing_email_column_is_refused_naming_the_columns_found() {
    with_supporters(fixture!("missing-email-column.csv"))
        .run(&["check"])
        .code(1)
        .stderr_has(&format!(
            "error: {CSV}:1: no `email` column (found: e-mail, first_name, city)"
        ));
}

#[test]
fn semicolon_separated_file_is_read_by_its_detected_delimiter() {
    // Issue 10 item 5: `;` is detected from the header line (it used to be
    // refused with a hint to re-save the file with commas).
    let run = with_supporters(fixture!("semicolon-separated.csv")).run(&["check"]);
    run.code(0)
        .stdout_has("1 supporter × 1 target = 1 letter ready; 0 problems");
    assert!(!run.stderr.contains("re-saved"), "{}", run.stderr);
}

#[test]
fn empty_supporters_file_is_refused_at_line_1() {
    with_supporters(fixture!("empty.csv"))
        .run(&["check"])
        .code(1)
        .stderr_has(&format!(
            "error: {CSV}:1: the file is empty: it needs a header row with an `email` column"
        ));
}

#[test]
fn header_only_file_is_clean_with_nothing_to_send() {
    with_supporters(b"email,first_name,last_name,city,note\n")
        .run(&["check"])
        .code(0)
        .stdout_has("0 supporters × 1 target = 0 letters ready; 0 problems");
}

#[test]
fn invalid_emails_of_every_kind_are_each_reported() {
    let run = with_supporters(fixture!("invalid-emails.csv")).run(&["check", "--strict"]);
    run.code(1);
    for expected in [
        ":2: the email is empty",
        ":3: invalid email `ana.mail.example`",
        ":4: invalid email `ana@@mail.example`",
        ":5: invalid email `ana lopez@mail.example`",
        ":6: invalid email `ana@localhost`: the domain `localhost` is not a mail domain",
        ":7: invalid email `josé@mail.example`: non-ASCII addresses are not supported",
        ":8: invalid email `ana@mail.example.`",
        ":10: invalid email `@mail.example`",
    ] {
        run.stdout_has(&format!("{CSV}{expected}"));
    }
    assert_eq!(lines_of(&run.stdout, CSV), [2, 3, 4, 5, 6, 7, 8, 10]);
    run.stdout_has("1 supporter × 1 target = 1 letter ready; 8 problems");
}

#[test]
fn duplicate_email_is_case_insensitive_and_names_the_first_line() {
    let c = with_supporters(fixture!("duplicate-email.csv"));
    let run = c.run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!(
            "{CSV}:4: `ANA@Mail.Example` repeats line 2; only the first row counts"
        ))
        .stdout_has(&format!("{CSV}:5: `ana@mail.example` repeats line 2"))
        .stdout_has("2 supporters × 1 target = 2 letters ready; 2 problems");
    assert_eq!(lines_of(&run.stdout, CSV), [4, 5]);
    // Only the first row counts: one letter for Ana, and it is line 2's.
    let preview = c.run(&["preview", "--supporter", "ana@mail.example"]);
    preview.code(0).stdout_has("I am Ana Lopez from Tucson.");
    assert_eq!(message_ids(&preview.stdout).len(), 1, "{}", preview.stdout);
}

#[test]
fn line_break_in_a_from_name_skips_only_that_row() {
    // The subject has no supporter data, so the From name is what breaks.
    let head = config_with(
        "subject = \"{{ supporter.first_name }} from {{ supporter.city }}: drop the contract\"",
        "subject = \"Drop the contract\"",
    );
    let c = with_supporters(fixture!("crlf-in-name.csv")).head(&head);
    let run = c.run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!(
            "{CSV}:2: the From name would contain a line break (column `first_name`)"
        ))
        .stdout_has(&format!(
            "{CSV}:6: the From name would contain a line break (column `last_name`)"
        ))
        .stdout_has("2 supporters × 1 target = 2 letters ready; 2 problems");
    assert_eq!(lines_of(&run.stdout, CSV), [2, 6]);

    let preview = c.run(&["preview"]);
    preview
        .code(0)
        .stdout_has("From: Sam Okafor via Test Org <letters@org.example>")
        .stdout_has("From: Lee Park via Test Org <letters@org.example>")
        .stderr_has(&format!("{CSV}:2: the From name would contain a line break"));
    assert!(
        !preview.stdout.contains("victim@target.example"),
        "{}",
        preview.stdout
    );
    assert!(!preview.stdout.contains("X-Evil"), "{}", preview.stdout);

    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Supporters 2 valid, 2 skipped, 0 duplicate rows")
        .stdout_has("Letters due now: 2");
}

#[test]
fn huge_field_is_skipped_with_its_length() {
    let run = with_supporters(fixture!("huge-field.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!(
            "{CSV}:3: column `note` is 10001 characters long (at most 10000)\n"
        ))
        .stdout_has("2 supporters × 1 target = 2 letters ready; 1 problem");
    assert_eq!(lines_of(&run.stdout, CSV), [3]);
}

#[test]
fn huge_name_never_becomes_a_huge_header() {
    let name = "N".repeat(5000);
    let csv = format!("email,first_name,last_name,city,note\nbig@mail.example,{name},X,Tucson,\n");
    let c = with_supporters(csv.as_bytes());
    c.run(&["check", "--strict"])
        .code(1)
        .stdout_has(&format!("{CSV}:2: the Subject would be"));
}

#[test]
fn nul_byte_is_skipped() {
    let run = with_supporters(fixture!("nul-byte.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!("{CSV}:3: column `first_name` holds a NUL character\n"))
        .stdout_has("2 supporters × 1 target = 2 letters ready; 1 problem");
    assert_eq!(lines_of(&run.stdout, CSV), [3]);
}

#[test]
fn cr_only_line_endings_report_the_right_line() {
    // csv accepts a bare CR as a row terminator, but the line index counts
    // only LF: the bad row on line 3 is reported as `supporters.csv:1`.
    let run = with_supporters(fixture!("cr-only-line-endings.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!("{CSV}:3: invalid email `broken`"));
    assert_eq!(lines_of(&run.stdout, CSV), [3]);
}

#[test]
fn unterminated_quote_is_reported_not_merged_into_a_letter() {
    // Line 3's note opens a quote that never closes: today lines 4-5 become
    // part of Sam's note, `check` says 0 problems, and Sam's letter carries
    // Lee's and Kim's addresses to the target.
    let c = with_supporters(fixture!("unterminated-quote.csv"));
    let run = c.run(&["check"]);
    run.code(1).stdout_has(&format!("{CSV}:3: "));
    let preview = c.run(&["preview"]);
    assert!(
        !preview.stdout.contains("lee@mail.example,Lee"),
        "another row leaked into a letter:\n{}",
        preview.stdout
    );
}

#[test]
fn check_lists_every_problem_in_file_order() {
    let run = with_supporters(fixture!("many-problems.csv")).run(&["check", "--strict"]);
    run.code(1)
        .stdout_has(&format!("{CSV}:3: invalid email `broken`"))
        .stdout_has(&format!("{CSV}:4: the row has 3 fields but the header has 5"))
        .stdout_has(&format!("{CSV}:5: `ANA@mail.example` repeats line 2"))
        .stdout_has(&format!(
            "{CSV}:7: the Subject would contain a line break (column `first_name`)"
        ))
        .stdout_has(&format!("{CSV}:9: the email is empty"))
        .stdout_has("2 supporters × 1 target = 2 letters ready; 5 problems");
    assert_eq!(lines_of(&run.stdout, CSV), [3, 4, 5, 7, 9]);
}

#[test]
fn check_exits_0_on_a_clean_campaign() {
    Campaign::new()
        .run(&["check"])
        .code(0)
        .stdout_has("3 supporters × 1 target = 3 letters ready; 0 problems");
}

#[test]
fn dry_run_still_counts_the_valid_rows_around_bad_ones() {
    let c = with_supporters(fixture!("many-problems.csv")).section(CFO);
    let run = c.run(&["send", "--dry-run"]);
    run.code(0)
        .stdout_has("Supporters 2 valid, 4 skipped, 1 duplicate rows")
        .stdout_has("Letters due now: 4")
        .stderr_has(&format!(
            "{CSV}:3: invalid email `broken`: Missing domain or user (skipped)"
        ))
        .stderr_has(&format!("{CSV}:5: `ANA@mail.example` repeats line 2 (ignored)"));
    assert_eq!(lines_of(&run.stderr, CSV), [3, 4, 5, 7, 9]);
    assert!(!c.join(".mailer").exists(), "a dry run wrote a ledger");
}

#[test]
fn paths_in_messages_are_resolved_against_the_config_folder() {
    let c = Campaign::new()
        .file("camp/mailer.toml", Campaign::new().config_text())
        .file("camp/letters/letter.txt", LETTER)
        .file("camp/supporters.csv", fixture!("nul-byte.csv"));
    // Relative -c: the supporters file is `camp/supporters.csv`, not `./…`.
    let run = c.run(&["-c", "camp/mailer.toml", "check", "--strict"]);
    run.code(1)
        .stdout_has("camp/supporters.csv:3: column `first_name` holds a NUL character");
    assert_eq!(lines_of(&run.stdout, "camp/supporters.csv"), [3]);
    // Absolute -c: an absolute path.
    let config = c.join("camp/mailer.toml");
    let run = c.run(&["-c", config.to_str().unwrap(), "check"]);
    let csv = c.join("camp/supporters.csv");
    assert_eq!(
        lines_of(&run.stdout, csv.to_str().unwrap()),
        [3],
        "{}",
        run.stdout
    );
}

// ---------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------

#[test]
fn unknown_config_key_names_file_line_and_key() {
    Campaign::new()
        .head(fixture_str!("unknown-key.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:22:1: unknown field `max_per_rum`, expected one of `rate`");
}

#[test]
fn misspelled_config_section_names_its_line() {
    Campaign::new()
        .head(fixture_str!("unknown-section.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:20:2: unknown field `delivry`");
}

#[test]
fn bad_toml_syntax_names_line_and_column() {
    Campaign::new()
        .head(fixture_str!("bad-syntax.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:21:18: invalid basic string");
}

#[test]
fn wrong_type_names_line_and_column() {
    Campaign::new()
        .head(fixture_str!("wrong-type.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:22:11: invalid type: string \"three\", expected u32");
}

#[test]
fn bad_rate_string_names_its_line_and_the_forms() {
    Campaign::new()
        .head(fixture_str!("bad-rate.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has(
            "error: mailer.toml:21:8: invalid rate `30 per minute`: expected N/second, N/minute, N/hour or N/day",
        );
}

#[test]
fn bad_campaign_id_is_refused_with_its_line() {
    Campaign::new()
        .head(fixture_str!("bad-campaign-id.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:2: campaign id `Microsoft ICE 2018` may hold only a-z, 0-9 and `-`");
}

#[test]
fn insecure_smtp_to_a_remote_host_is_refused() {
    Campaign::new()
        .head(fixture_str!("insecure-remote.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:21: security = \"none\" would send the password and letters in clear text to `smtp.example.org`")
        .stderr_has("allow_insecure = true");
    // Loopback is fine.
    Campaign::new()
        .section("[smtp]\nhost = \"127.0.0.1\"\nport = 2525\nsecurity = \"none\"\n")
        .run(&["check"])
        .code(0);
}

#[test]
fn target_with_an_invalid_email_names_its_entry() {
    Campaign::new()
        .head(fixture_str!("target-bad-email.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:12: [[targets]] #1: invalid email `ceo at corp.example`");
}

#[test]
fn missing_config_file_exits_1_and_hints_at_init() {
    let c = Campaign::new();
    // The default path: ./mailer.toml (the harness writes it; remove it).
    let cmd = c.command(&["check"]);
    std::fs::remove_file(c.join("mailer.toml")).unwrap();
    let run = run_command(cmd);
    run.code(1)
        .stderr_has("error: cannot read config `mailer.toml`")
        .stderr_has("run `mailer init` to create one");
    // --config
    c.run(&["-c", "nowhere/mailer.toml", "check"])
        .code(1)
        .stderr_has("cannot read config `nowhere/mailer.toml`")
        .stderr_has("mailer init");
    // $MAILER_CONFIG
    let mut cmd = c.command(&["check"]);
    cmd.env("MAILER_CONFIG", "elsewhere.toml");
    run_command(cmd)
        .code(1)
        .stderr_has("cannot read config `elsewhere.toml`")
        .stderr_has("mailer init");
}

#[test]
fn missing_letter_file_names_the_letter_and_the_config() {
    Campaign::new()
        .head(fixture_str!("missing-letter.toml"))
        .run(&["check"])
        .code(1)
        .stderr_has("error: mailer.toml:5: cannot read letter `letters/missing.txt`")
        .stderr_has("check [campaign] letter");
}

#[test]
fn missing_supporters_file_names_it() {
    Campaign::new()
        .head(&config_with(
            "file = \"supporters.csv\"",
            "file = \"signups.csv\"",
        ))
        .run(&["check"])
        .code(1)
        .stderr_has("error: cannot read supporters file `signups.csv`");
}

// ---------------------------------------------------------------------------
// The letter
// ---------------------------------------------------------------------------

#[test]
fn undefined_variable_names_the_letter_line_and_the_supporter_row() {
    // Only Sam (line 3) has a note, so only his letter reaches line 5.
    let c = with_letter(fixture_str!("undefined-variable.txt"));
    let expected = format!(
        "{TXT}:5:19: Field `nickname` is not defined. Available fields: city, email, first_name, last_name, name, note (rendering the letter for {CSV}:3)"
    );
    c.run(&["check"])
        .code(1)
        .stdout_has(&expected)
        .stdout_has("2 supporters × 1 target = 2 letters ready; 1 problem");
    // Found before anything is sent: a dry run refuses too, and records nothing.
    c.run(&["send", "--dry-run"]).code(1).stderr_has(&expected);
    assert!(!c.join(".mailer").exists());
}

#[test]
fn repeated_template_error_is_summarised_by_its_message() {
    let csv = "email,first_name,last_name,city,note\n\
               a@mail.example,A,A,X,one\nb@mail.example,B,B,X,two\nc@mail.example,C,C,X,three\n";
    let run = with_letter(fixture_str!("undefined-variable.txt"))
        .file("supporters.csv", csv)
        .run(&["check"]);
    run.code(1)
        .stdout_has(&format!("(rendering the letter for {CSV}:2)"));
    let note = run
        .stderr
        .lines()
        .find(|l| l.contains("repeats for 2 more rows"))
        .unwrap_or_else(|| panic!("no repeat note:\n{}", run.stderr));
    assert!(note.contains("nickname"), "{note}");
}

#[test]
fn template_syntax_error_names_its_line_and_column() {
    with_letter(fixture_str!("syntax-error.txt"))
        .run(&["check"])
        .code(1)
        .stderr_has(&format!("error: {TXT}:3:24: Found `}}` but expected }}}}."));
}

#[test]
fn unclosed_block_names_the_line_that_opens_it() {
    with_letter(fixture_str!("unclosed-block.txt"))
        .run(&["check"])
        .code(1)
        .stderr_has(&format!("{TXT}:2:"));
}

#[test]
fn include_cycle_is_a_clear_error_not_a_crash() {
    let c = Campaign::new()
        .head(&config_with("letters/letter.txt", "letters/include-cycle-a.txt"))
        .file("letters/include-cycle-a.txt", fixture!("include-cycle-a.txt"))
        .file("letters/include-cycle-b.txt", fixture!("include-cycle-b.txt"));
    for args in [&["check"][..], &["preview"], &["send", "--dry-run"]] {
        let run = c.run(args);
        clean_failure(&run);
        run.stderr_has(
            "error: letters/include-cycle-a.txt: templates include each other in a loop: \
             include-cycle-a.txt → include-cycle-b.txt → include-cycle-a.txt",
        );
    }
}

#[test]
fn unknown_filter_is_caught_at_load() {
    let run = with_letter(fixture_str!("unknown-filter.txt")).run(&["check"]);
    clean_failure(&run);
    run.stderr_has("Unknown filter `shout`")
        .stderr_has("letter.txt:3:26");
}

#[test]
fn unknown_filter_leads_with_file_line_and_column() {
    with_letter(fixture_str!("unknown-filter.txt"))
        .run(&["check"])
        .code(1)
        .stderr_has(&format!("error: {TXT}:3:26: "));
}

#[test]
fn missing_include_leads_with_file_line_and_column() {
    let run = with_letter(fixture_str!("missing-include.txt")).run(&["check"]);
    run.code(1)
        .stderr_has(&format!("error: {TXT}:2:12: "))
        .stderr_has("signature.txt");
}

#[test]
fn missing_include_is_an_error_naming_the_template() {
    let run = with_letter(fixture_str!("missing-include.txt")).run(&["check"]);
    clean_failure(&run);
    run.stderr_has("`signature.txt`").stderr_has("letter.txt:2:12");
}

#[test]
fn letters_cannot_read_the_environment() {
    let c = with_letter(fixture_str!("get-env.txt"));
    let run = c.run(&["check"]);
    clean_failure(&run);
    run.stderr_has("Unknown function `get_env`")
        .stderr_has(&format!("error: {TXT}"));
    // HOME is the campaign folder in the harness: it must not be printed as a value.
    let home = c.path().to_str().unwrap();
    assert!(!run.stdout.contains(home), "{}", run.stdout);
}

#[test]
fn supporter_data_is_never_template_code() {
    let csv = "email,first_name,last_name,city,note\n\
               ana@mail.example,Ana,Lopez,{{ 7*7 }},\"{{ 7*7 }} {% if true %}yes{% endif %} {{ campaign.id }}\"\n";
    let c = with_supporters(csv.as_bytes());
    let run = c.run(&["preview"]);
    run.code(0)
        .stdout_has("Subject: Ana from {{ 7*7 }}: drop the contract")
        .stdout_has("I am Ana Lopez from {{ 7*7 }}.")
        .stdout_has("{{ 7*7 }} {% if true %}yes{% endif %} {{ campaign.id }}");
    assert!(!run.stdout.contains("49"), "{}", run.stdout);
    // And in the .eml, through MIME encoding.
    let files = preview_out(&c, &[]);
    let msg = parse(&files[0].1);
    assert_eq!(msg.subject(), Some("Ana from {{ 7*7 }}: drop the contract"));
    let text = msg.body_text(0).unwrap();
    assert!(
        text.contains("{{ 7*7 }} {% if true %}yes{% endif %} {{ campaign.id }}"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// preview
// ---------------------------------------------------------------------------

#[test]
fn preview_prints_headers_and_text_of_every_letter() {
    let run = Campaign::new().run(&["preview"]);
    run.code(0)
        .stdout_has("From: Ana López via Test Org <letters@org.example>\n")
        .stdout_has("To: Satya Nadella <ceo@corp.example>\n")
        .stdout_has("Reply-To: sam@mail.example\n")
        .stdout_has("Subject: Sam from Minneapolis: drop the contract\n")
        .stdout_has("\nDear Satya Nadella,\n\nI am Sam Okafor from Minneapolis.\nPlease, listen.\n");
    assert_eq!(message_ids(&run.stdout).len(), 3, "{}", run.stdout);
}

#[test]
fn preview_supporter_filter_is_case_insensitive() {
    let run = Campaign::new().run(&["preview", "--supporter", "SAM@Mail.EXAMPLE"]);
    run.code(0).stdout_has("I am Sam Okafor from Minneapolis.");
    assert_eq!(message_ids(&run.stdout).len(), 1, "{}", run.stdout);
    assert!(!run.stdout.contains("Ana"), "{}", run.stdout);
}

#[test]
fn preview_target_filter_picks_one_target() {
    let run = Campaign::new()
        .section(CFO)
        .run(&["preview", "--target", "cfo@corp.example"]);
    run.code(0).stdout_has("To: Amy Hood <CFO@Corp.example>");
    assert_eq!(message_ids(&run.stdout).len(), 3, "{}", run.stdout);
    assert!(!run.stdout.contains("To: Satya"), "{}", run.stdout);
}

#[test]
fn preview_limit_stops_after_n_letters() {
    let c = Campaign::new().section(CFO);
    let run = c.run(&["preview", "--limit", "2"]);
    run.code(0);
    assert_eq!(message_ids(&run.stdout).len(), 2, "{}", run.stdout);
    let files = preview_out(&c, &["--limit", "4"]);
    assert_eq!(files.len(), 4);
}

#[test]
fn preview_of_an_unknown_supporter_or_target_is_an_error() {
    let c = Campaign::new();
    c.run(&["preview", "--supporter", "nobody@mail.example"])
        .code(1)
        .stderr_has("no valid row for supporter `nobody@mail.example` in `supporters.csv`");
    c.run(&["preview", "--target", "nobody@corp.example"])
        .code(1)
        .stderr_has("no target `nobody@corp.example` in the config");
}

#[test]
fn preview_out_writes_eml_files_a_parser_reads_back() {
    let csv = "email,first_name,last_name,city,note\n\
               jose@mail.example,José,Hernández,San Antonio,Ñandú über alles\n\
               lee@mail.example,Lee,Park,Seattle,\n";
    let c = with_supporters(csv.as_bytes()).section(CFO);
    let printed = message_ids(&c.run(&["preview"]).stdout);
    let files = preview_out(&c, &[]);
    assert_eq!(
        files.len(),
        4,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (name, _) in &files {
        assert!(
            Path::new(name)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("eml")),
            "{name}"
        );
    }
    let mut ids = Vec::new();
    for (name, bytes) in &files {
        let msg = parse(bytes);
        let from = msg.from().and_then(|a| a.first()).expect("From");
        assert_eq!(from.address(), Some("letters@org.example"), "{name}");
        assert!(msg.to().and_then(|a| a.first()).is_some(), "{name}: To");
        assert!(
            msg.subject().is_some_and(|s| s.ends_with(": drop the contract")),
            "{name}"
        );
        assert!(msg.date().is_some(), "{name}: Date");
        ids.push(format!("<{}>", msg.message_id().expect("Message-ID")));
        assert!(msg.body_text(0).is_some_and(|t| t.starts_with("Dear ")), "{name}");
    }
    assert_eq!(ids, printed, "the .eml files carry the IDs preview prints");

    let jose = parse(&files[0].1);
    assert_eq!(
        jose.from().and_then(|a| a.first()).and_then(|a| a.name()),
        Some("José Hernández via Test Org")
    );
    assert_eq!(jose.subject(), Some("José from San Antonio: drop the contract"));
    let to = jose.to().and_then(|a| a.first()).unwrap();
    assert_eq!(
        (to.name(), to.address()),
        (Some("Satya Nadella"), Some("ceo@corp.example"))
    );
    assert_eq!(
        jose.reply_to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("jose@mail.example")
    );
    let text = jose.body_text(0).unwrap().replace("\r\n", "\n");
    assert!(
        text.contains("I am José Hernández from San Antonio.\nÑandú über alles"),
        "{text}"
    );
}

#[test]
fn text_letter_eml_declares_mime_version() {
    let files = preview_out(&Campaign::new(), &["--limit", "1"]);
    let raw = String::from_utf8_lossy(&files[0].1);
    assert!(raw.contains("\r\nMIME-Version: 1.0\r\n"), "{raw}");
}

#[test]
fn encoded_word_in_supporter_data_never_reaches_a_header() {
    // `=?utf-8?b?RXZl?=` is base64 for `Eve`: written raw into the Subject,
    // every mail reader would show `Eve from Tucson`, not what the supporter
    // typed. Such a row is skipped with its reason; the others go on.
    let csv = "email,first_name,last_name,city,note\n\
               ana@mail.example,=?utf-8?b?RXZl?=,Lopez,Tucson,\n\
               lee@mail.example,Lee,Park,Seattle,\n";
    let c = with_supporters(csv.as_bytes());
    c.run(&["check", "--strict"])
        .code(1)
        .stdout_has("supporters.csv:2: the Subject would contain `=?…?=`")
        .stdout_has("(column `first_name`)");
    let files = preview_out(&c, &[]);
    assert_eq!(files.len(), 1, "only Lee's letter is built");
    let msg = parse(&files[0].1);
    assert_eq!(msg.subject(), Some("Lee from Seattle: drop the contract"));
}

// ---------------------------------------------------------------------------
// .md and .txt letters
// ---------------------------------------------------------------------------

#[test]
fn markdown_letter_is_multipart_alternative_with_escaped_html() {
    let letter = "# Dear {{ target.name }}\n\nI am **{{ supporter.name }}**.\n\n{{ supporter.note }}\n";
    let csv = "email,first_name,last_name,city,note\n\
               ana@mail.example,Ana,Lopez,Tucson,<script>alert(1)</script> & <b>bold</b>\n";
    let c = with_supporters(csv.as_bytes())
        .head(&config_with("letters/letter.txt", "letters/letter.md"))
        .file("letters/letter.md", letter);
    let files = preview_out(&c, &[]);
    assert_eq!(files.len(), 1);
    let msg = parse(&files[0].1);
    let ct = msg.content_type().expect("Content-Type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("alternative")));
    assert_eq!((msg.text_body_count(), msg.html_body_count()), (1, 1));
    let html_part = msg.html_part(0).unwrap();
    assert!(
        matches!(html_part.body, PartType::Html(_)),
        "{:?}",
        html_part.body
    );
    let html = msg.body_html(0).unwrap();
    assert!(html.contains("<h1>Dear Satya Nadella</h1>"), "{html}");
    assert!(html.contains("<strong>Ana Lopez</strong>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    assert!(!html.contains("<script>") && !html.contains("<b>"), "{html}");
    // The text part is the Markdown as written, not escaped.
    let text = msg.body_text(0).unwrap();
    assert!(text.contains("<script>alert(1)</script> & <b>bold</b>"), "{text}");
}

#[test]
fn text_letter_has_no_html_part() {
    let files = preview_out(&Campaign::new(), &["--limit", "1"]);
    let msg = parse(&files[0].1);
    let ct = msg.content_type().expect("Content-Type");
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")));
    assert!(
        msg.parts.iter().all(|p| !matches!(p.body, PartType::Html(_))),
        "{:?}",
        msg.parts
    );
    assert_eq!(msg.parts.len(), 1);
}

// ---------------------------------------------------------------------------
// send --dry-run
// ---------------------------------------------------------------------------

#[test]
fn dry_run_prints_the_plan_and_writes_no_ledger() {
    let csv = format!("{SUPPORTERS}broken,Bad,Row,Nowhere,\nANA@mail.example,Ana,Again,Tucson,\n");
    let c = with_supporters(csv.as_bytes()).section(CFO);
    let run = c.run(&["send", "--dry-run"]);
    run.code(0)
        .stdout_has("Dry run: nothing will be sent and nothing recorded.")
        .stdout_has("Supporters 3 valid, 1 skipped, 1 duplicate rows")
        .stdout_has("Letters due now: 6\n")
        .stdout_has("       3  to Satya Nadella <ceo@corp.example>\n")
        .stdout_has("       3  to Amy Hood <CFO@Corp.example>\n")
        .stdout_has(
            "The first letter:\n\nFrom: Ana López via Test Org <letters@org.example>\nTo: Satya Nadella <ceo@corp.example>\n",
        )
        .stdout_has("\nDear Satya Nadella,\n\nI am Ana López from Tucson.\n")
        .stderr_has(&format!(
            "{CSV}:5: invalid email `broken`: Missing domain or user (skipped)"
        ))
        .stderr_has(&format!("{CSV}:6: `ANA@mail.example` repeats line 2 (ignored)"));
    assert_eq!(message_ids(&run.stdout).len(), 1, "only the first letter in full");
    assert!(!c.join(".mailer").exists(), "a dry run created .mailer/");
}

#[test]
fn dry_run_shows_the_run_budget_and_rate() {
    let c = Campaign::new().section("[delivery]\nrate = \"30/minute\"\nmax_per_run = 2\n");
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Letters due now: 3")
        .stdout_has("This run would send at most 2")
        .stdout_has("Rate: one letter every 2.0s.");
    c.run(&["send", "--dry-run", "--limit", "1"])
        .code(0)
        .stdout_has("This run would send at most 1");
    assert!(!c.join(".mailer").exists());
}

// ---------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------

#[test]
fn init_writes_a_campaign_that_check_passes() {
    let c = Campaign::new();
    c.run(&["init", "fresh"]).code(0);
    for file in [
        "fresh/mailer.toml",
        "fresh/letters/letter.md",
        "fresh/supporters.csv",
    ] {
        assert!(c.join(file).is_file(), "{file} missing");
    }
    // Its addresses are placeholders: `check` names them (issue 15 item 2).
    c.run(&["-c", "fresh/mailer.toml", "check"])
        .code(1)
        .stdout_has("letter ready")
        .stdout_has("placeholder");
    let config = c.join("fresh/mailer.toml");
    c.run(&["-c", config.to_str().unwrap(), "send", "--dry-run"])
        .code(0)
        .stdout_has("Letters due now: 1");
    assert!(!c.join("fresh/.mailer").exists());
}

#[test]
fn init_refuses_to_overwrite_a_campaign() {
    let c = Campaign::new().file("mine/mailer.toml", "# my campaign\n");
    c.run(&["init", "mine"])
        .code(1)
        .stderr_has("`mine/mailer.toml` already exists; init never overwrites a campaign");
    assert_eq!(
        std::fs::read_to_string(c.join("mine/mailer.toml")).unwrap(),
        "# my campaign\n"
    );
    assert!(!c.join("mine/letters").exists(), "init wrote part of a campaign");
    assert!(!c.join("mine/supporters.csv").exists());

    // Any one of the three files is enough to refuse; a second init too.
    let c = Campaign::new().file("other/supporters.csv", "email\nme@mail.example\n");
    c.run(&["init", "other"])
        .code(1)
        .stderr_has("other/supporters.csv");
    assert!(!c.join("other/mailer.toml").exists());
    c.run(&["init", "third"]).code(0);
    c.run(&["init", "third"]).code(1).stderr_has("already exists");
}

// ---------------------------------------------------------------------------
// The shipped example
// ---------------------------------------------------------------------------

fn shipped_example(args: &[&str]) -> Run {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = repo.join("config.example.toml");
    let had_ledger = repo.join(".mailer").exists();
    let mut all = vec!["-c", config.to_str().unwrap()];
    all.extend_from_slice(args);
    // Any folder but the repo as the current directory: paths must resolve
    // against the config file's folder.
    let run = Campaign::new().run(&all);
    assert_eq!(
        repo.join(".mailer").exists(),
        had_ledger,
        "running the example wrote into the repository"
    );
    run
}

#[test]
fn shipped_example_dry_run_plans_twelve_letters() {
    shipped_example(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Supporters 12 valid, 0 skipped, 0 duplicate rows")
        .stdout_has("Letters due now: 12\n")
        .stdout_has("      12  to Satya Nadella <satya.nadella@microsoft.example>");
}

#[test]
fn shipped_example_check_renders_every_letter_and_names_its_placeholders() {
    // Its relay is real and its addresses are `.example` placeholders, so
    // `send` would refuse: `check` says so (issue 15 item 2).
    shipped_example(&["check"])
        .code(1)
        .stdout_has("12 supporters × 1 target = 12 letters ready; 14 problems")
        .stdout_has("From `letters@colorofchange.example` is a placeholder address");
}

// ---------------------------------------------------------------------------
// Message-ID
// ---------------------------------------------------------------------------

#[test]
fn message_ids_are_stable_across_runs_and_differ_per_target() {
    let c = Campaign::new().section(CFO);
    let first = message_ids(&c.run(&["preview"]).code(0).stdout);
    let second = message_ids(&c.run(&["preview"]).code(0).stdout);
    assert_eq!(first.len(), 6);
    assert_eq!(first, second, "Message-IDs changed between runs");
    let unique: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(unique.len(), 6, "{first:?}");
    for id in &first {
        let hex = id
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix("@org.example>"))
            .unwrap_or_else(|| panic!("{id}"));
        assert!(
            hex.len() >= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    // Per target: the CEO's and the CFO's letter from one supporter differ.
    let ceo = message_ids(&c.run(&["preview", "--target", "ceo@corp.example"]).stdout);
    let cfo = message_ids(&c.run(&["preview", "--target", "cfo@corp.example"]).stdout);
    assert_eq!((ceo.len(), cfo.len()), (3, 3));
    for (a, b) in ceo.iter().zip(&cfo) {
        assert_ne!(a, b);
    }
}

#[test]
fn message_id_ignores_the_case_of_the_supporter_email() {
    let lower =
        with_supporters(b"email,first_name,last_name,city,note\nana@mail.example,Ana,Lopez,Tucson,\n");
    let upper =
        with_supporters(b"email,first_name,last_name,city,note\nANA@Mail.Example,Ana,Lopez,Tucson,\n");
    let a = message_ids(&lower.run(&["preview"]).code(0).stdout);
    let b = message_ids(&upper.run(&["preview"]).code(0).stdout);
    assert_eq!(a.len(), 1);
    assert_eq!(a, b);
}
