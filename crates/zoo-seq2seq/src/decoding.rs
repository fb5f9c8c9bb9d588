//! Decoding an encoder-decoder: greedy, sampling (the shared [`Sampler`]) and beam search, all
//! batched over sources. Every model encodes each source once ([`EncoderDecoder::start`]) and
//! then decodes one token per step from its cached state, so a step costs one position, not
//! the whole prefix.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use zoo_blocks::decoding::argmax;
use zoo_blocks::{Sampler, SamplingConfig};

/// What a model offers its decoders.
pub trait EncoderDecoder {
    /// Everything a decoding step needs: the encoded source and the decoder's cache.
    type State: Clone;

    /// Encodes `source` (`[batch, src_len]`, `padding` true at padded positions).
    fn start(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Self::State;

    /// Logits `[rows, vocab]` of the next token after `previous` (`[rows, 1]`), the state
    /// advancing by one token.
    fn step(&self, previous: Tensor<2, Int>, state: &mut Self::State) -> Tensor<2>;

    /// The state of rows `rows` (in that order): beams that survive, sources still decoding.
    fn select(&self, state: &Self::State, rows: Tensor<1, Int>) -> Self::State;

    /// Longest target the model can decode (its positions), the begin token included.
    fn max_target_len(&self) -> usize;
}

/// The special target tokens decoding needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeTokens {
    /// Pads sources to a common length.
    pub pad: u32,
    /// Starts every target.
    pub bos: u32,
    /// Ends a target.
    pub eos: u32,
}

/// How to pick the target tokens.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// The most likely token at each step.
    Greedy,
    /// A token drawn from the (tempered, top-k / top-p) distribution at each step.
    Sample(SamplingConfig),
    /// Beam search keeping `width` hypotheses per source; finished hypotheses are ranked by
    /// log-probability divided by `length ^ length_penalty` (fairseq's `--lenpen`; 0 ranks by
    /// raw log-probability, which favours short outputs).
    Beam {
        /// Hypotheses kept per source.
        width: usize,
        /// Exponent of the length normalisation.
        length_penalty: f64,
    },
}

/// `sources` padded with `pad` to the longest: ids `[batch, len]` and the padding mask.
pub fn source_batch(
    sources: &[Vec<u32>],
    pad: u32,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let len = sources.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(sources.len() * len);
    let mut padding = Vec::with_capacity(sources.len() * len);
    for source in sources {
        for i in 0..len {
            ids.push(source.get(i).map_or(pad, |&t| t) as i64);
            padding.push(i >= source.len());
        }
    }
    (
        Tensor::from_data(TensorData::new(ids, [sources.len(), len]), device),
        Tensor::from_data(TensorData::new(padding, [sources.len(), len]), device),
    )
}

/// Decodes each of `sources` (token ids, no padding) with `strategy`, each target at most
/// `max_len` tokens long (and never past the model's positions). Returns the target tokens
/// without the begin and end tokens, in the order of `sources`.
pub fn decode<M: EncoderDecoder>(
    model: &M,
    sources: &[Vec<u32>],
    tokens: DecodeTokens,
    strategy: &Strategy,
    max_len: usize,
    device: &Device,
) -> Vec<Vec<u32>> {
    if sources.is_empty() {
        return Vec::new();
    }
    let max_len = max_len.min(model.max_target_len().saturating_sub(1)).max(1);
    let (ids, padding) = source_batch(sources, tokens.pad, device);
    let state = model.start(ids, padding);
    match strategy {
        Strategy::Greedy => {
            token_by_token(model, state, sources.len(), tokens, max_len, device, argmax)
        }
        Strategy::Sample(config) => {
            let mut sampler = Sampler::new(config.clone());
            token_by_token(
                model,
                state,
                sources.len(),
                tokens,
                max_len,
                device,
                |row| sampler.sample(row),
            )
        }
        Strategy::Beam {
            width,
            length_penalty,
        } => beam_search(
            model,
            state,
            sources.len(),
            tokens,
            max_len,
            (*width).max(1),
            *length_penalty,
            device,
        ),
    }
}

fn rows_tensor(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(
        TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
        device,
    )
}

fn previous_tensor(previous: &[u32], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(
            previous.iter().map(|&t| t as i64).collect(),
            [previous.len(), 1],
        ),
        device,
    )
}

fn to_rows(logits: Tensor<2>) -> (Vec<f32>, usize) {
    let [_, vocab] = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("logits read back as f32");
    (values, vocab)
}

