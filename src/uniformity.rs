//! How uniform a campaign's letters are: the `uniformity:` line `check`
//! prints per target. Pure: fed the letters `check` already renders.
//!
//! The measure: each letter body becomes the set of its word 3-shingles
//! (three consecutive words, lower-cased), with the supporter's own name,
//! city and email words set aside first. Two letters are *near-identical*
//! when the Jaccard resemblance of their sets (shared shingles / all
//! shingles) is at least [`NEAR_IDENTICAL`]: they share at least 95% of
//! their word shingles. So a 15-word personal note (≈ 17 new shingles)
//! sets a letter of up to ~300 words apart from the rest, while a letter
//! that differs only in the supporter's name, city and email does not. The share printed is the share of a target's
//! letters near-identical to at least one other letter to that target,
//! computed exactly on up to [`SAMPLE`] letters per target: past that, on
//! the [`SAMPLE`] letters with the lowest Message-ID digest — a
//! deterministic sample that depends on who the letters are from, never on
//! row order, row count or the run — and the line says so.

use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;

use crate::config::Target;
use crate::message::Built;
use crate::report::thousands;
use crate::roster::Supporter;

/// Jaccard resemblance from which two letters count as near-identical.
pub(crate) const NEAR_IDENTICAL: f64 = 0.95;
/// Letters per target measured exactly; past that, a deterministic sample.
pub(crate) const SAMPLE: usize = 1000;
/// Columns a supporter writes their own words in.
const NOTE_COLUMNS: [&str; 6] = ["note", "notes", "personal_note", "comment", "comments", "message"];
/// A note adds real words when it has at least this many words of letters.
const NOTE_MIN_WORDS: usize = 3;
/// Shares from which `check` adds the hint.
pub(crate) const HIGH: f64 = 0.5;

/// Collects the letters of a campaign, one target at a time.
///
/// NOTE: the rows of `[routing] targets` share one line ("the 535 targets
/// of `targets.csv`"): one sample per row would hold hundreds of thousands
/// of shingle sets, and hundreds of lines would hide the point.
pub(crate) struct Meter {
    targets: Vec<TargetMeter>,
    /// Target index → its meter in `targets`.
    slot: Vec<usize>,
}

struct TargetMeter {
    name: String,
    letters: u64,
    noted: u64,
    /// The sample: the lowest Message-ID digests, with their shingle sets.
    sample: BinaryHeap<Sampled>,
}

/// One sampled letter; the heap's top is the highest digest.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Sampled {
    digest: u64,
    shingles: Vec<u32>,
}

/// One target's line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Uniformity {
    /// The target's name, else its address.
    pub(crate) target: String,
    /// Its letters.
    pub(crate) letters: u64,
    /// Share of them near-identical to another letter to it.
    pub(crate) near_identical: f64,
    /// Share carrying a personal note.
    pub(crate) noted: f64,
    /// `Some(n)`: the near-identical share is estimated from n letters.
    pub(crate) sampled: Option<usize>,
}

impl Uniformity {
    /// Whether the hint should follow.
    #[must_use]
    pub(crate) fn is_high(&self) -> bool {
        self.letters > 1 && self.near_identical >= HIGH
    }
}

impl fmt::Display for Uniformity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64| (x * 100.0).round() as u64;
        let (noun, verb) = if self.letters == 1 {
            ("letter", "is")
        } else {
            ("letters", "are")
        };
        write!(
            f,
            "uniformity: {}% of the {} {noun} to {} {verb} near-identical",
            pct(self.near_identical),
            thousands(self.letters),
            self.target
        )?;
        if let Some(n) = self.sampled {
            write!(f, " (estimated from a sample of {})", thousands(n as u64))?;
        }
        write!(f, "; {}% carry a personal note", pct(self.noted))
    }
}

