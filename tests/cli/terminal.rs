//! What a person sees: the prompt, the progress bar and the summary table at a
//! terminal (a real pseudo-terminal), and their absence on pipes and under cron;
//! colour, `-q`, `init`'s questions, help, completions, the man page, and errors
//! that say what to type next.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use crate::support::campaign::{Campaign, Run};
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step};

/// How long any terminal interaction may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// A pseudo-terminal pair: the master (our side) and the slave (the child's).
fn open_pty() -> (OwnedFd, OwnedFd) {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .expect("open /dev/ptmx");
    rustix::pty::grantpt(&master).expect("grantpt");
    rustix::pty::unlockpt(&master).expect("unlockpt");
    let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open the pty slave");
    let size = rustix::termios::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, size).expect("set the window size");
    (master, slave)
}

/// Which of the child's streams are the terminal; the others are pipes
/// (stdin: /dev/null).
#[derive(Clone, Copy)]
struct Wiring {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

/// Everything on the terminal.
const ALL_TTY: Wiring = Wiring {
    stdin: true,
    stdout: true,
    stderr: true,
};

/// `mailer` running with some of its streams on a pseudo-terminal.
struct Term {
    child: Child,
    master: File,
    chunks: Receiver<Vec<u8>>,
    /// Every byte the terminal showed so far (stdout/stderr on the tty, and the echo).
    seen: Vec<u8>,
    stdout: Option<ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
}

/// How a terminal session ended.
struct Screen {
    code: i32,
    /// The terminal's bytes, lossy UTF-8, `\r\n` turned into `\n`.
    text: String,
    /// stdout when it was a pipe.
    stdout: String,
    /// stderr when it was a pipe.
    stderr: String,
}

impl Term {
    /// Runs `cmd` (from `Campaign::command`) at a terminal that looks like a
    /// real one: `TERM=xterm-256color`, 120×40.
    fn spawn(mut cmd: Command, wiring: Wiring) -> Term {
        let (master, slave) = open_pty();
        let tty = || Stdio::from(slave.try_clone().expect("dup the pty slave"));
        cmd.env("TERM", "xterm-256color");
        cmd.stdin(if wiring.stdin { tty() } else { Stdio::null() });
        cmd.stdout(if wiring.stdout { tty() } else { Stdio::piped() });
        cmd.stderr(if wiring.stderr { tty() } else { Stdio::piped() });
        let mut child = cmd.spawn().expect("spawn mailer on a pty");
        // Only the child may hold the slave now, so the master sees EOF/EIO when it exits.
        drop(cmd);
        drop(slave);
        let mut reader = File::from(master.try_clone().expect("dup the pty master"));
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Linux answers EIO once the last slave is closed: the end either way.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Term {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            master: File::from(master),
            chunks,
            seen: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).replace("\r\n", "\n")
    }

    /// Waits until the terminal shows `needle`.
    #[track_caller]
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.text().contains(needle) {
            match self
                .chunks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "the terminal never showed {needle:?}\n--- terminal\n{}",
                        self.text()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "mailer ended without showing {needle:?}\n--- terminal\n{}",
                        self.text()
                    );
                }
            }
        }
    }

    /// Types `keys` (use `\r` for Enter).
    fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type on the pty");
        self.master.flush().expect("flush the pty");
    }

    /// Waits for mailer to exit; everything it showed.
    #[track_caller]
    fn finish(mut self) -> Screen {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .chunks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "mailer did not exit (waiting for input?)\n--- terminal\n{}",
                        self.text()
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for mailer");
        let mut stdout = String::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_string(&mut stdout).expect("read stdout");
        }
        let mut stderr = String::new();
        if let Some(mut s) = self.stderr.take() {
            s.read_to_string(&mut stderr).expect("read stderr");
        }
        Screen {
            code: status.code().unwrap_or(-1),
            text: self.text(),
            stdout,
            stderr,
        }
    }
}

