//! Issue 15, "the first hour", continued: `init` for a volunteer, the DMARC
//! and DKIM warnings for someone sending as themselves, `status` and
//! `export` for following a campaign, errors a person can act on, help and
//! the man page, the example config and `preview --html`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Command;

use crate::support::campaign::Campaign;
use crate::support::pty::Term;

fn read(c: &Campaign, rel: &str) -> String {
    std::fs::read_to_string(c.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------- item 1: init for a volunteer

#[test]
fn issue15_init_asks_a_volunteer_and_writes_their_own_letter() {
    let c = Campaign::new();
    let mut t = Term::spawn(c.command(&["init", "mine"]));
    t.answer("Your name", "Ana López");
    t.answer("Your email", "ana@gmail.com");
    t.answer("Target's name", "Jane Mayor");
    t.answer("Target's email", "not an address");
    t.expect("that is not an email address");
    t.answer("Target's email", "mayor@springfield.gov");
    t.answer("Subject [A letter from Ana López]", "");
    t.expect("1) Gmail (smtp.gmail.com)");
    t.expect("3) Fastmail (smtp.fastmail.com)");
    t.expect("4) another SMTP server");
    // Gmail is offered first because the address is a Gmail one.
    t.answer("Choose 1-4 [1]", "");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Created a campaign in `mine`"), "{text}");
    assert!(text.contains("Gmail's sending limits"), "{text}");

    let toml = read(&c, "mine/mailer.toml");
    for want in [
        "from = \"Ana López <ana@gmail.com>\"",
        "name = \"Jane Mayor\"",
        "email = \"mayor@springfield.gov\"",
        "host = \"smtp.gmail.com\"",
        "port = 465",
        "security = \"tls\"",
        "username = \"ana@gmail.com\"",
        "subject = \"A letter from {{ supporter.name }}\"",
        "id = \"letter-to-jane-mayor\"",
    ] {
        assert!(toml.contains(want), "mailer.toml lacks {want:?}:\n{toml}");
    }
    for unwanted in [" via ", "Microsoft", "ICE", ".example\"", ".example>", "reply_to"] {
        assert!(!toml.contains(unwanted), "mailer.toml has {unwanted:?}:\n{toml}");
    }
    assert_eq!(
        read(&c, "mine/supporters.csv"),
        "email,name\nana@gmail.com,Ana López\n"
    );
    let letter = read(&c, "mine/letters/letter.md");
    assert!(letter.starts_with("Dear {{ target.name }},"), "{letter}");
    assert!(letter.contains("Write your letter here"), "{letter}");
    assert!(
        !letter.contains("Microsoft") && !letter.contains("ICE"),
        "{letter}"
    );

    // The letter reads as the skeleton, addressed to the target by name.
    let preview = c.run(&["-c", "mine/mailer.toml", "preview"]);
    preview
        .code(0)
        .stdout_has("From: Ana López <ana@gmail.com>")
        .stdout_has("To: Jane Mayor <mayor@springfield.gov>")
        .stdout_has("Dear Jane Mayor,")
        .stdout_has("Subject: A letter from Ana");
    // An unwritten letter never goes out: check names it, send refuses.
    c.run(&["-c", "mine/mailer.toml", "check"])
        .code(1)
        .stdout_has("mine/letters/letter.md:3: the letter still says \"Write your letter here\"");
    c.run(&["-c", "mine/mailer.toml", "send", "--yes"])
        .code(1)
        .stderr_has("not sending through `smtp.gmail.com`")
        .stderr_has("still says \"Write your letter here\"");
    // Written, it passes: no placeholder, no DMARC or DKIM warning for Gmail itself.
    let c = c.file(
        "mine/letters/letter.md",
        "Dear {{ target.name }},\n\nPlease fix the bridge.\n\n{{ supporter.name }}\n",
    )
    // The password set (unset, `check` warns that cron could not send).
    .env("MAILER_SMTP_PASSWORD", "app-password");
    let check = c.run(&["-c", "mine/mailer.toml", "check"]);
    check
        .code(0)
        .stdout_has("1 supporter × 1 target = 1 letter ready; 0 problems");
    assert!(!check.stderr.contains("warning"), "{}", check.stderr);
}

#[test]
fn issue15_init_with_another_server_asks_host_port_security_and_login() {
    let c = Campaign::new();
    let mut t = Term::spawn(c.command(&["init", "own"]));
    t.answer("Your name", "Sam Okafor");
    t.answer("Your email", "sam@riverfriends.org");
    t.answer("Target's name", "City Council");
    t.answer("Target's email", "council@springfield.gov");
    t.answer("Subject", "Save the river");
    // An address no preset owns: "another server" is the default.
    t.answer("Choose 1-4 [4]", "");
    t.answer("SMTP server (host name)", "mail.riverfriends.org");
    t.answer("Port [587]", "465");
    t.answer("Security (starttls or tls) [tls]", "TLS");
    t.answer("Login name [sam@riverfriends.org]", "");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "{text}");
    let toml = read(&c, "own/mailer.toml");
    for want in [
        "from = \"Sam Okafor <sam@riverfriends.org>\"",
        "subject = \"Save the river\"",
        "host = \"mail.riverfriends.org\"",
        "port = 465",
        "security = \"tls\"",
        "username = \"sam@riverfriends.org\"",
    ] {
        assert!(toml.contains(want), "mailer.toml lacks {want:?}:\n{toml}");
    }
}

#[test]
fn issue15_init_cancelled_at_the_end_of_input_writes_nothing() {
    let c = Campaign::new();
    let mut t = Term::spawn(c.command(&["init", "gone"]));
    t.answer("Your name", "Ana");
    t.expect("Your email");
    t.master.write_all(&[4]).unwrap(); // Ctrl-D
    let (code, text) = t.finish();
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("init cancelled"), "{text}");
    assert!(!c.join("gone/mailer.toml").exists());
}

