//! The embedded default corpus: short stories the project generates itself from a small
//! grammar, so that the quickstart needs no download and no data directory.
//!
//! The text has structure at every scale a small model can find: spelling of a few hundred
//! words, agreement ("a fox runs", "the foxes run"), capitals after full stops, quoted
//! dialogue, paragraphs, and sums that are always right ("three and four make seven"). A
//! character-level GPT learns the spelling within a minute and the sentence shapes soon after.
//!
//! The generator uses its own fixed pseudo-random stream (SplitMix64), so the corpus is the same
//! bytes on every machine and with every version of any random-number crate.

/// The corpus's size in bytes, roughly.
pub const TARGET_BYTES: usize = 600_000;

/// The embedded corpus (deterministic; about [`TARGET_BYTES`] long).
pub fn embedded_corpus() -> String {
    generate(0x5EED_2026, TARGET_BYTES)
}

/// A corpus of about `bytes` bytes from `seed`.
pub fn generate(seed: u64, bytes: usize) -> String {
    let mut g = Grammar {
        rng: SplitMix64(seed),
    };
    let mut text = String::with_capacity(bytes + 1024);
    while text.len() < bytes {
        g.story(&mut text);
        text.push('\n');
    }
    text
}

/// A labelled task from the same grammar, for encoders: a sentence with a sum and whether its
/// answer is `right` or `wrong` (half of each; a wrong answer is off by one to three). The
/// model must read both addends and the answer to tell.
pub fn sums_task(seed: u64, count: usize) -> Vec<(String, &'static str)> {
    let mut g = Grammar {
        rng: SplitMix64(seed),
    };
    (0..count)
        .map(|i| {
            let hero = g.pick(NAMES);
            let (a, b) = (g.rng.below(10), g.rng.below(9));
            let right = i % 2 == 0;
            let answer = if right {
                a + b
            } else {
                let off = 1 + g.rng.below(3);
                if a + b >= off && g.rng.below(2) == 0 {
                    a + b - off
                } else {
                    a + b + off
                }
            };
            let (_, objects) = g.pick(OBJECTS);
            let text = format!(
                "{hero} had {} {objects} and found {} more, so now {hero} has {} {objects}.",
                NUMBERS[a], NUMBERS[b], NUMBERS[answer]
            );
            (text, if right { "right" } else { "wrong" })
        })
        .collect()
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// (singular, plural)
const ANIMALS: &[(&str, &str)] = &[
    ("fox", "foxes"),
    ("cat", "cats"),
    ("owl", "owls"),
    ("bear", "bears"),
    ("mouse", "mice"),
    ("rabbit", "rabbits"),
    ("wolf", "wolves"),
    ("goose", "geese"),
    ("otter", "otters"),
    ("badger", "badgers"),
    ("hedgehog", "hedgehogs"),
    ("crow", "crows"),
];
const NAMES: &[&str] = &[
    "Ada", "Bram", "Cleo", "Dov", "Edda", "Finn", "Greta", "Hugo", "Ines", "Jonas", "Kaia", "Lev",
    "Mira", "Nils", "Olga", "Pim",
];
const PLACES: &[&str] = &[
    "the old mill",
    "the river bank",
    "the market",
    "the tall forest",
    "the quiet lake",
    "the hill",
    "the bakery",
    "the library",
    "the harbour",
    "the garden",
];
const OBJECTS: &[(&str, &str)] = &[
    ("apple", "apples"),
    ("pear", "pears"),
    ("book", "books"),
    ("stone", "stones"),
    ("candle", "candles"),
    ("basket", "baskets"),
    ("feather", "feathers"),
    ("loaf of bread", "loaves of bread"),
    ("blue shell", "blue shells"),
    ("map", "maps"),
];
const ADJECTIVES: &[&str] = &[
    "small", "clever", "sleepy", "brave", "grey", "curious", "old", "young", "quiet", "cheerful",
];
/// (third person singular, plural/base, past)
const VERBS: &[(&str, &str, &str)] = &[
    ("walks", "walk", "walked"),
    ("runs", "run", "ran"),
    ("sings", "sing", "sang"),
    ("waits", "wait", "waited"),
    ("reads", "read", "read"),
    ("hides", "hide", "hid"),
    ("dances", "dance", "danced"),
    ("sleeps", "sleep", "slept"),
];
const TIMES: &[&str] = &[
    "In the morning",
    "At noon",
    "In the evening",
    "Late at night",
    "On a rainy day",
    "On the first day of spring",
    "When the bells rang",
];
const FEELINGS: &[&str] = &["happy", "tired", "hungry", "glad", "worried", "surprised"];
const NUMBERS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

struct Grammar {
    rng: SplitMix64,
}

impl Grammar {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len())]
    }

    fn story(&mut self, out: &mut String) {
        let hero = self.pick(NAMES);
        let (animal, _) = self.pick(ANIMALS);
        let adjective = self.pick(ADJECTIVES);
        let home = self.pick(PLACES);
        out.push_str(&format!(
            "{hero} was a {adjective} {animal} who lived near {home}.\n"
        ));
        let sentences = 4 + self.rng.below(6);
        for _ in 0..sentences {
            let sentence = self.sentence(hero);
            out.push_str(&sentence);
            out.push('\n');
        }
        let feeling = self.pick(FEELINGS);
        out.push_str(&format!(
            "That night {hero} went home, {feeling} and warm.\n"
        ));
    }

    fn sentence(&mut self, hero: &str) -> String {
        match self.rng.below(7) {
            0 => {
                let time = self.pick(TIMES);
                let (verb, _, _) = self.pick(VERBS);
                let place = self.pick(PLACES);
                format!("{time} {hero} {verb} to {place}.")
            }
            1 => {
                let n = 2 + self.rng.below(9);
                let (_, animals) = self.pick(ANIMALS);
                let (_, verb, _) = self.pick(VERBS);
                let place = self.pick(PLACES);
                format!("{} {animals} {verb} by {place}.", capitalise(NUMBERS[n]))
            }
            2 => {
                let (a, b) = (self.rng.below(10), self.rng.below(9));
                let (_, objects) = self.pick(OBJECTS);
                format!(
                    "{hero} had {} {objects} and found {} more, so now {hero} has {} {objects}.",
                    NUMBERS[a],
                    NUMBERS[b],
                    NUMBERS[a + b]
                )
            }
            3 => {
                let friend = self.pick(NAMES);
                let (object, _) = self.pick(OBJECTS);
                let place = self.pick(PLACES);
                format!(
                    "\"Have you seen my {object}?\" asked {hero}. \"Yes,\" said {friend}, \"it is at {place}.\""
                )
            }
            4 => {
                let (animal, animals) = self.pick(ANIMALS);
                let (verb_one, verb_many, _) = self.pick(VERBS);
                format!("A {animal} {verb_one} alone, but the {animals} {verb_many} together.")
            }
            5 => {
                let (a, b) = (self.rng.below(10), self.rng.below(9));
                format!(
                    "\"What are {} and {}?\" {hero} wondered. They make {}.",
                    NUMBERS[a],
                    NUMBERS[b],
                    NUMBERS[a + b]
                )
            }
            _ => {
                let (_, _, past) = self.pick(VERBS);
                let adjective = self.pick(ADJECTIVES);
                let (animal, _) = self.pick(ANIMALS);
                format!("Yesterday {hero} {past} with a {adjective} {animal}.")
            }
        }
    }
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_deterministic_and_about_the_promised_size() {
        let a = embedded_corpus();
        assert_eq!(a, embedded_corpus());
        assert!(a.len() >= TARGET_BYTES && a.len() < TARGET_BYTES + 2_000);
        assert!(a.is_ascii());
        assert_ne!(generate(1, 5_000), generate(2, 5_000));
    }

    #[test]
    fn the_sums_task_labels_each_sum_by_whether_it_is_right() {
        let examples = sums_task(3, 400);
        let number = |w: &str| NUMBERS.iter().position(|n| *n == w).unwrap();
        let mut right = 0;
        for (text, label) in &examples {
            let words: Vec<&str> = text.split_whitespace().collect();
            let after = |w: &str| words[words.iter().position(|x| *x == w).unwrap() + 1];
            let (a, b, answer) = (
                number(words[2]),
                number(after("found")),
                number(after("has")),
            );
            assert_eq!(*label == "right", a + b == answer, "{text} -> {label}");
            right += (*label == "right") as usize;
        }
        assert_eq!(right, 200);
        assert_eq!(sums_task(3, 400), examples);
    }

    #[test]
    fn its_sums_are_right() {
        let text = generate(9, 50_000);
        let value = |w: &str| NUMBERS.iter().position(|n| *n == w).unwrap();
        let mut checked = 0;
        for line in text
            .lines()
            .filter(|l| l.contains("\" ") && l.contains("They make"))
        {
            let words: Vec<&str> = line
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|w| !w.is_empty())
                .collect();
            let at = words.iter().position(|w| *w == "are").unwrap();
            let (a, b) = (value(words[at + 1]), value(words[at + 3]));
            assert_eq!(value(words.last().unwrap()), a + b, "{line}");
            checked += 1;
        }
        assert!(checked > 10);
    }
}
