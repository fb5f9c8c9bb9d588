//! Recipe validation: every value in range, keys of other families' tasks refused, and the
//! budget, optimiser and schedule consistent; each error names the key.

use super::{
    DecodingSpec, DistillationSpec, Recipe, ScheduleKind, Task, default_mean_span_length,
    default_noise_density,
};
use crate::models::ModelConfig;
use zoo_text::span_corruption::{SENTINELS, SpanCorruption};

impl Recipe {
    /// `[finetune]`: LoRA adapts a pretrained model, and freezes all of it itself.
    fn validate_finetune(&self) -> Result<(), String> {
        let f = &self.finetune;
        let Some(rank) = f.lora_rank else {
            if f.lora_alpha.is_some() || !f.lora_targets.is_empty() {
                return Err(
                    "finetune.lora_alpha and finetune.lora_targets need finetune.lora_rank".into(),
                );
            }
            return Ok(());
        };
        if rank == 0 {
            return Err("finetune.lora_rank must be at least 1".into());
        }
        if let Some(alpha) = f.lora_alpha
            && !(alpha.is_finite() && alpha > 0.0)
        {
            return Err(format!(
                "finetune.lora_alpha must be a positive number, got {alpha}"
            ));
        }
        if self.init_from.is_none() {
            return Err(
                "finetune.lora_rank adapts a pretrained model: set init_from to the run or Hugging Face directory it adapts".into(),
            );
        }
        let t = &self.training;
        if t.freeze_embeddings || t.freeze_layers > 0 {
            return Err(
                "training.freeze_embeddings and freeze_layers do not combine with finetune.lora_rank, which freezes the whole pretrained model".into(),
            );
        }
        if self.model.arch == "elmo" {
            return Err(
                "finetune.lora_rank does not apply to an ELMo task model: its biLM is frozen whole and the task model trains whole".into(),
            );
        }
        if self.lora_targets().is_empty() {
            return Err("finetune.lora_targets: name the weight matrices to adapt".into());
        }
        Ok(())
    }

    /// `teacher` and `[distillation]`: a student of an encoder, on its classification or
    /// masked-LM task, starting fresh or from the teacher's layers.
    fn validate_distillation(&self) -> Result<(), String> {
        let d = &self.distillation;
        let Some(teacher) = &self.teacher else {
            if self.task == Task::Distillation {
                return Err(
                    "task = \"distillation\" needs teacher = the run or Hugging Face directory of the encoder to distil".into(),
                );
            }
            if *d != DistillationSpec::default() {
                return Err("[distillation] needs a teacher".into());
            }
            return Ok(());
        };
        if !matches!(
            self.task,
            Task::Distillation | Task::Classification | Task::MaskedLm
        ) {
            return Err(format!(
                "teacher does not apply to task = \"{}\": distillation trains a classifier or a masked-LM",
                self.task.name()
            ));
        }
        if self.init_from.is_some() {
            return Err(format!(
                "init_from does not combine with teacher = {}: the student starts fresh or, with distillation.init = \"every-other-layer\", from the teacher",
                teacher.display()
            ));
        }
        if !(d.temperature.is_finite() && d.temperature > 0.0) {
            return Err(format!(
                "distillation.temperature must be positive, got {}",
                d.temperature
            ));
        }
        let weights = [("alpha", d.alpha), ("beta", d.beta), ("cosine", d.cosine)];
        if let Some((key, value)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Err(format!("distillation.{key} must be 0 or more, got {value}"));
        }
        if weights.iter().all(|(_, w)| *w == 0.0) {
            return Err("distillation.alpha, beta and cosine are all 0: nothing to learn".into());
        }
        Ok(())
    }

    /// `data.next_sentence`, `document_lines` and `extra_train` are set only for masked-LM.
    pub fn check_masked_lm_data(&self) -> Result<(), String> {
        let d = &self.data;
        if self.task != Task::MaskedLm
            && (d.next_sentence || d.document_lines.is_some() || !d.extra_train.is_empty())
        {
            return Err(format!(
                "data.next_sentence, data.document_lines and data.extra_train are for task = \"masked-lm\", not \"{}\"",
                self.task.name()
            ));
        }
        Ok(())
    }