/// Greedy and sampled decoding: one token per source per step from `pick`; a source leaves the
/// batch when it emits the end token.
fn token_by_token<M: EncoderDecoder>(
    model: &M,
    mut state: M::State,
    count: usize,
    tokens: DecodeTokens,
    max_len: usize,
    device: &Device,
    mut pick: impl FnMut(&[f32]) -> usize,
) -> Vec<Vec<u32>> {
    let mut outputs = vec![Vec::new(); count];
    // Row r of the state decodes source active[r].
    let mut active: Vec<usize> = (0..count).collect();
    let mut previous = vec![tokens.bos; count];
    for _ in 0..max_len {
        let logits = model.step(previous_tensor(&previous, device), &mut state);
        let (values, vocab) = to_rows(logits);
        let mut kept = Vec::with_capacity(active.len());
        previous.clear();
        for (row, &source) in active.iter().enumerate() {
            let token = pick(&values[row * vocab..(row + 1) * vocab]) as u32;
            if token != tokens.eos {
                outputs[source].push(token);
                kept.push(row);
                previous.push(token);
            }
        }
        if kept.is_empty() {
            break;
        }
        if kept.len() < active.len() {
            state = model.select(&state, rows_tensor(&kept, device));
            active = kept.iter().map(|&row| active[row]).collect();
        }
    }
    outputs
}

/// A hypothesis still growing: its tokens and their summed log-probability.
#[derive(Clone, Debug)]
struct Hypothesis {
    tokens: Vec<u32>,
    log_prob: f32,
}