#[test]
fn issue15_init_without_a_terminal_writes_the_skeleton_with_placeholders() {
    let c = Campaign::new();
    let r = c.run(&["init", "fresh"]);
    r.code(0).stderr_has("No terminal, so nothing was asked");
    let toml = read(&c, "fresh/mailer.toml");
    assert!(
        toml.contains("from = \"Your Name <you@your-provider.example>\""),
        "{toml}"
    );
    assert!(!toml.contains(" via "), "{toml}");
    assert_eq!(
        read(&c, "fresh/supporters.csv"),
        "email,name\nyou@your-provider.example,Your Name\n"
    );
    assert!(read(&c, "fresh/letters/letter.md").contains("Write your letter here"));
    // Valid: it renders; check names every placeholder and the unwritten letter.
    c.run(&["-c", "fresh/mailer.toml", "preview"])
        .code(0)
        .stdout_has("Dear Target Name,");
    c.run(&["-c", "fresh/mailer.toml", "check"])
        .code(1)
        .stdout_has("From `you@your-provider.example` is a placeholder")
        .stdout_has("target `target@their-office.example` is a placeholder")
        .stdout_has("still says \"Write your letter here\"");
}

// ---------------------------------------------------------------- item 5: DMARC and DKIM warnings

fn sender(from: &str, host: &str, username: &str) -> Campaign {
    let c = Campaign::new();
    let head = c
        .config_text()
        .replace("{{ supporter.name }} via Test Org <letters@org.example>", from)
        .replace("reply_to = \"{{ supporter.email }}\"\n", "");
    c.head(&head)
        .section(&format!("[smtp]\nhost = \"{host}\"\nusername = \"{username}\"\n"))
}

