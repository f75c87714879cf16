//! `mailer init [DIR]`: a campaign folder for a volunteer's first letter.
//!
//! On a terminal it asks what a volunteer knows (their name and address,
//! the target's, the mail account they send through) and writes a letter
//! skeleton, themselves as the only supporter and From their own address.
//! Without a terminal it writes the same skeleton with placeholder
//! addresses, which `check` names and `send` refuses on a real relay.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::config::Security;
use crate::exit::Exit;
use crate::provider::{self, PRESETS};
use crate::ui::Ui;

/// The sentence the skeleton letter asks the volunteer to replace. A letter
/// that still says it is not written yet: `check` and `send` stop on it.
pub(crate) const UNWRITTEN: &str = "Write your letter here";

/// The letter skeleton: addressed to the target by name, signed by the supporter.
const LETTER: &str = "Dear {{ target.name }},

Write your letter here: who you are, what you ask of {{ target.name }}, and
why it matters to you. Keep it in your own words; a short letter is read.

Sincerely,

{{ supporter.name }}
";

/// What `init` writes into the config, from the answers or the placeholders.
#[derive(Debug, Clone)]
struct Answers {
    your_name: String,
    your_email: String,
    target_name: String,
    target_email: String,
    /// The subject line as the config holds it (Tera).
    subject: String,
    host: String,
    port: u16,
    security: Security,
    username: String,
    /// The preset chosen, for its sending limits.
    preset: Option<&'static provider::Provider>,
}

impl Answers {
    /// The non-interactive scaffold: reserved `.example` addresses and
    /// host, so nothing can go out until they are replaced.
    fn placeholders() -> Answers {
        Answers {
            your_name: "Your Name".into(),
            your_email: "you@your-provider.example".into(),
            target_name: "Target Name".into(),
            target_email: "target@their-office.example".into(),
            subject: DEFAULT_SUBJECT.into(),
            host: "smtp.your-provider.example".into(),
            port: 587,
            security: Security::Starttls,
            username: "you@your-provider.example".into(),
            preset: None,
        }
    }
}

const DEFAULT_SUBJECT: &str = "A letter from {{ supporter.name }}";

/// Runs `mailer init`.
pub(crate) fn run(dir: Option<PathBuf>, ui: &Ui) -> Result<Exit> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let files = [
        dir.join("mailer.toml"),
        dir.join("letters/letter.md"),
        dir.join("supporters.csv"),
    ];
    if let Some(existing) = files.iter().find(|f| f.exists()) {
        bail!(
            "`{}` already exists; init never overwrites a campaign",
            existing.display()
        );
    }
    let interactive = ui.interactive();
    let a = if interactive {
        ask(ui)?
    } else {
        Answers::placeholders()
    };
    std::fs::create_dir_all(dir.join("letters"))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    write(&files[0], &config(&a))?;
    write(&files[1], LETTER)?;
    write(&files[2], &supporters(&a)?)?;
    let config = files[0].display();
    ui.note(&format!("Created a campaign in `{}`:", dir.display()));
    ui.note(&format!(
        "  {:<28} you → {}, through {}",
        files[0].display(),
        a.target_name,
        a.host
    ));
    ui.note(&format!(
        "  {:<28} your letter: write it here",
        files[1].display()
    ));
    ui.note(&format!("  {:<28} you, the only supporter", files[2].display()));
    if !interactive {
        ui.note(
            "No terminal, so nothing was asked: the addresses and the SMTP server are \
             placeholders (`.example`), which `mailer check` names and `mailer send` refuses.",
        );
        ui.hint(&format!(
            "edit `{config}` (your name and address, the target's, [smtp]) and `{}`, or run `mailer init` at a terminal",
            files[2].display()
        ));
    }
    if let Some(p) = a.preset {
        ui.note(&format!("{}'s sending limits: {}.", p.name, p.limits));
    }
    ui.note(&format!(
        "Next: write your letter in `{}`, then `mailer -c {config} check`, \
         `mailer -c {config} preview` and `mailer -c {config} send`.",
        files[1].display()
    ));
    ui.note(&format!(
        "Your SMTP password is never written to these files: mailer reads it from \
         MAILER_SMTP_PASSWORD (see password_env in `{config}`)."
    ));
    Ok(Exit::Done)
}

