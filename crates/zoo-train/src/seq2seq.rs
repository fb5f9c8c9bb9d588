//! Encoder-decoder runs: translation (parallel corpora and the synthetic tasks) and T5's span
//! corruption on any text, with BLEU and exact match on decoded outputs.
//!
//! A run directory holds what other runs' do, plus `target_tokenizer.json` when the two sides
//! have separate vocabularies, and `scores.jsonl`: one line per decoded evaluation (split,
//! checkpoint epoch, strategy, BLEU, exact match, wall time).

use crate::ZooError;
use crate::data::{BatchSource, PerPass, StepLoader};
use crate::encoder::stream;
use crate::lm::gradients;
use crate::metrics::{JsonlMetricLogger, LabelMetric, LabelStatistic, LabelledBatch, LineRenderer};
use crate::recipe::{DecodingSpec, ModelConfig, Recipe, Task};
use crate::run::{
    Budget, METRICS_FILE, Plan, StepCost, TOKENIZER_FILE, TrainOptions, TrainReport,
    build_optimizer, check_checkpoint, last_val_loss, load_run_recipe, model_checkpoint,
    resumed_model, select_checkpoint, with_run_settings, write_run_recipe,
};
use crate::schedule::LrSchedule;
use crate::summary::RunSummary;
use burn::module::Module;
use burn::prelude::*;
use burn::train::metric::{Adaptor, LearningRateMetric, LossInput, LossMetric};
use burn::train::{InferenceStep, ItemLazy, Learner, SupervisedTraining, TrainOutput, TrainStep};
use burn_std::ExecutionError;
use rand::seq::SliceRandom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use zoo_blocks::SamplingConfig;
use zoo_blocks::loss::label_smoothed_cross_entropy;
use zoo_seq2seq::{DecodeTokens, Seq2Seq, Strategy, decode};
use zoo_text::bleu::{Bleu, corpus_bleu, exact_match};
use zoo_text::span_corruption::SpanCorruption;
use zoo_text::{DataDir, DatasetRegistry, ZooTokenizer};

/// The target side's tokenizer when the run keeps separate vocabularies.
pub const TARGET_TOKENIZER_FILE: &str = "target_tokenizer.json";
/// Decoded evaluations of a run, one JSON object per line.
pub const SCORES_FILE: &str = "scores.jsonl";
/// Padding, begin and end of sequence, added to every encoder-decoder vocabulary.
const SPECIALS: [&str; 3] = ["<pad>", "<s>", "</s>"];
/// Sentinels added for span corruption (T5 has 100).
pub const SENTINELS: usize = 100;

/// Sentinels a `task` run's vocabulary carries.
fn sentinels_for(task: Task) -> usize {
    if task == Task::SpanCorruption {
        SENTINELS
    } else {
        0
    }
}

/// Tokens an encoder-decoder run adds to each trained vocabulary for `task`.
pub fn added_tokens(task: Task) -> usize {
    SPECIALS.len() + sentinels_for(task)
}

/// The tokenizers of a run and the special ids decoding needs.
#[derive(Clone)]
pub struct Vocabularies {
    /// Encodes sources.
    pub source: ZooTokenizer,
    /// Encodes and decodes targets (the same as `source` for a joint vocabulary).
    pub target: ZooTokenizer,
    /// Whether source and target share one vocabulary.
    pub joint: bool,
    /// `<pad>` and `</s>` in the source vocabulary (`bos` unused).
    pub source_tokens: DecodeTokens,
    /// `<pad>`, `<s>` and `</s>` in the target vocabulary.
    pub target_tokens: DecodeTokens,
    /// `<extra_id_0>`, ... (span corruption only; joint vocabulary).
    pub sentinels: Vec<u32>,
}

fn with_specials(tokenizer: &mut ZooTokenizer, sentinels: usize) -> (DecodeTokens, Vec<u32>) {
    let names: Vec<String> = SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain((0..sentinels).map(|i| format!("<extra_id_{i}>")))
        .collect();
    let ids = tokenizer.add_special_tokens(&names);
    let tokens = DecodeTokens {
        pad: ids[0],
        bos: ids[1],
        eos: ids[2],
    };
    (tokens, ids[3..].to_vec())
}

