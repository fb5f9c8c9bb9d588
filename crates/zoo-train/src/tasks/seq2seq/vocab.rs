//! An encoder-decoder run's vocabularies: one joint or a source and a target one, each with
//! `<pad> <s> </s>` added (and, for span corruption, T5's sentinels).

use crate::ZooError;
use crate::recipe::Task;
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
        }
    }

    pub(crate) fn save(&self, run_dir: &Path) -> Result<(), ZooError> {
        self.source.save(&run_dir.join(TOKENIZER_FILE))?;
        if !self.joint {
            self.target.save(&run_dir.join(TARGET_TOKENIZER_FILE))?;
        }
        Ok(())
    }

    pub(crate) fn load(run_dir: &Path, task: Task) -> Result<Self, ZooError> {
        let source = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
        let target_path = run_dir.join(TARGET_TOKENIZER_FILE);
        let target = target_path
            .is_file()
            .then(|| ZooTokenizer::load(&target_path))
            .transpose()?;
        Ok(Self::new(source, target, sentinels_for(task)))
    }

    /// A source sentence as the encoder reads it: its tokens, then `</s>`, at most `max_len`.
    pub(crate) fn encode_source(&self, text: &str, max_len: usize) -> Result<Vec<u32>, ZooError> {
        let mut ids = self.source.encode(text)?;
        ids.truncate(max_len.saturating_sub(1));
        ids.push(self.source_tokens.eos);
        Ok(ids)
    }
}
