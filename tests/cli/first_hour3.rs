//! Issue 15, "the first hour", part three: the confirmation shows the
//! letter, the password is settled before the question (and asked for on
//! a terminal), `-q` still names a newly skipped row once, and re-sends
//! after a changed target or campaign id are announced.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Security, Server, ServerOptions};

const PATIENCE: Duration = Duration::from_secs(20);

/// `mailer` with stdin, stdout and stderr on a fresh pseudo-terminal.
struct Term {
    child: Child,
    master: File,
    chunks: Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Term {
    fn spawn(mut cmd: Command) -> Term {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open /dev/ptmx");
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let tty = || Stdio::from(slave.try_clone().unwrap());
        cmd.env("TERM", "xterm-256color")
            .stdin(tty())
            .stdout(tty())
            .stderr(tty());
        let child = cmd.spawn().expect("spawn mailer on a pty");
        drop(cmd);
        drop(slave);
        let mut reader = File::from(master.try_clone().unwrap());
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Term {
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
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!(
                        "the terminal never showed {needle:?}\n--- terminal\n{}",
                        self.text()
                    );
                }
            }
        }
    }

    /// Waits for `prompt`, then types `keys` and Enter.
    #[track_caller]
    fn keys(&mut self, prompt: &str, keys: &str) {
        self.expect(prompt);
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
        self.master.flush().unwrap();
    }

    #[track_caller]
    fn finish(mut self) -> (i32, String) {
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
                    panic!("mailer did not exit\n--- terminal\n{}", self.text());
                }
            }
        }
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, self.text())
    }
}

// ---------------------------------------------------------------- item 3: the confirmation shows the letter

/// What the terminal showed before the `[y/N]` question, answering `n`.
fn before_the_question(c: &Campaign) -> String {
    let mut t = Term::spawn(c.command(&["send"]));
    t.expect("[y/N] ");
    let shown = t.text();
    t.keys("[y/N] ", "n");
    let (code, text) = t.finish();
    assert_eq!(code, 0, "--- terminal\n{text}");
    assert!(text.contains("Nothing sent"), "--- terminal\n{text}");
    let at = shown.find("About to send").expect("the question");
    shown[..at].to_string()
}

#[test]
fn issue15_the_confirmation_shows_a_small_run_in_full_and_the_check_warnings() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    let shown = before_the_question(&c);
    for needle in [
        "From: Ana López via Test Org <letters@org.example>",
        "To: Satya Nadella",
        "Subject: Ana from Tucson: drop the contract",
        "I am Ana López from Tucson.",
        "Subject: Sam from Minneapolis: drop the contract",
        "Please, listen.",
        "I am Lee Park from Seattle.",
        // `check`'s warning, with the question.
        "warning: no [dkim] section",
    ] {
        assert!(shown.contains(needle), "lacks {needle:?}\n--- terminal\n{shown}");
    }
    assert!(server.received().is_empty(), "a letter went after `n`");
}

#[test]
fn issue15_the_confirmation_of_a_larger_run_shows_the_first_letters_headers() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server).file(
        "supporters.csv",
        format!(
            "{}kim@mail.example,Kim,Ng,Boise,\n",
            crate::support::campaign::SUPPORTERS
        ),
    );
    let shown = before_the_question(&c);
    for needle in [
        "From: Ana López via Test Org <letters@org.example>",
        "To: Satya Nadella",
        "Subject: Ana from Tucson: drop the contract",
        "warning: no [dkim] section",
    ] {
        assert!(shown.contains(needle), "lacks {needle:?}\n--- terminal\n{shown}");
    }
    // Four letters: not the whole text.
    assert!(!shown.contains("I am Ana"), "--- terminal\n{shown}");
    assert!(!shown.contains("Sam from"), "--- terminal\n{shown}");
}