impl Screen {
    #[track_caller]
    fn code(&self, expected: i32) -> &Screen {
        assert_eq!(
            self.code, expected,
            "exit code\n--- terminal\n{}\n--- stdout\n{}\n--- stderr\n{}",
            self.text, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn shows(&self, needle: &str) -> &Screen {
        assert!(
            self.text.contains(needle),
            "the terminal lacks {needle:?}\n--- terminal\n{}",
            self.text
        );
        self
    }

    #[track_caller]
    fn lacks(&self, needle: &str) -> &Screen {
        assert!(
            !self.text.contains(needle),
            "the terminal shows {needle:?}\n--- terminal\n{}",
            self.text
        );
        self
    }
}

/// Whether `text` holds an SGR (colour/style) escape sequence, `ESC [ digits;… m`.
fn has_sgr(text: &str) -> bool {
    text.match_indices("\x1b[").any(|(i, _)| {
        let rest = &text[i + 2..];
        let params = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        rest.as_bytes().get(params) == Some(&b'm')
    })
}

/// Lines of `text` that report a letter (`supporter → target: …`).
fn letter_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains(" → ")).collect()
}

/// A plain server, and a campaign of 3 supporters × 1 target pointed at it.
fn campaign() -> (Server, Campaign) {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    (server, c)
}

/// A plain server that answers the second message's final dot with a 554.
fn campaign_with_one_rejection() -> (Server, Campaign) {
    let server = Server::start(ServerOptions::new(Security::Plain).with_script(|s| match s {
        Step::Dot { nth: 2, .. } => Action::reply("554 5.7.1 Message refused by policy"),
        _ => Action::Default,
    }));
    let c = Campaign::new().smtp_plain(&server);
    (server, c)
}

fn prompt(server: &Server) -> String {
    format!(
        "About to send 3 letters (3 supporters × 1 target) via 127.0.0.1:{} (no TLS) — continue? [y/N]",
        server.port()
    )
}

/// The terminal summary table's rows, in order.
const TABLE_ROWS: [&str; 6] = ["sent", "deferred", "failed", "unknown", "skipped", "elapsed"];

/// Asserts the summary table is there with these counts (sent, deferred, failed, unknown, skipped).
#[track_caller]
fn assert_table(text: &str, counts: [u64; 5]) {
    let mut from = 0;
    for (i, row) in TABLE_ROWS.iter().enumerate() {
        let found = text[from..]
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{row} ")))
            .unwrap_or_else(|| panic!("no `{row}` row after the earlier ones\n--- terminal\n{text}"));
        let line = text[from..].lines().nth(found).unwrap();
        if let Some(n) = counts.get(i) {
            let value = line.split_whitespace().nth(1).unwrap_or("");
            assert_eq!(value, n.to_string(), "row `{row}`\n--- terminal\n{text}");
        }
        from += text[from..].find(line).unwrap() + line.len();
    }
}

// ---------------------------------------------------------------------------
// 1. `send` at a terminal

#[test]
fn send_at_a_terminal_answering_n_sends_nothing() {
    let (server, c) = campaign();
    let mut t = Term::spawn(c.command(&["send"]), ALL_TTY);
    t.expect(&prompt(&server));
    t.send("n\r");
    let s = t.finish();
    s.code(0).shows("Nothing sent").lacks("letters ·");
    assert!(server.wait_idle(Duration::from_secs(5)));
    assert!(server.received().is_empty(), "the server received a letter");
    assert_eq!(server.dots_seen(), 0, "a message was handed over");
    if c.ledger().exists() {
        let states = c.states();
        assert!(
            states.iter().all(|(state, _)| state == "pending"),
            "the ledger records more than pending letters: {states:?}"
        );
    }
    for row in TABLE_ROWS {
        assert!(
            !s.text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{row} "))),
            "a summary after answering n\n--- terminal\n{}",
            s.text
        );
    }
}

