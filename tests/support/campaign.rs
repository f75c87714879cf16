//! A campaign folder in a temp dir, and the real `mailer` binary run in it
//! with a clean environment. Every integration test starts here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::smtp::Server;

/// The default letter: plain text, every context kind used.
pub const LETTER: &str = "Dear {{ target.name }},\n\nI am {{ supporter.name }} from {{ supporter.city }}.\n{% if supporter.note %}{{ supporter.note }}\n{% endif %}\n{{ campaign.org }}, {{ today }}\n";

/// Three valid supporters, one with a note.
pub const SUPPORTERS: &str = "email,first_name,last_name,city,note\n\
ana@mail.example,Ana,López,Tucson,\n\
sam@mail.example,Sam,Okafor,Minneapolis,\"Please, listen.\"\n\
lee@mail.example,Lee,Park,Seattle,\n";

/// A campaign folder under construction.
pub struct Campaign {
    dir: tempfile::TempDir,
    /// Extra TOML appended to the config (e.g. `[smtp]`, `[delivery]`).
    sections: Vec<String>,
    /// The `[campaign]`..`[supporters]` part.
    head: String,
    env: Vec<(String, String)>,
}

impl Campaign {
    /// A campaign with the default letter (`letters/letter.txt`), three
    /// supporters and one target; no `[smtp]` yet.
    pub fn new() -> Campaign {
        let c = Campaign {
            dir: tempfile::tempdir().expect("tempdir"),
            sections: Vec::new(),
            head: head("letters/letter.txt"),
            env: Vec::new(),
        };
        c.file("letters/letter.txt", LETTER)
            .file("supporters.csv", SUPPORTERS)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `folder/rel`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating folders).
    pub fn file(self, rel: &str, content: impl AsRef<[u8]>) -> Campaign {
        let path = self.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        self
    }

    /// Replaces the `[campaign]`..`[supporters]` head (e.g. another letter).
    pub fn head(mut self, toml: &str) -> Campaign {
        self.head = toml.to_string();
        self
    }

    /// Appends TOML to the config.
    pub fn section(mut self, toml: &str) -> Campaign {
        self.sections.push(toml.to_string());
        self
    }

    /// Adds `[smtp]` pointing at a plain test server on loopback, and
    /// `[delivery] retries = 1` unless a `[delivery]` section is given later.
    pub fn smtp_plain(self, server: &Server) -> Campaign {
        self.section(&format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\ntimeout_secs = 5\n",
            server.port()
        ))
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: &str, value: &str) -> Campaign {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The config text as it will be written.
    pub fn config_text(&self) -> String {
        let mut t = self.head.clone();
        for s in &self.sections {
            t.push('\n');
            t.push_str(s);
        }
        t
    }

    /// Writes `mailer.toml` and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.join("mailer.toml");
        std::fs::write(&path, self.config_text()).unwrap();
        path
    }

    /// A `mailer` command in this folder with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.write_config();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailer"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("NO_COLOR", "1")
            .current_dir(self.path())
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `mailer ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run mailer");
        Run::from(out)
    }

    /// Starts `mailer ARGS` without waiting (stdout/stderr piped).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mailer")
    }

    /// The ledger file (default path).
    pub fn ledger(&self) -> PathBuf {
        self.join(".mailer/test-campaign.sqlite3")
    }

    /// Asserts no file in `.mailer/` (ledgers, journals, rescued copies)
    /// holds `secret`.
    #[track_caller]
    pub fn assert_never_stored(&self, secret: &str) {
        let Ok(entries) = std::fs::read_dir(self.join(".mailer")) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "the password was stored in {}",
                path.display()
            );
        }
    }

    /// `SELECT state, count(*)` from the ledger, as `state=n` sorted.
    pub fn states(&self) -> Vec<(String, i64)> {
        let conn = rusqlite::Connection::open(self.ledger()).unwrap();
        let mut stmt = conn
            .prepare("SELECT state, count(*) FROM letters GROUP BY state ORDER BY state")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Runs SQL against the ledger (e.g. to let time pass for deferred letters).
    pub fn sql(&self, sql: &str) {
        let conn = rusqlite::Connection::open(self.ledger()).unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

fn head(letter: &str) -> String {
    format!(
        r#"[campaign]
id = "test-campaign"
name = "Drop the contract"
org = "Test Org"
letter = "{letter}"
subject = "{{{{ supporter.first_name }}}} from {{{{ supporter.city }}}}: drop the contract"

[sender]
from = "{{{{ supporter.name }}}} via Test Org <letters@org.example>"
reply_to = "{{{{ supporter.email }}}}"

[[targets]]
name = "Satya Nadella"
email = "ceo@corp.example"
title = "CEO"

[supporters]
file = "supporters.csv"
"#
    )
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// stdout, lossy UTF-8.
    pub stdout: String,
    /// stderr, lossy UTF-8.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}\n--- stdout\n{}",
            self.stderr,
            self.stdout
        );
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Rows of a ledger query, every column as text (NULL = "").
pub fn query(c: &Campaign, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(c.ledger()).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let width = stmt.column_count();
    stmt.query_map([], |r| {
        (0..width)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => String::new(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(x) => x.to_string(),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                })
            })
            .collect::<rusqlite::Result<Vec<String>>>()
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// `[(state, n)]` as `Campaign::states` returns it.
pub fn st(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(s, n)| ((*s).to_string(), *n)).collect()
}
