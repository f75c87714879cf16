//! Issue 9, the file-system edges: the run lock held on the ledger itself
//! (item 5), a `password_command` that leaves a child behind (17), ledgers on
//! read-only or broken files (18), and private, symlink-safe output files and
//! closed pipes (20).
//!
//! Real binary, real files, real pipes, the scripted SMTP server.

use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step, TestPki};
use crate::support::wait::{idle, pause, wait_for, wait_until};

// ---------------------------------------------------------------- helpers

/// `n` valid supporters, `s0001@mail.example` …
fn supporters(n: usize) -> String {
    let mut csv = String::from("email,first_name,last_name,city,note\n");
    for i in 1..=n {
        let _ = writeln!(csv, "s{i:04}@mail.example,First{i},Last{i},City{i},");
    }
    csv
}

/// How often each Message-ID reached the server.
fn copies(server: &Server) -> std::collections::HashMap<String, usize> {
    let mut n = std::collections::HashMap::new();
    for m in server.received().iter().chain(&server.dropped_after_dot()) {
        *n.entry(m.message_id().unwrap()).or_insert(0) += 1;
    }
    n
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------- item 5: the run lock

/// Issue 9 item 5: the old lock lived in a side file that anyone could delete;
/// a second run then started alongside, resent letters and turned the first
/// run's in-flight letters `unknown`. The lock is now held on the ledger.
#[test]
fn issue9_deleting_the_lock_file_mid_run_does_not_let_a_second_run_in() {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|step| {
        if matches!(step, Step::Dot { .. }) {
            pause(Duration::from_millis(60));
        }
        Action::Default
    }));
    let c = Campaign::new()
        .smtp_plain(&server)
        .section("[delivery]\nretries = 1\n")
        .file("supporters.csv", supporters(20));
    let mut first = c.spawn(&["send", "--yes"]);
    assert!(wait_until(Duration::from_secs(10), || server.dots_seen() > 0));
    // Whatever side files mailer keeps next to its ledger, remove the lock.
    let lock = c.join(".mailer/test-campaign.sqlite3.lock");
    if lock.exists() {
        std::fs::remove_file(&lock).unwrap();
    }
    let second = c.run(&["send", "--yes"]);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run should still be going: make the server slower"
    );
    second.code(75).stderr_has("another run holds the ledger");
    // The second run touched nothing: no letter of the live run became `unknown`.
    assert!(
        !c.states().iter().any(|(s, _)| s == "unknown"),
        "{:?}",
        c.states()
    );
    wait_for(first, Duration::from_secs(30))
        .code(0)
        .stdout_has("sent 20");
    idle(&server);
    let got = copies(&server);
    assert_eq!(got.len(), 20, "{got:?}");
    assert!(got.values().all(|&n| n == 1), "{got:?}");
    assert_eq!(c.states(), vec![("sent".to_string(), 20)]);
}

// ---------------------------------------------------------------- item 17: password_command

/// Issue 9 item 17: a command that backgrounds a child kept the stdout pipe
/// open, and reading to EOF outlived the timeout (45 s here). The first line
/// is the password; mailer no longer waits for the pipe to close.
#[test]
fn issue9_a_password_command_that_leaves_a_child_running_returns_promptly() {
    const USER: &str = "letters@org.example";
    const PASSWORD: &str = "pw-from-command";
    let pki = TestPki::new();
    let server = Server::start(
        ServerOptions::new(Security::StartTls)
            .with_auth(USER, PASSWORD)
            .with_pki(&pki),
    );
    let c = Campaign::new().file("ca.pem", pki.ca_pem()).section(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"starttls\"\nusername = \"{USER}\"\n\
         ca_file = \"ca.pem\"\ntimeout_secs = 5\npassword_command = \"echo {PASSWORD}; sleep 45 &\"\n",
        server.port()
    ));
    let run = wait_for(c.spawn(&["send", "--yes"]), Duration::from_secs(15));
    run.code(0).stdout_has("sent 3");
    idle(&server);
    assert_eq!(server.received().len(), 3);
}