#[test]
fn send_at_a_terminal_answering_y_shows_the_bar_and_the_table() {
    let (server, c) = campaign();
    let mut t = Term::spawn(c.command(&["send"]), ALL_TTY);
    t.expect(&prompt(&server));
    t.send("y\r");
    let s = t.finish();
    s.code(0).shows("letters ·").shows("/3 letters");
    assert_table(&s.text, [3, 0, 0, 0, 0]);
    assert!(s.text.contains("letters/s"), "no rate in the table\n{}", s.text);
    assert_eq!(server.received().len(), 3);
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    // NO_COLOR is set by the harness: bar and table carry no colour.
    assert!(!has_sgr(&s.text), "colour despite NO_COLOR\n{:?}", s.text);
}

#[test]
fn send_at_a_terminal_with_a_rejection_reports_it_and_names_the_next_command() {
    let (server, c) = campaign_with_one_rejection();
    let mut t = Term::spawn(c.command(&["send"]), ALL_TTY);
    t.expect(&prompt(&server));
    t.send("y\r");
    let s = t.finish();
    s.code(3)
        .shows(" → ceo@corp.example: failed: 554 5.7.1 Message refused by policy")
        .shows("mailer send --retry-failed");
    assert_table(&s.text, [2, 0, 1, 0, 0]);
    assert_eq!(server.received().len(), 2);
}

#[test]
fn send_at_a_terminal_with_yes_or_nothing_due_does_not_ask() {
    let (server, c) = campaign();
    let s = Term::spawn(c.command(&["send", "--yes"]), ALL_TTY).finish();
    s.code(0).lacks("continue?");
    assert_table(&s.text, [3, 0, 0, 0, 0]);
    assert_eq!(server.received().len(), 3);

    let s = Term::spawn(c.command(&["send"]), ALL_TTY).finish();
    s.code(0).lacks("continue?").shows("Nothing due: 3 already sent.");
    assert_eq!(server.received().len(), 3);
}

#[test]
fn prompt_and_bar_stay_on_the_terminal_when_stdout_is_redirected() {
    // `mailer send > log`: the question is on stderr, the summary is the one-line kind.
    let (server, c) = campaign();
    let wiring = Wiring {
        stdout: false,
        ..ALL_TTY
    };
    let mut t = Term::spawn(c.command(&["send"]), wiring);
    t.expect(&prompt(&server));
    t.send("y\r");
    let s = t.finish();
    s.code(0).shows("letters ·");
    assert!(
        s.stdout
            .starts_with("sent 3 deferred 0 failed 0 unknown 0 skipped 0 left 0 in ")
            && s.stdout.lines().count() == 1,
        "stdout: {:?}",
        s.stdout
    );
    assert!(!s.stdout.contains("About to send"), "the prompt went to stdout");
}

#[test]
fn no_prompt_when_stderr_is_not_a_terminal() {
    // `mailer send 2>&1 | tee log` typed at a terminal: nobody can see a question.
    let (server, c) = campaign();
    let wiring = Wiring {
        stdin: true,
        stdout: false,
        stderr: false,
    };
    let s = Term::spawn(c.command(&["send"]), wiring).finish();
    s.code(0);
    assert!(!s.stderr.contains("continue?"), "stderr: {}", s.stderr);
    assert!(s.stdout.starts_with("sent 3 "), "stdout: {}", s.stdout);
    assert_eq!(server.received().len(), 3);
}

#[test]
fn the_bar_rate_is_readable() {
    let (server, c) = campaign();
    let mut t = Term::spawn(c.command(&["send"]), ALL_TTY);
    t.expect(&prompt(&server));
    t.send("y\r");
    let s = t.finish();
    s.code(0).shows("letters · ");
    for (i, _) in s.text.match_indices("letters · ") {
        let rate = s.text[i + "letters · ".len()..].split("/s").next().unwrap_or("");
        let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 1,
            "rate {rate:?}/s in the bar\n--- terminal\n{:?}",
            s.text
        );
    }
}