/// Batched beam search: `width` rows per source; each step scores every continuation of every
/// row of a source, keeps the best `2 width`, finishes those that end (among the top `width`)
/// and continues the best `width` that do not. A source stops once `width` hypotheses have
/// finished (fairseq's criterion) or at `max_len`, where its live hypotheses count as finished.
#[allow(clippy::too_many_arguments)]
fn beam_search<M: EncoderDecoder>(
    model: &M,
    state: M::State,
    count: usize,
    tokens: DecodeTokens,
    max_len: usize,
    width: usize,
    length_penalty: f64,
    device: &Device,
) -> Vec<Vec<u32>> {
    let normalised =
        |log_prob: f32, len: usize| log_prob as f64 / (len as f64).powf(length_penalty);
    let repeated: Vec<usize> = (0..count).flat_map(|s| [s].repeat(width)).collect();
    let mut state = model.select(&state, rows_tensor(&repeated, device));
    // Only the first row of each source may start: the others are copies of it.
    let start = |k: usize| Hypothesis {
        tokens: Vec::new(),
        log_prob: if k == 0 { 0.0 } else { f32::NEG_INFINITY },
    };
    let mut beams: Vec<Vec<Hypothesis>> = (0..count)
        .map(|_| (0..width).map(start).collect())
        .collect();
    let mut active: Vec<usize> = (0..count).collect();
    let mut finished: Vec<Vec<(f64, Vec<u32>)>> = vec![Vec::new(); count];
    let mut previous = vec![tokens.bos; count * width];
    for step in 0..max_len {
        let logits = model.step(previous_tensor(&previous, device), &mut state);
        let (log_probs, vocab) = to_rows(log_softmax(logits, 1));
        let last_step = step + 1 == max_len;
        let (mut rows, mut next_beams, mut next_active) = (Vec::new(), Vec::new(), Vec::new());
        previous.clear();
        for (group, &source) in active.iter().enumerate() {
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
                if token == tokens.eos {
                    if rank < width {
                        let len = beam[k].tokens.len() + 1;
                        finished[source].push((normalised(score, len), beam[k].tokens.clone()));
                    }
                } else if continuing.len() < width {
                    continuing.push((k, token, score));
                }
            }
            if last_step {
                for &(k, token, score) in &continuing {
                    let mut hyp = beam[k].tokens.clone();
                    hyp.push(token);
                    finished[source].push((normalised(score, hyp.len()), hyp));
                }
                continue;
            }
            if finished[source].len() >= width || continuing.is_empty() {
                continue;
            }
            let mut next = Vec::with_capacity(width);
            for &(k, token, score) in &continuing {
                let mut grown = beam[k].tokens.clone();
                grown.push(token);
                rows.push(group * width + k);
                previous.push(token);
                next.push(Hypothesis {
                    tokens: grown,
                    log_prob: score,
                });
            }
            // Fewer than `width` continuations only when the vocabulary is tiny: pad the
            // group with dead copies so every source keeps `width` rows.
            while next.len() < width {
                rows.push(group * width);
                previous.push(tokens.eos);
                next.push(Hypothesis {
                    tokens: Vec::new(),
                    log_prob: f32::NEG_INFINITY,
                });
            }
            next_beams.push(next);
            next_active.push(source);
        }
        if next_active.is_empty() {
            break;
        }
        state = model.select(&state, rows_tensor(&rows, device));
        beams = next_beams;
        active = next_active;
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
    use crate::presets::{rnn_attention_preset, transformer_preset};
    use crate::{RnnAttentionConfig, Seq2Seq, TransformerConfig};

    const TOKENS: DecodeTokens = DecodeTokens {
        pad: 0,
        bos: 1,
        eos: 2,
    };

    fn models(device: &Device) -> Vec<Seq2Seq> {
        vec![
            Seq2Seq::Transformer(
                TransformerConfig {
                    src_vocab_size: 11,
                    tgt_vocab_size: 11,
                    ..transformer_preset("transformer-tiny").unwrap()
                }
                .init(device)
                .unwrap(),
            ),
            Seq2Seq::Rnn(
                RnnAttentionConfig {
                    src_vocab_size: 11,
                    tgt_vocab_size: 11,
                    ..rnn_attention_preset("rnn-attention-tiny").unwrap()
                }
                .init(device)
                .unwrap(),
            ),
        ]
    }

    fn sources() -> Vec<Vec<u32>> {
        vec![
            vec![3, 4, 5, 2],
            vec![6, 2],
            vec![7, 8, 9, 10, 3, 2],
            vec![4, 4, 2],
        ]
    }

    /// Log-probability of `target` (then the end token) given `source`, by teacher forcing.
    fn log_prob(model: &Seq2Seq, source: &[u32], target: &[u32], device: &Device) -> f64 {
        let (ids, padding) = source_batch(&[source.to_vec()], 0, device);
        let mut state = model.start(ids, padding);
        let mut previous = TOKENS.bos;
        let mut total = 0.0;
        for &token in target.iter().chain([&TOKENS.eos]) {
            let logits = model.step(previous_tensor(&[previous], device), &mut state);
            let (lp, _) = to_rows(log_softmax(logits, 1));
            total += lp[token as usize] as f64;
            previous = token;
        }
        total
    }

    /// The difference in log-probability between the tokens `a` and `b` choose where they first
    /// differ (the end token where one has ended), both after their common prefix.
    fn divergence_gap(
        model: &Seq2Seq,
        source: &[u32],
        a: &[u32],
        b: &[u32],
        device: &Device,
    ) -> f64 {
        let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let (ids, padding) = source_batch(&[source.to_vec()], 0, device);
        let mut state = model.start(ids, padding);
        let mut previous = TOKENS.bos;
        for &token in &a[..at] {
            model.step(previous_tensor(&[previous], device), &mut state);
            previous = token;
        }
        let logits = model.step(previous_tensor(&[previous], device), &mut state);
        let (lp, _) = to_rows(log_softmax(logits, 1));
        let choice = |t: &[u32]| lp[t.get(at).copied().unwrap_or(TOKENS.eos) as usize] as f64;
        (choice(a) - choice(b)).abs()
    }

    /// Beam search of width 1 is greedy decoding; a batch decodes as each source alone; and on
    /// these sources a beam of 4 finds hypotheses at least as likely as greedy's (beam search
    /// does not promise that in general, but a worse one here would point at a bug).
    #[test]
    fn beam_of_one_is_greedy_and_wider_beams_score_no_worse() {
        let device = Device::flex();
        device.seed(21);
        for model in models(&device) {
            let sources = sources();
            let greedy = decode(&model, &sources, TOKENS, &Strategy::Greedy, 12, &device);
            let beam = |width| Strategy::Beam {
                width,
                length_penalty: 0.0,
            };
            let one = decode(&model, &sources, TOKENS, &beam(1), 12, &device);
            for (i, source) in sources.iter().enumerate() {
                // A batch of beams and the greedy batch differ in shape, so their logits may
                // differ in the last bits: they may part only where two tokens tie.
                if one[i] != greedy[i] {
                    let gap = divergence_gap(&model, source, &one[i], &greedy[i], &device);
                    assert!(
                        gap < 1e-4,
                        "source {i}: beam 1 {:?} is not greedy {:?}",
                        one[i],
                        greedy[i]
                    );
                }
            }
            let four = decode(&model, &sources, TOKENS, &beam(4), 12, &device);
            for (i, source) in sources.iter().enumerate() {
                let alone = decode(&model, &[source.clone()], TOKENS, &beam(4), 12, &device);
                assert_eq!(
                    alone[0], four[i],
                    "source {i} decodes differently in a batch"
                );
                // Both ended with the end token within the limit, or the comparison is moot.
                if greedy[i].len() < 12 && four[i].len() < 12 {
                    let (g, b) = (
                        log_prob(&model, source, &greedy[i], &device),
                        log_prob(&model, source, &four[i], &device),
                    );
                    assert!(b >= g - 1e-4, "beam {b} below greedy {g} for source {i}");
                }
            }
        }
    }

    #[test]
    fn sampling_is_seeded_and_greedy_at_temperature_zero() {
        let device = Device::flex();
        device.seed(22);
        for model in models(&device) {
            let sample = |seed, temperature| {
                let config = SamplingConfig {
                    seed,
                    temperature,
                    ..SamplingConfig::default()
                };
                decode(
                    &model,
                    &sources(),
                    TOKENS,
                    &Strategy::Sample(config),
                    10,
                    &device,
                )
            };
            assert_eq!(sample(3, 1.0), sample(3, 1.0));
            let greedy = decode(&model, &sources(), TOKENS, &Strategy::Greedy, 10, &device);
            assert_eq!(sample(3, 0.0), greedy);
        }
    }

    #[test]
    fn best_indices_orders_by_value_then_index() {
        assert_eq!(best_indices(&[0.5, 2.0, 2.0, -1.0, 3.0], 3), vec![4, 1, 2]);
        assert_eq!(best_indices(&[1.0, 0.0], 5), vec![0, 1]);
    }
}
