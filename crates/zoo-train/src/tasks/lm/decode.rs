//! Continuing a prompt with a loaded language-model run: sampling, speculative decoding with a
//! second run as the draft, and beam search. Every kind of run reads incrementally (a GPT's KV
//! cache, a recurrent state, an n-gram's context), so each decoder is written once, in
//! `zoo_blocks`, for all of them.

use crate::ZooError;
use crate::tasks::lm::model::LmModel;
use crate::tasks::lm::run::{LoadedRun, RunModel};
use std::time::{Duration, Instant};
use zoo_blocks::beam::BeamSearch;
use zoo_blocks::incremental::IncrementalLm;
use zoo_blocks::speculative::{SpeculativeStats, speculative_generate};
use zoo_blocks::{Sampler, SamplingConfig};
use zoo_gpt::GptCache;
use zoo_rnn::RnnCache;
use zoo_text::{END_OF_TEXT, ZooTokenizer};

/// What a run's model has read.
pub enum RunCache {
    /// A GPT's keys and values.
    Gpt(GptCache),
    /// A recurrent model's recent states.
    Rnn(RnnCache),
    /// The tokens an n-gram model reads its context from.
    Ngram(Vec<u32>),
}

impl IncrementalLm for RunModel {
    type Cache = RunCache;

    fn empty_cache(&self) -> RunCache {
        match self {
            RunModel::Neural(LmModel::Gpt(gpt)) => RunCache::Gpt(gpt.empty_cache()),
            RunModel::Neural(LmModel::Rnn(rnn)) => RunCache::Rnn(rnn.empty_cache()),
            RunModel::Ngram(_) => RunCache::Ngram(Vec::new()),
        }
    }

    fn cached_len(&self, cache: &RunCache) -> usize {
        match (self, cache) {
            (RunModel::Neural(LmModel::Gpt(gpt)), RunCache::Gpt(c)) => gpt.cached_len(c),
            (RunModel::Neural(LmModel::Rnn(rnn)), RunCache::Rnn(c)) => rnn.cached_len(c),
            (RunModel::Ngram(_), RunCache::Ngram(tokens)) => tokens.len(),
            _ => unreachable!("a cache comes from its own model's empty_cache"),
        }
    }

    fn extend(&self, tokens: &[u32], rows: usize, cache: &mut RunCache) -> Vec<Vec<f32>> {
        match (self, cache) {
            (RunModel::Neural(LmModel::Gpt(gpt)), RunCache::Gpt(c)) => gpt.extend(tokens, rows, c),
            (RunModel::Neural(LmModel::Rnn(rnn)), RunCache::Rnn(c)) => rnn.extend(tokens, rows, c),
            (RunModel::Ngram(ngram), RunCache::Ngram(read)) => {
                read.extend_from_slice(tokens);
                (read.len() - rows..read.len())
                    .map(|i| ngram.log_probs(&read[..=i]))
                    .collect()
            }
            _ => unreachable!("a cache comes from its own model's empty_cache"),
        }
    }

    fn truncate(&self, cache: &mut RunCache, len: usize) {
        match (self, cache) {
            (RunModel::Neural(LmModel::Gpt(gpt)), RunCache::Gpt(c)) => gpt.truncate(c, len),
            (RunModel::Neural(LmModel::Rnn(rnn)), RunCache::Rnn(c)) => rnn.truncate(c, len),
            (RunModel::Ngram(_), RunCache::Ngram(read)) => read.truncate(len),
            _ => unreachable!("a cache comes from its own model's empty_cache"),
        }
    }

    fn context_len(&self) -> Option<usize> {
        match self {
            RunModel::Neural(LmModel::Gpt(gpt)) => gpt.context_len(),
            // An n-gram model reads its last `order - 1` tokens from a growing text.
            RunModel::Neural(LmModel::Rnn(_)) | RunModel::Ngram(_) => None,
        }
    }
}

impl RunModel {
    /// Size of the distribution the model predicts.
    pub fn vocab_size(&self) -> usize {
        match self {
            RunModel::Neural(LmModel::Gpt(gpt)) => gpt.vocab_size(),
            RunModel::Neural(LmModel::Rnn(rnn)) => rnn.vocab_size(),
            RunModel::Ngram(ngram) => ngram.vocab_size(),
        }
    }
}

/// How `zoo generate` picks the new tokens.
pub enum Decoding<'a> {
    /// Sampling (greedy at temperature 0), one model read per token.
    Sample(SamplingConfig),
    /// Sampling from the run's distribution with `draft` proposing `tokens` tokens per round.
    Speculative {
        /// The draft run.
        draft: &'a LoadedRun,
        /// Proposals per round.
        tokens: usize,
        /// The sampling both models' distributions go through.
        sampling: SamplingConfig,
    },
    /// Beam search for the likeliest continuation.
    Beam {
        /// Hypotheses kept.
        width: usize,
        /// Finished hypotheses rank by log-probability / length^this.
        length_penalty: f64,
    },
}

/// Most proposals per round: a recurrent cache goes back at most this far.
pub const MAX_DRAFT_TOKENS: usize = zoo_blocks::incremental::ROLLBACK - 1;

