//! `mailer man`: the man page, mailer(1). `clap_mangen` renders the title,
//! synopsis, description and global options; the commands (one page, not a
//! `mailer-init(1)` per command, which nothing installs) and the
//! ENVIRONMENT, FILES and EXIT STATUS sections are written here.

use std::fmt::Write as _;

use crate::exit::EXIT_CODES_HELP;

/// The whole page, roff.
pub(crate) fn render(cmd: &clap::Command) -> std::io::Result<String> {
    let mut cmd = cmd.clone();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    let mut text = String::from_utf8_lossy(&page).into_owned();
    commands(&mut text, &cmd);
    text.push_str(&sections());
    page.clear();
    man.render_version_section(&mut page)?;
    text.push_str(&String::from_utf8_lossy(&page));
    Ok(text)
}

/// Text safe for roff: backslashes escaped, no line starting with a control
/// character, hyphens as `\-` (so flags copy and paste).
fn roff(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// COMMANDS: each command's usage, description, options and example.
fn commands(text: &mut String, cmd: &clap::Command) {
    text.push_str(".SH COMMANDS\n");
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let mut sub = sub.clone();
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        let _ = writeln!(text, ".TP\n\\fB{}\\fR", roff(usage));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            let _ = writeln!(text, "{}", roff(&about.to_string()));
        }
        let own: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set() && a.get_id() != "help")
            .collect();
        if !own.is_empty() {
            text.push_str(".RS\n");
            for a in own {
                let name = match (a.get_long(), a.is_positional()) {
                    (_, true) => a.get_id().to_string().to_uppercase(),
                    (Some(long), false) => {
                        let value = a
                            .get_value_names()
                            .and_then(|v| v.first())
                            .filter(|_| a.get_num_args().is_some_and(|n| n.takes_values()))
                            .map(|v| format!(" {v}"))
                            .unwrap_or_default();
                        format!("--{long}{value}")
                    }
                    (None, false) => a.get_id().to_string(),
                };
                let _ = writeln!(text, ".TP\n\\fB{}\\fR", roff(&name));
                if let Some(help) = a.get_help() {
                    let _ = writeln!(text, "{}", roff(&help.to_string()));
                }
            }
            text.push_str(".RE\n");
        }
        if let Some(example) = sub.get_after_help() {
            let _ = writeln!(text, ".IP\n.nf\n{}\n.fi", roff(&example.to_string()));
        }
    }
}

/// ENVIRONMENT, FILES and EXIT STATUS.
fn sections() -> String {
    let codes: String = EXIT_CODES_HELP
        .lines()
        .skip(1)
        .map(|l| {
            let l = l.trim_start();
            match l.split_once(char::is_whitespace) {
                Some((code, rest)) if code.parse::<u8>().is_ok() => {
                    format!(".TP\n\\fB{code}\\fR\n{}\n", roff(rest.trim()))
                }
                _ => format!("{}\n", roff(l)),
            }
        })
        .collect();
    format!(
        r".SH ENVIRONMENT
.TP
\fBMAILER_CONFIG\fR
The campaign config file when \fB\-c\fR is not given (default: \fImailer.toml\fR in the current folder).
.TP
\fBMAILER_SMTP_PASSWORD\fR
The SMTP password, unless [smtp] password_env names another variable or password_command is set.
.TP
\fBMAILER_BOUNCES_PASSWORD\fR
The bounce mailbox password, unless [bounces] password_env names another variable.
.TP
\fBNO_COLOR\fR
When set and not empty, no colour on stderr (unless \fB\-\-color always\fR).
.SH FILES
.TP
\fImailer.toml\fR
The campaign config; every relative path in it resolves against its folder. Every key is explained in config.example.toml.
.TP
\fIletters/letter.md\fR
The letter, a Tera template (\fI.md\fR: text and HTML parts; \fI.txt\fR: text only).
.TP
\fIsupporters.csv\fR
One supporter a row, header row first, an \fBemail\fR column required.
.TP
\fI.mailer/<campaign.id>.sqlite3\fR
The send ledger (mode 0600 in a 0700 folder): every letter's state, so none is ever sent twice. Keep it with the campaign.
.SH EXIT STATUS
{codes}"
    )
}