    /// `training.freeze_layers` is at most the layers `config` has.
    pub fn check_frozen_layers(&self, config: &ModelConfig) -> Result<(), String> {
        let t = &self.training;
        if t.freeze_layers > config.freezable_layers() {
            return Err(format!(
                "training.freeze_layers ({}) is more than the model's {} layers",
                t.freeze_layers,
                config.freezable_layers()
            ));
        }
        Ok(())
    }

    /// Whether `training.batch_size` splits evenly across `training.devices`.
    pub fn check_batch_split(&self) -> Result<(), String> {
        let t = &self.training;
        if t.batch_size.is_multiple_of(t.device_count()) {
            return Ok(());
        }
        Err(format!(
            "a batch_size of {} does not split evenly across {} devices ({})",
            t.batch_size,
            t.device_count(),
            t.devices.join(", ")
        ))
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let config = self.model_config()?;
        self.validate_task(&config)?;
        // A run that starts from another, or learns from a teacher, reads with its tokenizer.
        if self.init_from.is_none() && self.teacher.is_none() {
            self.tokenizer_spec()?;
        }
        if let ModelConfig::Ngram(_) = config {
            // Counted in one pass: no optimiser, schedule or budget to check.
            return Ok(());
        }
        let t = &self.training;
        match (&config, t.bptt) {
            (ModelConfig::Gpt(_), Some(_)) => {
                return Err(
                    "training.bptt is for recurrent models; a GPT reads block_size tokens".into(),
                );
            }
            (ModelConfig::Rnn(_), Some(0)) => return Err("training.bptt must be at least 1".into()),
            _ => {}
        }
        let positive = [
            ("training.batch_size", t.batch_size),
            ("training.grad_accumulation", t.grad_accumulation),
            ("training.eval_interval", t.eval_interval),
            ("training.eval_batches", t.eval_batches),
            ("training.keep_checkpoints", t.keep_checkpoints),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        self.check_batch_split()
            .map_err(|e| format!("training.devices: {e}"))?;
        let budgets = [
            ("steps", t.steps.map(|s| s as f64)),
            ("epochs", t.epochs.map(|e| e as f64)),
            ("tokens", t.tokens),
            ("flops", t.flops),
        ];
        let given: Vec<&str> = budgets
            .iter()
            .filter(|(_, value)| value.is_some())
            .map(|(key, _)| *key)
            .collect();
        match given.as_slice() {
            [] => {
                return Err("training needs a budget: steps, epochs, tokens or flops = N".into());
            }
            [_] => {}
            _ => {
                return Err(format!(
                    "give one training budget, not {}",
                    given
                        .iter()
                        .map(|key| format!("training.{key}"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
        }
        for (key, value) in budgets {
            if let Some(value) = value
                && !(value >= 1.0 && value.is_finite())
            {
                return Err(format!("training.{key} must be at least 1, got {value}"));
            }
        }
        if let Some(early) = &t.early_stopping {
            if early.metric.trim().is_empty() {
                return Err("training.early_stopping.metric must name a validation metric".into());
            }
            if early.patience == 0 {
                return Err("training.early_stopping.patience must be at least 1".into());
            }
            if !(early.min_delta >= 0.0 && early.min_delta.is_finite()) {
                return Err(format!(
                    "training.early_stopping.min_delta must be >= 0, got {}",
                    early.min_delta
                ));
            }
        }
        if let Some(interval) = t.checkpoint_interval
            && (interval == 0 || interval % t.eval_interval != 0)
        {
            return Err(format!(
                "training.checkpoint_interval ({interval}) must be a positive multiple of training.eval_interval ({})",
                t.eval_interval
            ));
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(format!("optimizer.lr must be positive, got {}", o.lr));
        }
        for (key, value) in [
            ("optimizer.beta1", o.beta1),
            ("optimizer.beta2", o.beta2),
            ("optimizer.momentum", o.momentum),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(format!("{key} must be in [0, 1), got {value}"));
            }
        }
        for (key, value) in [
            ("optimizer.weight_decay", o.weight_decay),
            ("optimizer.grad_clip", o.grad_clip),
            ("optimizer.eps", o.eps),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(format!("{key} must be >= 0, got {value}"));
            }
        }
        if let Some(min_lr) = self.schedule.min_lr
            && !(0.0..=o.lr).contains(&min_lr)
        {
            return Err(format!(
                "schedule.min_lr ({min_lr}) must be in [0, optimizer.lr = {}]",
                o.lr
            ));
        }
        if let Some(divisor) = self.schedule.plateau_divisor
            && !(divisor > 1.0 && divisor.is_finite())
        {
            return Err(format!(
                "schedule.plateau_divisor must be greater than 1, got {divisor}"
            ));
        }
        if self.schedule.kind == ScheduleKind::Noam && self.schedule.warmup_steps == 0 {
            return Err("schedule.warmup_steps must be at least 1 for the noam schedule".into());
        }
        self.sample
            .sampling()
            .validate()
            .map_err(|e| format!("sample.{e}"))?;
        Ok(())
    }

    /// The task fits the architecture, and keys of other families' tasks are not set.
    fn validate_task(&self, config: &ModelConfig) -> Result<(), String> {
        let encoder = matches!(config, ModelConfig::Bert(_));
        let elmo = matches!(config, ModelConfig::Elmo(_));
        // Trained with gradients (not counted, as an n-gram model).
        let trained = !matches!(config, ModelConfig::Ngram(_));
        let seq2seq = config.is_seq2seq();
        let arch = config.architecture();
        if !arch.tasks.contains(&self.task) {
            return Err(format!(
                "task = \"{}\" does not fit model.arch = \"{}\", which trains with task = {}",
                self.task.name(),
                self.model.arch,
                arch.task_names()
            ));
        }
        let t = &self.training;
        let d = &self.data;
        let translation = self.task == Task::Translation;
        // (key, set in the recipe, allowed for this task)
        let keys = [
            ("init_from", self.init_from.is_some(), trained),
            (
                "training.seq_len",
                t.seq_len.is_some(),
                encoder || seq2seq || elmo,
            ),
            // An ELMo task model's biLM is frozen already, and its own layers train.
            (
                "training.freeze_embeddings",
                t.freeze_embeddings,
                trained && !elmo,
            ),
            ("training.freeze_layers", t.freeze_layers > 0, trained),
            ("data.next_sentence", d.next_sentence, encoder),
            ("data.document_lines", d.document_lines.is_some(), encoder),
            (
                "target_tokenizer",
                self.target_tokenizer.is_some(),
                translation,
            ),
            (
                "training.label_smoothing",
                t.label_smoothing != 0.0,
                seq2seq,
            ),
            (
                "training.lm_loss_weight",
                t.lm_loss_weight != 0.0,
                matches!(config, ModelConfig::Gpt(_)) && self.task == Task::Classification,
            ),
            ("teacher", self.teacher.is_some(), encoder),
            ("data.source", d.source.is_some(), translation),
            ("data.target", d.target.is_some(), translation),
            (
                "data.source_prefix",
                !d.source_prefix.is_empty(),
                translation,
            ),
            ("data.source_specials", d.source_specials.is_some(), seq2seq),
            ("data.decoder_start", d.decoder_start.is_some(), seq2seq),
            (
                "data.noise_density",
                d.noise_density != default_noise_density(),
                self.task == Task::SpanCorruption,
            ),
            (
                "data.mean_span_length",
                d.mean_span_length != default_mean_span_length(),
                self.task == Task::SpanCorruption,
            ),
            (
                "[decoding]",
                self.decoding != DecodingSpec::default(),
                seq2seq,
            ),
        ];
        if let Some((key, _, _)) = keys.iter().find(|(_, set, allowed)| *set && !allowed) {
            return Err(format!(
                "{key} does not apply to task = \"{}\"",
                self.task.name()
            ));
        }
        if !(t.lm_loss_weight.is_finite() && t.lm_loss_weight >= 0.0) {
            return Err(format!(
                "training.lm_loss_weight must be 0 or more, got {}",
                t.lm_loss_weight
            ));
        }
        if elmo && self.init_from.is_none() {
            return Err(
                "model.arch = \"elmo\" reads a trained biLM: set init_from to a run of arch = \"rnn\" with bidirectional = true".into(),
            );
        }
        self.validate_finetune()?;
        self.validate_distillation()?;
        // A run that starts from another takes its depth: checked once it is known.
        if self.init_from.is_none() {
            self.check_frozen_layers(config)?;
        }
        if seq2seq {
            return self.validate_seq2seq(config);
        }
        if !encoder {
            return Ok(());
        }
        if let ModelConfig::Bert(bert) = config {
            let seq_len = self.sequence_len(config);
            if !(3..=bert.max_len).contains(&seq_len) {
                return Err(format!(
                    "training.seq_len ({seq_len}) must be in 3..={} (the model's max_len)",
                    bert.max_len
                ));
            }
        }
        if !(d.mask_prob > 0.0 && d.mask_prob < 1.0) {
            return Err(format!(
                "data.mask_prob must be in (0, 1), got {}",
                d.mask_prob
            ));
        }
        // A student's task is its teacher's: checked again once the teacher is read.
        if self.task != Task::Distillation {
            self.check_masked_lm_data()?;
        }
        if d.document_lines == Some(0) {
            return Err("data.document_lines must be at least 1".into());
        }
        Ok(())
    }

    fn validate_seq2seq(&self, config: &ModelConfig) -> Result<(), String> {
        let (t, d, decoding) = (&self.training, &self.data, &self.decoding);
        let seq_len = self.sequence_len(config);
        let max_len = config.max_len();
        if !(2..=max_len).contains(&seq_len) {
            return Err(format!(
                "training.seq_len ({seq_len}) must be in 2..={max_len} (the model's max_len)"
            ));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(format!(
                "training.label_smoothing must be in [0, 1), got {}",
                t.label_smoothing
            ));
        }
        if self.init_from.is_some() && self.target_tokenizer.is_some() {
            return Err(
                "[target_tokenizer] does not apply with init_from: the run keeps the vocabulary of the model it starts from".into(),
            );
        }
        if decoding.beam == 0 {
            return Err("decoding.beam must be at least 1 (1 is greedy)".into());
        }
        if !(decoding.length_penalty.is_finite() && decoding.max_len_a >= 0.0) {
            return Err(
                "decoding.length_penalty must be finite and decoding.max_len_a >= 0".into(),
            );
        }
        if self.task == Task::SpanCorruption {
            if !(d.noise_density > 0.0 && d.noise_density < 1.0) {
                return Err(format!(
                    "data.noise_density must be in (0, 1), got {}",
                    d.noise_density
                ));
            }
            if d.mean_span_length < 1.0 {
                return Err(format!(
                    "data.mean_span_length must be at least 1, got {}",
                    d.mean_span_length
                ));
            }
            let corruption = SpanCorruption {
                noise_density: d.noise_density,
                mean_span_length: d.mean_span_length,
            };
            let needed = corruption.sentinels_needed(seq_len - 1);
            if needed > SENTINELS {
                return Err(format!(
                    "inputs of training.seq_len = {seq_len} tokens at data.noise_density = {} and data.mean_span_length = {} need {needed} sentinels, more than the {SENTINELS} there are: shorten seq_len or lengthen the spans",
                    d.noise_density, d.mean_span_length
                ));
            }
        }
        Ok(())
    }
}
