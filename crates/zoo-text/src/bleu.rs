//! Corpus BLEU as sacreBLEU computes it by default: the `13a` tokenisation (mteval-v13a's),
//! 4-gram precisions pooled over the corpus and clipped by the reference counts, the brevity
//! penalty, and sacreBLEU's `exp` smoothing of an order with no match (its precision becomes
//! `100 / (2^k · total)` for the k-th such order); no match of any order scores 0. One
//! reference per hypothesis. Checked against sacreBLEU 2.x on the cases in the tests.

use std::collections::HashMap;

/// The highest n-gram order.
const MAX_ORDER: usize = 4;

/// A corpus BLEU score and its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    /// The score, 0 to 100.
    pub score: f64,
    /// Modified n-gram precisions in percent, orders 1 to 4 (smoothed where no n-gram matched).
    pub precisions: [f64; MAX_ORDER],
    /// `exp(1 - ref_len / hyp_len)` when the hypotheses are shorter, else 1.
    pub brevity_penalty: f64,
    /// Tokens in all hypotheses.
    pub hyp_len: usize,
    /// Tokens in all references.
    pub ref_len: usize,
}

/// sacreBLEU's default (`13a`) tokenisation of one line.
pub fn tokenize_13a(line: &str) -> String {
    let mut text = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if text.contains('&') {
        text = text
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    // Punctuation and symbols become tokens of their own.
    let is_symbol =
        |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut spaced = String::with_capacity(text.len() * 2 + 2);
    spaced.push(' ');
    for c in text.chars() {
        if is_symbol(c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    spaced.push(' ');
    let digit = |c: char| c.is_ascii_digit();
    let period_or_comma = |c: char| c == '.' || c == ',';
    // Periods and commas split off unless inside a number, and dashes after a digit: three
    // passes of non-overlapping matches, as Python's `re.sub` makes them.
    let spaced = substitute(
        &spaced,
        |a, b| !digit(a) && period_or_comma(b),
        |a, b| format!("{a} {b} "),
    );
    let spaced = substitute(
        &spaced,
        |a, b| period_or_comma(a) && !digit(b),
        |a, b| format!(" {a} {b}"),
    );
    let spaced = substitute(
        &spaced,
        |a, b| digit(a) && b == '-',
        |a, b| format!("{a} {b} "),
    );
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces each non-overlapping pair of characters `(a, b)` matching `is_match`, scanning left
/// to right, by `replace(a, b)`.
fn substitute(
    text: &str,
    is_match: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char) -> String,
) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && is_match(chars[i], chars[i + 1]) {
            out.push_str(&replace(chars[i], chars[i + 1]));
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Corpus BLEU of `hypotheses` against one reference each (raw text; both are tokenised with
/// [`tokenize_13a`]). Panics if the two lists differ in length.
pub fn corpus_bleu<S: AsRef<str>, R: AsRef<str>>(hypotheses: &[S], references: &[R]) -> Bleu {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference per hypothesis"
    );
    let mut matches = [0usize; MAX_ORDER];
    let mut totals = [0usize; MAX_ORDER];
    let (mut hyp_len, mut ref_len) = (0, 0);
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let hyp = tokenize_13a(hyp.as_ref());
        let reference = tokenize_13a(reference.as_ref());
        let hyp: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
        let reference: Vec<&str> = reference.split(' ').filter(|t| !t.is_empty()).collect();
        hyp_len += hyp.len();
        ref_len += reference.len();
        for n in 1..=MAX_ORDER {
            let reference_counts = ngram_counts(&reference, n);
            for (gram, count) in ngram_counts(&hyp, n) {
                let allowed = reference_counts.get(&gram).copied().unwrap_or(0);
                matches[n - 1] += count.min(allowed);
                totals[n - 1] += count;
            }
        }
    }
    score(matches, totals, hyp_len, ref_len)
}

fn ngram_counts<'a>(tokens: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram.to_vec()).or_insert(0) += 1;
    }
    counts
}

/// sacreBLEU's `compute_bleu` with `exp` smoothing and no effective order.
fn score(
    matches: [usize; MAX_ORDER],
    totals: [usize; MAX_ORDER],
    hyp_len: usize,
    ref_len: usize,
) -> Bleu {
    let mut precisions = [0.0; MAX_ORDER];
    let brevity_penalty = if hyp_len >= ref_len {
        1.0
    } else if hyp_len > 0 {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    } else {
        0.0
    };
    if matches.iter().all(|&m| m == 0) {
        return Bleu {
            score: 0.0,
            precisions,
            brevity_penalty,
            hyp_len,
            ref_len,
        };
    }
    let mut smooth = 1.0;
    for n in 0..MAX_ORDER {
        if totals[n] == 0 {
            // Hypotheses too short to have n-grams of this order: the score is 0.
            break;
        }
        precisions[n] = if matches[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * totals[n] as f64)
        } else {
            100.0 * matches[n] as f64 / totals[n] as f64
        };
    }
    let score = if precisions.iter().all(|&p| p > 0.0) {
        let mean_log = precisions.iter().map(|p| p.ln()).sum::<f64>() / MAX_ORDER as f64;
        brevity_penalty * mean_log.exp()
    } else {
        0.0
    };
    Bleu {
        score,
        precisions,
        brevity_penalty,
        hyp_len,
        ref_len,
    }
}

