//! A header template with `one_of`: every choice is checked when the config
//! loads, so a bad one is a config error (exit 1) whatever its place in the
//! list, and never "holds for every supporter" when it does not.

use std::fmt::Write as _;

use crate::support::campaign::Campaign;

/// The default campaign with `reply_to` choosing among `options` and 20
/// supporters (enough that every choice is drawn).
fn campaign(options: &str) -> Campaign {
    let mut rows = String::from("email,first_name,last_name,city,note\n");
    for i in 0..20 {
        let _ = writeln!(rows, "s{i}@mail.example,S{i},Lee,Oslo,");
    }
    let base = Campaign::new().config_text();
    let head = base.replace(
        "reply_to = \"{{ supporter.email }}\"",
        &format!("reply_to = \"{{{{ one_of(options=[{options}]) }}}}\""),
    );
    assert_ne!(head, base, "reply_to was replaced");
    Campaign::new().head(&head).file("supporters.csv", rows)
}

#[test]
fn a_bad_one_of_choice_in_a_header_is_a_config_error_in_any_place() {
    for options in [
        "'a@org.example', 'not an address'",
        "'not an address', 'a@org.example'",
        "'a@org.example', 'b@org.example', 'c@org.example', 'not an address'",
    ] {
        let c = campaign(options);
        for args in [&["check"][..], &["send", "--dry-run"][..]] {
            let r = c.run(args);
            r.code(1)
                .stderr_has("the Reply-To address `not an address` is invalid")
                .stderr_has("it is one of the template's `one_of` choices")
                .stderr_has("hint: fix [sender] reply_to");
            assert!(
                !r.stderr.contains("holds for every supporter"),
                "{options}: {r:?}"
            );
        }
    }
}

#[test]
fn good_one_of_choices_in_a_header_pass_and_are_all_used() {
    let c = campaign("'a@org.example', 'b@org.example'");
    c.run(&["check"])
        .code(0)
        .stdout_has("20 supporters × 1 target = 20 letters ready; 0 problems");
    let p = c.run(&["preview", "--all"]);
    p.code(0)
        .stdout_has("Reply-To: a@org.example")
        .stdout_has("Reply-To: b@org.example");
}
