//! A wordcount map task: input `SPLIT WORDS`, output `word count` lines
//! for the words of input split SPLIT.
//!
//! The splits stand for data stored on particular agents. They are made
//! up here, deterministically from the split's number (the same split
//! always holds the same words), so the example needs no data set.

/// The vocabulary splits draw from.
const WORDS: [&str; 16] = [
    "offer",
    "agent",
    "master",
    "task",
    "share",
    "resource",
    "framework",
    "role",
    "wasm",
    "cluster",
    "slot",
    "locality",
    "delay",
    "fair",
    "quota",
    "update",
];

/// The words of split `split`: `words` of them.
pub fn split_words(split: u64, words: u64) -> impl Iterator<Item = &'static str> {
    let mut x = split.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..words).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        WORDS[(x % WORDS.len() as u64) as usize]
    })
}

/// Counts the words of a split, sorted by word.
pub fn count(split: u64, words: u64) -> Vec<(&'static str, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for w in split_words(split, words) {
        *counts.entry(w).or_insert(0u64) += 1;
    }
    counts.into_iter().collect()
}

struct Map;

impl stoa_guest::Task for Map {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = String::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(split)), Some(Ok(words)), None) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("expected `SPLIT WORDS`, got {text:?}"));
        };
        if words > 10_000_000 {
            return Err("at most 10,000,000 words per split".into());
        }
        let out: String = count(split, words)
            .into_iter()
            .map(|(w, n)| format!("{w} {n}\n"))
            .collect();
        Ok(out.into_bytes())
    }
}

stoa_guest::export_task!(Map);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_always_holds_the_same_words() {
        let a = count(3, 1000);
        assert_eq!(a, count(3, 1000));
        assert_ne!(a, count(4, 1000));
        assert_eq!(a.iter().map(|(_, n)| n).sum::<u64>(), 1000);
    }
}
