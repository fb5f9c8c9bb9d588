//! Batched beam search over any model that decodes one token per row per step from a cached
//! state: the encoder-decoders (a row per hypothesis per source) and the language models (a row
//! per hypothesis of one prompt) share this one implementation.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A model decoding one token per row per step from a state it caches.
pub trait StepDecoder {
    /// Everything a step needs: the decoder's cache (and, for an encoder-decoder, the
    /// encoded source), one row per sequence being decoded.
    type State: Clone;

    /// Logits `[rows, vocab]` of the next token after `previous` (`[rows, 1]`), the state
    /// advancing by one token.
    fn step(&self, previous: Tensor<2, Int>, state: &mut Self::State) -> Tensor<2>;

    /// The state of rows `rows` (in that order, repeats allowed): beams that survive, sources
    /// still decoding.
    fn select(&self, state: &Self::State, rows: Tensor<1, Int>) -> Self::State;
}

/// How a beam search runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeamSearch {
    /// Hypotheses kept per sequence.
    pub width: usize,
    /// Finished hypotheses are ranked by log-probability divided by `length ^ length_penalty`
    /// (fairseq's `--lenpen`; 0 ranks by raw log-probability, which favours short outputs).
    pub length_penalty: f64,
    /// Most tokens decoded per sequence, the end token included.
    pub max_len: usize,
    /// The token that ends a hypothesis; without one every hypothesis runs to `max_len`.
    pub end: Option<u32>,
}

/// Row indices as the `[rows]` tensor [`StepDecoder::select`] takes.
pub fn rows_tensor(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(
        TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
        device,
    )
}

/// One token per row as the `[rows, 1]` tensor [`StepDecoder::step`] takes.
pub fn column_tensor(tokens: &[u32], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(
            tokens.iter().map(|&t| t as i64).collect(),
            [tokens.len(), 1],
        ),
        device,
    )
}

/// `[rows, vocab]` values read back to the host, row after row, and the row length.
pub fn host_rows(values: Tensor<2>) -> (Vec<f32>, usize) {
    let [_, vocab] = values.dims();
    let values = values
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("logits read back as f32");
    (values, vocab)
}

/// A hypothesis still growing: its tokens and their summed log-probability.
#[derive(Clone, Debug)]
struct Hypothesis {
    tokens: Vec<u32>,
    log_prob: f32,
}

