//! Decoding an encoder-decoder: greedy, sampling (the shared [`Sampler`]) and beam search, all
//! batched over sources. Every model encodes each source once ([`EncoderDecoder::start`]) and
//! then decodes one token per step from its cached state, so a step costs one position, not
//! the whole prefix.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use zoo_blocks::beam::{
    BeamSearch, StepDecoder, beam_search, column_tensor, host_rows, rows_tensor,
};
use zoo_blocks::decoding::argmax;
use zoo_blocks::{Sampler, SamplingConfig};

/// What an encoder-decoder offers its decoders beside the step and the row selection.
pub trait EncoderDecoder: StepDecoder {
    /// Encodes `source` (`[batch, src_len]`, `padding` true at padded positions): the state
    /// of the first step.
    fn start(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Self::State;

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
        } => {
            let search = BeamSearch {
                width: *width,
                length_penalty: *length_penalty,
                max_len,
                end: Some(tokens.eos),
            };
            beam_search(
                model,
                state,
                &vec![tokens.bos; sources.len()],
                &search,
                device,
            )
        }
    }
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
        let logits = model.step(column_tensor(&previous, device), &mut state);
        let (values, vocab) = host_rows(logits);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::{rnn_attention_preset, transformer_preset};
    use crate::{RnnAttentionConfig, Seq2Seq, TransformerConfig};
    use burn::tensor::activation::log_softmax;

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
            let logits = model.step(column_tensor(&[previous], device), &mut state);
            let (lp, _) = host_rows(log_softmax(logits, 1));
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
            model.step(column_tensor(&[previous], device), &mut state);
            previous = token;
        }
        let logits = model.step(column_tensor(&[previous], device), &mut state);
        let (lp, _) = host_rows(log_softmax(logits, 1));
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
}
