//! The encoder-decoder task: translation (parallel corpora and the synthetic tasks) and T5's span
//! corruption on any text; then decoding a run, with BLEU and exact match on its outputs.
//!
//! A run directory holds what every run's does, plus `target_tokenizer.json` when the two sides
//! have separate vocabularies, and `scores.jsonl`: one line per decoded evaluation (split,
//! checkpoint epoch, strategy, BLEU, exact match, wall time).

pub mod data;
pub mod decode;
pub mod hf;
pub mod model;
pub mod run;
pub mod vocab;

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::{Recipe, Task};
use crate::runtime::budget::Budget;
use crate::runtime::logging::LineRenderer;
use crate::runtime::lora::{self, Base};
use crate::runtime::metrics::{LabelMetric, LabelStatistic};
use crate::runtime::run_dir::{
    TRAINED, is_hugging_face_dir, load_run_config, load_run_recipe, locate_model, write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use burn::prelude::*;
use burn::train::SupervisedTraining;
use data::{Examples, Seq2SeqBatching, Seq2SeqExamples, SplitText, load_pairs};
use decode::evaluate_seq2seq;
use model::{Seq2SeqTrainer, TargetTokens};
use run::{Seq2SeqRun, init_model, load_seq2seq_run};
use std::path::{Path, PathBuf};
use vocab::{Vocabularies, sentinels_for};
use zoo_seq2seq::Seq2Seq;
use zoo_text::span_corruption::{SENTINELS, SpanCorruption};
use zoo_text::{DatasetRegistry, ZooTokenizer};

/// An encoder-decoder run directory, or a Hugging Face T5 directory, loaded onto `device` (its
/// last checkpoint, or `epoch`'s).
pub fn load(dir: &Path, epoch: Option<usize>, device: &Device) -> Result<Seq2SeqRun, ZooError> {
    if is_hugging_face_dir(dir) {
        return hf::load_hf_seq2seq(dir, hf::IMPORTED_PAIRS, device);
    }
    load_seq2seq_run(dir, epoch, device)
}

/// The config of the encoder-decoder in `dir` (a run, or a Hugging Face directory), weights
/// unread.
fn pretrained_config(dir: &Path) -> Result<ModelConfig, ZooError> {
    if is_hugging_face_dir(dir) {
        return Ok(ModelConfig::Transformer(
            hf::read_config(dir)?.config.clone(),
        ));
    }
    match load_run_config(dir)? {
        (_, config) if config.is_seq2seq() => Ok(config),
        _ => Err(ZooError::run_dir(
            dir,
            "is not an encoder-decoder run: init_from needs one",
        )),
    }
}

/// `model` (of this run's config, so with its dropout) with the weights of `init`, the run it
/// starts from (found at `from`).
fn start_from(model: Seq2Seq, init: Seq2SeqRun, from: &Path) -> Result<Seq2Seq, ZooError> {
    model
        .try_load_record(init.model.into_record())
        .map_err(|e| ZooError::run_dir(from, e.to_string()))
}

/// The weights of a LoRA run's base, which its fingerprint covers.
fn base_weights(base: &Seq2SeqRun) -> burn::store::ModuleRecord {
    base.model.clone().into_record()
}

/// The base of the LoRA run in `run_dir`, loaded onto `device` and checked.
fn load_base(run_dir: &Path, device: &Device) -> Result<(Seq2SeqRun, PathBuf), ZooError> {
    lora::load_base(run_dir, |dir, epoch| load(dir, epoch, device), base_weights)
}

/// `model` of the LoRA run in `run_dir`: its base's weights with the run's adapters attached
/// (loaded from a checkpoint after).
pub(crate) fn adapted_model(
    run_dir: &Path,
    recipe: &Recipe,
    model: Seq2Seq,
    device: &Device,
) -> Result<Seq2Seq, ZooError> {
    let (base, from) = load_base(run_dir, device)?;
    let model = start_from(model, base, &from)?;
    lora::attach(model, &recipe.finetune, &recipe.lora_targets())
        .map_err(|e| ZooError::run_dir(run_dir, e))
}

/// Trains an encoder-decoder recipe in `session`'s run directory; a finished translation run
/// then decodes its validation split and records BLEU and exact match.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
    let (recipe, run_dir) = (session.recipe, session.run_dir.as_path());
    let data = &recipe.data;
    let dir = session.data_dir();
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
        ZooError::Text(e) => session.recipe_error(format!("[data]: {e}")),
        other => other,
    })?;
    let val_data = read(&data.val_split)?;
    // The run this one starts from: its shape and vocabulary always, its weights (loaded where
    // training happens, before the session seeds the device) when starting afresh.
    let init_from = recipe.init_from.as_deref().map(locate_model).transpose()?;
    let pretrained = init_from.as_deref().map(pretrained_config).transpose()?;
    let autodiff = session.options.device.clone().autodiff();
    let init = match (&init_from, session.is_fresh()) {
        (Some(dir), true) => Some(load(dir, None, &autodiff)?),
        // A resumed LoRA run's checkpoints hold its adapters only: the base comes back too.
        (Some(_), false) if recipe.finetune.lora() => Some(load_base(run_dir, &autodiff)?.0),
        _ => None,
    };

    // The recipe as the run keeps it: how the pretrained model encodes sources and starts its
    // decoder, where the recipe does not say.
    let mut kept = recipe.clone();
    if let Some(init) = &init {
        let (ours, theirs) = (&mut kept.data, &init.recipe.data);
        ours.source_specials = ours.source_specials.or(theirs.source_specials);
        ours.decoder_start = ours.decoder_start.take().or(theirs.decoder_start.clone());
    }

    session.create_run_dir()?;
    // Fresh runs: the tokenizers (the pretrained run's, or trained here) and the sentinels.
    let fresh = if let Some(init) = &init {
        let target = (!init.vocab.joint).then(|| init.vocab.target.clone());
        Some((
            init.vocab.source.clone(),
            target,
            sentinels_for(recipe.task),
        ))
    } else if session.is_fresh() {
        let spec = recipe
            .tokenizer_spec()
            .map_err(|e| session.recipe_error(e))?;
        let side = |pairs: &[(String, String)], target: bool| -> String {
            pairs
                .iter()
                .map(|(s, t)| format!("{}\n", if target { t } else { s }))
                .collect()
        };
        Some(match (&train_data, &recipe.target_tokenizer) {
            (SplitText::Text(text), _) => (ZooTokenizer::build(spec, text)?, None, SENTINELS),
            (SplitText::Pairs(pairs), Some(target_spec)) => (
                ZooTokenizer::build(spec, &side(pairs, false))?,
                Some(ZooTokenizer::build(target_spec, &side(pairs, true))?),
                0,
            ),
            (SplitText::Pairs(pairs), None) => {
                let both = side(pairs, false) + &side(pairs, true);
                (ZooTokenizer::build(spec, &both)?, None, 0)
            }
        })
    } else {
        None
    };
    let vocab = match fresh {
        Some((source, target, sentinels)) => {
            let start = kept.data.decoder_start.as_deref();
            Vocabularies::new(source, target, sentinels, start)
                .map_err(|e| session.recipe_error(e))?
                .configured(&kept.data)
        }
        None => Vocabularies::load(run_dir, &load_run_recipe(run_dir)?)?,
    };
    let config = session.model_config(|config| {
        if let Some(pretrained) = &pretrained {
            recipe.take_pretrained_shape(config, pretrained)?;
        }
        fit_vocabularies(config, &vocab)
    })?;
    if session.is_fresh() {
        vocab.save(run_dir)?;
        write_run_recipe(run_dir, &kept, &config, TRAINED)?;
    }

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
            batch_size: t.loader_batch_size(train),
            seed: recipe.seed ^ if train { 0 } else { 0x76_616C },
            shuffle: train,
        };
        let split = if train { "training" } else { "validation" };
        Seq2SeqExamples::new(examples, batching, &vocab, corruption)
            .map_err(|e| session.recipe_error(format!("{split} split: {e}")))
    };
    let train_examples = serve(train_examples, true)?;
    let val_examples = serve(val_examples, false)?;

    let (per_pass, mean_tokens) = (
        train_examples.batches_per_pass(),
        train_examples.mean_target_tokens(),
    );
    let batches = Batches::of_examples(
        train_examples,
        val_examples,
        per_pass,
        mean_tokens,
        config.size().train_flops_per_token,
        recipe,
    );
    let task = Seq2SeqTraining {
        session,
        config: &config,
        init: init.zip(init_from),
        examples: batches.train.len(),
        dropped: train_dropped,
        seq_len,
    };
    let trained = session.train(task, batches, &config)?;
    // Score the validation split by decoding it, as `zoo eval` would.
    if trained.finished && !span_corruption {
        let run = load_seq2seq_run(run_dir, None, &session.options.device)?;
        let report = evaluate_seq2seq(&run, &data.val_split, dir, &recipe.decoding)?;
        println!("{}", report.summary());
        report.record(run_dir)?;
    }
    Ok(TaskOutcome {
        steps: trained.steps,
        sample: None,
    })
}

