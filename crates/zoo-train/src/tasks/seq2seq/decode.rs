//! Decoding an encoder-decoder run: translating sentences (greedy, beam or sampled) and scoring
//! a split's decoded outputs with BLEU and exact match, recorded in the run's `scores.jsonl`.

use crate::ZooError;
use crate::recipe::{DecodingSpec, Task};
use crate::runtime::run_dir::append_run_line;
use crate::tasks::seq2seq::data::load_pairs;
use crate::tasks::seq2seq::run::Seq2SeqRun;
use burn::module::Module;
use std::path::Path;
use std::time::Instant;
use zoo_blocks::SamplingConfig;
use zoo_seq2seq::{DecodeTokens, Strategy, decode};
use zoo_text::DataDir;
use zoo_text::DatasetRegistry;
use zoo_text::bleu::{Bleu, corpus_bleu, exact_match};

/// Decoded evaluations of a run, one JSON object per line.
pub const SCORES_FILE: &str = "scores.jsonl";

/// The command line's changes to a run's `[decoding]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodingOptions {
    /// Beam width (1: greedy).
    pub beam: Option<usize>,
    /// Beam search ranks hypotheses by log-probability / length^this.
    pub length_penalty: Option<f64>,
}

impl DecodingOptions {
    /// `decoding` with these options applied.
    pub fn apply(&self, decoding: &DecodingSpec) -> Result<DecodingSpec, ZooError> {
        let mut spec = decoding.clone();
        if let Some(beam) = self.beam {
            if beam == 0 {
                return Err(ZooError::Usage(
                    "--beam must be at least 1 (1 is greedy)".into(),
                ));
            }
            spec.beam = beam;
        }
        if let Some(penalty) = self.length_penalty {
            if !penalty.is_finite() {
                return Err(ZooError::Usage(format!(
                    "--length-penalty must be a finite number, got {penalty}"
                )));
            }
            spec.length_penalty = penalty;
        }
        Ok(spec)
    }
}

/// The strategy `[decoding]` (or the command line) asks for.
pub fn strategy(decoding: &DecodingSpec) -> Strategy {
    if decoding.beam <= 1 {
        Strategy::Greedy
    } else {
        Strategy::Beam {
            width: decoding.beam,
            length_penalty: decoding.length_penalty,
        }
    }
}

/// Sources decoded together.
const DECODE_BATCH: usize = 64;

/// Translates `sentences` with `strategy` (or sampling), in batches of similar length; the
/// outputs in the order of the inputs.
pub fn translate(
    run: &Seq2SeqRun,
    sentences: &[String],
    decoding: &DecodingSpec,
    sampling: Option<SamplingConfig>,
) -> Result<Vec<String>, ZooError> {
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let sources = encode_sources(run, &texts)?;
    let chosen = match sampling {
        Some(config) => Strategy::Sample(config),
        None => strategy(decoding),
    };
    decode_sources(run, &sources, decoding, &chosen)
        .iter()
        .map(|ids| {
            // Span corruption's outputs are sentinels and spans: keep the sentinels.
            let text = if run.recipe.task == Task::SpanCorruption {
                run.vocab.target.decode(ids)?
            } else {
                run.vocab.target.decode_text(ids)?
            };
            Ok(text.trim().to_string())
        })
        .collect()
}

/// `sentences` as the run's encoder reads them; what is longer than the model reads keeps its
/// end, `</s>`.
pub fn encode_sources(run: &Seq2SeqRun, sentences: &[&str]) -> Result<Vec<Vec<u32>>, ZooError> {
    let max_len = run.config.max_len();
    let mut sources = run.vocab.encode_sources(sentences)?;
    for ids in &mut sources {
        if ids.len() > max_len {
            ids.drain(max_len.saturating_sub(1)..ids.len() - 1);
        }
    }
    Ok(sources)
}

/// The special tokens decoding reads: the source's padding, the target's begin and end.
pub fn decode_tokens(run: &Seq2SeqRun) -> DecodeTokens {
    DecodeTokens {
        pad: run.vocab.source_tokens.pad,
        ..run.vocab.target_tokens
    }
}

