//! An encoder-decoder run's vocabularies: one joint or a source and a target one, each with
//! `<pad> <s> </s>` added (and, for span corruption, T5's sentinels); and how a source sentence
//! becomes the encoder's input.

use crate::ZooError;
use crate::recipe::{Recipe, Task};
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
        }
    }

    /// These vocabularies, with `prefix` put before every source sentence.
    pub(crate) fn with_source_prefix(mut self, prefix: &str) -> Self {
        self.source_prefix = prefix.to_string();
        self
    }

    pub(crate) fn save(&self, run_dir: &Path) -> Result<(), ZooError> {
        self.source.save(&run_dir.join(TOKENIZER_FILE))?;
        if !self.joint {
            self.target.save(&run_dir.join(TARGET_TOKENIZER_FILE))?;
        }
        Ok(())
    }

    /// The vocabularies of the run in `run_dir`, trained with `recipe`.
    pub(crate) fn load(run_dir: &Path, recipe: &Recipe) -> Result<Self, ZooError> {
        let source = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
        let target_path = run_dir.join(TARGET_TOKENIZER_FILE);
        let target = target_path
            .is_file()
            .then(|| ZooTokenizer::load(&target_path))
            .transpose()?;
        Ok(Self::new(source, target, sentinels_for(recipe.task))
            .with_source_prefix(&recipe.data.source_prefix))
    }

    /// Source sentences as the encoder reads them: the prefix and the sentence's tokens, then
    /// `</s>`.
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
        let mut encoded = self.source.encode_each(texts)?;
        for ids in &mut encoded {
            ids.push(self.source_tokens.eos);
        }
        Ok(encoded)
    }
}