#[test]
fn end_of_input_at_the_prompt_sends_nothing_on_a_new_line() {
    let (server, c) = campaign();
    let mut t = Term::spawn(c.command(&["send"]), ALL_TTY);
    t.expect(&prompt(&server));
    t.send("\x04");
    let s = t.finish();
    s.code(0).shows("Nothing sent");
    assert!(server.received().is_empty());
    assert!(
        s.text.lines().any(|l| l.starts_with("Nothing sent")),
        "the answer line was not ended\n--- terminal\n{:?}",
        s.text
    );
}

// ---------------------------------------------------------------------------
// 2. Pipes (cron)

#[test]
fn on_pipes_no_prompt_no_bar_no_escapes_and_one_summary_line() {
    let (server, c) = campaign();
    let r = c.run(&["send"]);
    r.code(0);
    assert_eq!(server.received().len(), 3, "sent without asking");
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains('\x1b'), "an escape code on a pipe: {out:?}");
        assert!(
            !out.contains('\r'),
            "a carriage return (bar redraw) on a pipe: {out:?}"
        );
    }
    assert!(
        !r.stderr.contains("continue?"),
        "a prompt on a pipe: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("letters ·"), "a bar on a pipe: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {:?}", r.stdout);
    let line = lines[0];
    let rest = line
        .strip_prefix("sent 3 deferred 0 failed 0 unknown 0 skipped 0 left 0 in ")
        .unwrap_or_else(|| panic!("summary line: {line:?}"));
    assert!(
        rest.ends_with("/s)") && rest.contains("s ("),
        "summary line: {line:?}"
    );
}

#[test]
fn on_pipes_a_failed_letter_is_one_stderr_line() {
    let (_server, c) = campaign_with_one_rejection();
    let r = c.run(&["send"]);
    r.code(3);
    let failures = letter_lines(&r.stderr);
    assert_eq!(failures.len(), 1, "stderr:\n{}", r.stderr);
    let (supporter, rest) = failures[0].split_once(" → ").unwrap();
    assert!(
        ["ana@mail.example", "sam@mail.example", "lee@mail.example"].contains(&supporter),
        "line: {:?}",
        failures[0]
    );
    assert_eq!(
        rest,
        "ceo@corp.example: failed: 554 5.7.1 Message refused by policy"
    );
    assert!(
        r.stdout
            .starts_with("sent 2 deferred 0 failed 1 unknown 0 skipped 0 left 0 in ")
    );
    assert_eq!(r.stdout.lines().count(), 1, "stdout: {:?}", r.stdout);
    assert!(!r.stderr.contains('\x1b') && !r.stdout.contains('\x1b'));
}

// ---------------------------------------------------------------------------
// 3. -q

#[test]
fn quiet_prints_nothing_on_success() {
    let (server, c) = campaign();
    let r = c.run(&["-q", "send", "--yes"]);
    r.code(0);
    assert_eq!(r.stdout, "", "stdout under -q");
    assert_eq!(r.stderr, "", "stderr under -q");
    assert_eq!(server.received().len(), 3);
}

#[test]
fn quiet_still_prints_errors_and_failures() {
    let (_server, c) = campaign_with_one_rejection();
    let r = c.run(&["-q", "send", "--yes"]);
    r.code(3);
    assert_eq!(letter_lines(&r.stderr).len(), 1, "stderr:\n{}", r.stderr);
    assert!(r.stderr.contains("failed: 554 5.7.1"), "stderr:\n{}", r.stderr);

    let c = Campaign::new();
    let r = c.run(&["-q", "-c", "nowhere.toml", "check"]);
    r.code(1);
    assert!(r.stderr.starts_with("error: "), "stderr:\n{}", r.stderr);
}

// ---------------------------------------------------------------------------
// 4. Colour