#[test]
fn issue15_no_dmarc_or_dkim_warning_for_a_volunteer_sending_as_themselves() {
    for (from, host) in [
        ("Ana <ana@gmail.com>", "smtp.gmail.com"),
        ("Ana <ana@outlook.com>", "smtp.office365.com"),
        ("Ana <ana@fastmail.com>", "smtp.fastmail.com"),
    ] {
        let login = from.trim_end_matches('>').rsplit('<').next().unwrap();
        let check = sender(from, host, login).run(&["check"]);
        assert!(!check.stderr.contains("free-mail"), "{host}: {}", check.stderr);
        assert!(!check.stderr.contains("[dkim]"), "{host}: {}", check.stderr);
    }
    // Gmail's address through another relay is still warned about…
    let other = sender("Ana <ana@gmail.com>", "smtp.relay.org", "ana@gmail.com").run(&["check"]);
    other
        .stderr_has("free-mail domain")
        .stderr_has("no [dkim] section");
    // …and so is another account's address through Gmail.
    let login = sender("Ana <ana@gmail.com>", "smtp.gmail.com", "letters@org.net").run(&["check"]);
    login.stderr_has("free-mail domain");
}

// ---------------------------------------------------------------- item 9: status and export

const BOARD: &str = "[[targets]]\nname = \"Brad Smith\"\nemail = \"board@corp.example\"\n";

/// Two targets; ana and sam stay, lee's row leaves the CSV after the run,
/// `bad@` (line 5) is invalid. After one real run: ana → CEO failed, sam →
/// board deferred until 2030-01-01, and lee → CEO deferred (will not be sent).
fn followed_campaign() -> Campaign {
    use crate::support::smtp::{Security, Server, ServerOptions};
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().section(BOARD).smtp_plain(&server).file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
             ana@mail.example,Ana,López,Tucson,\n\
             sam@mail.example,Sam,Okafor,Minneapolis,\n\
             lee@mail.example,Lee,Park,Seattle,\n\
             bad@,Bad,Row,Nowhere,\n",
    );
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 6");
    c.sql(
        "UPDATE letters SET state = 'failed', reply = '550 5.1.1 no such user'
           WHERE supporter = 'ana@mail.example' AND target = 'ceo@corp.example';
         UPDATE letters SET state = 'deferred', reply = '451 4.3.0 try later', next_attempt_at = 1893456000
           WHERE supporter = 'sam@mail.example' AND target = 'board@corp.example';
         UPDATE letters SET state = 'deferred', reply = '451 4.3.0 try later', next_attempt_at = 1893456000
           WHERE supporter = 'lee@mail.example' AND target = 'ceo@corp.example';",
    );
    c.file(
        "supporters.csv",
        "email,first_name,last_name,city,note\n\
         ana@mail.example,Ana,López,Tucson,\n\
         sam@mail.example,Sam,Okafor,Minneapolis,\n\
         bad@,Bad,Row,Nowhere,\n",
    )
}

#[test]
fn issue15_status_agrees_with_check_and_names_targets_runs_and_retries() {
    let c = followed_campaign();
    c.run(&["check"])
        .stdout_has("2 supporters × 2 targets = 4 letters ready; 1 problem");
    let status = c.run(&["status"]);
    status
        .code(0)
        .stdout_has("Campaign test-campaign — 8 letters\n")
        .stdout_has("         4  for 2 supporters in supporters.csv × 2 targets (as `mailer check` counts them)\n")
        .stdout_has("         2  for 1 invalid row that `mailer send` skips")
        .stdout_has("         2  whose row has left supporters.csv (1 will not be sent)\n")
        .stdout_has(", exit 0 (done): 6 sent\n")
        .stdout_has("  deferred         2  next retry after 2030-01-01 00:00 UTC\n")
        .stdout_has(
            "  failed   ana@mail.example (supporters.csv:2) → Satya Nadella <ceo@corp.example>: 550 5.1.1 no such user\n",
        )
        .stdout_has(
            "  deferred sam@mail.example (supporters.csv:3) → Brad Smith <board@corp.example>: 451 4.3.0 try later \
             — retry after 2030-01-01 00:00 UTC\n",
        )
        .stdout_has(
            "  deferred lee@mail.example → Satya Nadella <ceo@corp.example>: 451 4.3.0 try later \
             — will not be sent: the row left supporters.csv\n",
        );
    assert!(status.stdout.contains("Last run: "), "{}", status.stdout);
    // The table by target: every number right-aligned under its state.
    let lines: Vec<&str> = status.stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("By target:"))
        .expect("a table");
    let rows = &lines[head..head + 3];
    assert!(
        rows[1].starts_with("  Satya Nadella <ceo@corp.example>"),
        "{rows:?}"
    );
    assert!(
        rows[2].starts_with("  Brad Smith <board@corp.example> "),
        "{rows:?}"
    );
    let ends = |l: &str| -> Vec<usize> {
        let mut v = Vec::new();
        let chars: Vec<char> = l.chars().collect();
        for i in 0..chars.len() {
            if chars[i] != ' ' && chars.get(i + 1).is_none_or(|c| *c == ' ') {
                v.push(i);
            }
        }
        v.split_off(v.len() - 7)
    };
    assert_eq!(ends(rows[0]), ends(rows[1]), "{rows:#?}");
    assert_eq!(ends(rows[0]), ends(rows[2]), "{rows:#?}");
    // JSON keeps SPEC's keys and total.
    c.run(&["status", "--json"])
        .stdout_has("\"total\":8,\"sent\":3,\"pending\":0,\"deferred\":2,\"failed\":1");
}

