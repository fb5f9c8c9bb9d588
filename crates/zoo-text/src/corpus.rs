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

/// A token-classification task from the grammar: sentences as words, each word tagged `NAME`,
/// `ANIMAL`, `NUMBER`, `PLACE` or `O` (everything else, punctuation included).
pub fn tagging_task(seed: u64, count: usize) -> Vec<(Vec<String>, Vec<&'static str>)> {
    let mut g = Grammar {
        rng: SplitMix64(seed),
    };
    (0..count)
        .map(|_| {
            let mut words = Vec::new();
            let mut tags = Vec::new();
            let mut push = |text: &str, tag: &'static str| {
                for word in text.split_whitespace() {
                    words.push(word.to_string());
                    tags.push(tag);
                }
            };
            let hero = g.pick(NAMES);
            let n = 2 + g.rng.below(9);
            let (_, animals) = g.pick(ANIMALS);
            let place = g.pick(PLACES);
            let time = g.pick(TIMES);
            match g.rng.below(3) {
                0 => {
                    push(time, "O");
                    push(hero, "NAME");
                    push("saw", "O");
                    push(NUMBERS[n], "NUMBER");
                    push(animals, "ANIMAL");
                    push("near", "O");
                    push(place, "PLACE");
                }
                1 => {
                    push(&capitalise(NUMBERS[n]), "NUMBER");
                    push(animals, "ANIMAL");
                    push("followed", "O");
                    push(hero, "NAME");
                    push("to", "O");
                    push(place, "PLACE");
                }
                _ => {
                    let friend = g.pick(NAMES);
                    push(hero, "NAME");
                    push("and", "O");
                    push(friend, "NAME");
                    push("counted", "O");
                    push(NUMBERS[n], "NUMBER");
                    push(animals, "ANIMAL");
                    push("at", "O");
                    push(place, "PLACE");
                }
            }
            push(".", "O");
            (words, tags)
        })
        .collect()
}

/// A span question-answering task from the grammar: a question, a context of words, and the
/// answer (a count and a thing, "five pears") as the first and last word of a span of the
/// context. Each context holds two sums about two different people and two different things,
/// so the question's name and thing decide which sum answers it.
pub fn span_task(seed: u64, count: usize) -> Vec<(String, Vec<String>, usize, usize)> {
    let mut g = Grammar {
        rng: SplitMix64(seed),
    };
    fn two<T: Copy + PartialEq>(g: &mut Grammar, items: &[T]) -> [T; 2] {
        let first = g.pick(items);
        loop {
            let second = g.pick(items);
            if second != first {
                return [first, second];
            }
        }
    }
    (0..count)
        .map(|_| {
            let heroes = two(&mut g, NAMES);
            let things = two(&mut g, OBJECTS).map(|(_, many)| many);
            let mut context = Vec::new();
            let mut answers = Vec::new();
            for (hero, objects) in heroes.into_iter().zip(things) {
                let (a, b) = (g.rng.below(10), g.rng.below(9));
                let sentence = format!(
                    "{hero} had {} {objects} and found {} more , so now {hero} has",
                    NUMBERS[a], NUMBERS[b]
                );
                context.extend(sentence.split_whitespace().map(String::from));
                // The answer is the count and the thing: "five pears", "two loaves of bread".
                let start = context.len();
                context.push(NUMBERS[a + b].to_string());
                context.extend(objects.split_whitespace().map(String::from));
                answers.push((start, context.len() - 1));
                context.push(".".to_string());
            }
            let asked = g.rng.below(2);
            let (hero, objects) = (heroes[asked], things[asked]);
            let question = format!("How many {objects} does {hero} have now ?");
            let (start, end) = answers[asked];
            (question, context, start, end)
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
    fn tagging_and_span_tasks_are_well_formed() {
        for (words, tags) in tagging_task(5, 50) {
            assert_eq!(words.len(), tags.len());
            for (word, tag) in words.iter().zip(&tags) {
                let lower = word.to_lowercase();
                match *tag {
                    "NAME" => assert!(NAMES.contains(&word.as_str())),
                    "NUMBER" => assert!(NUMBERS.contains(&lower.as_str())),
                    "ANIMAL" => assert!(ANIMALS.iter().any(|(_, many)| *many == word)),
                    _ => {}
                }
            }
        }
        for (question, context, start, end) in span_task(6, 50) {
            assert!(start < end && end < context.len());
            assert_eq!(context[end + 1], ".");
            assert!(question.contains(&context[start + 1..=end].join(" ")));
            // The answer is the sum in the sentence about the person asked about.
            let words: Vec<&str> = question.split_whitespace().collect();
            let hero = words[words.iter().position(|w| *w == "have").unwrap() - 1];
            let sentence_start = context[..start]
                .iter()
                .rposition(|w| w == ".")
                .map_or(0, |i| i + 1);
            assert_eq!(context[sentence_start], hero, "{question} {context:?}");
        }
        assert_eq!(span_task(6, 5), span_task(6, 5));
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