/// Share of hypotheses equal to their reference after trimming whitespace, in percent.
pub fn exact_match<S: AsRef<str>, R: AsRef<str>>(hypotheses: &[S], references: &[R]) -> f64 {
    assert_eq!(hypotheses.len(), references.len());
    if hypotheses.is_empty() {
        return 0.0;
    }
    let equal = hypotheses
        .iter()
        .zip(references)
        .filter(|(h, r)| h.as_ref().trim() == r.as_ref().trim())
        .count();
    100.0 * equal as f64 / hypotheses.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn thirteen_a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("Hello, world!"), "Hello , world !");
        assert_eq!(
            tokenize_13a("It costs 3,000.50 dollars."),
            "It costs 3,000.50 dollars ."
        );
        assert_eq!(
            tokenize_13a("a \"quote\" (x) a/b"),
            "a \" quote \" ( x ) a / b"
        );
        assert_eq!(
            tokenize_13a("1990-1995 well-known"),
            "1990 - 1995 well-known"
        );
        assert_eq!(tokenize_13a("&quot;A&amp;B&quot;"), "\" A & B \"");
        assert_eq!(tokenize_13a("Ende."), "Ende .");
    }

    #[test]
    fn a_perfect_match_scores_100() {
        let text = ["the cat sat on the mat .", "a dog ran in the park today ."];
        let bleu = corpus_bleu(&text, &text);
        close(bleu.score, 100.0);
        close(bleu.brevity_penalty, 1.0);
    }

    /// Hand-computed: hypothesis "the cat the cat on the mat" (7 tokens) against "the cat is
    /// on the mat" (6 tokens). Clipped matches: 1-grams the 2 (of 3) + cat 1 (of 2) + on + mat
    /// = 5/7; 2-grams "the cat", "on the", "the mat" = 3/6; 3-grams "on the mat" = 1/5; 4-grams
    /// 0/4, smoothed to 100 / (2 · 4) = 12.5%. No brevity penalty (7 >= 6).
    #[test]
    fn clipped_precisions_and_exp_smoothing_match_a_hand_computation() {
        let bleu = corpus_bleu(&["the cat the cat on the mat"], &["the cat is on the mat"]);
        let p = [500.0 / 7.0, 50.0, 20.0, 12.5];
        for (got, want) in bleu.precisions.iter().zip(p) {
            close(*got, want);
        }
        let want = (p.iter().map(|p: &f64| p.ln()).sum::<f64>() / 4.0).exp();
        close(bleu.score, want);
        // sacreBLEU: BLEU = 30.74 71.4/50.0/20.0/12.5.
        assert!((bleu.score - 30.7394).abs() < 1e-3, "{}", bleu.score);
    }

    /// Hand-computed: "the cat" against "the cat sat on the mat": precisions 100, 100, and no
    /// 3- or 4-grams in the hypothesis, so the score is 0; the brevity penalty is e^(1 - 6/2).
    #[test]
    fn short_hypotheses_pay_the_brevity_penalty() {
        let bleu = corpus_bleu(&["the cat"], &["the cat sat on the mat"]);
        close(bleu.brevity_penalty, (1.0f64 - 3.0).exp());
        close(bleu.score, 0.0);
        // Long enough for every order, one token short: 5 of 6 tokens, all matching.
        let bleu = corpus_bleu(&["the cat sat on the"], &["the cat sat on the mat"]);
        close(bleu.brevity_penalty, (1.0f64 - 6.0 / 5.0).exp());
        close(bleu.score, 100.0 * (1.0f64 - 6.0 / 5.0).exp());
        assert!((bleu.score - 81.87).abs() < 0.005, "sacreBLEU: 81.87");
    }

    /// No token in common: 0, with every precision 0 (sacreBLEU stops before smoothing), as
    /// for an empty hypothesis.
    #[test]
    fn zero_matches_score_zero() {
        let bleu = corpus_bleu(&["w x y z"], &["a b c d"]);
        assert_eq!(bleu.score, 0.0);
        assert_eq!(bleu.precisions, [0.0; 4]);
        close(bleu.brevity_penalty, 1.0);
        let empty = corpus_bleu(&[""], &["a b"]);
        assert_eq!((empty.score, empty.brevity_penalty), (0.0, 0.0));
    }

    #[test]
    fn counts_pool_over_the_corpus() {
        // Two sentences scored together differ from the mean of their scores.
        let hyps = ["the cat sat on the mat", "a b c d e"];
        let refs = ["the cat sat on the mat", "a b x d e"];
        let corpus = corpus_bleu(&hyps, &refs);
        assert_eq!((corpus.hyp_len, corpus.ref_len), (11, 11));
        close(corpus.precisions[0], 100.0 * 10.0 / 11.0);
        close(corpus.precisions[1], 100.0 * 7.0 / 9.0);
        // sacreBLEU: BLEU = 70.17 90.9/77.8/57.1/60.0.
        assert!((corpus.score - 70.17).abs() < 0.005, "{}", corpus.score);
    }

    #[test]
    fn exact_match_counts_identical_lines() {
        close(exact_match(&["a b", "c "], &["a b", "d"]), 50.0);
    }
}