/// What `zoo generate` made, and how.
pub struct Generated {
    /// The prompt and its continuation.
    pub text: String,
    /// New tokens.
    pub tokens: usize,
    /// Wall time of the decoding (tokenising and loading excluded).
    pub elapsed: Duration,
    /// Speculative decoding's rounds and proposals.
    pub speculative: Option<SpeculativeStats>,
}

impl Generated {
    /// One line of figures: tokens per second, and speculative decoding's acceptance.
    pub fn stats_line(&self) -> String {
        let seconds = self.elapsed.as_secs_f64();
        let mut line = format!(
            "generated {} tokens in {seconds:.2} s: {:.1} tokens/s",
            self.tokens,
            self.tokens as f64 / seconds.max(1e-9)
        );
        if let Some(s) = &self.speculative {
            line += &format!(
                "; {} rounds, {} of {} proposals accepted ({:.1}%), {:.2} tokens per target read",
                s.rounds,
                s.accepted,
                s.drafted,
                100.0 * s.acceptance_rate(),
                s.tokens_per_round()
            );
        }
        line
    }
}

/// Continues `prompt` with `run` by `max_tokens` tokens, as `decoding` says.
pub fn generate(
    run: &LoadedRun,
    prompt: &str,
    max_tokens: usize,
    decoding: &Decoding,
) -> Result<Generated, ZooError> {
    let ids = run.tokenizer.encode(prompt)?;
    if ids.is_empty() {
        return Err(ZooError::Usage(
            "the prompt is empty after tokenisation; give --prompt some text".into(),
        ));
    }
    let started = Instant::now();
    let (out, speculative) = match decoding {
        Decoding::Sample(sampling) => {
            sampling.validate().map_err(ZooError::Usage)?;
            let mut sampler = Sampler::new(sampling.clone());
            let out = zoo_blocks::generate(&run.model, &ids, max_tokens, &mut sampler);
            (out, None)
        }
        Decoding::Speculative {
            draft,
            tokens,
            sampling,
        } => {
            sampling.validate().map_err(ZooError::Usage)?;
            if !(1..=MAX_DRAFT_TOKENS).contains(tokens) {
                return Err(ZooError::Usage(format!(
                    "--draft-tokens must be 1 to {MAX_DRAFT_TOKENS}, got {tokens}"
                )));
            }
            check_same_vocabulary(run, draft)?;
            let mut sampler = Sampler::new(sampling.clone());
            let (out, stats) = speculative_generate(
                &run.model,
                &draft.model,
                &ids,
                max_tokens,
                *tokens,
                &mut sampler,
            );
            (out, Some(stats))
        }
        Decoding::Beam {
            width,
            length_penalty,
        } => {
            if *width == 0 || !length_penalty.is_finite() {
                return Err(ZooError::Usage(format!(
                    "--beam must be at least 1 and --length-penalty finite, got {width} and \
                     {length_penalty}"
                )));
            }
            let search = BeamSearch {
                width: *width,
                length_penalty: *length_penalty,
                max_len: max_tokens,
                end: end_of_text(&run.tokenizer),
            };
            let found = match &run.model {
                RunModel::Neural(LmModel::Gpt(gpt)) => gpt.beam_search(&ids, &search),
                RunModel::Neural(LmModel::Rnn(rnn)) => rnn.beam_search(&ids, &search),
                RunModel::Ngram(_) => Err(
                    "beam search runs on a GPT or a recurrent model, and this is an n-gram model"
                        .into(),
                ),
            }
            .map_err(ZooError::Usage)?;
            ([ids.clone(), found].concat(), None)
        }
    };
    let elapsed = started.elapsed();
    Ok(Generated {
        text: run.tokenizer.decode(&out)?,
        tokens: out.len() - ids.len(),
        elapsed,
        speculative,
    })
}

/// The id of the tokenizer's end-of-text token, if it has one: beam search finishes a
/// hypothesis there.
fn end_of_text(tokenizer: &ZooTokenizer) -> Option<u32> {
    tokenizer.token_id(END_OF_TEXT)
}

/// A draft must tokenise as the target does and predict over the same ids.
fn check_same_vocabulary(target: &LoadedRun, draft: &LoadedRun) -> Result<(), ZooError> {
    if !target.tokenizer.same_vocabulary(&draft.tokenizer) {
        return Err(ZooError::Usage(
            "the draft's tokenizer differs from the run's: speculative decoding needs both \
             models to read and predict the same tokens"
                .into(),
        ));
    }
    let (t, d) = (target.model.vocab_size(), draft.model.vocab_size());
    if t != d {
        return Err(ZooError::Usage(format!(
            "the run predicts {t} token ids and the draft {d}: speculative decoding needs the \
             same vocabulary in both"
        )));
    }
    Ok(())
}

/// The text of `ids` followed by `tokens` sampled tokens.
pub(crate) fn continue_text(
    model: &RunModel,
    tokenizer: &ZooTokenizer,
    ids: &[u32],
    tokens: usize,
    sampling: SamplingConfig,
) -> Result<String, ZooError> {
    let mut sampler = Sampler::new(sampling);
    let out = zoo_blocks::generate(model, ids, tokens, &mut sampler);
    Ok(tokenizer.decode(&out)?)
}
