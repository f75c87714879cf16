//! A scripted, misbehaving IMAP server over implicit TLS on a loopback
//! port, for what dovecot never does: echo the password in a refusal, drip
//! untagged lines forever, announce huge literals, serve an oversized message.
//! Runs until the test process ends.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ServerConnection, StreamOwned};

use super::smtp::TestPki;

/// How the server misbehaves.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Refuses LOGIN with `NO`, 286 filler characters, then the password.
    EchoPassword,
    /// Answers SELECT with `* OK still here` every second, forever.
    Drip,
    /// Answers SELECT with untagged lines each announcing a 40 MB literal, forever.
    LiteralBomb,
    /// Answers SELECT with short untagged lines, as fast as it can, forever.
    LineFlood,
    /// A mailbox of two unseen messages: UID 1 is `big` bytes of filler,
    /// UID 2 is `message`.
    Oversized { big: usize, message: Vec<u8> },
}

/// A running hostile server.
pub struct HostileImap {
    port: u16,
}

impl HostileImap {
    /// Starts serving `mode` with a certificate from `pki`.
    pub fn start(mode: Mode, pki: &TestPki) -> HostileImap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let tls = pki.server_config();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (tls, mode) = (Arc::clone(&tls), mode.clone());
                std::thread::spawn(move || {
                    let _ = serve(tcp, tls, &mode);
                });
            }
        });
        HostileImap { port }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn serve(tcp: TcpStream, tls: Arc<rustls::ServerConfig>, mode: &Mode) -> std::io::Result<()> {
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let conn = ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut io = BufReader::new(StreamOwned::new(conn, tcp));
    io.get_mut().write_all(b"* OK hostile IMAP ready\r\n")?;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        let (tag, cmd) = line.split_once(' ').unwrap_or((line, ""));
        let upper = cmd.to_ascii_uppercase();
        let w = io.get_mut();
        if upper.starts_with("LOGIN") {
            if let Mode::EchoPassword = mode {
                // LOGIN "user" "password"
                let password = cmd.rsplit('"').nth(1).unwrap_or("?");
                w.write_all(format!("{tag} NO {}{password}\r\n", "x".repeat(286)).as_bytes())?;
            } else {
                w.write_all(format!("{tag} OK logged in\r\n").as_bytes())?;
            }
        } else if upper.starts_with("SELECT") {
            match mode {
                Mode::Drip => loop {
                    w.write_all(b"* OK still here\r\n")?;
                    w.flush()?;
                    std::thread::sleep(Duration::from_secs(1));
                },
                Mode::LiteralBomb => {
                    let chunk = vec![b'y'; 1 << 20];
                    loop {
                        w.write_all(b"* 1 FETCH (BODY[] {41943040}\r\n")?;
                        for _ in 0..40 {
                            w.write_all(&chunk)?;
                        }
                    }
                }
                Mode::LineFlood => {
                    let lines = b"* 1 EXISTS\r\n".repeat(4096);
                    loop {
                        w.write_all(&lines)?;
                    }
                }
                _ => w.write_all(format!("* 2 EXISTS\r\n{tag} OK [READ-WRITE] selected\r\n").as_bytes())?,
            }
        } else if upper.starts_with("UID SEARCH") {
            w.write_all(format!("* SEARCH 1 2\r\n{tag} OK done\r\n").as_bytes())?;
        } else if upper.starts_with("UID FETCH") {
            let uid: u32 = upper
                .split_whitespace()
                .nth(2)
                .and_then(|u| u.parse().ok())
                .unwrap_or(0);
            let body = match (mode, uid) {
                (Mode::Oversized { big, .. }, 1) => b"z".repeat(*big),
                (Mode::Oversized { message, .. }, 2) => message.clone(),
                _ => Vec::new(),
            };
            w.write_all(format!("* {uid} FETCH (UID {uid} BODY[] {{{}}}\r\n", body.len()).as_bytes())?;
            w.write_all(&body)?;
            w.write_all(format!(")\r\n{tag} OK done\r\n").as_bytes())?;
        } else if upper.starts_with("UID STORE") {
            w.write_all(format!("{tag} OK stored\r\n").as_bytes())?;
        } else if upper.starts_with("LOGOUT") {
            w.write_all(format!("* BYE bye\r\n{tag} OK bye\r\n").as_bytes())?;
            w.flush()?;
            return Ok(());
        } else {
            w.write_all(format!("{tag} BAD unknown\r\n").as_bytes())?;
        }
        w.flush()?;
    }
}