/// Beam search from `state` (one row per sequence, the row of sequence `i` next reading
/// `first[i]`): `width` rows per sequence; each step scores every continuation of every row of a
/// sequence, keeps the best `2 width`, finishes those that end (among the top `width`) and
/// continues the best `width` that do not. A sequence stops once `width` hypotheses have
/// finished (fairseq's criterion) or at `max_len`, where its live hypotheses count as finished.
/// Returns each sequence's best hypothesis, without the end token.
pub fn beam_search<M: StepDecoder>(
    model: &M,
    state: M::State,
    first: &[u32],
    search: &BeamSearch,
    device: &Device,
) -> Vec<Vec<u32>> {
    let (count, width) = (first.len(), search.width.max(1));
    if count == 0 || search.max_len == 0 {
        return vec![Vec::new(); count];
    }
    let normalised =
        |log_prob: f32, len: usize| log_prob as f64 / (len as f64).powf(search.length_penalty);
    let ends = |token: u32| search.end == Some(token);
    let repeated: Vec<usize> = (0..count).flat_map(|s| [s].repeat(width)).collect();
    let mut state = model.select(&state, rows_tensor(&repeated, device));
    // Only the first row of each sequence may start: the others are copies of it.
    let start = |k: usize| Hypothesis {
        tokens: Vec::new(),
        log_prob: if k == 0 { 0.0 } else { f32::NEG_INFINITY },
    };
    let mut beams: Vec<Vec<Hypothesis>> = (0..count)
        .map(|_| (0..width).map(start).collect())
        .collect();
    let mut active: Vec<usize> = (0..count).collect();
    let mut finished: Vec<Vec<(f64, Vec<u32>)>> = vec![Vec::new(); count];
    let mut previous: Vec<u32> = first.iter().flat_map(|&t| [t].repeat(width)).collect();
    for step in 0..search.max_len {
        let logits = model.step(column_tensor(&previous, device), &mut state);
        let (log_probs, vocab) = host_rows(log_softmax(logits, 1));
        let last_step = step + 1 == search.max_len;
        let (mut rows, mut next_beams, mut next_active) = (Vec::new(), Vec::new(), Vec::new());
        let mut next_previous = Vec::with_capacity(previous.len());
        for (group, &sequence) in active.iter().enumerate() {
            let beam = &beams[group];
            let group_log_probs = &log_probs[group * width * vocab..(group + 1) * width * vocab];
            let scores: Vec<f32> = group_log_probs
                .iter()
                .enumerate()
                .map(|(i, lp)| beam[i / vocab].log_prob + lp)
                .collect();
            let mut continuing = Vec::with_capacity(width);
            for (rank, flat) in best_indices(&scores, 2 * width).into_iter().enumerate() {
                let (k, token) = (flat / vocab, (flat % vocab) as u32);
                let score = scores[flat];
                if score == f32::NEG_INFINITY {
                    break;
                }
                if ends(token) {
                    if rank < width {
                        let len = beam[k].tokens.len() + 1;
                        finished[sequence].push((normalised(score, len), beam[k].tokens.clone()));
                    }
                } else if continuing.len() < width {
                    continuing.push((k, token, score));
                }
            }
            if last_step {
                for &(k, token, score) in &continuing {
                    let mut hyp = beam[k].tokens.clone();
                    hyp.push(token);
                    finished[sequence].push((normalised(score, hyp.len()), hyp));
                }
                continue;
            }
            if finished[sequence].len() >= width || continuing.is_empty() {
                continue;
            }
            let mut next = Vec::with_capacity(width);
            for &(k, token, score) in &continuing {
                let mut grown = beam[k].tokens.clone();
                grown.push(token);
                rows.push(group * width + k);
                next_previous.push(token);
                next.push(Hypothesis {
                    tokens: grown,
                    log_prob: score,
                });
            }
            // Fewer than `width` continuations only when the vocabulary is tiny: pad the
            // group with dead copies so every sequence keeps `width` rows.
            while next.len() < width {
                rows.push(group * width);
                next_previous.push(previous[group * width]);
                next.push(Hypothesis {
                    tokens: Vec::new(),
                    log_prob: f32::NEG_INFINITY,
                });
            }
            next_beams.push(next);
            next_active.push(sequence);
        }
        if next_active.is_empty() {
            break;
        }
        state = model.select(&state, rows_tensor(&rows, device));
        beams = next_beams;
        active = next_active;
        previous = next_previous;
    }
    finished
        .into_iter()
        .map(|mut done| {
            // Highest normalised score; the earlier-finished hypothesis on a tie.
            done.sort_by(|a, b| b.0.total_cmp(&a.0));
            done.into_iter().next().map(|(_, t)| t).unwrap_or_default()
        })
        .collect()
}