/// An encoder-decoder's part of a training session.
struct Seq2SeqTraining<'a> {
    session: &'a Session<'a>,
    config: &'a ModelConfig,
    /// The run whose weights this one starts from (fresh runs with `init_from`), and where it
    /// was found.
    init: Option<(Seq2SeqRun, PathBuf)>,
    /// Training examples (pairs, or pieces of text to corrupt).
    examples: usize,
    /// Training pairs left out for being longer than `seq_len`.
    dropped: usize,
    seq_len: usize,
}

impl TrainingTask for Seq2SeqTraining<'_> {
    type Model = Seq2SeqTrainer;
    type Source = Seq2SeqExamples;

    fn model(&mut self, device: &Device) -> Result<Seq2SeqTrainer, ZooError> {
        let mut model =
            init_model(self.config, device).map_err(|e| self.session.recipe_error(e))?;
        let (session, recipe) = (self.session, self.session.recipe);
        if let Some((init, from)) = self.init.take() {
            if recipe.finetune.lora() && session.is_fresh() {
                Base::new(&from, Some(init.epoch), base_weights(&init))?.write(&session.run_dir)?;
            }
            println!(
                "loaded the {} from {} ({} parameters)",
                init.config.architecture().name,
                from.display(),
                init.model.num_params()
            );
            model = start_from(model, init, &from)?;
        }
        if recipe.finetune.lora() {
            model = lora::attach(model, &recipe.finetune, &recipe.lora_targets())
                .map_err(|e| session.recipe_error(e))?;
            println!("{}", lora::adapted(&model));
        }
        let t = &recipe.training;
        if let Some(frozen) = t.frozen() {
            println!("{frozen}");
        }
        let model = model.freeze(t.freeze_embeddings, t.freeze_layers);
        Ok(Seq2SeqTrainer::new(model, self.session.recipe))
    }

    fn metrics(
        &self,
        training: SupervisedTraining<Seq2SeqTrainer>,
    ) -> SupervisedTraining<Seq2SeqTrainer> {
        let accuracy = || LabelMetric::<TargetTokens>::new("Accuracy", LabelStatistic::Accuracy);
        training
            .metric_train_numeric(accuracy())
            .metric_valid_numeric(accuracy())
    }

    fn progress(&self, budget: Budget) -> LineRenderer {
        LineRenderer::with_columns(
            budget,
            self.session.recipe.training.micro_batch_size(),
            "seq",
            vec![("val token acc", "Accuracy", 2)],
        )
    }

    fn announce(&self, budget: &Budget) -> String {
        let recipe = self.session.recipe;
        let t = &recipe.training;
        format!(
            "training {} ({} parameters, {}) on {} {} of '{}'{} for {} steps of {} examples; run directory {}",
            recipe.name(),
            self.config.size().total,
            recipe.task.name(),
            self.examples,
            if recipe.task == Task::SpanCorruption {
                "text pieces"
            } else {
                "pairs"
            },
            recipe.data.dataset,
            if self.dropped > 0 {
                format!(
                    " ({} pairs longer than seq_len = {} left out)",
                    self.dropped, self.seq_len
                )
            } else {
                String::new()
            },
            budget.total_steps,
            t.batch_size * t.grad_accumulation,
            self.session.run_dir.display()
        )
    }
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
    Ok(())
}
