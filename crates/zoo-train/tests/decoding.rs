//! Decoding real models of every kind: speculative decoding at temperature 0 gives the target's
//! greedy output token for token, for every pairing of GPT, recurrent and n-gram targets and
//! drafts, also past a GPT's block; beam search for language models is greedy at width 1,
//! scores at least greedy's log-probability wider, and stops at the end token.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use zoo_blocks::beam::BeamSearch;
use zoo_blocks::decoding::ids_tensor;
use zoo_blocks::speculative::speculative_generate;
use zoo_blocks::{CellKind, PositionKind, Sampler, SamplingConfig};
use zoo_gpt::GptConfig;
use zoo_rnn::RnnConfig;
use zoo_text::KneserNey;
use zoo_train::tasks::lm::model::LmModel;
use zoo_train::tasks::lm::run::RunModel;

const VOCAB: usize = 13;

fn gpt(seed: u64, device: &Device) -> RunModel {
    device.seed(seed);
    let config = GptConfig {
        vocab_size: VOCAB,
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        position: PositionKind::Rope,
        ..GptConfig::default()
    };
    RunModel::Neural(LmModel::Gpt(config.init(device).unwrap()))
}

fn rnn(seed: u64, device: &Device) -> RunModel {
    device.seed(seed);
    let config = RnnConfig {
        vocab_size: VOCAB,
        cell: CellKind::Lstm,
        n_layer: 2,
        d_embed: 24,
        d_hidden: 24,
        ..RnnConfig::default()
    };
    RunModel::Neural(LmModel::Rnn(config.init(device).unwrap()))
}

fn ngram() -> RunModel {
    let tokens: Vec<u32> = (0..400u32)
        .map(|i| (i * i + 3 * i) % VOCAB as u32)
        .collect();
    RunModel::Ngram(KneserNey::train(&tokens, 3, VOCAB).unwrap())
}

fn greedy() -> Sampler {
    Sampler::new(SamplingConfig::greedy())
}

#[test]
fn speculative_decoding_at_temperature_zero_is_the_targets_greedy_decoding() {
    let device = Device::flex();
    let prompt = [3, 1, 4, 1, 5];
    let models = [
        ("gpt", gpt(1, &device)),
        ("other gpt", gpt(2, &device)),
        ("lstm", rnn(3, &device)),
        ("3-gram", ngram()),
    ];
    // 40 new tokens run a GPT past its block of 16 more than once.
    for (target_name, target) in &models[..3] {
        let expected = zoo_blocks::generate(target, &prompt, 40, &mut greedy());
        for (draft_name, draft) in &models {
            for k in [1, 3, 6] {
                let (text, stats) =
                    speculative_generate(target, draft, &prompt, 40, k, &mut greedy());
                assert_eq!(
                    text, expected,
                    "target {target_name}, draft {draft_name}, k {k}"
                );
                assert_eq!(stats.generated, 40);
                if target_name == draft_name {
                    assert_eq!(
                        stats.accepted, stats.drafted,
                        "{target_name} drafting itself"
                    );
                }
            }
        }
    }
}

/// The summed log-probability of `continuation` after `prompt` under a recurrent model or a
/// GPT (whose whole text fits its block).
fn log_prob(model: &RunModel, prompt: &[u32], continuation: &[u32], device: &Device) -> f64 {
    let text = [prompt, continuation].concat();
    let ids = ids_tensor(&text[..text.len() - 1], device);
    let logits = match model {
        RunModel::Neural(LmModel::Gpt(gpt)) => gpt.forward(ids, None),
        RunModel::Neural(LmModel::Rnn(rnn)) => rnn.forward(ids, None).0,
        RunModel::Ngram(_) => unreachable!("beam search is for networks"),
    };
    let lp: Vec<f32> = log_softmax(logits, 2).into_data().try_to_vec().unwrap();
    continuation
        .iter()
        .enumerate()
        .map(|(i, &t)| lp[(prompt.len() - 1 + i) * VOCAB + t as usize] as f64)
        .sum()
}

fn beam(model: &RunModel, prompt: &[u32], search: &BeamSearch) -> Vec<u32> {
    match model {
        RunModel::Neural(LmModel::Gpt(gpt)) => gpt.beam_search(prompt, search).unwrap(),
        RunModel::Neural(LmModel::Rnn(rnn)) => rnn.beam_search(prompt, search).unwrap(),
        RunModel::Ngram(_) => unreachable!("beam search is for networks"),
    }
}

#[test]
fn beam_search_for_language_models_is_greedy_at_width_one_and_no_worse_wider() {
    let device = Device::flex();
    let prompt = [2, 7, 1];
    for model in [gpt(4, &device), rnn(5, &device)] {
        let search = |width| BeamSearch {
            width,
            length_penalty: 1.0,
            max_len: 10,
            end: None,
        };
        let greedy_text = zoo_blocks::generate(&model, &prompt, 10, &mut greedy());
        assert_eq!(beam(&model, &prompt, &search(1)), greedy_text[3..]);
        let wide = beam(&model, &prompt, &search(5));
        assert_eq!(
            wide.len(),
            10,
            "no end token: every hypothesis runs to the limit"
        );
        let (b, g) = (
            log_prob(&model, &prompt, &wide, &device),
            log_prob(&model, &prompt, &greedy_text[3..], &device),
        );
        assert!(b >= g - 1e-4, "beam {b} below greedy {g}");
        // With an end token, the best hypothesis ends where the model ends it, or at the limit.
        let end = greedy_text[5];
        let ended = beam(
            &model,
            &prompt,
            &BeamSearch {
                end: Some(end),
                ..search(5)
            },
        );
        assert!(
            !ended.contains(&end),
            "{ended:?} goes past the end token {end}"
        );
    }
    // A GPT's block bounds the prompt and the new tokens together.
    let model = gpt(4, &device);
    let too_long = BeamSearch {
        width: 2,
        length_penalty: 1.0,
        max_len: 16,
        end: None,
    };
    let RunModel::Neural(LmModel::Gpt(gpt)) = &model else {
        unreachable!()
    };
    let message = gpt.beam_search(&prompt, &too_long).unwrap_err();
    assert!(message.contains("block"), "{message}");
    // A long prompt keeps its end.
    let long: Vec<u32> = (0..40).map(|i| i % VOCAB as u32).collect();
    let search = BeamSearch {
        max_len: 6,
        ..too_long
    };
    assert_eq!(
        gpt.beam_search(&long, &search).unwrap(),
        gpt.beam_search(&long[long.len() - 10..], &search).unwrap()
    );
}