#[test]
fn color_always_paints_errors_even_on_a_pipe() {
    let c = Campaign::new();
    let r = c.run(&["--color", "always", "-c", "nowhere.toml", "check"]);
    r.code(1);
    assert!(
        has_sgr(&r.stderr),
        "no colour with --color always: {:?}",
        r.stderr
    );
    assert!(r.stderr.contains("error:"), "stderr: {:?}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn color_auto_at_a_terminal_paints_errors() {
    let c = Campaign::new();
    let mut cmd = c.command(&["--color", "auto", "-c", "nowhere.toml", "check"]);
    cmd.env_remove("NO_COLOR");
    let s = Term::spawn(cmd, ALL_TTY).finish();
    s.code(1).shows("error:");
    assert!(has_sgr(&s.text), "no colour at a terminal: {:?}", s.text);
}

#[test]
fn no_color_or_color_never_at_a_terminal_paints_nothing() {
    let c = Campaign::new();
    for args in [["--color", "auto"], ["--color", "never"]] {
        let mut cmd = c.command(&[args[0], args[1], "-c", "nowhere.toml", "check"]);
        if args[1] == "never" {
            cmd.env_remove("NO_COLOR");
        } else {
            cmd.env("NO_COLOR", "1");
        }
        let s = Term::spawn(cmd, ALL_TTY).finish();
        s.code(1).shows("error:").shows("hint:");
        assert!(!s.text.contains('\x1b'), "{args:?}: an escape code: {:?}", s.text);
    }
}

// ---------------------------------------------------------------------------
// 5. init

#[test]
fn init_at_a_terminal_asks_and_the_result_passes_check() {
    let c = Campaign::new();
    let mut t = Term::spawn(c.command(&["init", "river"]), ALL_TTY);
    t.expect("Your name");
    t.send("River Friend\r");
    t.expect("Your email");
    t.send("friend@river.example\r");
    t.expect("Target's name");
    t.send("Jane Mayor\r");
    t.expect("Target's email");
    t.send("not an address\r");
    t.expect("that is not an email address");
    t.send("mayor@city.example\r");
    t.expect("Subject");
    t.send("\r");
    t.expect("Choose 1-4");
    t.send("4\r");
    t.expect("SMTP server");
    t.send("smtp.river.example\r");
    t.expect("Port");
    t.send("\r");
    t.expect("Security");
    t.send("\r");
    t.expect("Login name");
    t.send("\r");
    let s = t.finish();
    s.code(0).shows("Created a campaign");
    let toml = std::fs::read_to_string(c.join("river/mailer.toml")).unwrap();
    for want in [
        "id = \"letter-to-jane-mayor\"",
        "from = \"River Friend <friend@river.example>\"",
        "name = \"Jane Mayor\"",
        "email = \"mayor@city.example\"",
    ] {
        assert!(toml.contains(want), "mailer.toml lacks {want:?}:\n{toml}");
    }
    // An untouched scaffold must not pass for a real relay (issue 15 item 2).
    c.run(&["-c", "river/mailer.toml", "check"])
        .code(1)
        .stdout_has("placeholder");
    let r = c.run(&["-c", "river/mailer.toml", "preview", "--limit", "1"]);
    r.code(0);
    assert!(r.stdout.contains("Jane Mayor"), "preview:\n{}", r.stdout);
}

#[test]
fn init_without_a_terminal_writes_defaults_without_asking() {
    let c = Campaign::new();
    let r = c.run(&["init", "fresh"]);
    r.code(0);
    for question in ["Campaign name", "Organization", "Target's", "[y/N]"] {
        assert!(!r.stderr.contains(question), "asked {question:?}:\n{}", r.stderr);
    }
    assert_eq!(r.stdout, "");
    for file in ["mailer.toml", "letters/letter.md", "supporters.csv"] {
        assert!(c.join("fresh").join(file).is_file(), "{file} not written");
    }
    c.run(&["-c", "fresh/mailer.toml", "check"])
        .code(1)
        .stdout_has("placeholder");
}

// ---------------------------------------------------------------------------
// 6. Completions, man page, help

#[test]
fn completions_for_bash_zsh_and_fish() {
    let c = Campaign::new();
    for (shell, marker) in [
        ("bash", "complete -F _mailer"),
        ("zsh", "#compdef mailer"),
        ("fish", "complete -c mailer"),
    ] {
        let r = c.run(&["completions", shell]);
        r.code(0);
        assert!(r.stdout.contains(marker), "{shell}: lacks {marker:?}");
        assert!(r.stdout.contains("retry-failed"), "{shell}: no send flags");
        assert_eq!(r.stderr, "", "{shell}: stderr");
    }
    c.run(&["completions", "tcsh"]).code(2);
}

#[test]
fn man_prints_roff() {
    let c = Campaign::new();
    let r = c.run(&["man"]);
    r.code(0);
    assert!(
        r.stdout.lines().any(|l| l.starts_with(".TH mailer 1")),
        "no .TH line:\n{}",
        r.stdout
    );
    assert!(r.stdout.contains(".SH"), "no sections");
    assert!(r.stdout.contains("send"), "no subcommands");
}

#[test]
fn help_lists_the_exit_codes() {
    let c = Campaign::new();
    let r = c.run(&["--help"]);
    r.code(0);
    let codes: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Exit codes"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for code in ["0", "1", "2", "3", "75", "130"] {
        assert!(
            codes.contains(&code),
            "exit code {code} not listed:\n{}",
            r.stdout
        );
    }
    for command in [
        "init",
        "check",
        "preview",
        "send",
        "status",
        "export",
        "completions",
    ] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(command)),
            "`{command}` not listed"
        );
    }
}