/// The questions, at a terminal. End of input cancels (nothing written).
fn ask(ui: &Ui) -> Result<Answers> {
    let line = |q: &str, default: Option<&str>| -> Result<String> {
        ui.ask_line(q, default)
            .context("init cancelled at the end of input; nothing was written")
    };
    let required = |q: &str| -> Result<String> {
        loop {
            let answer = line(q, None)?;
            if !answer.is_empty() {
                return Ok(answer);
            }
            ui.warn("an answer is needed here");
        }
    };
    let address = |q: &str| -> Result<String> {
        loop {
            let answer = required(q)?;
            if answer.parse::<lettre::Address>().is_ok() {
                return Ok(answer);
            }
            ui.warn("that is not an email address");
        }
    };
    let your_name = required("Your name")?;
    let your_email = address("Your email")?;
    let target_name = required("Target's name (who you are writing to)")?;
    let target_email = address("Target's email")?;
    let default_subject = format!("A letter from {your_name}");
    let subject = line("Subject", Some(&default_subject))?;
    let subject = if subject == default_subject {
        DEFAULT_SUBJECT.to_string()
    } else {
        literal_template(&subject)
    };
    eprintln!("How do you send email?");
    for (i, p) in PRESETS.iter().enumerate() {
        eprintln!("  {}) {} ({})", i + 1, p.name, p.host);
    }
    let other = PRESETS.len() + 1;
    eprintln!("  {other}) another SMTP server");
    let guess = provider::by_address(&your_email)
        .and_then(|p| PRESETS.iter().position(|q| q == p))
        .map_or(other, |i| i + 1);
    let choice = loop {
        let answer = line(&format!("Choose 1-{other}"), Some(&guess.to_string()))?;
        match answer.parse::<usize>() {
            Ok(n @ 1..) if n <= other => break n,
            _ => ui.warn(&format!("type a number from 1 to {other}")),
        }
    };
    let mut a = Answers {
        your_name,
        username: your_email.clone(),
        your_email,
        target_name,
        target_email,
        subject,
        host: String::new(),
        port: 587,
        security: Security::Starttls,
        preset: None,
    };
    if let Some(p) = PRESETS.get(choice - 1) {
        a.host = p.host.to_string();
        a.port = p.port;
        a.security = p.security;
        a.preset = Some(p);
    } else {
        a.host = required("SMTP server (host name)")?;
        a.port = loop {
            match line("Port", Some("587"))?.parse::<u16>() {
                Ok(p) if p > 0 => break p,
                _ => ui.warn("a port is a number from 1 to 65535"),
            }
        };
        let default = if a.port == 465 { "tls" } else { "starttls" };
        a.security = loop {
            match line("Security (starttls or tls)", Some(default))?
                .to_ascii_lowercase()
                .as_str()
            {
                "starttls" => break Security::Starttls,
                "tls" => break Security::Tls,
                _ => ui.warn("type `starttls` (usually port 587) or `tls` (usually port 465)"),
            }
        };
        a.username = line("Login name", Some(&a.your_email))?;
    }
    Ok(a)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Text a person typed, as a Tera template that renders it as it is.
fn literal_template(text: &str) -> String {
    if ["{{", "{%", "{#"].iter().any(|t| text.contains(t)) {
        format!("{{% raw %}}{text}{{% endraw %}}")
    } else {
        text.to_string()
    }
}

/// `Name <address>`, the name quoted when a header needs it.
fn mailbox(name: &str, address: &str) -> String {
    let name = literal_template(name);
    if name.contains(|c: char| "\"(),.:;<>@[\\]".contains(c)) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\" <{address}>")
    } else {
        format!("{name} <{address}>")
    }
}

