//! Issue 9, at the edges of the letter and the config: each section below
//! names the issue's item it covers. Real binary, real files, and the
//! scriptable SMTP server on loopback.

use std::os::unix::fs::symlink;

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Server, ServerOptions};

// ---- helpers ----

/// A plain (no TLS) test server that accepts everything.
fn server() -> Server {
    Server::start(ServerOptions::default())
}

/// What a stray include must never leak.
const SECRET: &str = "TOP-SECRET-7f3a9c";

/// The default letter with line 2 including `name` (its quote at column 12).
fn letter_including(name: &str) -> String {
    format!("Dear {{{{ target.name }}}},\n{{% include \"{name}\" %}}\nBest\n")
}

/// The default config head with `from` replaced by `to` (exactly once).
fn head_with(from: &str, to: &str) -> String {
    let text = Campaign::new().config_text();
    assert!(text.contains(from), "the default config lacks {from:?}");
    text.replacen(from, to, 1)
}

/// Asserts the run failed cleanly (exit 1) and printed no secret.
#[track_caller]
fn refused(run: &Run) {
    run.code(1).stderr_has("error: ");
    for out in [&run.stdout, &run.stderr] {
        assert!(!out.contains(SECRET), "the secret leaked:\n{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

/// Every way a letter goes out (or is rendered) must refuse the campaign.
const EVERY_COMMAND: [&[&str]; 5] = [
    &["check"],
    &["send", "--yes"],
    &["send", "--dry-run"],
    &["-q", "send", "--yes"],
    &["preview"],
];

/// Asserts nothing reached the server and nothing was recorded.
#[track_caller]
fn nothing_sent(c: &Campaign, server: &Server) {
    assert_eq!(server.connections(), 0, "mailer connected to the server");
    assert!(server.received().is_empty());
    assert!(!c.ledger().exists(), "a ledger was written");
}

// ---- item 1: includes stay inside the letters folder ----

#[test]
fn issue9_include_of_an_absolute_path_is_refused_with_its_place() {
    let server = server();
    let c = Campaign::new()
        .smtp_plain(&server)
        .file("secret.txt", SECRET)
        .env("MAILER_SMTP_PASSWORD", SECRET);
    let outside = c.join("secret.txt").display().to_string();
    for name in [outside.as_str(), "/proc/self/environ"] {
        let c = Campaign::new()
            .smtp_plain(&server)
            .file("secret.txt", SECRET)
            .env("MAILER_SMTP_PASSWORD", SECRET)
            .file("letters/letter.txt", letter_including(name));
        for args in EVERY_COMMAND {
            let run = c.run(args);
            refused(&run);
            run.stderr_has(&format!(
                "error: letters/letter.txt:2:12: cannot include `{name}`: it is an absolute path"
            ))
            .stderr_has("hint: ");
        }
        nothing_sent(&c, &server);
    }
}

#[test]
fn issue9_include_that_climbs_out_with_dotdot_is_refused() {
    let server = server();
    for name in ["../secret.txt", "parts/../../secret.txt"] {
        let c = Campaign::new()
            .smtp_plain(&server)
            .file("secret.txt", SECRET)
            .file("letters/parts/x.txt", "x")
            .file("letters/letter.txt", letter_including(name));
        for args in EVERY_COMMAND {
            let run = c.run(args);
            refused(&run);
            run.stderr_has(&format!(
                "error: letters/letter.txt:2:12: cannot include `{name}`: `..` leads out of the letters folder"
            ));
        }
        nothing_sent(&c, &server);
    }
}

#[test]
fn issue9_symlink_out_of_the_letters_folder_is_refused_where_it_is_included() {
    let server = server();
    // letter.txt includes footer.txt (inside); footer.txt, on its line 3,
    // includes sig.txt, a symlink to a file outside the folder.
    let c = Campaign::new()
        .smtp_plain(&server)
        .file("secret.txt", SECRET)
        .file("letters/letter.txt", letter_including("footer.txt"))
        .file("letters/footer.txt", "--\nThe team\n  {% include 'sig.txt' %}\n");
    symlink("../secret.txt", c.join("letters/sig.txt")).unwrap();
    // A symlinked folder leading out is refused the same way.
    let c2 = Campaign::new()
        .smtp_plain(&server)
        .file("elsewhere/sig.txt", SECRET)
        .file("letters/letter.txt", letter_including("shared/sig.txt"));
    symlink(c2.join("elsewhere"), c2.join("letters/shared")).unwrap();
    for (c, at, name) in [
        (&c, "letters/footer.txt:3:14", "sig.txt"),
        (&c2, "letters/letter.txt:2:12", "shared/sig.txt"),
    ] {
        for args in EVERY_COMMAND {
            let run = c.run(args);
            refused(&run);
            run.stderr_has(&format!(
                "error: {at}: cannot include `{name}`: it is a symlink that leads out of the letters folder"
            ));
        }
        nothing_sent(c, &server);
    }
}

#[test]
fn issue9_includes_inside_the_letters_folder_still_work() {
    let server = server();
    let c = Campaign::new()
        .smtp_plain(&server)
        .file(
            "letters/letter.txt",
            "Dear {{ target.name }},\n{% include \"parts/sig.txt\" %}\n{% include 'alias.txt' %}\n",
        )
        .file("letters/parts/sig.txt", "Signed, {{ supporter.first_name }}");
    // A symlink that stays inside the folder is fine.
    symlink("parts/sig.txt", c.join("letters/alias.txt")).unwrap();
    c.run(&["check"]).code(0);
    c.run(&["send", "--yes"]).code(0);
    let got = server.received();
    assert_eq!(got.len(), 3);
    for m in &got {
        let text = m.text();
        assert_eq!(text.matches("Signed, ").count(), 2, "{text}");
    }
}

// ---- item 8: one RCPT per mailbox ----

#[test]
fn issue9_envelope_has_one_rcpt_per_mailbox_ignoring_case() {
    let server = server();
    let head = head_with(
        "reply_to = \"{{ supporter.email }}\"\n",
        "reply_to = \"{{ supporter.email }}\"\ncc_supporter = true\n\
         bcc = [\"CEO@CORP.example\", \"Archive@Org.example\", \"ANA@mail.example\", \"archive@org.example\"]\n",
    );
    // The second supporter is the target itself.
    let csv = "email,first_name,last_name,city,note\n\
               ana@mail.example,Ana,López,Tucson,\n\
               CEO@Corp.example,Satya,Nadella,Redmond,\n\
               lee@mail.example,Lee,Park,Seattle,\n";
    let c = Campaign::new()
        .head(&head)
        .smtp_plain(&server)
        .file("supporters.csv", csv);
    c.run(&["send", "--yes"]).code(0);
    let mut got: Vec<(String, Vec<String>)> = server
        .received()
        .iter()
        .map(|m| (m.header("Reply-To").unwrap(), m.rcpt_to.clone()))
        .collect();
    got.sort();
    let want = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (
                "CEO@Corp.example".to_string(),
                want(&["ceo@corp.example", "Archive@Org.example", "ANA@mail.example"])
            ),
            (
                "ana@mail.example".to_string(),
                want(&["ceo@corp.example", "ana@mail.example", "Archive@Org.example"])
            ),
            (
                "lee@mail.example".to_string(),
                want(&[
                    "ceo@corp.example",
                    "lee@mail.example",
                    "Archive@Org.example",
                    "ANA@mail.example"
                ])
            ),
        ]
    );
    // And on the wire: no second RCPT, even a refused one.
    let rcpts = server
        .transcript()
        .iter()
        .filter(|l| l.text.to_ascii_uppercase().starts_with("RCPT TO"))
        .count();
    assert_eq!(rcpts, 3 + 3 + 4);
}

// ---- item 9: a problem no row can escape is a config error ----

/// Runs every command on `c` and asserts a config error at `mailer.toml:LINE`
/// saying `reason`, with nothing sent.
#[track_caller]
fn config_error(c: &Campaign, server: &Server, line: u32, reason: &str) {
    for args in EVERY_COMMAND {
        let run = c.run(args);
        refused(&run);
        run.stderr_has(&format!("error: mailer.toml:{line}: {reason}"))
            .stderr_has("; this holds for every supporter, so no letter could be sent")
            .stderr_has("hint: fix ");
        assert!(
            !run.stdout.contains("supporters.csv:"),
            "the config's problem was blamed on rows:\n{}",
            run.stdout
        );
    }
    nothing_sent(c, server);
}

#[test]
fn issue9_from_address_that_never_parses_is_a_config_error() {
    let server = server();
    for from in [
        "from = \"Test Org <not-an-address>\"",
        // The name depends on the row; the address part does not.
        "from = \"{{ supporter.name }} via Test Org <not-an-address>\"",
    ] {
        let c = Campaign::new()
            .head(&head_with(
                "from = \"{{ supporter.name }} via Test Org <letters@org.example>\"",
                from,
            ))
            .smtp_plain(&server);
        config_error(&c, &server, 9, "the From address `not-an-address` is invalid");
    }
}

#[test]
fn issue9_subject_always_over_the_limit_is_a_config_error() {
    let server = server();
    let long = "x".repeat(260);
    let subject = "subject = \"{{ supporter.first_name }} from {{ supporter.city }}: drop the contract\"";
    for (to, reason) in [
        (
            format!("subject = \"{long}\""),
            "the Subject would be 260 characters long (at most 250)".to_string(),
        ),
        (
            // Only `{{ }}` around the literal text: every row's subject holds it.
            format!("subject = \"{{{{ supporter.first_name }}}}: {long} {{{{- supporter.city }}}}\""),
            "the Subject would be at least 262 characters long (at most 250)".to_string(),
        ),
        (
            "subject = \"Hello\\n{{ supporter.first_name }}, drop the contract\"".to_string(),
            "the Subject would contain a line break".to_string(),
        ),
    ] {
        let c = Campaign::new().head(&head_with(subject, &to)).smtp_plain(&server);
        config_error(&c, &server, 6, &reason);
    }
}

#[test]
fn issue9_header_problems_that_depend_on_the_row_stay_row_skips() {
    let server = server();
    // Reply-To from a column, one value invalid; a subject made long by a
    // note on one row.
    let head = head_with(
        "reply_to = \"{{ supporter.email }}\"",
        "reply_to = \"{{ supporter.alt }}\"",
    )
    .replacen(
        "subject = \"{{ supporter.first_name }} from {{ supporter.city }}: drop the contract\"",
        "subject = \"{{ supporter.first_name }}: {{ supporter.note }}\"",
        1,
    );
    let csv = format!(
        "email,first_name,last_name,city,note,alt\n\
         ana@mail.example,Ana,López,Tucson,,ana.alt@mail.example\n\
         sam@mail.example,Sam,Okafor,Minneapolis,{},sam.alt@mail.example\n\
         lee@mail.example,Lee,Park,Seattle,,not-an-address\n",
        "n".repeat(300)
    );
    let c = Campaign::new()
        .head(&head)
        .smtp_plain(&server)
        .file("supporters.csv", csv);
    // (`check`'s exit code for rows `send` would skip is not this test's business.)
    let run = c.run(&["check"]);
    run.stdout_has("supporters.csv:3: the Subject would be 305 characters long (at most 250)")
        .stdout_has("supporters.csv:4: the Reply-To address `not-an-address` is invalid")
        .stdout_has("1 supporter × 1 target = 1 letter ready; 2 problems");
    assert!(!run.stderr.contains("mailer.toml:"), "{}", run.stderr);
    c.run(&["send", "--yes"]).code(0);
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("Reply-To").as_deref(), Some("ana.alt@mail.example"));
    assert_eq!(
        c.states(),
        vec![("sent".to_string(), 1), ("skipped".to_string(), 2)]
    );

    // A subject over the limit only when a column is empty: an empty probe
    // would call it a config error, but Sam (who has a note) can be sent.
    let server = self::server();
    let c = Campaign::new()
        .head(&head_with(
            "subject = \"{{ supporter.first_name }} from {{ supporter.city }}: drop the contract\"",
            &format!(
                "subject = \"{{% if supporter.note %}}Hello{{% else %}}{}{{% endif %}}\"",
                "y".repeat(260)
            ),
        ))
        .smtp_plain(&server);
    let run = c.run(&["check"]);
    run.stdout_has("supporters.csv:2: the Subject would be 260 characters long")
        .stdout_has("supporters.csv:4: the Subject would be 260 characters long")
        .stdout_has("1 supporter × 1 target = 1 letter ready; 2 problems");
    assert!(!run.stderr.contains("mailer.toml:"), "{}", run.stderr);
    c.run(&["send", "--yes"]).code(0);
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("Subject").as_deref(), Some("Hello"));
}

