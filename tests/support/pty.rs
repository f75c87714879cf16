//! A real pseudo-terminal for the integration tests: `mailer` runs with
//! stdin, stdout and stderr on it (optionally as its controlling terminal),
//! and the test waits for prompts, types answers and reads the screen.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

/// How long a prompt may take to appear.
const PATIENCE: Duration = Duration::from_secs(20);

/// `mailer` with stdin, stdout and stderr on a fresh pseudo-terminal.
pub struct Term {
    child: Child,
    pub master: File,
    chunks: Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Term {
    pub fn spawn(mut cmd: Command) -> Term {
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

    /// Like [`Term::spawn`], with the terminal as the controlling one
    /// (`setsid --ctty`), so that `/dev/tty` is this terminal.
    pub fn spawn_ctty(cmd: &Command) -> Term {
        let mut outer = Command::new("setsid");
        outer
            .env_clear()
            .arg("--ctty")
            .arg("--wait")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                outer.env(k, v);
            }
        }
        if let Some(dir) = cmd.get_current_dir() {
            outer.current_dir(dir);
        }
        Term::spawn(outer)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).replace("\r\n", "\n")
    }

    /// Waits until the terminal shows `needle`.
    #[track_caller]
    pub fn expect(&mut self, needle: &str) {
        self.expect_after(0, needle);
    }

    /// Waits until the terminal shows `needle` after byte `at` of the text.
    #[track_caller]
    pub fn expect_after(&mut self, at: usize, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.text().get(at..).is_some_and(|t| t.contains(needle)) {
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

    /// Answers the question `question` (waits for it first) with `keys` and Enter.
    #[track_caller]
    pub fn answer(&mut self, question: &str, keys: &str) {
        self.expect(question);
        // Type only once the whole prompt is out (it ends in `: `): keys
        // typed earlier are echoed in the middle of the prompt.
        let at = self.text().rfind(question).unwrap_or(0);
        self.expect_after(at, ": ");
        // Later questions must be found after this answer's echo.
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
        self.master.flush().unwrap();
        let echo = format!("{keys}\r\n");
        self.expect(&format!("{keys}\n"));
        // Keep only what came after the echo (the next question may be there).
        let at = self
            .seen
            .windows(echo.len())
            .position(|w| w == echo.as_bytes())
            .expect("the echo");
        self.seen.drain(..at + echo.len());
    }

    /// Waits for `prompt`, then types `keys` and Enter.
    #[track_caller]
    pub fn keys(&mut self, prompt: &str, keys: &str) {
        self.expect(prompt);
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
        self.master.flush().unwrap();
    }

    /// Waits until the terminal no longer echoes what is typed (a
    /// password prompt turned echo off after printing its question).
    #[track_caller]
    pub fn expect_no_echo(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while rustix::termios::tcgetattr(&self.master)
            .unwrap()
            .local_modes
            .contains(rustix::termios::LocalModes::ECHO)
        {
            assert!(
                Instant::now() < deadline,
                "echo stayed on\n--- terminal\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[track_caller]
    pub fn finish(mut self) -> (i32, String) {
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
