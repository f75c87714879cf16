//! Issue 10: who writes to whom, with which letter — routing by `match` and
//! by a targets CSV, per-target letters and subjects, languages with front
//! matter, attachments, real-world CSVs, the empty-letter refusal,
//! `send --test` and the shape of `send --dry-run`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use crate::support::campaign::Campaign;
use crate::support::smtp::{Received, Security, Server, ServerOptions};

// ---- helpers ----

/// A config head with these `[campaign]` extras and these targets.
fn head(campaign_extra: &str, targets: &str, rest: &str) -> String {
    format!(
        r#"[campaign]
id = "test-campaign"
name = "Drop the contract"
org = "Test Org"
letter = "letters/letter.txt"
subject = "{{{{ supporter.first_name }}}}: drop the contract"
{campaign_extra}
[sender]
from = "{{{{ supporter.name }}}} via Test Org <letters@org.example>"
reply_to = "{{{{ supporter.email }}}}"

{targets}
[supporters]
file = "supporters.csv"
{rest}
"#
    )
}

const CEO: &str = "[[targets]]\nname = \"Satya Nadella\"\nemail = \"ceo@corp.example\"\ntitle = \"CEO\"\n";

fn server() -> Server {
    Server::start(ServerOptions::new(Security::Plain))
}

fn idle(server: &Server) -> Vec<Received> {
    assert!(server.wait_idle(Duration::from_secs(10)));
    server.received()
}

/// (supporter, target) of each received letter: Reply-To is the supporter.
fn pairs(got: &[Received]) -> BTreeSet<(String, String)> {
    got.iter()
        .map(|m| (m.header("Reply-To").unwrap(), m.rcpt_to[0].clone()))
        .collect()
}

fn pair(s: &str, t: &str) -> (String, String) {
    (s.to_string(), t.to_string())
}

/// The decoded text/plain part (quoted-printable or base64) of a message.
fn body_text(m: &Received) -> String {
    let raw = m.text();
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    let qp = body.contains("=\r\n")
        || m.header("Content-Transfer-Encoding")
            .is_some_and(|e| e.contains("quoted"));
    if qp {
        body.replace("=\r\n", "")
            .replace("=C3=B3", "ó")
            .replace("=3D", "=")
    } else {
        body.to_string()
    }
}

/// Three regional offices, several rows per state; columns beyond `name`
/// and `email` reach `target.*`.
const OFFICES: &str = "name,email,state,district,title\n\
Rep One,one@gov.example,CA,1,Representative\n\
Rep Two,two@gov.example,CA,2,Representative\n\
Rep Three,three@gov.example,NY,1,Representative\n";

// ---- item 1: routing ----

#[test]
fn issue10_routes_by_targets_match_and_by_a_targets_csv_on_several_columns() {
    let server = server();
    let letter = "Dear {{ target.title }} {{ target.name }},\n\nI am {{ supporter.name }}.\n";
    let cfo = "[[targets]]\nname = \"Amy Hood\"\nemail = \"cfo@corp.example\"\ntitle = \"CFO\"\nmatch = { shareholder = [\"yes\"] }\n";
    let c = Campaign::new()
        .head(&head(
            "",
            &format!("{CEO}\n{cfo}"),
            "\n[routing]\ntargets = \"targets.csv\"\nmatch = [\"state\", \"district\"]\n",
        ))
        .file("letters/letter.txt", letter)
        .file("targets.csv", OFFICES)
        .file(
            "supporters.csv",
            "email,first_name,last_name,state,district,shareholder\n\
             ana@mail.example,Ana,López,\" ca \",1,YES\n\
             sam@mail.example,Sam,Okafor,Ny,1 ,no\n\
             lee@mail.example,Lee,Park,TX,1,\n",
        )
        .smtp_plain(&server);
    c.run(&["check"])
        .code(0)
        .stdout_has("3 supporters → 6 letters to 5 targets ready; 0 problems");
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 6");
    let got = idle(&server);
    assert_eq!(
        pairs(&got),
        BTreeSet::from([
            pair("ana@mail.example", "ceo@corp.example"),
            pair("ana@mail.example", "cfo@corp.example"),
            pair("ana@mail.example", "one@gov.example"),
            pair("sam@mail.example", "ceo@corp.example"),
            pair("sam@mail.example", "three@gov.example"),
            pair("lee@mail.example", "ceo@corp.example"),
        ])
    );
    let to_one = got.iter().find(|m| m.rcpt_to[0] == "one@gov.example").unwrap();
    assert!(
        body_text(to_one).contains("Dear Representative Rep One,"),
        "{}",
        to_one.text()
    );
    assert_eq!(c.states(), vec![("sent".to_string(), 6)]);
    // A routed target is a target like any other for preview.
    let p = c.run(&["preview", "--target", "three@gov.example"]);
    p.code(0).stdout_has("To: Rep Three <three@gov.example>");
    assert!(!p.stdout.contains("one@gov.example"));
}

