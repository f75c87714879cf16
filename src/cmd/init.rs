//! `mailer init [DIR]`: a working campaign folder that `mailer check` passes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::exit::Exit;
use crate::ui::Ui;

/// The shipped example letter: a sensible start for any campaign.
const LETTER: &str = include_str!("../../letters/letter.md");

/// Answers to init's questions.
#[derive(Debug, Clone)]
struct Answers {
    name: String,
    org: String,
    target_name: String,
    target_email: String,
}

impl Default for Answers {
    fn default() -> Self {
        Answers {
            name: "Tell Microsoft: drop ICE".into(),
            org: "Color Of Change".into(),
            target_name: "Satya Nadella".into(),
            target_email: "satya.nadella@microsoft.example".into(),
        }
    }
}

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
    let mut a = Answers::default();
    if ui.interactive() {
        a.name = ui.ask("Campaign name", &a.name);
        a.org = ui.ask("Organization", &a.org);
        a.target_name = ui.ask("Target's name", &a.target_name);
        loop {
            a.target_email = ui.ask("Target's email", &a.target_email);
            if a.target_email.parse::<lettre::Address>().is_ok() {
                break;
            }
            ui.warn("that is not an email address");
        }
    }
    std::fs::create_dir_all(dir.join("letters"))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    write(&files[0], &config(&a))?;
    write(&files[1], LETTER)?;
    write(&files[2], SUPPORTERS)?;
    ui.note(&format!("Created a campaign in `{}`.", dir.display()));
    ui.hint(&format!(
        "edit mailer.toml ([smtp] and the sender), then run `mailer -c {} check` and `mailer -c {} preview`",
        files[0].display(),
        files[0].display()
    ));
    Ok(Exit::Done)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn config(a: &Answers) -> String {
    let id: String = a
        .name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let id = if id.is_empty() { "campaign".to_string() } else { id };
    let org_domain: String = a
        .org
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let org_domain = if org_domain.is_empty() {
        "org".to_string()
    } else {
        org_domain
    };
    format!(
        r#"# mailer campaign — see config.example.toml in the mailer repository for every key.

[campaign]
id = {id}
name = {name}
org = {org}
letter = "letters/letter.md"
subject = "{{{{ supporter.first_name }}}} from {{{{ supporter.city }}}}: a letter to you"

[sender]
# DMARC-safe: your organization's address, the supporter's name as display name.
from = {from}
reply_to = "{{{{ supporter.email }}}}"

[[targets]]
name = {target_name}
email = {target_email}

[supporters]
file = "supporters.csv"

[smtp]
host = "smtp.{org_domain}.example"
security = "starttls"
username = "letters@{org_domain}.example"
password_env = "MAILER_SMTP_PASSWORD"

[delivery]
rate = "30/minute"
max_per_run = 200
"#,
        id = quote(&id),
        name = quote(&a.name),
        org = quote(&a.org),
        from = quote(&format!(
            "{{{{ supporter.name }}}} via {} <letters@{org_domain}.example>",
            a.org
        )),
        target_name = quote(&a.target_name),
        target_email = quote(&a.target_email),
    )
}

const SUPPORTERS: &str = "email,first_name,last_name,city,note
ana.lopez@mail.example,Ana,López,Tucson,
sam.okafor@mail.example,Sam,Okafor,Minneapolis,\"My family came here for safety, too.\"
";