#[test]
fn issue15_status_failed_lists_only_what_needs_attention() {
    let c = followed_campaign();
    let r = c.run(&["status", "--failed"]);
    r.code(0)
        .stdout_has("Needs attention: 3 letters or rows\n")
        .stdout_has("(1 deferred letter will be retried by `mailer send` after 2030-01-01 00:00 UTC.)")
        .stdout_has("  failed   ana@mail.example (supporters.csv:2) → Satya Nadella <ceo@corp.example>: 550")
        .stdout_has("will not be sent: the row left supporters.csv")
        .stdout_has("  skipped  bad@ (supporters.csv:4): ");
    for unwanted in ["sam@mail.example", "  sent ", "By target", "Campaign "] {
        assert!(!r.stdout.contains(unwanted), "{unwanted:?} in\n{}", r.stdout);
    }
    c.run(&["status", "--failed", "--json"]).code(2);
    let clean = Campaign::new();
    clean
        .run(&["status", "--failed"])
        .code(0)
        .stdout_has("Nothing needs attention.");
}

#[test]
fn issue15_status_counts_with_thousands_separators() {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=1_005 {
        let _ = writeln!(csv, "s{i:04}@mail.example,F{i},L{i},C{i},");
    }
    let c = Campaign::new().file("supporters.csv", csv);
    c.run(&["status"])
        .code(0)
        .stdout_has("Campaign test-campaign — 1,005 letters\n")
        .stdout_has("     1,005  for 1,005 supporters in supporters.csv × 1 target ")
        .stdout_has("  pending      1,005\n");
}