/// Indices of the `n` largest values, largest first (the lower index first on ties, so a beam
/// of one picks what greedy's `argmax` picks).
fn best_indices(values: &[f32], n: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut indices: Vec<usize> = (0..values.len()).collect();
    let n = n.min(indices.len());
    if n < indices.len() {
        indices.select_nth_unstable_by(n, order);
        indices.truncate(n);
    }
    indices.sort_by(order);
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 4;
    const END: u32 = 3;

    /// A model whose next-token logits are a fixed pseudo-random function of the whole prefix
    /// (so no search shortcut is exact); its state is each row's prefix.
    struct Prefixes;

    fn logits_after(prefix: &[u32]) -> Vec<f32> {
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for &t in prefix {
            h = (h ^ (t as u64 + 1)).wrapping_mul(0x1000_0000_01b3);
        }
        (0..VOCAB)
            .map(|v| {
                let x = (h ^ (v as u64 * 0x51_7cc1_b727)).wrapping_mul(0x2545_f491_4f6c_dd1d);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    impl StepDecoder for Prefixes {
        type State = Vec<Vec<u32>>;

        fn step(&self, previous: Tensor<2, Int>, state: &mut Vec<Vec<u32>>) -> Tensor<2> {
            let device = previous.device();
            let previous: Vec<i64> = previous.into_data().convert::<i64>().try_to_vec().unwrap();
            let mut values = Vec::new();
            for (prefix, &token) in state.iter_mut().zip(&previous) {
                prefix.push(token as u32);
                values.extend(logits_after(prefix));
            }
            Tensor::from_data(TensorData::new(values, [state.len(), VOCAB]), &device)
        }

        fn select(&self, state: &Vec<Vec<u32>>, rows: Tensor<1, Int>) -> Vec<Vec<u32>> {
            let rows: Vec<i64> = rows.into_data().convert::<i64>().try_to_vec().unwrap();
            rows.iter().map(|&r| state[r as usize].clone()).collect()
        }
    }

    fn log_softmax_host(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        logits.iter().map(|&l| l as f64 - max - z.ln()).collect()
    }

    /// The best hypothesis of every possible one (ending with `END` within `max_len` tokens, or
    /// cut at `max_len`) by normalised score, found by enumerating them all.
    fn exhaustive(first: u32, search: &BeamSearch) -> (f64, Vec<u32>) {
        let mut best = (f64::NEG_INFINITY, Vec::new());
        let mut frontier = vec![(vec![first], Vec::<u32>::new(), 0.0f64)];
        while let Some((prefix, tokens, score)) = frontier.pop() {
            let lp = log_softmax_host(&logits_after(&prefix));
            for (v, &l) in lp.iter().enumerate() {
                let (v, score) = (v as u32, score + l);
                let len = tokens.len() + 1;
                let done = v == END || len == search.max_len;
                if done {
                    let mut hyp = tokens.clone();
                    if v != END {
                        hyp.push(v);
                    }
                    let normalised = score / (len as f64).powf(search.length_penalty);
                    if normalised > best.0 {
                        best = (normalised, hyp);
                    }
                } else {
                    let (mut p, mut t) = (prefix.clone(), tokens.clone());
                    p.push(v);
                    t.push(v);
                    frontier.push((p, t, score));
                }
            }
        }
        best
    }

    #[test]
    fn a_beam_as_wide_as_every_hypothesis_finds_the_best_one() {
        let device = Device::flex();
        for length_penalty in [0.0, 1.0] {
            let search = BeamSearch {
                // Every hypothesis of up to 4 steps (81 live at the last) fits in the beam.
                width: 81,
                length_penalty,
                max_len: 4,
                end: Some(END),
            };
            let firsts = [0, 1, 2];
            let state = vec![Vec::new(); firsts.len()];
            let found = beam_search(&Prefixes, state, &firsts, &search, &device);
            for (i, &first) in firsts.iter().enumerate() {
                let (_, best) = exhaustive(first, &search);
                assert_eq!(
                    found[i], best,
                    "first token {first}, penalty {length_penalty}"
                );
            }
        }
    }

    #[test]
    fn a_beam_of_one_is_greedy_and_without_an_end_runs_to_the_limit() {
        let device = Device::flex();
        let search = BeamSearch {
            width: 1,
            length_penalty: 0.0,
            max_len: 6,
            end: None,
        };
        let found = beam_search(&Prefixes, vec![Vec::new()], &[2], &search, &device);
        let mut prefix = vec![2];
        let mut greedy = Vec::new();
        for _ in 0..6 {
            let logits = logits_after(&prefix);
            let next = crate::decoding::argmax(&logits) as u32;
            greedy.push(next);
            prefix.push(next);
        }
        assert_eq!(found[0], greedy);
        // A wider beam never scores below greedy.
        let score = |tokens: &[u32]| {
            let mut prefix = vec![2];
            let mut total = 0.0;
            for &t in tokens {
                total += log_softmax_host(&logits_after(&prefix))[t as usize];
                prefix.push(t);
            }
            total
        };
        let wide = beam_search(
            &Prefixes,
            vec![Vec::new()],
            &[2],
            &BeamSearch { width: 5, ..search },
            &device,
        );
        assert_eq!(wide[0].len(), 6);
        assert!(score(&wide[0]) >= score(&greedy) - 1e-6);
    }

    #[test]
    fn best_indices_orders_by_value_then_index() {
        assert_eq!(best_indices(&[0.5, 2.0, 2.0, -1.0, 3.0], 3), vec![4, 1, 2]);
        assert_eq!(best_indices(&[1.0, 0.0], 5), vec![0, 1]);
    }
}