impl Meter {
    /// A meter for these targets (in config order, as `Prepared` gives letters).
    #[must_use]
    pub(crate) fn new(targets: &[Arc<Target>], routing_file: Option<&str>) -> Meter {
        let meter = |name: String| TargetMeter {
            name,
            letters: 0,
            noted: 0,
            sample: BinaryHeap::new(),
        };
        let mut meters = Vec::new();
        let mut slot = Vec::with_capacity(targets.len());
        let routed = targets.iter().filter(|t| t.routed.is_some()).count();
        let mut routed_slot = None;
        for t in targets {
            if t.routed.is_some() {
                let i = *routed_slot.get_or_insert_with(|| {
                    meters.push(meter(format!(
                        "the {} targets of `{}`",
                        thousands(routed as u64),
                        routing_file.unwrap_or("[routing] targets")
                    )));
                    meters.len() - 1
                });
                slot.push(i);
            } else {
                meters.push(meter(t.name.clone().unwrap_or_else(|| t.email.to_string())));
                slot.push(meters.len() - 1);
            }
        }
        Meter {
            targets: meters,
            slot,
        }
    }

    /// Counts one supporter's letters, one per target.
    pub(crate) fn add(&mut self, supporter: &Supporter, letters: &[(Arc<Target>, Built)]) {
        let note = personal_note(supporter);
        let mut own: Option<Vec<String>> = None;
        for (target, built) in letters {
            let t = &mut self.targets[self.slot[target.index]];
            t.letters += 1;
            if note.is_some_and(|n| built.text.contains(n)) {
                t.noted += 1;
            }
            let digest = digest_of(&built.message_id);
            if t.sample.len() >= SAMPLE && t.sample.peek().is_some_and(|top| digest >= top.digest) {
                continue;
            }
            let own = own.get_or_insert_with(|| own_words(supporter));
            t.sample.push(Sampled {
                digest,
                shingles: shingles(&built.text, own),
            });
            if t.sample.len() > SAMPLE {
                t.sample.pop();
            }
        }
    }

    /// One line per target, in config order (targets without letters left out).
    #[must_use]
    pub(crate) fn finish(self) -> Vec<Uniformity> {
        self.targets
            .into_iter()
            .filter(|t| t.letters > 0)
            .map(|t| {
                let sets: Vec<Vec<u32>> = t.sample.into_iter().map(|s| s.shingles).collect();
                let measured = sets.len();
                Uniformity {
                    target: t.name,
                    letters: t.letters,
                    near_identical: near_identical(sets) as f64 / measured.max(1) as f64,
                    noted: t.noted as f64 / t.letters as f64,
                    sampled: (t.letters > measured as u64).then_some(measured),
                }
            })
            .collect()
    }
}

