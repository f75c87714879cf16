//! Relays several test files need: one that requires AUTH inside STARTTLS
//! (with a campaign pointed at it), and one that throttles like Amazon SES.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::campaign::Campaign;
use crate::support::smtp::{Action, Security, Server, ServerOptions, Step, TestPki};

/// A STARTTLS server that requires AUTH as `user` / `password` (offered
/// only inside TLS), and the default campaign pointed at it (`ca_file`
/// trusts it, no password source set); `extra` goes in [smtp].
pub fn starttls_auth_campaign(user: &str, password: &str, extra: &str) -> (Server, Campaign) {
    let pki = TestPki::new();
    let mut opts = ServerOptions::new(Security::StartTls)
        .with_auth(user, password)
        .with_pki(&pki);
    opts.auth_after_tls = true;
    let server = Server::start(opts);
    let c = Campaign::new().file("ca.pem", pki.ca_pem()).section(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"starttls\"\n\
         username = \"{user}\"\nca_file = \"ca.pem\"\ntimeout_secs = 5\n{extra}",
        server.port()
    ));
    (server, c)
}

/// A relay that takes at most one letter per `gap` (counted at MAIL) and
/// answers faster ones as Amazon SES does; counts its refusals.
pub fn throttling_relay(gap: Duration, refused: &Arc<AtomicUsize>) -> ServerOptions {
    let last = Mutex::new(None::<Instant>);
    let refused = Arc::clone(refused);
    ServerOptions::new(Security::Plain).with_script(move |step| {
        if let Step::Mail { .. } = step {
            let mut last = last.lock().unwrap();
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < gap) {
                refused.fetch_add(1, SeqCst);
                return Action::reply("454 Throttling failure: Maximum sending rate exceeded.");
            }
            *last = Some(now);
        }
        Action::Default
    })
}