#[test]
fn issue15_export_appends_supporter_and_target_names_and_the_csv_line() {
    let c = followed_campaign();
    let out = c.run(&["export"]);
    out.code(0);
    let mut reader = csv::Reader::from_reader(out.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    // SPEC's columns first, in SPEC's order; the new ones at the end.
    assert_eq!(
        header[..7],
        [
            "supporter",
            "target",
            "state",
            "attempts",
            "last_reply",
            "sent_at",
            "message_id"
        ]
    );
    assert_eq!(
        header[header.len() - 3..],
        ["supporter_name", "target_name", "csv_line"]
    );
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    let find = |s: &str, t: &str| {
        rows.iter()
            .find(|r| r[0] == s && r[1] == t)
            .unwrap_or_else(|| panic!("no row {s} → {t}: {rows:?}"))
    };
    let tail = |r: &Vec<String>| r[r.len() - 3..].to_vec();
    assert_eq!(
        tail(find("ana@mail.example", "ceo@corp.example")),
        ["Ana López", "Satya Nadella", "2"]
    );
    assert_eq!(
        tail(find("sam@mail.example", "board@corp.example")),
        ["Sam Okafor", "Brad Smith", "3"]
    );
    // An invalid row: its line; a departed row: no line, still the target's name.
    assert_eq!(tail(find("bad@", "ceo@corp.example")), ["", "Satya Nadella", "4"]);
    assert_eq!(
        tail(find("lee@mail.example", "ceo@corp.example")),
        ["", "Satya Nadella", ""]
    );
}

// ---------------------------------------------------------------- item 12: errors a person can act on

/// The default campaign with real-looking addresses (no placeholder), so a
/// real relay may be tried.
fn real_addresses() -> Campaign {
    let c = Campaign::new();
    let head = c
        .config_text()
        .replace("letters@org.example", "letters@colorofchange.org")
        .replace("ceo@corp.example", "ceo@microsoft.com");
    c.head(&head).file(
        "supporters.csv",
        "email,first_name,last_name,city,note\nana@gmail.com,Ana,López,Tucson,\n",
    )
}

#[test]
fn issue15_a_certificate_for_another_name_says_which_names_it_is_valid_for() {
    use crate::support::smtp::{Security, Server, ServerOptions, TestPki};
    let pki = TestPki::for_names(&["mail.other.test", "smtp.other.test"]);
    let server = Server::start(ServerOptions::new(Security::StartTls).with_pki(&pki));
    let c = Campaign::new().file("ca.pem", pki.ca_pem()).section(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"ca.pem\"\ntimeout_secs = 5\n",
        server.port()
    ));
    let r = c.run(&["send", "--yes"]);
    r.code(1).stderr_has(
        "the certificate of `127.0.0.1` is for another name: it is valid for `mail.other.test`, \
         `smtp.other.test`, not `127.0.0.1`",
    );
    assert!(!r.stderr.contains("Context"), "{}", r.stderr);
    assert!(!r.stderr.contains("private CA"), "{}", r.stderr);
    assert!(server.received().is_empty());
}

#[test]
fn issue15_an_unknown_issuer_says_so() {
    use crate::support::smtp::{Security, Server, ServerOptions, TestPki};
    let server = Server::start(ServerOptions::new(Security::StartTls).with_pki(&TestPki::new()));
    let c = Campaign::new().section(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntimeout_secs = 5\n",
        server.port()
    ));
    c.run(&["check", "--smtp"])
        .code(1)
        .stderr_has("issued by an authority this machine does not trust")
        .stderr_has("ca_file");
}

