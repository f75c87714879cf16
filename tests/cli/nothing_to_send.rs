//! A supporters file whose every row is skipped (invalid, repeated, or
//! matching no target) leaves the campaign nothing to send: that is a
//! config or file mistake (a wrong `email_column`, `delimiter` or `match`),
//! so `check` and `send` fail with exit 1 and say so, instead of a quiet
//! "0 letters" that cron would repeat every hour.

use crate::support::campaign::Campaign;
use crate::support::smtp::{Security, Server, ServerOptions};

const ALL_INVALID: &str = "email,first_name,last_name,city,note\n\
                           not-an-email,Bo,Lee,Oslo,\n\
                           also bad,Zo,Chen,Kyiv,\n";

#[test]
fn check_fails_when_every_row_is_invalid_and_names_the_file_and_the_likely_mistake() {
    let c = Campaign::new().file("supporters.csv", ALL_INVALID);
    for args in [&["check"][..], &["check", "--strict"][..]] {
        c.run(args)
            .code(1)
            .stdout_has("supporters.csv:2: invalid email `not-an-email`")
            .stdout_has(
                "`supporters.csv`: none of its 2 rows gives a letter (2 invalid): there is nothing to send",
            )
            .stdout_has("0 letters ready; 3 problems")
            .stderr_has("hint: the rows are listed above")
            .stderr_has("`email_column`, `delimiter` or `match`");
    }
}

#[test]
fn send_refuses_a_file_whose_every_row_is_skipped_and_sends_nothing() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .file("supporters.csv", ALL_INVALID)
        .smtp_plain(&server);
    c.run(&["send", "--dry-run"])
        .code(1)
        .stderr_has("error: `supporters.csv`: none of its 2 rows gives a letter (2 invalid)");
    c.run(&["send", "--yes"])
        .code(1)
        .stderr_has("none of its 2 rows gives a letter");
    c.run(&["-q", "send", "--yes"])
        .code(1)
        .stderr_has("none of its 2 rows gives a letter");
    assert!(server.received().is_empty(), "nothing reaches the relay");
}

#[test]
fn every_supporter_matching_no_target_is_nothing_to_send_too() {
    // The one target takes shareholders only; nobody in the file is one.
    let base = Campaign::new().config_text();
    let head = base.replace(
        "[[targets]]\nname = \"Satya Nadella\"\nemail = \"ceo@corp.example\"\ntitle = \"CEO\"\n",
        "[[targets]]\nname = \"Amy Hood\"\nemail = \"cfo@corp.example\"\nmatch = { shareholder = [\"yes\"] }\n",
    );
    assert_ne!(head, base, "the default target was replaced");
    let c = Campaign::new().head(&head).file(
        "supporters.csv",
        "email,first_name,last_name,city,note,shareholder\n\
         ana@mail.example,Ana,López,Tucson,,no\n\
         sam@mail.example,Sam,Okafor,Lagos,,\n",
    );
    c.run(&["check"])
        .code(1)
        .stdout_has("none of its 2 rows gives a letter (2 matching no target)");
    c.run(&["send", "--dry-run"])
        .code(1)
        .stderr_has("none of its 2 rows gives a letter (2 matching no target)");
}

#[test]
fn one_valid_row_or_no_rows_at_all_is_no_such_error() {
    let c = Campaign::new().file(
        "supporters.csv",
        format!("{ALL_INVALID}ana@mail.example,Ana,López,Tucson,\n"),
    );
    c.run(&["check"])
        .code(0)
        .stdout_has("1 supporter × 1 target = 1 letter ready; 2 problems");
    assert!(!c.run(&["check"]).stdout.contains("gives a letter"));
    // A campaign nobody signed yet (cron before the first signup) is fine.
    let c = Campaign::new().file("supporters.csv", "email,first_name,last_name,city,note\n");
    c.run(&["check"]).code(0);
    c.run(&["send", "--dry-run"]).code(0);
}
