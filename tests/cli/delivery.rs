//! `mailer send` against real SMTP servers: exactly once, resumable.

use std::time::Duration;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Security, Server, ServerOptions};

#[test]
fn sends_each_letter_once_and_a_rerun_sends_nothing() {
    let server = Server::start(ServerOptions::new(Security::Plain));
    let c = Campaign::new().smtp_plain(&server);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    assert!(server.wait_idle(Duration::from_secs(5)));
    let got = server.received();
    assert_eq!(got.len(), 3);
    let ids: std::collections::HashSet<_> = got.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(got[0].rcpt_to, vec!["ceo@corp.example".to_string()]);
    assert!(
        got.iter()
            .any(|m| m.text().contains("I am Sam Okafor from Minneapolis."))
    );
    assert_eq!(c.states(), vec![("sent".to_string(), 3)]);
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 0");
    assert_eq!(server.received().len(), 3);
}