impl Vocabularies {
    /// A joint vocabulary, or separate source and target ones.
    fn new(mut source: ZooTokenizer, target: Option<ZooTokenizer>, sentinels: usize) -> Self {
        let (source_tokens, sentinels) = with_specials(&mut source, sentinels);
        let joint = target.is_none();
        let (target, target_tokens) = match target {
            Some(mut target) => {
                let (tokens, _) = with_specials(&mut target, 0);
                (target, tokens)
            }
            None => (source.clone(), source_tokens),
        };
        Self {
            source,
            target,
            joint,
            source_tokens,
            target_tokens,
            sentinels,
        }
    }

    fn save(&self, run_dir: &Path) -> Result<(), ZooError> {
        self.source.save(&run_dir.join(TOKENIZER_FILE))?;
        if !self.joint {
            self.target.save(&run_dir.join(TARGET_TOKENIZER_FILE))?;
        }
        Ok(())
    }

    fn load(run_dir: &Path, task: Task) -> Result<Self, ZooError> {
        let source = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
        let target_path = run_dir.join(TARGET_TOKENIZER_FILE);
        let target = target_path
            .is_file()
            .then(|| ZooTokenizer::load(&target_path))
            .transpose()?;
        Ok(Self::new(source, target, sentinels_for(task)))
    }

    /// A source sentence as the encoder reads it: its tokens, then `</s>`, at most `max_len`.
    fn encode_source(&self, text: &str, max_len: usize) -> Result<Vec<u32>, ZooError> {
        let mut ids = self.source.encode(text)?;
        ids.truncate(max_len.saturating_sub(1));
        ids.push(self.source_tokens.eos);
        Ok(ids)
    }
}

/// The training examples of a split: token ids, before batching.
#[derive(Clone, Debug)]
pub enum Examples {
    /// Source (with `</s>`) and target (without `<s>` or `</s>`) pairs.
    Pairs(Vec<(Vec<u32>, Vec<u32>)>),
    /// Texts to corrupt afresh in every batch (span corruption).
    Texts(Vec<Vec<u32>>),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Pairs(p) => p.len(),
            Examples::Texts(t) => t.len(),
        }
    }

    /// The encoder's length of example `i` (batches group similar lengths).
    fn source_len(&self, i: usize) -> usize {
        match self {
            Examples::Pairs(p) => p[i].0.len(),
            Examples::Texts(t) => t[i].len(),
        }
    }
}

/// Source and target sentences of `split` (the recipe's languages).
fn load_pairs(
    registry: &DatasetRegistry,
    recipe: &Recipe,
    split: &str,
    dir: &DataDir,
) -> Result<Vec<(String, String)>, ZooError> {
    let data = &recipe.data;
    let languages = registry.languages(&data.dataset)?;
    let pick = |given: &Option<String>, index: usize| {
        given.clone().unwrap_or_else(|| languages[index].clone())
    };
    let (source, target) = (pick(&data.source, 0), pick(&data.target, 1));
    Ok(registry.load_parallel(&data.dataset, split, [&source, &target], dir)?)
}

/// A split as read: sentence pairs (translation) or running text (span corruption).
enum SplitText {
    Pairs(Vec<(String, String)>),
    Text(String),
}

impl SplitText {
    /// The training examples: pairs within `seq_len` (and how many were longer), or for span
    /// corruption the text as one stream of tokens (T5 packs its corpus the same way) cut into
    /// pieces of `seq_len - 1` tokens, so that the corrupted input (shorter: each span becomes
    /// one sentinel) and its `</s>` fit `seq_len`.
    fn examples(
        &self,
        vocab: &Vocabularies,
        seq_len: usize,
    ) -> Result<(Examples, usize), ZooError> {
        match self {
            SplitText::Text(text) => {
                let stream: Vec<u32> = vocab.source.encode_lines(text)?.concat();
                let piece = seq_len.saturating_sub(1).max(2);
                let pieces = stream
                    .chunks(piece)
                    .filter(|piece| piece.len() >= 2)
                    .map(<[u32]>::to_vec)
                    .collect();
                Ok((Examples::Texts(pieces), 0))
            }
            SplitText::Pairs(pairs) => {
                let (sources, targets): (Vec<&str>, Vec<&str>) =
                    pairs.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
                let sources = vocab.source.encode_each(&sources)?;
                let targets = vocab.target.encode_each(&targets)?;
                let mut kept = Vec::with_capacity(pairs.len());
                for (mut source, target) in sources.into_iter().zip(targets) {
                    source.push(vocab.source_tokens.eos);
                    if source.len() <= seq_len && target.len() < seq_len {
                        kept.push((source, target));
                    }
                }
                let dropped = pairs.len() - kept.len();
                Ok((Examples::Pairs(kept), dropped))
            }
        }
    }
}