// ---- item 12: a username without TLS can never log in ----

#[test]
fn issue9_username_with_security_none_is_refused_at_load() {
    let server = server();
    let c = Campaign::new()
        .section(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nusername = \"letters@org.example\"\n",
            server.port()
        ))
        .env("MAILER_SMTP_PASSWORD", SECRET);
    for args in [&["check"][..], &["send", "--yes"], &["send", "--dry-run"]] {
        let run = c.run(args);
        refused(&run);
        run.stderr_has(
            "error: mailer.toml:24: [smtp] username `letters@org.example` with security = \"none\": \
             mailer never sends a password without TLS",
        )
        .stderr_has("hint: remove `username`")
        .stderr_has("security = \"starttls\" or \"tls\"");
    }
    nothing_sent(&c, &server);
}

// ---- item 21: TOML dates render as written ----

#[test]
fn issue9_toml_dates_in_target_keys_render_as_written() {
    let server = server();
    let head = head_with(
        "title = \"CEO\"\n",
        "title = \"CEO\"\nsince = 2018-06-01\nmet = 1979-05-27T07:32:00Z\nat = 07:32:00\n\
         terms = [2018-06-01, 2019-01-02]\nboard = { joined = 2014-02-04, until = 2026-01-01T09:00:00 }\n",
    );
    let c = Campaign::new().head(&head).smtp_plain(&server).file(
        "letters/letter.txt",
        "CEO since {{ target.since }}\nmet {{ target.met }} at {{ target.at }}\n\
             terms {% for t in target.terms %}{{ t }};{% endfor %}\n\
             joined {{ target.board.joined }} until {{ target.board.until }}\n",
    );
    // Short lines: the delivered text stays 7-bit, not quoted-printable.
    let want = "CEO since 2018-06-01\r\nmet 1979-05-27T07:32:00Z at 07:32:00\r\n\
                terms 2018-06-01;2019-01-02;\r\njoined 2014-02-04 until 2026-01-01T09:00:00";
    let run = c.run(&["preview"]);
    run.code(0).stdout_has(&want.replace("\r\n", "\n"));
    assert!(!run.stdout.contains("toml_private"), "{}", run.stdout);
    c.run(&["send", "--yes"]).code(0);
    let got = server.received();
    assert_eq!(got.len(), 3);
    for m in &got {
        assert!(m.text().contains(want), "{}", m.text());
    }
}
