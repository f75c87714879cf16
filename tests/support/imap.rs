//! A real IMAP server for the bounce tests: Debian's dovecot, started on a
//! free loopback port with a generated config, one user, and a certificate
//! from [`TestPki`]; IMAP over TLS only. Stopped when dropped.
//!
//! dovecot must run as root (it drops privileges itself): its login
//! processes run as `dovenull`, mail access as `dovecot`, so the mail
//! folders belong to `dovecot` and every parent folder is traversable.
//! `scripts/test` installs `dovecot-imapd` when it is missing.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::smtp::TestPki;

/// The dovecot binary.
const DOVECOT: &str = "/usr/sbin/dovecot";

/// A running dovecot with one user.
pub struct Dovecot {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    pki: TestPki,
}

impl Dovecot {
    /// Starts dovecot for `user` with `password`, serving certificates from `pki`.
    pub fn start(user: &str, password: &str, pki: &TestPki) -> Dovecot {
        assert!(
            Path::new(DOVECOT).exists(),
            "dovecot is not installed: run scripts/test (it installs dovecot-imapd), \
             or apt-get install dovecot-imapd"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["run", "state", "home"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // dovecot's unprivileged processes must traverse down to the mail.
        for p in [root.to_path_buf(), root.join("home")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let (cert, key) = pki.leaf_pem();
        std::fs::write(root.join("cert.pem"), cert).unwrap();
        std::fs::write(root.join("key.pem"), key).unwrap();
        std::fs::set_permissions(root.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(root.join("passwd"), format!("{user}:{{PLAIN}}{password}::::::\n")).unwrap();
        let port = free_port();
        let r = root.display();
        let conf = format!(
            "base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{r}/cert.pem
ssl_key = <{r}/key.pem
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={r}/home/%u
}}
mail_location = maildir:{r}/home/%u/Maildir
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 100
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
"
        );
        std::fs::write(root.join("dovecot.conf"), conf).unwrap();
        let server = Dovecot {
            dir,
            port,
            user: user.to_string(),
            pki: pki.clone(),
        };
        server.maildir();
        let status = Command::new(DOVECOT)
            .arg("-c")
            .arg(server.dir.path().join("dovecot.conf"))
            .status()
            .expect("start dovecot");
        assert!(status.success(), "dovecot did not start: {}", server.log());
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot is not listening: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The imaps port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user's Maildir (created, owned by `dovecot`).
    pub fn maildir(&self) -> PathBuf {
        let home = self.dir.path().join("home").join(&self.user);
        let maildir = home.join("Maildir");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        chown_dovecot(&home);
        maildir
    }

    /// Delivers a message into the user's INBOX (unseen).
    pub fn deliver(&self, name: &str, bytes: &[u8]) {
        let path = self.maildir().join("new").join(name);
        std::fs::write(&path, bytes).unwrap();
        chown_dovecot(&path);
    }

    /// The INBOX's message files, as `(file name, seen)`, `new/` and `cur/`.
    pub fn messages(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            for e in std::fs::read_dir(self.maildir().join(sub)).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let seen = name
                    .rsplit_once(":2,")
                    .is_some_and(|(_, flags)| flags.contains('S'));
                out.push((name, seen));
            }
        }
        out.sort();
        out
    }

    /// dovecot's log once it holds `needle` (it is written asynchronously;
    /// gives up after 30 s, since a loaded machine once took longer than 10,
    /// and returns what is there).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// dovecot's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid_file = self.dir.path().join("run/master.pid");
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_file.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `chown -R dovecot:dovecot PATH`.
fn chown_dovecot(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "dovecot:dovecot"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown dovecot {}", path.display());
}