/// How a split's examples are batched.
#[derive(Clone, Copy, Debug)]
pub struct Seq2SeqBatching {
    /// Examples per batch.
    pub batch_size: usize,
    /// Seed of the order and of span corruption.
    pub seed: u64,
    /// Shuffle every pass (training) or keep one order (validation).
    pub shuffle: bool,
}

/// One padded batch on the device.
#[derive(Clone, Debug)]
pub struct Seq2SeqBatch {
    /// `[batch, src_len]`.
    pub source: Tensor<2, Int>,
    /// `[batch, src_len]`, true at padding.
    pub source_padding: Tensor<2, Bool>,
    /// `<s>` then the target, `[batch, tgt_len]`.
    pub target_in: Tensor<2, Int>,
    /// The target then `</s>`, `[batch, tgt_len]`.
    pub target_out: Tensor<2, Int>,
    /// Flat indices `b * tgt_len + t` of the target tokens that are not padding.
    pub positions: Tensor<1, Int>,
}

/// Examples served in batches of similar source length: a [`BatchSource`]. Pass `p`'s order
/// shuffles the examples from `(seed, p)`, sorts each run of 50 batches' worth by length, cuts
/// batches and shuffles the batches; span corruption draws batch `g`'s noise from `(seed, g)`.
#[derive(Clone)]
pub struct Seq2SeqExamples {
    inner: Arc<ExamplesInner>,
}

struct ExamplesInner {
    examples: Examples,
    batching: Seq2SeqBatching,
    source_tokens: DecodeTokens,
    target_tokens: DecodeTokens,
    corruption: Option<(SpanCorruption, Vec<u32>)>,
    batches: PerPass<Vec<Vec<usize>>>,
}

impl Seq2SeqExamples {
    fn new(
        examples: Examples,
        batching: Seq2SeqBatching,
        vocab: &Vocabularies,
        corruption: Option<SpanCorruption>,
    ) -> Result<Self, String> {
        if examples.len() == 0 {
            return Err("no examples".into());
        }
        Ok(Self {
            inner: Arc::new(ExamplesInner {
                examples,
                batching,
                source_tokens: vocab.source_tokens,
                target_tokens: vocab.target_tokens,
                corruption: corruption.map(|c| (c, vocab.sentinels.clone())),
                batches: PerPass::default(),
            }),
        })
    }

    /// Examples in the split.
    pub fn len(&self) -> usize {
        self.inner.examples.len()
    }

    /// Never true: an empty split is refused at construction.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches in one pass.
    pub fn batches_per_pass(&self) -> usize {
        self.len().div_ceil(self.inner.batching.batch_size)
    }

    /// Mean target tokens per example, `</s>` included (what a token budget counts): a pair's
    /// target, or a corrupted text's sentinels and noise tokens.
    pub fn mean_target_tokens(&self) -> f64 {
        let inner = &*self.inner;
        let total: usize = match (&inner.examples, &inner.corruption) {
            (Examples::Pairs(pairs), _) => pairs.iter().map(|(_, target)| target.len() + 1).sum(),
            (Examples::Texts(texts), Some((corruption, _))) => texts
                .iter()
                .map(|text| {
                    let (noise, spans) = corruption.counts(text.len());
                    noise + spans + 1
                })
                .sum(),
            (Examples::Texts(_), None) => unreachable!("texts are only served for corruption"),
        };
        total as f64 / self.len() as f64
    }

    fn batches_of(&self, pass: usize) -> Arc<Vec<Vec<usize>>> {
        let inner = &*self.inner;
        inner.batches.get(pass, || {
            let size = inner.batching.batch_size;
            let mut order: Vec<usize> = (0..self.len()).collect();
            if inner.batching.shuffle {
                order.shuffle(&mut stream(inner.batching.seed, 1, pass as u64));
            }
            let by_length = |chunk: &mut [usize]| {
                chunk.sort_by_key(|&i| inner.examples.source_len(i));
            };
            order.chunks_mut(size * 50).for_each(by_length);
            let mut batches: Vec<Vec<usize>> = order.chunks(size).map(<[usize]>::to_vec).collect();
            if inner.batching.shuffle {
                batches.shuffle(&mut stream(inner.batching.seed, 4, pass as u64));
            }
            batches
        })
    }

