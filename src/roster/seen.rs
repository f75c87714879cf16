//! The duplicate set: every address read so far, as a fingerprint, and the
//! line it was first read on; the one thing that grows with the file.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};

/// Shards of [`Seen`]: a power of two.
const SEEN_SHARDS: usize = 256;

/// The addresses read so far (their [`fingerprint`]) and the line of each.
///
/// NOTE: one `HashMap<u128, u64>` of a million rows peaks at ~96 MB while it
/// grows for the last time (old and new tables both live, 32-byte entries).
/// Split by the fingerprint's low bits, each shard grows on its own, so the
/// peak stays near the tables' size, and a `[u64; 2]` key packs an entry in
/// 24 bytes. Same answers, half the memory.
pub(super) struct Seen {
    shards: Vec<HashMap<[u64; 2], u64>>,
}

impl Seen {
    pub(super) fn new() -> Seen {
        Seen {
            shards: (0..SEEN_SHARDS).map(|_| HashMap::new()).collect(),
        }
    }

    /// The line `fingerprint` was first read on, if it was.
    pub(super) fn get(&self, fingerprint: u128) -> Option<u64> {
        let (shard, key) = Seen::place(fingerprint);
        self.shards[shard].get(&key).copied()
    }

    pub(super) fn insert(&mut self, fingerprint: u128, line: u64) {
        let (shard, key) = Seen::place(fingerprint);
        self.shards[shard].insert(key, line);
    }

    fn place(fingerprint: u128) -> (usize, [u64; 2]) {
        let key = [(fingerprint >> 64) as u64, fingerprint as u64];
        ((key[1] as usize) & (SEEN_SHARDS - 1), key)
    }
}

/// 128 bits of the lower-cased address: enough to dedupe millions of rows
/// without keeping every address in memory.
pub(crate) fn fingerprint(parts: &[&str]) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        parts.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keeps_the_first_line_of_every_address_in_every_shard() {
        let mut seen = Seen::new();
        let key = |i: u64| fingerprint(&[&format!("s{i}@mail.example")]);
        for i in 0..20_000 {
            assert_eq!(seen.get(key(i)), None);
            seen.insert(key(i), i + 2);
        }
        for i in 0..20_000 {
            assert_eq!(seen.get(key(i)), Some(i + 2));
        }
        assert!(seen.shards.iter().all(|s| !s.is_empty()));
        assert_eq!(seen.get(fingerprint(&["other@mail.example"])), None);
    }
}