#[test]
fn issue15_a_host_name_that_does_not_resolve_is_a_config_error() {
    let c = real_addresses()
        .section("[smtp]\nhost = \"smtp.no-such-host.invalid\"\ntimeout_secs = 5\npassword_env = \"PW\"\n");
    let c = c.env("PW", "secret");
    for args in [&["send", "--yes"][..], &["check", "--smtp"]] {
        let r = c.run(args);
        r.code(1)
            .stderr_has("cannot resolve host `smtp.no-such-host.invalid`")
            .stderr_has("hint: check [smtp] host");
        assert!(!r.stderr.contains("try later"), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn issue15_one_is_singular() {
    use crate::support::smtp::{Security, Server, ServerOptions};
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[delivery]\nmax_per_run = 2\n");
    c.run(&["send", "--yes"])
        .code(0)
        .stderr_has("1 letter waits for the next run");
    let c = Campaign::new()
        .file(
            "letters/letter.txt",
            "Dear {{ target.name }},\n{% if supporter.note %}{{ supporter.nope }}{% endif %}\n",
        )
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,note\n\
             ana@mail.example,Ana,López,Tucson,one\n\
             sam@mail.example,Sam,Okafor,Minneapolis,two\n",
        );
    let check = c.run(&["check"]);
    check.code(1).stderr_has("repeats for 1 more row: ");
    assert!(!check.stderr.contains("1 more rows"), "{}", check.stderr);
}

// ---------------------------------------------------------------- item 13: help and man

const COMMANDS: [&str; 11] = [
    "init",
    "check",
    "preview",
    "send",
    "bounces",
    "skip",
    "requeue",
    "status",
    "export",
    "completions",
    "man",
];

#[test]
fn issue15_each_command_help_has_an_example_and_global_flags_apart() {
    let c = Campaign::new();
    for command in COMMANDS {
        for flag in ["-h", "--help"] {
            let r = c.run(&[command, flag]);
            r.code(0);
            let text = &r.stdout;
            assert!(
                text.contains("\nExample:\n  mailer ") || text.contains("\nExamples:\n  mailer "),
                "`{command} {flag}` has no example:\n{text}"
            );
            // The command's own options first, then the global ones under their heading.
            let own = text.find("\nOptions:\n").expect("an Options heading");
            let global = text
                .find("\nGlobal options:\n")
                .unwrap_or_else(|| panic!("{command}: {text}"));
            assert!(own < global, "{command}:\n{text}");
            assert!(text[global..].contains("--quiet"), "{command}:\n{text}");
            assert!(!text[..global].contains("--quiet"), "{command}:\n{text}");
        }
    }
    let init = c.run(&["init", "--help"]);
    assert!(!init.stdout.contains("--config"), "{}", init.stdout);
    assert!(!init.stdout.contains("MAILER_CONFIG"), "{}", init.stdout);
    c.run(&["check", "--help"]).stdout_has("--config <PATH>");
}

#[test]
fn issue15_the_man_page_has_no_phantom_pages_and_documents_environment_files_and_exit_status() {
    let c = Campaign::new();
    let r = c.run(&["man"]);
    r.code(0);
    let page = &r.stdout;
    assert!(
        !page.contains("mailer-init(1)") && !page.contains("mailer\\-init(1)"),
        "{page}"
    );
    assert!(!page.contains("(1)\n"), "a reference to another page:\n{page}");
    for section in [".SH COMMANDS", ".SH ENVIRONMENT", ".SH FILES", ".SH EXIT STATUS"] {
        assert!(page.contains(section), "no {section}:\n{page}");
    }
    for word in [
        "MAILER_CONFIG",
        "MAILER_SMTP_PASSWORD",
        "NO_COLOR",
        "mailer.toml",
        ".mailer/",
    ] {
        assert!(page.contains(word), "no {word}:\n{page}");
    }
    for code in ["0", "1", "2", "3", "75", "130"] {
        assert!(
            page.contains(&format!(".TP\n\\fB{code}\\fR\n")),
            "exit {code}:\n{page}"
        );
    }
    // Every command, with its own flags.
    for command in COMMANDS {
        assert!(
            page.contains(&format!("\\fBmailer {command}")),
            "{command}:\n{page}"
        );
    }
    assert!(page.contains("\\-\\-retry\\-failed"), "{page}");
}

// ---------------------------------------------------------------- item 7: preview --html

#[test]
fn issue15_preview_html_shows_or_writes_the_html_part() {
    let c = Campaign::new();
    let head = c.config_text().replace("letters/letter.txt", "letters/letter.md");
    let c = c.head(&head).file(
        "letters/letter.md",
        "Dear **{{ target.name }}**,\n\nI am {{ supporter.name }} <b>from</b> {{ supporter.city }}.\n",
    );
    let r = c.run(&["preview", "--html", "--supporter", "ana@mail.example"]);
    r.code(0)
        .stdout_has("Subject: Ana from Tucson: drop the contract\n")
        .stdout_has("<p>Dear <strong>Satya Nadella</strong>,</p>")
        .stdout_has("López");
    assert!(!r.stdout.contains("**Satya"), "the text part:\n{}", r.stdout);
    // Without --html: the text part, as before.
    c.run(&["preview", "--supporter", "ana@mail.example"])
        .code(0)
        .stdout_has("Dear **Satya Nadella**,");

    let r = c.run(&["preview", "--html", "--out", "html"]);
    r.code(0).stderr_has("wrote 3 .html files to `html`");
    let mut files: Vec<String> = std::fs::read_dir(c.join("html"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files[0], "00001-ana@mail.example-to-ceo@corp.example.html");
    let page = read(&c, &format!("html/{}", files[0]));
    assert!(
        page.starts_with("<p>Dear <strong>Satya Nadella</strong>,</p>"),
        "{page}"
    );

    // A .txt letter has no HTML part: says so.
    Campaign::new()
        .run(&["preview", "--html"])
        .code(1)
        .stderr_has("has no HTML part");
}

// ---------------------------------------------------------------- item 15: provider presets

#[test]
fn issue15_the_example_config_has_provider_presets_that_parse() {
    let example = include_str!("../../config.example.toml");
    assert!(
        example.contains("always written in lower case"),
        "security's case"
    );
    let mut presets = 0;
    for (name, host, port, security, limit) in [
        ("Gmail", "smtp.gmail.com", 465, "tls", "500 recipients a day"),
        (
            "Microsoft 365",
            "smtp.office365.com",
            587,
            "starttls",
            "10,000 recipients a day",
        ),
        ("Fastmail", "smtp.fastmail.com", 465, "tls", "sending limits"),
        (
            "Amazon SES",
            "email-smtp.us-east-1.amazonaws.com",
            587,
            "starttls",
            "200 messages a day",
        ),
    ] {
        let start = example.find(&format!("# {name}")).or_else(|| example.find(name));
        let block = &example[start.unwrap_or_else(|| panic!("no {name} preset"))..];
        let block = &block[..block.find("\n#\n").or_else(|| block.find("\n\n")).unwrap()];
        let prose = block
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(prose.contains(limit), "{name}: no limit {limit:?}:\n{block}");
        let lines: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .collect();
        assert_eq!(
            lines[..3],
            [
                format!("host = \"{host}\"").as_str(),
                format!("port = {port}").as_str(),
                format!("security = \"{security}\"").as_str()
            ],
            "{name}"
        );
        // Uncommented, the block is a working [smtp] section.
        let c = Campaign::new().section(&format!("[smtp]\n{}\n", lines.join("\n")));
        c.run(&["preview", "--limit", "1"]).code(0);
        presets += 1;
    }
    assert_eq!(presets, 4);
}

// ---------------------------------------------------------------- item 14: the release archive

#[test]
fn issue15_release_packs_a_stripped_binary_docs_example_completions_and_man_with_a_checksum() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin = env!("CARGO_BIN_EXE_mailer");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(format!("{root}/scripts/release"))
        .args(["--binary", bin, "--out"])
        .arg(out.path())
        .env("TMPDIR", out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let archive = stdout.lines().last().unwrap().to_string();
    assert!(archive.ends_with(".tar.gz"), "{archive}");
    let name = archive
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".tar.gz")
        .to_string();
    assert!(name.starts_with("mailer-0."), "{name}");
    // The checksum verifies.
    let check = Command::new("sha256sum")
        .args(["-c", &format!("{name}.tar.gz.sha256")])
        .current_dir(out.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // Unpacked: everything a volunteer needs.
    let unpacked = out.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar")
        .args(["xzf", &archive, "-C"])
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(tar.success());
    let dir = unpacked.join(&name);
    for file in [
        "mailer",
        "README.md",
        "example/mailer.toml",
        "example/letters/letter.md",
        "example/supporters.csv",
        "completions/mailer.bash",
        "completions/_mailer",
        "completions/mailer.fish",
        "man/mailer.1",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing from {name}");
    }
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&dir.join("mailer")) < size(std::path::Path::new(bin)),
        "not stripped"
    );
    let man = std::fs::read_to_string(dir.join("man/mailer.1")).unwrap();
    assert!(man.contains(".SH EXIT STATUS"));
    // The binary runs, and the example campaign works as shipped.
    let preview = Command::new(dir.join("mailer"))
        .args(["-c", "example/mailer.toml", "preview", "--limit", "1"])
        .current_dir(&dir)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        preview.status.success(),
        "{}",
        String::from_utf8_lossy(&preview.stderr)
    );
    assert!(String::from_utf8_lossy(&preview.stdout).contains("Subject: "));
}
