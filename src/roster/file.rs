//! Opening the supporters file: a regular file only, and its header line
//! read once to detect the delimiter.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{Result, anyhow};

/// Opens the supporters file, refusing anything but a regular file.
///
/// NOTE: mailer reads the file twice (`send` checks every row, then sends),
/// and rows are named by their line: it needs a file that stays put. A FIFO,
/// a device or a process substitution (`<(…)`) reads differently each time,
/// or never ends, and opening a FIFO with no writer blocks for ever (with the
/// ledger locked, beyond the reach of a single SIGTERM). So the type is
/// checked before anything is opened for reading, and again on the opened
/// descriptor, which cannot change under us.
pub(super) fn open_regular(path: &Path) -> Result<File> {
    let shown = path.display();
    let unreadable = |e: io::Error| {
        anyhow!("cannot read supporters file `{shown}`: {e}\n\nhint: check [supporters] file in the config")
    };
    let not_regular = |meta: &std::fs::Metadata| {
        let kind = file_kind(meta);
        anyhow!(
            "supporters file `{shown}` is {kind}, not a regular file: mailer reads the supporters \
             twice (it checks every row before it sends) and names rows by their line, so it needs \
             a file that stays put\n\nhint: export the supporters to a file (e.g. `supporters.csv`) \
             and set [supporters] file to it"
        )
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// What a file that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// The delimiter of a CSV file, from its header line: the most frequent
/// of `,`, `;` and tab outside quotes (a comma when none appears).
pub(super) fn detect_delimiter(head: &[u8]) -> u8 {
    let (mut counts, mut quoted) = ([0usize; 3], false);
    for &b in head {
        match b {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted => break,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3)
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    if counts[best] == 0 {
        b','
    } else {
        [b',', b';', b'\t'][best]
    }
}

/// The file's first bytes, up to the end of the header line (at most 64 KiB:
/// a longer line decides on what it has).
pub(super) fn read_head(file: &mut File) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while head.len() < 1 << 16 {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delimiter_is_the_most_frequent_outside_quotes() {
        assert_eq!(detect_delimiter(b"email,first_name,city\na;b;c;d\n"), b',');
        assert_eq!(detect_delimiter(b"email;first_name;city\n"), b';');
        assert_eq!(detect_delimiter(b"Email Address\tFirst Name\n"), b'\t');
        assert_eq!(detect_delimiter(b"\"a;b;c\",email\n"), b',');
        assert_eq!(detect_delimiter(b"email\n"), b',');
    }
}