    /// The source and target ids of the examples of batch `g` of the run.
    fn pairs_at(&self, g: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
        let inner = &*self.inner;
        let per_pass = self.batches_per_pass();
        let batches = self.batches_of(g / per_pass);
        let picked = &batches[g % per_pass];
        match (&inner.examples, &inner.corruption) {
            (Examples::Pairs(pairs), _) => picked.iter().map(|&i| pairs[i].clone()).collect(),
            (Examples::Texts(texts), Some((corruption, sentinels))) => {
                let mut rng = stream(inner.batching.seed, 2, g as u64);
                picked
                    .iter()
                    .map(|&i| {
                        let corrupted = corruption
                            .apply(&texts[i], sentinels, &mut rng)
                            .expect("pieces are short enough for the sentinels");
                        let mut input = corrupted.input;
                        input.push(inner.source_tokens.eos);
                        (input, corrupted.target)
                    })
                    .collect()
            }
            (Examples::Texts(_), None) => unreachable!("texts are corrupted"),
        }
    }

    /// Batch `g` of the run (counted from 0 across passes), on `device`.
    pub fn batch_at(&self, g: usize, device: &Device) -> Seq2SeqBatch {
        let pairs = self.pairs_at(g);
        let (source_pad, target) = (self.inner.source_tokens.pad, self.inner.target_tokens);
        let batch = pairs.len();
        let src_len = pairs.iter().map(|(s, _)| s.len()).max().unwrap_or(1);
        let tgt_len = pairs.iter().map(|(_, t)| t.len() + 1).max().unwrap_or(1);
        let mut source = vec![source_pad as i64; batch * src_len];
        let mut padding = vec![true; batch * src_len];
        let mut target_in = vec![target.pad as i64; batch * tgt_len];
        let mut target_out = vec![target.pad as i64; batch * tgt_len];
        let mut positions = Vec::new();
        for (b, (src, tgt)) in pairs.iter().enumerate() {
            for (t, &id) in src.iter().enumerate() {
                source[b * src_len + t] = id as i64;
                padding[b * src_len + t] = false;
            }
            let shifted = std::iter::once(target.bos).chain(tgt.iter().copied());
            let ended = tgt.iter().copied().chain(std::iter::once(target.eos));
            for (t, (input, output)) in shifted.zip(ended).enumerate() {
                target_in[b * tgt_len + t] = input as i64;
                target_out[b * tgt_len + t] = output as i64;
                positions.push((b * tgt_len + t) as i64);
            }
        }
        let n = positions.len();
        Seq2SeqBatch {
            source: Tensor::from_data(TensorData::new(source, [batch, src_len]), device),
            source_padding: Tensor::from_data(TensorData::new(padding, [batch, src_len]), device),
            target_in: Tensor::from_data(TensorData::new(target_in, [batch, tgt_len]), device),
            target_out: Tensor::from_data(TensorData::new(target_out, [batch, tgt_len]), device),
            positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        }
    }
}

impl BatchSource for Seq2SeqExamples {
    type Batch = Seq2SeqBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> Seq2SeqBatch {
        self.batch_at(epoch * per_epoch + index, device)
    }

    fn validation_batches(&self, requested: usize) -> usize {
        requested.min(self.batches_per_pass())
    }
}

/// An encoder-decoder with what training needs beside the weights.
#[derive(Module, Debug)]
pub struct Seq2SeqTrainer {
    /// The model.
    pub model: Seq2Seq,
    #[module(skip)]
    loss_scale: f32,
    #[module(skip)]
    grad_clip: f32,
    #[module(skip)]
    label_smoothing: f64,
}

impl Seq2SeqTrainer {
    /// Wraps a model for training.
    pub fn new(model: Seq2Seq, recipe: &Recipe) -> Self {
        Self {
            model,
            loss_scale: 1.0 / recipe.training.grad_accumulation as f32,
            grad_clip: recipe.optimizer.grad_clip as f32,
            label_smoothing: recipe.training.label_smoothing,
        }
    }

