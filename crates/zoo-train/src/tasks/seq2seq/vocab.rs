//! An encoder-decoder run's vocabularies: one joint or a source and a target one, each with
//! `<pad> <s> </s>` added (and, for span corruption, T5's sentinels); and how a source sentence
//! becomes the encoder's input.

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

/// The special ids of `tokenizer`, with those it lacks added. A T5 vocabulary (`<pad>` and
/// `</s>` but no `<s>`) is left as it is: T5's decoder starts from `<pad>`.
fn with_specials(tokenizer: &mut ZooTokenizer, sentinels: usize) -> (DecodeTokens, Vec<u32>) {
    let [pad, bos, eos] = SPECIALS;
    let t5 = tokenizer.token_id(bos).is_none()
        && tokenizer.token_id(pad).is_some()
        && tokenizer.token_id(eos).is_some();
    let names: Vec<String> = SPECIALS
        .iter()
        .filter(|&&name| !(t5 && name == bos))
        .map(|s| s.to_string())
        .chain((0..sentinels).map(|i| format!("<extra_id_{i}>")))
        .collect();
    let ids = tokenizer.add_special_tokens(&names);
    let id = |name: &str| tokenizer.token_id(name).expect("added");
    let tokens = DecodeTokens {
        pad: id(pad),
        bos: if t5 { id(pad) } else { id(bos) },
        eos: id(eos),
    };
    (tokens, ids[names.len() - sentinels..].to_vec())
}

impl Vocabularies {
    /// A joint vocabulary, or separate source and target ones.
    pub(crate) fn new(
        mut source: ZooTokenizer,
        target: Option<ZooTokenizer>,
        sentinels: usize,
    ) -> Self {
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
            source_prefix: String::new(),
            source_specials: false,
        }
    }

    /// These vocabularies, encoding sources and starting the decoder as `data` says
    /// (`source_prefix`, `source_specials`, `decoder_start`); a start token the target
    /// vocabulary lacks is an error naming it.
    pub(crate) fn configured(mut self, data: &DataSpec) -> Result<Self, String> {
        self.source_prefix = data.source_prefix.clone();
        self.source_specials = data.source_specials.unwrap_or(false);
        if let Some(start) = &data.decoder_start {
            self.target_tokens.bos = self.target.token_id(start).ok_or_else(|| {
                format!("data.decoder_start = {start:?} is not in the target vocabulary")
            })?;
        }
        Ok(self)
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
        Self::new(source, target, sentinels_for(recipe.task))
            .configured(&recipe.data)
            .map_err(|e| ZooError::run_dir(run_dir, e))
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