#[test]
fn issue10_supporters_who_match_no_target_are_counted_by_their_values() {
    let c = Campaign::new()
        .head(&head(
            "",
            "",
            "\n[routing]\ntargets = \"targets.csv\"\nmatch = [\"state\"]\n",
        ))
        .file("targets.csv", OFFICES)
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,state\n\
             a@mail.example,A,A,X,PR\nb@mail.example,B,B,X,pr\nc@mail.example,C,C,X,GU\n\
             d@mail.example,D,D,X,CA\ne@mail.example,E,E,X,NY\n",
        );
    c.run(&["check"])
        .code(0)
        .stdout_has("3 supporters match no target: state PR 2, GU 1")
        .stdout_has("2 supporters → 3 letters to 3 targets ready");
    c.run(&["check", "--strict"]).code(1);
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("No letter: 3 supporters match no target: state PR 2, GU 1")
        .stdout_has("Letters due now: 3");
}

#[test]
fn issue10_a_match_column_missing_from_the_supporters_file_is_an_error() {
    let c = Campaign::new()
        .head(&head(
            "",
            "",
            "\n[routing]\ntargets = \"targets.csv\"\nmatch = [\"state\"]\n",
        ))
        .file("targets.csv", OFFICES);
    c.run(&["check"])
        .code(1)
        .stderr_has("supporters.csv:1: no `state` column, which [routing] match names");
}

// ---- item 2: per-target letter and subject ----

#[test]
fn issue10_a_target_s_own_letter_and_subject_replace_the_campaign_s() {
    let cfo = "[[targets]]\nname = \"Amy Hood\"\nemail = \"cfo@corp.example\"\nletter = \"letters/cfo.txt\"\nsubject = \"Shareholder {{ supporter.first_name }} on the contract\"\n";
    let c = Campaign::new()
        .head(&head("", &format!("{CEO}\n{cfo}"), ""))
        .file(
            "letters/cfo.txt",
            "Dear CFO, as a shareholder I ask you to act.\n",
        );
    let run = c.run(&["preview", "--supporter", "ana@mail.example"]);
    run.code(0);
    let (ceo, cfo) = run.stdout.split_once(&"-".repeat(72)).unwrap();
    assert!(ceo.contains("Subject: Ana: drop the contract"), "{ceo}");
    assert!(ceo.contains("Dear Satya Nadella"), "{ceo}");
    assert!(cfo.contains("Subject: Shareholder Ana on the contract"), "{cfo}");
    assert!(cfo.contains("Dear CFO, as a shareholder"), "{cfo}");
}

// ---- item 3: languages ----

#[test]
fn issue10_languages_pick_the_letter_file_and_its_front_matter_subject() {
    let es = "+++\nsubject = \"Hola {{ supporter.first_name }}: cancele el contrato\"\n+++\nEstimado {{ target.name }}:\n\nSoy {{ supporter.name }}.\n";
    let c = Campaign::new()
        .head(&head("language_column = \"Language\"", CEO, ""))
        .file("letters/letter.es.txt", es)
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,language\n\
             ana@mail.example,Ana,López,Tucson,es\n\
             sam@mail.example,Sam,Okafor,Minneapolis,\" ES \"\n\
             lee@mail.example,Lee,Park,Seattle,fr\n",
        );
    let run = c.run(&["preview"]);
    run.code(0);
    let letters: Vec<&str> = run.stdout.split(&"-".repeat(72)).collect();
    assert_eq!(letters.len(), 3);
    for spanish in &letters[..2] {
        assert!(spanish.contains(": cancele el contrato"), "{spanish}");
        assert!(spanish.contains("Estimado Satya Nadella:"), "{spanish}");
        assert!(
            !spanish.contains("+++") && !spanish.contains("subject ="),
            "{spanish}"
        );
    }
    assert!(letters[0].contains("Subject: Hola Ana: cancele el contrato"));
    assert!(
        letters[2].contains("Subject: Lee: drop the contract"),
        "{}",
        letters[2]
    );
    assert!(letters[2].contains("Dear Satya Nadella"), "{}", letters[2]);
    c.run(&["check"])
        .code(0)
        .stdout_has("languages: es 2, fr 1; without a letter of their own (they get the default letter): fr");
}

