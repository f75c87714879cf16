//! A supporter's address, checked: what `send` will put in `To:`.

use lettre::Address;

/// A supporter's address: ASCII, parseable, with a dotted domain.
pub(crate) fn validate_email(raw: &str) -> std::result::Result<Address, String> {
    if raw.is_empty() {
        return Err("the email is empty".into());
    }
    if !raw.is_ascii() {
        return Err(format!(
            "invalid email `{}`: non-ASCII addresses are not supported",
            raw.escape_debug()
        ));
    }
    let address: Address = raw
        .parse()
        .map_err(|e| format!("invalid email `{}`: {e}", raw.escape_debug()))?;
    let domain = address.domain();
    if !domain.contains('.') || domain.starts_with('[') || domain.ends_with('.') {
        return Err(format!(
            "invalid email `{raw}`: the domain `{domain}` is not a mail domain"
        ));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        for bad in [
            "",
            "jane@",
            "jane..doe@x.org",
            "jane@localhost",
            "jané@x.org",
            "a b@x.org",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert!(validate_email("jane.doe+tag@example.org").is_ok());
    }
}