    fn forward(&self, batch: Seq2SeqBatch) -> Seq2SeqOutput {
        let logits = self
            .model
            .forward(batch.source, batch.source_padding, batch.target_in);
        let [rows, len, vocab] = logits.dims();
        let scored = logits
            .reshape([rows * len, vocab])
            .select(0, batch.positions.clone());
        let expected = batch
            .target_out
            .reshape([rows * len])
            .select(0, batch.positions);
        let predicted = scored.clone().detach().argmax(1).flatten(0, 1);
        Seq2SeqOutput {
            loss: label_smoothed_cross_entropy(scored, expected.clone(), self.label_smoothing),
            predicted,
            expected,
        }
    }
}

/// What one step reports: the (smoothed) loss and each target token's prediction.
pub struct Seq2SeqOutput {
    /// Mean loss per target token.
    pub loss: Tensor<1>,
    /// The most likely token at each target position.
    pub predicted: Tensor<1, Int>,
    /// The target token there.
    pub expected: Tensor<1, Int>,
}

impl ItemLazy for Seq2SeqOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(self)
    }
}

impl Adaptor<LossInput> for Seq2SeqOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// Target tokens predicted and expected, for token accuracy.
pub struct TargetTokens(Tensor<1, Int>, Tensor<1, Int>);

impl LabelledBatch for TargetTokens {
    fn labels(&self) -> Option<(Tensor<1, Int>, Tensor<1, Int>)> {
        Some((self.0.clone(), self.1.clone()))
    }
}

impl Adaptor<TargetTokens> for Seq2SeqOutput {
    fn adapt(&self) -> TargetTokens {
        TargetTokens(self.predicted.clone(), self.expected.clone())
    }
}

impl TrainStep for Seq2SeqTrainer {
    type Input = Seq2SeqBatch;
    type Output = Seq2SeqOutput;

    fn step(&self, batch: Seq2SeqBatch) -> TrainOutput<Seq2SeqOutput> {
        let out = self.forward(batch);
        let grads = gradients(self, &out.loss, self.loss_scale, self.grad_clip);
        TrainOutput {
            grads,
            item: Seq2SeqOutput {
                loss: out.loss.detach(),
                ..out
            },
        }
    }
}

impl InferenceStep for Seq2SeqTrainer {
    type Input = Seq2SeqBatch;
    type Output = Seq2SeqOutput;

    fn step(&self, batch: Seq2SeqBatch) -> Seq2SeqOutput {
        self.forward(batch)
    }
}

/// Builds the model of `config` with fresh weights.
pub fn init_model(config: &ModelConfig, device: &Device) -> Result<Seq2Seq, String> {
    Ok(match config {
        ModelConfig::Transformer(c) => Seq2Seq::Transformer(c.init(device)?),
        ModelConfig::RnnAttention(c) => Seq2Seq::Rnn(c.init(device)?),
        _ => return Err("not an encoder-decoder".into()),
    })
}

/// Fills in vocabulary sizes left at 0 and checks the ones given.
fn fit_vocabularies(config: &mut ModelConfig, vocab: &Vocabularies) -> Result<(), String> {
    let (source, target) = match config {
        ModelConfig::Transformer(c) => (&mut c.src_vocab_size, &mut c.tgt_vocab_size),
        ModelConfig::RnnAttention(c) => (&mut c.src_vocab_size, &mut c.tgt_vocab_size),
        _ => unreachable!("encoder-decoder configs only"),
    };
    for (size, tokenizer, name) in [
        (source, &vocab.source, "src_vocab_size"),
        (target, &vocab.target, "tgt_vocab_size"),
    ] {
        if *size == 0 {
            *size = tokenizer.vocab_size();
        } else if *size < tokenizer.vocab_size() {
            return Err(format!(
                "[model] {name} = {size} is smaller than the tokenizer's {} tokens",
                tokenizer.vocab_size()
            ));
        }
    }
    config.validate().map_err(|e| format!("[model]: {e}"))
}