/// The target ids (begin and end tokens left out) of `sources` (as [`encode_sources`] gives
/// them) decoded with `strategy`, in batches of similar length, each at most `decoding`'s
/// `max_len_a * source length + max_len_b` tokens; in the order of `sources`.
pub fn decode_sources(
    run: &Seq2SeqRun,
    sources: &[Vec<u32>],
    decoding: &DecodingSpec,
    strategy: &Strategy,
) -> Vec<Vec<u32>> {
    let device = run.model.devices()[0].clone();
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].len());
    let mut outputs = vec![Vec::new(); sources.len()];
    for chunk in order.chunks(DECODE_BATCH) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| sources[i].clone()).collect();
        let longest = batch.iter().map(Vec::len).max().unwrap_or(1);
        let limit = (decoding.max_len_a * longest as f64) as usize + decoding.max_len_b;
        let decoded = decode(
            &run.model,
            &batch,
            decode_tokens(run),
            strategy,
            limit,
            &device,
        );
        for (&i, ids) in chunk.iter().zip(decoded) {
            outputs[i] = ids;
        }
    }
    outputs
}

/// What `zoo eval` reports for an encoder-decoder run.
#[derive(Clone, Debug)]
pub struct Seq2SeqEvalReport {
    /// The split.
    pub split: String,
    /// The checkpoint's epoch.
    pub epoch: usize,
    /// How outputs were decoded (`greedy`, `beam 5 (length penalty 1)`).
    pub strategy: String,
    /// Sentences decoded.
    pub sentences: usize,
    /// Corpus BLEU against the raw references (sacreBLEU's 13a tokenisation).
    pub bleu: Bleu,
    /// Outputs equal to their reference, percent.
    pub exact_match: f64,
    /// Wall time of decoding.
    pub seconds: f64,
    /// The first outputs, for a look.
    pub examples: Vec<(String, String, String)>,
}

impl Seq2SeqEvalReport {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        format!(
            "{} (epoch {}, {} sentences, {}): BLEU {:.2} ({}; BP {:.3}, hyp/ref length {}/{}), exact match {:.2}%, decoded in {:.1} s",
            self.split,
            self.epoch,
            self.sentences,
            self.strategy,
            self.bleu.score,
            self.bleu
                .precisions
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join("/"),
            self.bleu.brevity_penalty,
            self.bleu.hyp_len,
            self.bleu.ref_len,
            self.exact_match,
            self.seconds
        )
    }

    /// Appends the report to the run's `scores.jsonl`.
    pub fn record(&self, run_dir: &Path) -> Result<(), ZooError> {
        let line = serde_json::json!({
            "split": self.split,
            "epoch": self.epoch,
            "strategy": self.strategy,
            "sentences": self.sentences,
            "bleu": self.bleu.score,
            "exact_match": self.exact_match,
            "seconds": self.seconds,
        });
        append_run_line(&run_dir.join(SCORES_FILE), &line.to_string())
    }
}

/// Decodes every source of `split` and scores the outputs against the references.
pub fn evaluate_seq2seq(
    run: &Seq2SeqRun,
    split: &str,
    data_dir: &DataDir,
    decoding: &DecodingSpec,
) -> Result<Seq2SeqEvalReport, ZooError> {
    if run.recipe.task == Task::SpanCorruption {
        return Err(ZooError::Usage(
            "a span-corruption run is scored by its validation loss and token accuracy during training (metrics.jsonl); decode its inputs with `zoo translate`".into(),
        ));
    }
    let pairs = load_pairs(&DatasetRegistry::builtin(), &run.recipe, split, data_dir)?;
    let (sources, references): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
    let started = Instant::now();
    let outputs = translate(run, &sources, decoding, None)?;
    let seconds = started.elapsed().as_secs_f64();
    let strategy = match strategy(decoding) {
        Strategy::Beam {
            width,
            length_penalty,
        } => format!("beam {width}, length penalty {length_penalty}"),
        _ => "greedy".to_string(),
    };
    Ok(Seq2SeqEvalReport {
        split: split.to_string(),
        epoch: run.epoch,
        strategy,
        sentences: sources.len(),
        bleu: corpus_bleu(&outputs, &references),
        exact_match: exact_match(&outputs, &references),
        seconds,
        examples: (0..sources.len().min(3))
            .map(|i| {
                (
                    sources[i].clone(),
                    outputs[i].clone(),
                    references[i].clone(),
                )
            })
            .collect(),
    })
}