// ---------------------------------------------------------------------------
// 7. Errors that teach

#[test]
fn a_missing_config_says_what_to_type() {
    let c = Campaign::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = c.command(&["check"]);
    cmd.current_dir(dir.path());
    let r = Run::from(cmd.output().unwrap());
    r.code(1);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("error: ") && l.contains("mailer.toml")),
        "stderr:\n{}",
        r.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("hint: ") && l.contains("mailer init")),
        "no hint naming `mailer init`:\n{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");

    // The same through --config and $MAILER_CONFIG: the error names the path given.
    let r = c.run(&["-c", "elsewhere/campaign.toml", "send", "--yes"]);
    r.code(1);
    r.stderr_has("elsewhere/campaign.toml").stderr_has("mailer init");
    let r = Campaign::new().env("MAILER_CONFIG", "gone.toml").run(&["status"]);
    r.code(1);
    r.stderr_has("gone.toml").stderr_has("hint: ");
}

#[test]
fn a_mistyped_command_suggests_the_right_one() {
    let c = Campaign::new();
    let r = c.run(&["sned"]);
    r.code(2);
    r.stderr_has("error:").stderr_has("send");
    assert_eq!(r.stdout, "");
}

/// A campaign whose server is down (a loopback port nobody listens on).
fn campaign_with_server_down() -> Campaign {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    Campaign::new().section(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\ntimeout_secs = 5\n\n\
         [delivery]\nretries = 0\nmax_per_run = 200\n"
    ))
}

#[test]
fn a_server_that_is_down_says_try_later() {
    let c = campaign_with_server_down();
    let r = c.run(&["send", "--yes"]);
    r.code(75);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("cannot connect to 127.0.0.1:")),
        "stderr:\n{}",
        r.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("hint: ") && l.contains("mailer send")),
        "no hint:\n{}",
        r.stderr
    );
}

#[test]
fn a_server_that_is_down_is_not_blamed_on_the_limits() {
    let c = campaign_with_server_down();
    let r = c.run(&["send", "--yes"]);
    r.code(75);
    assert!(
        !r.stderr.contains("max_per_run") && !r.stderr.contains("daily_limit"),
        "the limits did not stop this run; the server did:\n{}",
        r.stderr
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let c = Campaign::new();
    for args in [
        &["preview"][..],
        &["completions", "bash"],
        &["man"],
        &["status"],
        &["export"],
    ] {
        // A pipe whose reader is already gone, like `| head -1` after its line.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = c.command(args);
        cmd.stdout(writer).stderr(Stdio::piped());
        let r = Run::from(cmd.output().unwrap());
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("error:"),
            "{args:?}: a closed pipe is not an error to show\n--- stderr\n{}",
            r.stderr
        );
        assert_ne!(r.code, 101, "{args:?}: panicked");
    }
}