/// The first 16 hex digits of a Message-ID (`<HEX@DOMAIN>`) as a number.
fn digest_of(message_id: &str) -> u64 {
    let hex = message_id.trim_start_matches('<');
    u64::from_str_radix(hex.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

/// The supporter's note, when it adds real words.
fn personal_note(s: &Supporter) -> Option<&str> {
    s.headers
        .iter()
        .zip(&s.values)
        .filter(|(h, _)| NOTE_COLUMNS.contains(&h.as_str()))
        .map(|(_, v)| v.trim())
        .find(|v| {
            v.split_whitespace()
                .filter(|w| w.chars().filter(|c| c.is_alphabetic()).count() >= 2)
                .count()
                >= NOTE_MIN_WORDS
        })
}

/// The words of the supporter's own name, city and email, lower-cased.
fn own_words(s: &Supporter) -> Vec<String> {
    let mut text = format!("{} {}", s.name, s.email);
    for (h, v) in s.headers.iter().zip(&s.values) {
        if matches!(h.as_str(), "name" | "first_name" | "last_name" | "city") {
            text.push(' ');
            text.push_str(v);
        }
    }
    let mut words: Vec<String> = words(&text).collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// Lower-cased words: runs of letters and digits.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The sorted, distinct hashes of the word 3-shingles of `text`, the
/// supporter's own words set aside. A text of fewer than 3 words is one
/// shingle.
fn shingles(text: &str, own: &[String]) -> Vec<u32> {
    let kept: Vec<String> = words(text).filter(|w| own.binary_search(w).is_err()).collect();
    let mut out: Vec<u32> = if kept.len() < 3 {
        vec![hash(&kept.iter().map(String::as_str).collect::<Vec<_>>())]
    } else {
        kept.windows(3)
            .map(|w| hash(&[w[0].as_str(), w[1].as_str(), w[2].as_str()]))
            .collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// FNV-1a over the words (NUL-separated), folded to 32 bits.
fn hash(words: &[&str]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    (h ^ (h >> 32)) as u32
}

/// Jaccard resemblance of two sorted, distinct sets.
fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - shared;
    if union == 0 {
        1.0
    } else {
        shared as f64 / union as f64
    }
}

/// How many of the letters are near-identical to at least one other.
/// Identical sets are counted together; each distinct set is compared only
/// with sets of a size that allows the threshold (J ≤ smaller / larger).
fn near_identical(mut sets: Vec<Vec<u32>>) -> usize {
    sets.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    let mut distinct: Vec<(Vec<u32>, usize)> = Vec::new();
    for s in sets {
        match distinct.last_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => distinct.push((s, 1)),
        }
    }
    let mut near = 0;
    for (i, (set, n)) in distinct.iter().enumerate() {
        if *n > 1 {
            near += n;
            continue;
        }
        let found = distinct.iter().enumerate().any(|(j, (other, _))| {
            let (small, large) = if set.len() <= other.len() {
                (set.len(), other.len())
            } else {
                (other.len(), set.len())
            };
            i != j && small as f64 >= NEAR_IDENTICAL * large as f64 && jaccard(set, other) >= NEAR_IDENTICAL
        });
        if found {
            near += 1;
        }
    }
    near
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words as a template would render them.
    fn letter(note: &str) -> String {
        format!(
            "Dear Satya Nadella,\n\nMy name is Ana López and I live in Tucson. I am writing to ask you to \
             cancel the contract with the agency that separates families at the border. Technology \
             is not neutral when it carries out such a policy, and your employees have said so \
             already. {note}\nPlease cancel the contract and say so publicly.\n\nAna López, Tucson\n"
        )
    }

    #[test]
    fn identical_sets_and_thresholds() {
        let own = vec!["ana".to_string(), "lópez".to_string(), "tucson".to_string()];
        let a = shingles(&letter(""), &own);
        let b = shingles(
            &letter("")
                .replace("Ana López", "Bo Lee")
                .replace("Tucson", "Oslo"),
            &own,
        );
        // Bo Lee's own words are not in `own`, so the texts differ by them.
        assert!(jaccard(&a, &a) > 0.999);
        assert!(jaccard(&a, &b) < 1.0);
        let noted = shingles(
            &letter("I grew up in a family that was split apart by a deportation and I still remember it."),
            &own,
        );
        assert!(jaccard(&a, &noted) < NEAR_IDENTICAL, "{}", jaccard(&a, &noted));
        assert_eq!(near_identical(vec![a.clone(), a.clone(), noted.clone()]), 2);
        assert_eq!(near_identical(vec![a, noted]), 0);
    }

    #[test]
    fn digest_reads_the_message_id() {
        assert_eq!(digest_of("<00000000000000ff1234@org.example>"), 255);
        assert_eq!(digest_of("garbage"), 0);
    }

    #[test]
    fn line_wording() {
        let u = Uniformity {
            target: "Satya Nadella".into(),
            letters: 12_000,
            near_identical: 0.94,
            noted: 0.06,
            sampled: None,
        };
        assert_eq!(
            u.to_string(),
            "uniformity: 94% of the 12,000 letters to Satya Nadella are near-identical; 6% carry a personal note"
        );
        let u = Uniformity {
            sampled: Some(1000),
            ..u
        };
        assert!(
            u.to_string()
                .contains("near-identical (estimated from a sample of 1,000); 6%")
        );
    }
}