/// Trains an encoder-decoder recipe; called by [`crate::run::train`] once the run directory is
/// checked.
pub(crate) fn train(
    recipe: &Recipe,
    recipe_path: &Path,
    options: &TrainOptions,
    run_dir: PathBuf,
    resume_epoch: Option<usize>,
) -> Result<TrainReport, ZooError> {
    let started = Instant::now();
    let recipe_error = |message: String| ZooError::Recipe {
        path: recipe_path.to_path_buf(),
        message,
    };
    let data = &recipe.data;
    let dir = &options.data_dir;
    let span_corruption = recipe.task == Task::SpanCorruption;
    let registry = DatasetRegistry::builtin();
    let read = |split: &str| -> Result<SplitText, ZooError> {
        Ok(if span_corruption {
            SplitText::Text(registry.load_split(&data.dataset, split, dir)?)
        } else {
            SplitText::Pairs(load_pairs(&registry, recipe, split, dir)?)
        })
    };
    let train_data = read(&data.train_split).map_err(|e| match e {
        ZooError::Text(e) => recipe_error(format!("[data]: {e}")),
        other => other,
    })?;
    let val_data = read(&data.val_split)?;

    std::fs::create_dir_all(&run_dir).map_err(|e| ZooError::io(&run_dir, e))?;
    let (vocab, config) = match resume_epoch {
        Some(_) => {
            let vocab = Vocabularies::load(&run_dir, recipe.task)?;
            let config = resumed_model(&run_dir, recipe, recipe_path, |wanted, _| {
                fit_vocabularies(wanted, &vocab)
            })?;
            (vocab, config)
        }
        None => {
            let spec = recipe.tokenizer_spec().map_err(recipe_error)?;
            let side = |pairs: &[(String, String)], target: bool| -> String {
                pairs
                    .iter()
                    .map(|(s, t)| format!("{}\n", if target { t } else { s }))
                    .collect()
            };
            let vocab = match (&train_data, &recipe.target_tokenizer) {
                (SplitText::Text(text), _) => {
                    Vocabularies::new(ZooTokenizer::build(spec, text)?, None, SENTINELS)
                }
                (SplitText::Pairs(pairs), Some(target_spec)) => Vocabularies::new(
                    ZooTokenizer::build(spec, &side(pairs, false))?,
                    Some(ZooTokenizer::build(target_spec, &side(pairs, true))?),
                    0,
                ),
                (SplitText::Pairs(pairs), None) => {
                    let both = side(pairs, false) + &side(pairs, true);
                    Vocabularies::new(ZooTokenizer::build(spec, &both)?, None, 0)
                }
            };
            let mut config = recipe.model_config().map_err(recipe_error)?;
            fit_vocabularies(&mut config, &vocab).map_err(recipe_error)?;
            vocab.save(&run_dir)?;
            write_run_recipe(&run_dir, recipe, &config)?;
            (vocab, config)
        }
    };

    let seq_len = recipe.sequence_len(&config);
    let t = &recipe.training;
    let (train_examples, train_dropped) = train_data.examples(&vocab, seq_len)?;
    let (val_examples, _) = val_data.examples(&vocab, seq_len)?;
    let corruption = span_corruption.then_some(SpanCorruption {
        noise_density: data.noise_density,
        mean_span_length: data.mean_span_length,
    });
    let serve = |examples: Examples, train: bool| {
        let batching = Seq2SeqBatching {
            batch_size: t.batch_size,
            seed: recipe.seed ^ if train { 0 } else { 0x76_616C },
            shuffle: train,
        };
        let split = if train { "training" } else { "validation" };
        Seq2SeqExamples::new(examples, batching, &vocab, corruption)
            .map_err(|e| recipe_error(format!("{split} split: {e}")))
    };
    let train_examples = serve(train_examples, true)?;
    let val_examples = serve(val_examples, false)?;

    let micro_batches = t.grad_accumulation;
    let cost = StepCost {
        tokens: train_examples.mean_target_tokens() * (t.batch_size * micro_batches) as f64,
        flops_per_token: config.size().train_flops_per_token as f64,
    };
    let budget = Budget::of(
        recipe,
        train_examples.batches_per_pass().div_ceil(micro_batches),
        cost,
    )
    .map_err(recipe_error)?;
    let Plan {
        total_steps,
        epochs,
        start_epoch,
    } = budget.plan(options.stop_after_steps, resume_epoch, &run_dir)?;

    let device = options.device.clone();
    let autodiff = device.clone().autodiff();
    device.seed(recipe.seed);
    let model = init_model(&config, &autodiff).map_err(recipe_error)?;
    let trainer = Seq2SeqTrainer::new(model, recipe);
    if let Some(epoch) = resume_epoch {
        check_checkpoint(&run_dir, epoch, &trainer)?;
    }
    let schedule = LrSchedule::new(
        &recipe.schedule,
        recipe.optimizer.lr,
        budget.total_steps,
        config.width(),
    );
    let learner = Learner::new(trainer, build_optimizer(recipe), schedule);
    let train_loader = StepLoader::training(
        train_examples.clone(),
        budget.steps_per_epoch * micro_batches,
        total_steps * micro_batches,
        start_epoch,
        &device,
    );
    let val_loader = StepLoader::validation(val_examples.clone(), t.eval_batches, &device);
    let metric_logger = JsonlMetricLogger::new(run_dir.join(METRICS_FILE), budget, resume_epoch)?;
    let accuracy = || LabelMetric::<TargetTokens>::new("Accuracy", LabelStatistic::Accuracy);
    let training = SupervisedTraining::new(&run_dir, Arc::new(train_loader), Arc::new(val_loader))
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(accuracy())
        .metric_valid_numeric(accuracy())
        .metric_train_numeric(LearningRateMetric::new());
    let training = with_run_settings(
        training,
        recipe,
        &run_dir,
        epochs,
        resume_epoch,
        metric_logger,
        LineRenderer::with_columns(
            budget,
            t.batch_size,
            "seq",
            vec![("val token acc", "Accuracy", 2)],
        ),
    );
    let size = config.size();
    println!(
        "training {} ({} parameters, {}) on {} {} of '{}'{} for {} steps of {} examples; run directory {}",
        recipe.name(),
        size.total,
        recipe.task.name(),
        train_examples.len(),
        if span_corruption {
            "text pieces"
        } else {
            "pairs"
        },
        data.dataset,
        if train_dropped > 0 {
            format!(" ({train_dropped} pairs longer than seq_len = {seq_len} left out)")
        } else {
            String::new()
        },
        budget.total_steps,
        t.batch_size * micro_batches,
        run_dir.display()
    );
    let result = training.launch(learner);
    if let Some(error) = &result.error {
        return Err(ZooError::Training(error.to_string()));
    }
    let trained_for = started.elapsed().as_secs_f64();
    // Score the validation split by decoding it, as `zoo eval` would.
    let finished = total_steps == budget.total_steps;
    if finished {
        RunSummary::new(recipe, size, cost, total_steps, &run_dir).save(&run_dir)?;
    }
    if finished && !span_corruption {
        let run = load_seq2seq_run(&run_dir, None, &device)?;
        let report = evaluate_seq2seq(&run, &data.val_split, dir, &recipe.decoding)?;
        println!("{}", report.summary());
        report.record(&run_dir)?;
    }
    Ok(TrainReport {
        val_loss: last_val_loss(&run_dir),
        run_dir,
        steps: total_steps,
        seconds: trained_for,
        sample: None,
    })
}

