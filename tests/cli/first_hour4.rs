//! Issue 15, "the first hour", part four: the password is asked for at a
//! terminal by `send --test` and `check --smtp` too, `daily_limit` is shared
//! by every campaign in the folder sent through one relay account, letters
//! held by `mailer skip` are counted, and routed campaigns' question says
//! how many targets the letters really go to.

use std::time::Duration;

use base64::Engine as _;

use crate::support::campaign::Campaign;
use crate::support::pty::Term;
use crate::support::relays::starttls_auth_campaign;
use crate::support::smtp::{Security, Server, ServerOptions};

// ---------------------------------------------------------------- item 4: the password, asked for

const USER: &str = "letters@org.example";
const PASSWORD: &str = "Tr0ub4dor&3-horse-Battery";

/// Runs `args` at a terminal, types [`PASSWORD`] at the prompt (checking
/// that echo is off), and returns the exit code and the whole screen.
fn typed_password(c: &Campaign, args: &[&str]) -> (i32, String) {
    let mut t = Term::spawn_ctty(&c.command(args));
    t.expect("(not stored): ");
    t.expect_no_echo();
    t.keys("(not stored): ", PASSWORD);
    let (code, text) = t.finish();
    assert!(
        text.contains(&format!("SMTP password for {USER} at 127.0.0.1")),
        "--- terminal\n{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password was shown\n--- terminal\n{text}"
    );
    (code, text)
}

/// Every AUTH line the server got carries [`PASSWORD`], over TLS.
fn authenticated_with_the_typed_password(server: &Server) {
    assert!(server.wait_idle(Duration::from_secs(10)));
    let plain = base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("\0{USER}\0{PASSWORD}"));
    let auth: Vec<_> = server
        .transcript()
        .into_iter()
        .filter(|l| l.text.to_ascii_uppercase().starts_with("AUTH"))
        .collect();
    assert!(
        !auth.is_empty() && auth.iter().all(|l| l.tls && l.text.contains(&plain)),
        "{auth:?}"
    );
}

#[test]
fn issue15_send_test_asks_for_the_password_at_a_terminal() {
    let (server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    let (code, text) = typed_password(&c, &["send", "--test", "me@mail.example"]);
    assert_eq!(code, 0, "--- terminal\n{text}");
    assert!(text.contains("accepted"), "--- terminal\n{text}");
    authenticated_with_the_typed_password(&server);
    assert_eq!(server.received().len(), 1);
    assert!(!c.ledger().exists(), "send --test wrote a ledger");
}

#[test]
fn issue15_check_smtp_asks_for_the_password_at_a_terminal() {
    let (server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    let (code, text) = typed_password(&c, &["check", "--smtp"]);
    assert_eq!(code, 0, "--- terminal\n{text}");
    assert!(
        text.contains(&format!("authenticated as {USER}")),
        "--- terminal\n{text}"
    );
    authenticated_with_the_typed_password(&server);
}

#[test]
fn issue15_without_a_terminal_send_test_and_check_smtp_still_name_the_missing_variable() {
    let (server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    for args in [&["send", "--test", "me@mail.example"][..], &["check", "--smtp"]] {
        let r = c.run(args);
        r.code(1).stderr_has("MAILER_SMTP_PASSWORD");
        assert!(!r.stderr.contains("not stored"), "{args:?} asked\n{}", r.stderr);
    }
    assert!(server.received().is_empty());
}

// ---------------------------------------------------------------- item 10: letters held by `mailer skip` are counted

#[test]
fn issue15_the_dry_run_and_the_summary_count_letters_held_by_skip() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&[
        "skip",
        "--supporter",
        "sam@mail.example",
        "--reason",
        "asked us to wait",
    ])
    .code(0);
    let held = "1 letter held by `mailer skip` (`mailer requeue --supporter EMAIL` puts it back)";
    c.run(&["send", "--dry-run"]).code(0).stdout_has(held);
    c.run(&["send", "--yes"]).code(0).stderr_has(held);
    assert_eq!(server.received().len(), 2);
    // Nothing due any more: the held letter is still named.
    c.run(&["send", "--yes"]).code(0).stderr_has(held);
}

// ---------------------------------------------------------------- issue 10: the question of a routed campaign

/// Supporters routed by `state` to regional offices: Ana and Kim (CA) write
/// to two offices each, Sam (NY) to one, Lee (TX) to none: 5 letters from
/// 3 supporters to 3 targets.
fn routed_campaign(server: &Server) -> Campaign {
    let head = Campaign::new().config_text().replace(
        "[[targets]]\nname = \"Satya Nadella\"\nemail = \"ceo@corp.example\"\ntitle = \"CEO\"\n",
        "",
    ) + "\n[routing]\ntargets = \"targets.csv\"\nmatch = [\"state\"]\n";
    Campaign::new()
        .head(&head)
        .file(
            "targets.csv",
            "name,email,state\nRep One,one@gov.example,CA\nRep Two,two@gov.example,CA\n\
             Rep Three,three@gov.example,NY\n",
        )
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,state\n\
             ana@mail.example,Ana,López,Tucson,CA\n\
             sam@mail.example,Sam,Okafor,Minneapolis,NY\n\
             lee@mail.example,Lee,Park,Seattle,TX\n\
             kim@mail.example,Kim,Ng,Boise,ca\n",
        )
        .smtp_plain(server)
}