// ---------------------------------------------------------------- item 18: ledgers that cannot be read as usual

/// Mounts "$1" read-only over itself, then runs the rest of the arguments
/// in it (`cd` again: the old working directory is the writable mount below).
const READ_ONLY: &str = "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && cd \"$1\" \
                         && shift && exec \"$@\"";

/// Runs `mailer ARGS` with the campaign folder bind-mounted read-only in a
/// private mount namespace (`unshare -m`: the mount vanishes with the
/// process). `None` where this machine cannot do that (no root, no
/// `unshare`): then there is no read-only file system to test against.
fn run_read_only(c: &Campaign, args: &[&str]) -> Option<Run> {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", READ_ONLY, "sh"])
        .arg(c.path())
        .args(["sh", "-c", "! touch \"$0/.probe\" 2>/dev/null"])
        .arg(c.path())
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: this machine cannot bind-mount a folder read-only (needs root and `unshare -m`)");
        return None;
    }
    let mailer = c.command(args);
    let mut cmd = Command::new("unshare");
    cmd.env_clear().current_dir(c.path()).stdin(Stdio::null());
    for (k, v) in mailer.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.args(["-m", "sh", "-c", READ_ONLY, "sh"])
        .arg(c.path())
        .arg(mailer.get_program())
        .args(mailer.get_args());
    Some(Run::from(cmd.output().unwrap()))
}

/// Issue 9 item 18: on a read-only file system a healthy WAL ledger (no `-shm`
/// beside it) was called "not a mailer ledger"; the read-only commands now
/// read it.
#[test]
fn issue9_read_only_commands_read_a_ledger_on_a_read_only_folder() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    idle(&server);
    let Some(status) = run_read_only(&c, &["status", "--json"]) else {
        return;
    };
    status.code(0).stdout_has("\"sent\":3");
    let export = run_read_only(&c, &["export"]).unwrap();
    export.code(0);
    assert_eq!(export.stdout.matches(",sent,").count(), 3, "{}", export.stdout);
    run_read_only(&c, &["send", "--dry-run"]).unwrap().code(0);
    // A send cannot run there, and says why.
    let send = run_read_only(&c, &["send", "--yes"]).unwrap();
    assert_ne!(send.code, 0);
    send.stderr_has("read-only");
    assert!(!send.stderr.contains("not a mailer ledger"), "{}", send.stderr);

    // Changes not yet merged from the `-wal` file (a run that was killed):
    // kept open here, the `-wal` and `-shm` files stay beside the ledger.
    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0; UPDATE letters SET state = 'failed' WHERE line = 2")
        .unwrap();
    run_read_only(&c, &["status", "--json"])
        .unwrap()
        .code(0)
        .stdout_has("\"sent\":2,")
        .stdout_has("\"failed\":1,");
    // Without its `-shm` file those changes cannot be read there: say so.
    std::fs::remove_file(c.join(".mailer/test-campaign.sqlite3-shm")).unwrap();
    let status = run_read_only(&c, &["status"]).unwrap();
    status
        .code(1)
        .stderr_has("its folder seems to be read-only")
        .stderr_has("test-campaign.sqlite3-wal");
    drop(conn);
}

