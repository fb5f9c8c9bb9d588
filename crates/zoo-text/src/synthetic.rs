//! Synthetic sequence-to-sequence tasks the project generates itself: copy, reverse and sort a
//! sequence of symbols, and add two numbers. Symbols are space-separated so any tokenizer sees
//! one token per symbol; the answer is a function of the source, so exact match measures them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which transformation the target is of the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticTask {
    /// The same symbols.
    Copy,
    /// The symbols backwards.
    Reverse,
    /// The symbols in ascending order.
    Sort,
    /// The sum of two numbers, digit by digit: `4 7 + 5` -> `5 2`.
    Addition,
}

impl SyntheticTask {
    /// The task named `name` (`copy`, `reverse`, `sort`, `addition`).
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "copy" => Self::Copy,
            "reverse" => Self::Reverse,
            "sort" => Self::Sort,
            "addition" => Self::Addition,
            _ => return None,
        })
    }
}

/// The symbols sequences are made of.
const SYMBOLS: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];

/// `count` source-target pairs of `task` from `seed`; sequences (and, for addition, numbers'
/// digits) are 1 to `max_len` long.
pub fn synthetic_pairs(
    task: SyntheticTask,
    seed: u64,
    count: usize,
    max_len: usize,
) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| match task {
            SyntheticTask::Addition => {
                let mut number = || -> u64 {
                    let digits = rng.random_range(1..=max_len.clamp(1, 18));
                    rng.random_range(0..10u64.pow(digits as u32))
                };
                let (a, b) = (number(), number());
                let spell = |n: u64| {
                    let digits: Vec<String> = n.to_string().chars().map(String::from).collect();
                    digits.join(" ")
                };
                (format!("{} + {}", spell(a), spell(b)), spell(a + b))
            }
            _ => {
                let len = rng.random_range(1..=max_len.max(1));
                let symbols: Vec<&str> = (0..len)
                    .map(|_| SYMBOLS[rng.random_range(0..SYMBOLS.len())])
                    .collect();
                let mut target = symbols.clone();
                match task {
                    SyntheticTask::Reverse => target.reverse(),
                    SyntheticTask::Sort => target.sort_unstable(),
                    _ => {}
                }
                (symbols.join(" "), target.join(" "))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split(' ').collect()
    }

    #[test]
    fn targets_are_the_promised_function_of_the_source() {
        for (task, check) in [
            (
                SyntheticTask::Copy,
                (|s: Vec<&str>| s) as fn(Vec<&str>) -> Vec<&str>,
            ),
            (SyntheticTask::Reverse, |mut s| {
                s.reverse();
                s
            }),
            (SyntheticTask::Sort, |mut s| {
                s.sort();
                s
            }),
        ] {
            for (source, target) in synthetic_pairs(task, 3, 200, 12) {
                let n = words(&source).len();
                assert!((1..=12).contains(&n));
                assert_eq!(words(&target), check(words(&source)), "{task:?}: {source}");
            }
        }
        for (source, target) in synthetic_pairs(SyntheticTask::Addition, 4, 200, 6) {
            let (a, b) = source.split_once(" + ").unwrap();
            let number = |s: &str| s.replace(' ', "").parse::<u64>().unwrap();
            assert_eq!(
                number(a) + number(b),
                number(&target),
                "{source} = {target}"
            );
        }
    }

    #[test]
    fn a_seed_gives_the_same_pairs() {
        let draw = |seed| synthetic_pairs(SyntheticTask::Reverse, seed, 20, 8);
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        assert_eq!(SyntheticTask::named("sort"), Some(SyntheticTask::Sort));
        assert_eq!(SyntheticTask::named("rot13"), None);
    }
}
