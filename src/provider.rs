//! Mail providers a volunteer may send through with their own account:
//! their submission server (host, port, security), the address domains they
//! own, and whether they always DKIM-sign. `init` offers them as presets;
//! `check` uses them to skip DMARC warnings that do not apply.

use crate::config::Security;

/// One provider's submission settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Provider {
    /// What a person calls it.
    pub(crate) name: &'static str,
    /// The submission server.
    pub(crate) host: &'static str,
    /// Its port.
    pub(crate) port: u16,
    /// Its transport security.
    pub(crate) security: Security,
    /// Address domains the provider owns (its free-mail domains).
    pub(crate) domains: &'static [&'static str],
    /// Host suffixes of its servers (`smtp.office365.com` is Microsoft's).
    pub(crate) hosts: &'static [&'static str],
    /// Its sending limits, as the provider documents them.
    pub(crate) limits: &'static str,
}

/// The presets `init` offers, in menu order.
pub(crate) const PRESETS: [Provider; 3] = [
    Provider {
        name: "Gmail",
        host: "smtp.gmail.com",
        port: 465,
        security: Security::Tls,
        domains: &["gmail.com", "googlemail.com"],
        hosts: &["gmail.com", "google.com", "googlemail.com"],
        limits: "about 500 recipients a day (Google Workspace: 2,000); needs an app password",
    },
    Provider {
        name: "Outlook / Microsoft 365",
        host: "smtp.office365.com",
        port: 587,
        security: Security::Starttls,
        domains: &["outlook.com", "hotmail.com", "live.com", "msn.com"],
        hosts: &["outlook.com", "office365.com", "hotmail.com", "live.com"],
        limits: "Outlook.com: about 300 recipients a day; Microsoft 365: 10,000 a day, 30 messages a minute",
    },
    Provider {
        name: "Fastmail",
        host: "smtp.fastmail.com",
        port: 465,
        security: Security::Tls,
        domains: &[
            "fastmail.com",
            "fastmail.fm",
            "fastmail.net",
            "fastmail.org",
            "messagingengine.com",
        ],
        hosts: &["fastmail.com", "messagingengine.com"],
        limits: "a daily limit per plan (see Fastmail's \"sending limits\" page); needs an app password",
    },
];

/// The provider whose free-mail domain `address` (or a bare domain) is in.
#[must_use]
pub(crate) fn by_address(address: &str) -> Option<&'static Provider> {
    let domain = address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .to_ascii_lowercase();
    PRESETS.iter().find(|p| p.domains.contains(&domain.as_str()))
}

/// The provider that runs the SMTP server `host`.
#[must_use]
pub(crate) fn by_host(host: &str) -> Option<&'static Provider> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    PRESETS.iter().find(|p| {
        p.hosts
            .iter()
            .any(|h| host == *h || host.ends_with(&format!(".{h}")))
    })
}

/// Whether mail submitted to `host` is always DKIM-signed by its provider
/// (with the sender's domain for the provider's own addresses).
#[must_use]
pub(crate) fn always_signs(host: &str) -> bool {
    by_host(host).is_some()
}

/// Whether a letter From `from_domain`, logged in as `login_domain`, goes
/// through the provider that owns that domain (a volunteer sending as
/// themselves through their own account): DMARC aligns, nothing to warn.
#[must_use]
pub(crate) fn sends_as_itself(host: &str, from_domain: &str, login_domain: Option<&str>) -> bool {
    let from_domain = from_domain.to_ascii_lowercase();
    let (Some(by_server), Some(owner)) = (by_host(host), by_address(&from_domain)) else {
        return false;
    };
    by_server == owner && login_domain.is_some_and(|d| d.eq_ignore_ascii_case(&from_domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_found_by_address_and_host() {
        assert_eq!(by_address("ana@Gmail.com").map(|p| p.name), Some("Gmail"));
        assert_eq!(
            by_address("ana@hotmail.com").map(|p| p.host),
            Some("smtp.office365.com")
        );
        assert_eq!(by_address("ana@colorofchange.org"), None);
        assert_eq!(by_host("smtp.gmail.com").map(|p| p.name), Some("Gmail"));
        assert_eq!(by_host("smtp-mail.outlook.com").map(|p| p.port), Some(587));
        assert_eq!(by_host("notgmail.com"), None);
        assert!(always_signs("smtp.fastmail.com"));
        assert!(!always_signs("smtp.colorofchange.org"));
    }

    #[test]
    fn sending_as_oneself_needs_the_same_provider_and_login() {
        assert!(sends_as_itself("smtp.gmail.com", "gmail.com", Some("gmail.com")));
        assert!(!sends_as_itself(
            "smtp.gmail.com",
            "gmail.com",
            Some("colorofchange.org")
        ));
        assert!(!sends_as_itself("smtp.gmail.com", "gmail.com", None));
        assert!(!sends_as_itself("smtp.relay.org", "gmail.com", Some("gmail.com")));
        assert!(!sends_as_itself(
            "smtp.fastmail.com",
            "gmail.com",
            Some("gmail.com")
        ));
    }
}