/// The `[y/N]` question `send ARGS` asks at a terminal (answered `n`).
fn question(c: &Campaign, args: &[&str]) -> String {
    let mut t = Term::spawn(c.command(args));
    t.expect("[y/N] ");
    let shown = t.text();
    t.keys("[y/N] ", "n");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "--- terminal\n{text}");
    let at = shown.rfind("About to send").expect("the question");
    shown[at..].lines().next().unwrap().to_string()
}

#[test]
fn issue10_a_routed_campaigns_question_counts_who_writes_to_whom() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = routed_campaign(&server);
    let q = question(&c, &["send"]);
    assert!(
        q.starts_with("About to send 5 letters from 3 supporters to 3 targets via 127.0.0.1:"),
        "{q}"
    );
    assert!(!q.contains('×'), "{q}");
    let q = question(&c, &["send", "--limit", "2"]);
    assert!(
        q.starts_with("About to send 2 letters (of 5 letters due from 3 supporters to 3 targets) via"),
        "{q}"
    );
    assert!(server.received().is_empty(), "a letter went after `n`");
    // `status` says the same, without a product.
    let r = c.run(&["status"]);
    r.code(0)
        .stdout_has("for 3 supporters in supporters.csv, to 3 targets");
    assert!(!r.stdout.contains('×'), "{}", r.stdout);
}

#[test]
fn issue10_an_unrouted_campaigns_question_keeps_its_product() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    let q = question(&c, &["send"]);
    assert!(
        q.starts_with("About to send 3 letters (3 supporters × 1 target) via 127.0.0.1:"),
        "{q}"
    );
}

// ---------------------------------------------------------------- item 8: daily_limit is the relay account's

/// Writes `NAME.toml` beside `c`'s config: `c`'s config with campaign id
/// `id`, its letters to `target`, and AUTH as `user`; returns `-c NAME.toml`.
fn sibling(c: &Campaign, name: &str, id: &str, target: &str, user: &str) -> [String; 2] {
    let text = c
        .config_text()
        .replace("id = \"test-campaign\"", &format!("id = \"{id}\""))
        .replace("ceo@corp.example", target)
        .replace(
            &format!("username = \"{USER}\""),
            &format!("username = \"{user}\""),
        );
    let file = format!("{name}.toml");
    std::fs::write(c.join(&file), text).unwrap();
    ["-c".to_string(), file]
}

fn with<'a>(config: &'a [String; 2], args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![config[0].as_str(), config[1].as_str()];
    all.extend_from_slice(args);
    all
}

#[test]
fn issue15_daily_limit_counts_every_campaign_in_the_folder_sent_through_the_same_account() {
    let (server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    let c = c
        .section("[delivery]\ndaily_limit = 3\n")
        .env("MAILER_SMTP_PASSWORD", PASSWORD);
    // The first campaign sends 2 of its 3 letters.
    c.run(&["send", "--yes", "--limit", "2"]).code(0);
    assert_eq!(server.received().len(), 2);
    // Each attempt names the relay account, never the password.
    let account = format!("127.0.0.1:{} {USER}", server.port());
    let relays = crate::support::campaign::query(&c, "SELECT DISTINCT relay FROM attempts");
    assert_eq!(relays, vec![vec![account.clone()]]);

    // The second (another id, another target, the same relay and user)
    // has 1 left, and says why.
    let second = sibling(&c, "second", "second-campaign", "cfo@corp.example", USER);
    let shared = format!(
        "daily_limit 3 is shared with campaign `test-campaign` (2 letters) through the same relay \
         account `{account}`: 2 of 3 used in the last 24 h"
    );
    c.run(&with(&second, &["send", "--dry-run"]))
        .code(0)
        .stdout_has("This run would send at most 1 ")
        .stderr_has(&shared);
    let r = c.run(&with(&second, &["send", "--yes"]));
    r.code(0).stderr_has(&shared).stdout_has("sent 1 ");
    assert_eq!(server.received().len(), 3);

    // The first one now finds the account's day used up by both.
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("This run would send at most 0 ")
        .stderr_has("shared with campaign `second-campaign` (1 letter)");
    c.run(&["send", "--yes"])
        .code(0)
        .stderr_has("daily_limit 3/3 (shared with `second-campaign`)");
    assert_eq!(server.received().len(), 3);

    // A third, through another account of the same relay, is not held.
    let third = sibling(
        &c,
        "third",
        "third-campaign",
        "cto@corp.example",
        "other@org.example",
    );
    let r = c.run(&with(&third, &["send", "--dry-run"]));
    r.code(0).stdout_has("This run would send at most 3 ");
    assert!(!r.stderr.contains("shared"), "{}", r.stderr);

    c.assert_never_stored(PASSWORD);
}

#[test]
fn issue15_a_ledger_beside_that_cannot_be_read_is_named_and_not_counted() {
    let (_server, c) = starttls_auth_campaign(USER, PASSWORD, "");
    let c = c.section("[delivery]\ndaily_limit = 3\n").file(
        ".mailer/broken.sqlite3",
        "this is no SQLite database, just text\n".repeat(200),
    );
    let r = c.run(&["send", "--dry-run"]);
    r.code(0)
        .stdout_has("This run would send at most 3 ")
        .stderr_has("broken.sqlite3")
        .stderr_has("its letters are not counted against daily_limit");
}