/// `letter-to-jane-mayor` from `Jane Mayor`.
fn campaign_id(target_name: &str) -> String {
    let slug = format!("letter to {target_name}")
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>();
    slug.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn config(a: &Answers) -> String {
    let security = match a.security {
        Security::Starttls => "starttls",
        Security::Tls => "tls",
        Security::None => "none",
    };
    let limits = a
        .preset
        .map(|p| format!("# {}: {}.\n", p.name, p.limits))
        .unwrap_or_default();
    format!(
        r#"# A mailer campaign, written by `mailer init`. Every key is explained in
# config.example.toml (in the release archive and the mailer repository).

[campaign]
id = {id}
name = {name}
letter = "letters/letter.md"
subject = {subject}

[sender]
# You send as yourself, through your own mail account: From is your address.
from = {from}

[[targets]]
name = {target_name}
email = {target_email}

[supporters]
# You are the only supporter. A friend who signs the same letter can add a
# row, but it still goes From your address: they had better send their own.
file = "supporters.csv"

[smtp]
{limits}host = {host}
port = {port}
# Lower-case: "starttls" (port 587), "tls" (port 465) or "none" (loopback only).
security = "{security}"
username = {username}
# The password is never written here: mailer reads it from this variable.
password_env = "MAILER_SMTP_PASSWORD"

[delivery]
rate = "10/minute"
"#,
        id = quote(&campaign_id(&a.target_name)),
        name = quote(&format!("Letter to {}", a.target_name)),
        subject = quote(&a.subject),
        from = quote(&mailbox(&a.your_name, &a.your_email)),
        target_name = quote(&a.target_name),
        target_email = quote(&a.target_email),
        host = quote(&a.host),
        port = a.port,
        username = quote(&a.username),
    )
}

/// `email,name` and the volunteer's row.
fn supporters(a: &Answers) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["email", "name"])?;
    w.write_record([a.your_email.as_str(), a.your_name.as_str()])?;
    Ok(String::from_utf8(
        w.into_inner().context("cannot write the supporters file")?,
    )?)
}

/// The letter files of `campaign` that still hold the skeleton's sentence,
/// as `FILE:LINE` (a letter nobody wrote yet must not go out).
pub(crate) fn unwritten_letters(campaign: &crate::campaign::Campaign) -> Vec<String> {
    let path = &campaign.config.campaign.letter;
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .position(|l| l.contains(UNWRITTEN))
        .map(|i| format!("{}:{}", path.display(), i + 1))
        .into_iter()
        .collect()
}

/// `send`'s gate: a real relay never gets the skeleton letter.
pub(crate) fn refuse_unwritten(campaign: &crate::campaign::Campaign) -> Result<()> {
    let Some(host) = crate::placeholder::real_relay(campaign) else {
        return Ok(());
    };
    if let Some(at) = unwritten_letters(campaign).first() {
        bail!(
            "not sending through `{host}`: {at} still says \"{UNWRITTEN}\"\n\n\
             hint: write your letter in `{}`, then run `mailer check`",
            campaign.config.campaign.letter.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_templates_are_safe() {
        assert_eq!(campaign_id("Jane Mayor"), "letter-to-jane-mayor");
        assert_eq!(campaign_id("Zoë Ødegaard"), "letter-to-zo-degaard");
        assert_eq!(mailbox("Ana López", "ana@x.org"), "Ana López <ana@x.org>");
        assert_eq!(mailbox("López, Ana", "ana@x.org"), "\"López, Ana\" <ana@x.org>");
        assert_eq!(
            literal_template("Save {{ it }}"),
            "{% raw %}Save {{ it }}{% endraw %}"
        );
    }

    #[test]
    fn the_placeholder_config_parses() {
        let text = config(&Answers::placeholders());
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["smtp"]["security"].as_str(), Some("starttls"));
        assert!(
            supporters(&Answers::placeholders())
                .unwrap()
                .starts_with("email,name\n")
        );
    }
}