/// Issue 9 item 18: a zero-length ledger (a truncated copy, `> file`) used
/// to be a fresh start for `send`: every letter again. It is named instead.
#[test]
fn issue9_a_zero_length_ledger_is_named_not_a_fresh_start() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new()
        .smtp_plain(&server)
        .file(".mailer/test-campaign.sqlite3", "");
    c.run(&["send", "--yes"])
        .code(1)
        .stderr_has("error: ledger `")
        .stderr_has("is empty");
    idle(&server);
    assert!(server.received().is_empty());
    assert_eq!(std::fs::metadata(c.ledger()).unwrap().len(), 0, "left as found");
    for args in [&["status"][..], &["export"], &["send", "--dry-run"]] {
        let run = c.run(args);
        run.code(1).stderr_has("is empty");
        assert!(
            !run.stderr.contains("not a mailer ledger"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// Issue 9 item 18: not every open error is "not a mailer ledger". A
/// folder where the ledger should be is named as one; a file of another
/// kind is not a mailer ledger, and says what it is.
#[test]
fn issue9_ledger_open_errors_say_what_is_wrong() {
    let c = Campaign::new().file(".mailer/test-campaign.sqlite3/keep", "");
    for args in [&["status"][..], &["send", "--dry-run"]] {
        let run = c.run(args);
        run.code(1)
            .stderr_has("error: ledger `.mailer/test-campaign.sqlite3` is a folder");
        assert!(!run.stderr.contains("not a mailer ledger"), "{}", run.stderr);
    }

    let c = Campaign::new().file(
        ".mailer/test-campaign.sqlite3",
        "just some text, not a database\n".repeat(40),
    );
    c.run(&["status"])
        .code(1)
        .stderr_has("is not a mailer ledger")
        .stderr_has("not a database");
}

// ---------------------------------------------------------------- item 20: output files and pipes

/// Issue 9 item 20: `export --out` wrote every supporter's address with mode
/// 0644 (and kept a looser mode on a file it overwrote).
#[test]
fn issue9_export_out_is_private() {
    let c = Campaign::new();
    c.run(&["export", "--out", "letters.csv"]).code(0);
    assert_eq!(mode_of(&c.join("letters.csv")), 0o600);
    assert!(
        std::fs::read_to_string(c.join("letters.csv"))
            .unwrap()
            .contains("ana@mail.example")
    );
    std::fs::set_permissions(c.join("letters.csv"), std::fs::Permissions::from_mode(0o644)).unwrap();
    c.run(&["export", "--out", "letters.csv"]).code(0);
    assert_eq!(mode_of(&c.join("letters.csv")), 0o600);
}

/// Issue 9 item 20: `export --out` and `preview --out` followed a planted
/// symlink and overwrote its target.
#[test]
fn issue9_output_files_are_never_written_through_a_symlink() {
    let c = Campaign::new().file("victim.txt", "precious\n");
    std::os::unix::fs::symlink(c.join("victim.txt"), c.join("letters.csv")).unwrap();
    c.run(&["export", "--out", "letters.csv"])
        .code(1)
        .stderr_has("error: `letters.csv` is a symbolic link");
    assert_eq!(
        std::fs::read_to_string(c.join("victim.txt")).unwrap(),
        "precious\n"
    );

    c.run(&["preview", "--out", "previews"]).code(0);
    let first = std::fs::read_dir(c.join("previews"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    assert_eq!(mode_of(&first), 0o600);
    // A rerun overwrites its own previews (a regular file, whatever its mode) …
    std::fs::write(&first, "stale\n").unwrap();
    std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.run(&["preview", "--out", "previews"]).code(0);
    assert!(std::fs::read_to_string(&first).unwrap().contains("Message-ID: <"));
    assert_eq!(mode_of(&first), 0o600);
    // … but never the target of a symlink planted in their place.
    std::fs::remove_file(&first).unwrap();
    std::os::unix::fs::symlink(c.join("victim.txt"), &first).unwrap();
    let name = first.file_name().unwrap().to_str().unwrap().to_string();
    c.run(&["preview", "--out", "previews"])
        .code(1)
        .stderr_has(&name)
        .stderr_has("is a symbolic link");
    assert_eq!(
        std::fs::read_to_string(c.join("victim.txt")).unwrap(),
        "precious\n"
    );
}

/// Issue 9 item 20: `mailer export | head` printed `error: Broken pipe` and
/// exited 1. A reader that stops reading is not an error.
#[test]
fn issue9_export_into_a_pipe_closed_early_ends_quietly() {
    let c = Campaign::new().file("supporters.csv", supporters(3000));
    let mut child = c.spawn(&["export"]);
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 64];
    stdout.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"supporter,target,state"));
    drop(stdout);
    let run = wait_for(child, Duration::from_secs(30));
    run.code(0);
    assert_eq!(run.stderr, "", "nothing on stderr");
}
