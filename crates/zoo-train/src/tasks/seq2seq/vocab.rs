//! An encoder-decoder run's vocabularies: one joint or a source and a target one, each with
//! `<pad> <s> </s>` added where it lacks them (and, for span corruption, T5's sentinels); where
//! the decoder starts; and how a source sentence becomes the encoder's input.

use crate::ZooError;
use crate::recipe::{DataSpec, Recipe, Task};
use crate::runtime::run_dir::TOKENIZER_FILE;
use std::path::Path;
use zoo_seq2seq::DecodeTokens;
use zoo_text::ZooTokenizer;
use zoo_text::span_corruption::SENTINELS;

/// The target side's tokenizer when the run keeps separate vocabularies.
pub const TARGET_TOKENIZER_FILE: &str = "target_tokenizer.json";
/// Padding, begin and end of sequence, added to every encoder-decoder vocabulary.
const SPECIALS: [&str; 3] = ["<pad>", "<s>", "</s>"];

/// Sentinels a `task` run's vocabulary carries.
pub(crate) fn sentinels_for(task: Task) -> usize {
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
    /// Text put before every source sentence (`data.source_prefix`).
    pub source_prefix: String,
    /// Sources get the tokenizer's own special tokens (`data.source_specials`), not `</s>`.
    pub source_specials: bool,
}

/// The special ids of `tokenizer`, with `<pad>`, `<s>` and `</s>` (and `sentinels`) added where
/// it lacks them. The decoder starts from `start` when one is named (T5's `<pad>`, BART's
/// `</s>`), which the vocabulary must have, else from `<s>`.
fn with_specials(
    tokenizer: &mut ZooTokenizer,
    sentinels: usize,
    start: Option<&str>,
) -> Result<(DecodeTokens, Vec<u32>), String> {
    let [pad, bos, eos] = SPECIALS;
    if let Some(start) = start
        && tokenizer.token_id(start).is_none()
    {
        return Err(format!(
            "data.decoder_start = {start:?} is not in the target vocabulary"
        ));
    }
    let names: Vec<String> = [pad, start.unwrap_or(bos), eos]
        .into_iter()
        .map(str::to_string)
        .chain((0..sentinels).map(|i| format!("<extra_id_{i}>")))
        .collect();
    let ids = tokenizer.add_special_tokens(&names);
    let tokens = DecodeTokens {
        pad: ids[0],
        bos: ids[1],
        eos: ids[2],
    };
    Ok((tokens, ids[3..].to_vec()))
}

impl Vocabularies {
    /// A joint vocabulary, or separate source and target ones, whose decoder starts from
    /// `decoder_start` (default `<s>`).
    pub(crate) fn new(
        mut source: ZooTokenizer,
        target: Option<ZooTokenizer>,
        sentinels: usize,
        decoder_start: Option<&str>,
    ) -> Result<Self, String> {
        let joint = target.is_none();
        let source_start = if joint { decoder_start } else { None };
        let (source_tokens, sentinels) = with_specials(&mut source, sentinels, source_start)?;
        let (target, target_tokens) = match target {
            Some(mut target) => {
                let (tokens, _) = with_specials(&mut target, 0, decoder_start)?;
                (target, tokens)
            }
            None => (source.clone(), source_tokens),
        };
        Ok(Self {
            source,
            target,
            joint,
            source_tokens,
            target_tokens,
            sentinels,
            source_prefix: String::new(),
            source_specials: false,
        })
    }

    /// These vocabularies, encoding sources as `data` says (`source_prefix`,
    /// `source_specials`).
    pub(crate) fn configured(mut self, data: &DataSpec) -> Self {
        self.source_prefix = data.source_prefix.clone();
        self.source_specials = data.source_specials.unwrap_or(false);
        self
    }

    pub(crate) fn save(&self, run_dir: &Path) -> Result<(), ZooError> {
        self.source.save(&run_dir.join(TOKENIZER_FILE))?;
        if !self.joint {
            self.target.save(&run_dir.join(TARGET_TOKENIZER_FILE))?;
        }
        Ok(())
    }

    /// The vocabularies of the run in `run_dir`, trained with `recipe` (as the run saved it).
    pub(crate) fn load(run_dir: &Path, recipe: &Recipe) -> Result<Self, ZooError> {
        let source = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
        let target_path = run_dir.join(TARGET_TOKENIZER_FILE);
        let target = target_path
            .is_file()
            .then(|| ZooTokenizer::load(&target_path))
            .transpose()?;
        let start = recipe.data.decoder_start.as_deref();
        Ok(Self::new(source, target, sentinels_for(recipe.task), start)
            .map_err(|e| ZooError::run_dir(run_dir, e))?
            .configured(&recipe.data))
    }

    /// Source sentences as the encoder reads them: the prefix and the sentence's tokens, then
    /// `</s>` (or, with `source_specials`, what the tokenizer adds itself).
    pub(crate) fn encode_sources(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, ZooError> {
        let prefixed: Vec<String>;
        let texts = if self.source_prefix.is_empty() {
            texts
        } else {
            prefixed = texts
                .iter()
                .map(|t| format!("{}{t}", self.source_prefix))
                .collect();
            &prefixed.iter().map(String::as_str).collect::<Vec<_>>()
        };
        if self.source_specials {
            return Ok(self.source.encode_each_with_specials(texts)?);
        }
        let mut encoded = self.source.encode_each(texts)?;
        for ids in &mut encoded {
            ids.push(self.source_tokens.eos);
        }
        Ok(encoded)
    }
}