#[test]
fn issue10_a_front_matter_error_names_the_letter_file_and_line() {
    let c = Campaign::new()
        .head(&head("language_column = \"language\"", CEO, ""))
        .file("letters/letter.es.txt", "+++\nsubjet = \"x\"\n+++\nHola\n");
    c.run(&["check"])
        .code(1)
        .stderr_has("letters/letter.es.txt:2: front matter: unknown field `subjet`");
}

// ---- item 4: attachments ----

const VERIFY_PY: &str = r#"
import sys
import dkim
message = open(sys.argv[1], "rb").read()
record = open(sys.argv[2], "rb").read()
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return record if name.rstrip(".").lower() == "mailer._domainkey.org.example" else None
print(dkim.verify(message, dnsfunc=dnsfunc))
"#;

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The attachment parts of a message: (headers, body as sent).
fn attachments(m: &Received) -> Vec<(String, String)> {
    let text = m.text();
    let mut out = Vec::new();
    for part in text.split("\r\n--").skip(1) {
        let Some((headers, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        if headers
            .to_ascii_lowercase()
            .contains("content-disposition: attachment")
        {
            out.push((headers.to_string(), body.to_string()));
        }
    }
    out
}

#[test]
fn issue10_attachments_arrive_byte_identical_and_dkim_verifies() {
    let server = server();
    let pdf: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let c = Campaign::new()
        .head(
            &head("attachments = [\"petition.pdf\", \"notes/facts.txt\"]", CEO, "")
                .replace("letters/letter.txt", "letters/letter.md"),
        )
        .file("petition.pdf", &pdf)
        .file("notes/facts.txt", "fact one\n")
        .file(
            "letters/letter.md",
            "Dear {{ target.name }},\n\n**Please** act.\n",
        )
        .smtp_plain(&server)
        .section(
            "[dkim]\ndomain = \"org.example\"\nselector = \"mailer\"\nprivate_key_file = \"dkim.pem\"\n",
        );
    openssl(&["genrsa", "-traditional", "-out", "dkim.pem", "2048"], c.path());
    let spki = openssl(
        &["pkey", "-in", "dkim.pem", "-pubout", "-outform", "DER"],
        c.path(),
    );
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(spki)
    );
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 3");
    let got = idle(&server);
    assert_eq!(got.len(), 3);
    let m = &got[0];
    assert!(
        m.header("Content-Type").unwrap().starts_with("multipart/mixed"),
        "{}",
        m.text()
    );
    assert!(
        m.text().contains("multipart/alternative"),
        "the text + HTML body stays together"
    );
    let files = attachments(m);
    assert_eq!(files.len(), 2, "{}", m.text());
    assert!(files[0].0.contains("application/pdf"), "{}", files[0].0);
    assert!(files[0].0.contains("petition.pdf"), "{}", files[0].0);
    assert!(files[0].0.contains("base64"), "{}", files[0].0);
    let b64: String = files[0].1.lines().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    assert_eq!(bytes, pdf, "the PDF arrives byte-identical");
    assert!(
        files[1].0.contains("facts.txt") && files[1].0.contains("text/plain"),
        "{}",
        files[1].0
    );
    let b64: String = files[1].1.lines().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    assert_eq!(
        bytes, b"fact one\n",
        "a text file arrives byte-identical too (LF kept)"
    );
    let eml = c.join("verify.eml");
    std::fs::write(&eml, &m.data).unwrap();
    std::fs::write(c.join("verify.txt"), &record).unwrap();
    let out = Command::new("python3")
        .args(["-c", VERIFY_PY])
        .arg(&eml)
        .arg(c.join("verify.txt"))
        .output()
        .expect("python3 with dkimpy");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn issue10_a_missing_attachment_is_named_at_its_config_line() {
    let c = Campaign::new().head(&head("attachments = [\"petition.pdf\"]", CEO, ""));
    c.run(&["check"])
        .code(1)
        .stderr_has("mailer.toml:7: cannot read attachment `petition.pdf`");
}

// ---- item 5: real-world CSVs ----

#[test]
fn issue10_a_tab_separated_export_with_email_address_and_padded_values() {
    let c = Campaign::new()
        .head(&head("", CEO, "email_column = \"Email Address\"\n"))
        .file(
            "supporters.csv",
            "Email Address\tFirst Name\tLast Name\tCity\n ana@mail.example \t Ana \tLópez\t  Tucson \n",
        );
    let run = c.run(&["preview"]);
    run.code(0)
        .stdout_has("I am Ana López from Tucson.\n")
        .stdout_has("Subject: Ana: drop the contract");
}

#[test]
fn issue10_a_forced_delimiter_wins_over_detection() {
    // Detection would pick `,` (three of them); `delimiter = ";"` reads two columns.
    let c = Campaign::new()
        .head(&head("", CEO, "delimiter = \";\"\n"))
        .file("letters/letter.txt", "From {{ supporter.city }}.\n")
        .file(
            "supporters.csv",
            "email;first_name;city\nana@mail.example;Ana;Tucson, AZ, US, Earth\n",
        );
    c.run(&["preview"])
        .code(0)
        .stdout_has("From Tucson, AZ, US, Earth.");
}

#[test]
fn issue10_a_bom_at_the_start_of_a_letter_file_is_not_in_the_body() {
    let server = server();
    let c = Campaign::new()
        .file(
            "letters/letter.txt",
            "\u{feff}Dear {{ target.name }},\n\nPlease act.\n",
        )
        .smtp_plain(&server);
    let run = c.run(&["preview"]);
    run.code(0);
    assert!(!run.stdout.contains('\u{feff}'), "{:?}", run.stdout);
    c.run(&["send", "--yes"]).code(0);
    let got = idle(&server);
    assert!(!got[0].text().contains("=EF=BB=BF"), "{}", got[0].text());
    assert!(!got[0].text().contains('\u{feff}'), "{}", got[0].text());
}

// ---- item 6: an empty letter is never sent ----

#[test]
fn issue10_a_letter_that_renders_empty_is_an_error_and_never_sent() {
    let server = server();
    let cfo = "[[targets]]\nname = \"Amy Hood\"\nemail = \"cfo@corp.example\"\ntitle = \"Chief Financial Officer\"\n";
    let c = Campaign::new()
        .head(&head("", &format!("{CEO}\n{cfo}"), ""))
        .file(
            "letters/letter.txt",
            "{% if target.title != \"Chief Financial Officer\" %}Dear {{ target.name }}, act.{% endif %}\n\n",
        )
        .smtp_plain(&server);
    c.run(&["check"])
        .code(1)
        .stdout_has("the letter to `cfo@corp.example` is empty");
    c.run(&["send", "--yes"]).code(1);
    assert!(server.received().is_empty());
}

// ---- item 7: send --test ----

#[test]
fn issue10_send_test_sends_each_combination_to_one_inbox_and_leaves_the_ledger_alone() {
    let server = server();
    let es = "+++\nsubject = \"Hola {{ supporter.first_name }}\"\n+++\nEstimado {{ target.name }}\n";
    let cfo = "[[targets]]\nname = \"Amy Hood\"\nemail = \"cfo@corp.example\"\n";
    let c = Campaign::new()
        .head(
            &head("language_column = \"language\"", &format!("{CEO}\n{cfo}"), "").replace(
                "reply_to = \"{{ supporter.email }}\"\n",
                "reply_to = \"{{ supporter.email }}\"\ncc_supporter = true\nbcc = [\"archive@org.example\"]\n",
            ),
        )
        .file("letters/letter.es.txt", es)
        .file(
            "supporters.csv",
            "email,first_name,last_name,city,language\n\
             ana@mail.example,Ana,López,Tucson,es\n\
             sam@mail.example,Sam,Okafor,Minneapolis,en\n\
             lee@mail.example,Lee,Park,Seattle,es\n",
        )
        .smtp_plain(&server)
        .section("[delivery]\ndaily_limit = 6\n");
    let run = c.run(&["send", "--test", "me@inbox.example"]);
    run.code(0).stdout_has("test 4/4: ");
    let got = idle(&server);
    // 2 targets × 2 letter files (default, es): 4 combinations.
    assert_eq!(got.len(), 4, "{}", run.stdout);
    for m in &got {
        assert_eq!(m.rcpt_to, vec!["me@inbox.example".to_string()]);
        assert!(
            m.header("Subject").unwrap().starts_with("[TEST] "),
            "{:?}",
            m.header("Subject")
        );
        assert_eq!(m.header("To").as_deref(), Some("me@inbox.example"));
        assert!(m.header("Cc").is_none() && m.header("Bcc").is_none());
    }
    let subjects: BTreeSet<String> = got.iter().map(|m| m.header("Subject").unwrap()).collect();
    assert!(subjects.contains("[TEST] Hola Ana"), "{subjects:?}");
    assert!(subjects.contains("[TEST] Sam: drop the contract"), "{subjects:?}");
    assert!(
        !c.ledger().exists() || c.states().is_empty(),
        "the ledger is untouched"
    );
    // --limit caps the combinations.
    c.run(&["send", "--test", "me@inbox.example", "--limit", "1"])
        .code(0);
    assert_eq!(idle(&server).len(), 5);
    // A normal send afterwards delivers every letter once, within daily_limit.
    c.run(&["send", "--yes"]).code(0).stdout_has("sent 6");
    let real: Vec<Received> = idle(&server).into_iter().skip(5).collect();
    assert_eq!(real.len(), 6);
    assert!(
        real.iter()
            .all(|m| !m.header("Subject").unwrap().starts_with("[TEST]"))
    );
    assert_eq!(c.states(), vec![("sent".to_string(), 6)]);
}

// ---- item 8: the shape in a dry run ----

#[test]
fn issue10_dry_run_groups_routed_targets_and_counts_letter_files() {
    let mut targets = String::from("name,email,state\n");
    for i in 0..12 {
        let _ = writeln!(targets, "Office {i},office{i}@gov.example,S{}", i % 12);
    }
    let mut supporters = String::from("email,first_name,last_name,city,state,language\n");
    for i in 0..30 {
        let state = if i < 8 { 0 } else { i % 12 };
        let lang = if i % 3 == 0 { "es" } else { "" };
        let _ = writeln!(supporters, "s{i}@mail.example,F{i},L{i},C,s{state},{lang}");
    }
    let c = Campaign::new()
        .head(&head(
            "language_column = \"language\"",
            CEO,
            "\n[routing]\ntargets = \"targets.csv\"\nmatch = [\"state\"]\n",
        ))
        .file("letters/letter.es.txt", "Hola {{ target.name }}\n")
        .file("targets.csv", &targets)
        .file("supporters.csv", &supporters);
    let run = c.run(&["send", "--dry-run"]);
    run.code(0)
        .stdout_has("Letters due now: 60")
        .stdout_has("      30  to Satya Nadella <ceo@corp.example>")
        .stdout_has("      30  to the 12 targets of `targets.csv`:")
        .stdout_has("        10  to Office 0 <office0@gov.example>")
        .stdout_has("… 2 more")
        .stdout_has("letters/letter.es.txt (language es)")
        .stdout_has("  letters/letter.txt\n");
}

// ---- item 9: the shipped example ----

#[test]
fn issue10_the_shipped_routing_example_routes_the_example_supporters() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(repo.join("config.example.toml")).unwrap();
    let routed = example
        .replace("# [routing]\n", "[routing]\n")
        .replace("# targets = \"targets.csv\"\n", "targets = \"targets.csv\"\n")
        .replace("# match = [\"city\"]\n", "match = [\"city\"]\n")
        // A loopback relay: `check` then has no placeholder addresses to list.
        .replace("host = \"smtp.example.org\"", "host = \"127.0.0.1\"");
    assert!(routed.contains("\n[routing]\ntargets = \"targets.csv\"\nmatch = [\"city\"]\n"));
    let mut c = Campaign::new()
        .file(
            "supporters.example.csv",
            std::fs::read(repo.join("supporters.example.csv")).unwrap(),
        )
        .file("targets.csv", std::fs::read(repo.join("targets.csv")).unwrap());
    for entry in std::fs::read_dir(repo.join("letters")).unwrap() {
        let entry = entry.unwrap();
        let name = format!("letters/{}", entry.file_name().to_string_lossy());
        c = c.file(&name, std::fs::read(entry.path()).unwrap());
    }
    let c = c.head(&routed);
    c.run(&["check"])
        .code(0)
        .stdout_has("12 supporters → 18 letters to 7 targets ready");
    c.run(&["send", "--dry-run"])
        .code(0)
        .stdout_has("Letters due now: 18")
        .stdout_has("to the 6 targets of `targets.csv`:");
    c.run(&["preview", "--target", "texas.office.elpaso@microsoft.example"])
        .code(0)
        .stdout_has("from El Paso, a border city: end the ICE contract");
}