/// A trained encoder-decoder run, loaded on the plain device.
pub struct Seq2SeqRun {
    /// Its resolved recipe.
    pub recipe: Recipe,
    /// Its model config.
    pub config: ModelConfig,
    /// Its tokenizers.
    pub vocab: Vocabularies,
    /// The model.
    pub model: Seq2Seq,
    /// The checkpoint's epoch.
    pub epoch: usize,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// Whether `run_dir` holds an encoder-decoder run.
pub fn is_seq2seq_run(run_dir: &Path) -> bool {
    load_run_recipe(run_dir).is_ok_and(|r| r.task.is_seq2seq())
}

/// Loads an encoder-decoder run's last checkpoint (or `epoch`'s).
pub fn load_seq2seq_run(
    run_dir: &Path,
    epoch: Option<usize>,
    device: &Device,
) -> Result<Seq2SeqRun, ZooError> {
    let run_error = |message: String| ZooError::RunDir {
        path: run_dir.to_path_buf(),
        message,
    };
    let recipe = load_run_recipe(run_dir)?;
    let config = recipe.model_config().map_err(run_error)?;
    let vocab = Vocabularies::load(run_dir, recipe.task)?;
    let epoch = select_checkpoint(run_dir, epoch)?;
    let path = model_checkpoint(run_dir, epoch);
    let trainer = Seq2SeqTrainer::new(init_model(&config, device).map_err(run_error)?, &recipe)
        .try_load_file(&path)
        .map_err(|e| ZooError::Checkpoint {
            path: path.clone(),
            message: format!("cannot be loaded: {e}"),
        })?;
    Ok(Seq2SeqRun {
        recipe,
        config,
        vocab,
        model: trainer.model,
        epoch,
        run_dir: run_dir.to_path_buf(),
    })
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
    let max_len = run.config.max_len();
    let sources: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| run.vocab.encode_source(s, max_len))
        .collect::<Result<_, _>>()?;
    let chosen = match sampling {
        Some(config) => Strategy::Sample(config),
        None => strategy(decoding),
    };
    let device = run.model.devices()[0].clone();
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].len());
    let mut outputs = vec![String::new(); sources.len()];
    for chunk in order.chunks(DECODE_BATCH) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| sources[i].clone()).collect();
        let longest = batch.iter().map(Vec::len).max().unwrap_or(1);
        let limit = (decoding.max_len_a * longest as f64) as usize + decoding.max_len_b;
        let tokens = DecodeTokens {
            pad: run.vocab.source_tokens.pad,
            ..run.vocab.target_tokens
        };
        let decoded = decode(&run.model, &batch, tokens, &chosen, limit, &device);
        for (&i, ids) in chunk.iter().zip(decoded) {
            // Span corruption's outputs are sentinels and spans: keep the sentinels.
            let text = if run.recipe.task == Task::SpanCorruption {
                run.vocab.target.decode(&ids)?
            } else {
                run.vocab.target.decode_text(&ids)?
            };
            outputs[i] = text.trim().to_string();
        }
    }
    Ok(outputs)
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
        use std::io::Write;
        let line = serde_json::json!({
            "split": self.split,
            "epoch": self.epoch,
            "strategy": self.strategy,
            "sentences": self.sentences,
            "bleu": self.bleu.score,
            "exact_match": self.exact_match,
            "seconds": self.seconds,
        });
        let path = run_dir.join(SCORES_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ZooError::io(&path, e))?;
        writeln!(file, "{line}").map_err(|e| ZooError::io(&path, e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use zoo_text::TokenizerSpec;

    fn vocab(sentinels: usize) -> Vocabularies {
        let text = "the cat sat on the mat\nthe dog ate the red fish\n".repeat(10);
        let tokenizer =
            ZooTokenizer::build(&TokenizerSpec::Word { vocab_size: 50 }, &text).unwrap();
        Vocabularies::new(tokenizer, None, sentinels)
    }

    #[test]
    fn span_corruption_batches_restore_the_text_and_draw_noise_per_batch() {
        let vocab = vocab(SENTINELS);
        let texts: Vec<Vec<u32>> = (0..8)
            .map(|i| {
                vocab
                    .source
                    .encode(&"the cat sat on the mat the dog ate the red fish ".repeat(1 + i % 3))
                    .unwrap()
            })
            .collect();
        let batching = Seq2SeqBatching {
            batch_size: 4,
            seed: 9,
            shuffle: true,
        };
        let examples = Seq2SeqExamples::new(
            Examples::Texts(texts.clone()),
            batching,
            &vocab,
            Some(SpanCorruption::default()),
        )
        .unwrap();
        let sentinel = |id: u32| vocab.sentinels.iter().position(|&s| s == id);
        for g in 0..4 {
            for (input, target) in examples.pairs_at(g) {
                assert_eq!(input.last(), Some(&vocab.source_tokens.eos));
                // Put each span back in place of its sentinel.
                let mut restored = Vec::new();
                for &id in &input[..input.len() - 1] {
                    match sentinel(id) {
                        Some(k) => {
                            let start =
                                target.iter().position(|&t| sentinel(t) == Some(k)).unwrap();
                            restored.extend(
                                target[start + 1..]
                                    .iter()
                                    .take_while(|&&t| sentinel(t).is_none()),
                            );
                        }
                        None => restored.push(id),
                    }
                }
                assert!(texts.contains(&restored));
                let noise = target.iter().filter(|&&t| sentinel(t).is_none()).count();
                assert!(
                    noise >= 1 && noise * 4 <= restored.len(),
                    "{noise} of {}",
                    restored.len()
                );
            }
        }
        // The same batch number draws the same noise; the next pass draws other noise.
        assert_eq!(examples.pairs_at(1), examples.pairs_at(1));
        assert_ne!(examples.pairs_at(0), examples.pairs_at(2));
    }
}
