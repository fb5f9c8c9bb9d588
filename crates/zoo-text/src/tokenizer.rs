//! Tokenizers, all on the `tokenizers` crate so that every one saves to and loads from a
//! Hugging Face `tokenizer.json`: character level, word level, byte-level BPE or BERT's WordPiece
//! trained on a corpus, or any existing `tokenizer.json`.

use crate::TextError;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Once;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::utils::truncation::{TruncationParams, TruncationStrategy};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Every character is its own piece (and decoding concatenates them back). `[\s\S]` rather than
/// `(?s).`: the same single character to both regex engines, where Oniguruma, which Hugging
/// Face's Python tokenizers use, has no `(?s)`.
const ONE_CHARACTER: &str = r"[\s\S]";
/// How character tokenizers made before said it, which Python cannot read.
const ONE_CHARACTER_BEFORE: &str = "(?s).";

fn each_char() -> Result<Split, TextError> {
    Split::new(
        SplitPattern::Regex(ONE_CHARACTER.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(TextError::tokenizer)
}

/// Which tokenizer a recipe asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TokenizerSpec {
    /// One token per character seen in the training text (nanoGPT's shakespeare_char).
    Char,
    /// One token per whitespace-separated word, the `vocab_size - 1` most frequent plus `<unk>`.
    Word {
        /// Largest vocabulary, `<unk>` included.
        vocab_size: usize,
    },
    /// Byte-level BPE (GPT-2's scheme) trained on the training text.
    ByteBpe {
        /// Vocabulary size, the 256 byte symbols and `<|endoftext|>` included.
        vocab_size: usize,
    },
    /// BERT's WordPiece trained on the training text: lowercased, accents stripped, split at
    /// whitespace and punctuation, `##` continuation pieces, and BERT's special tokens
    /// `[PAD] [UNK] [CLS] [SEP] [MASK]` as ids 0 to 4.
    #[serde(rename = "wordpiece")]
    WordPiece {
        /// Vocabulary size, special tokens and the character alphabet included.
        vocab_size: usize,
    },
    /// A `tokenizer.json` from elsewhere (for example a Hugging Face model's).
    File {
        /// Path of the `tokenizer.json`.
        path: String,
    },
}

/// The unknown-word token of word-level vocabularies.
pub const UNK: &str = "<unk>";
/// The document separator of BPE vocabularies (GPT-2's).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// BERT's special tokens, in the order of their ids in a trained WordPiece vocabulary.
pub const BERT_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The ids of BERT's special tokens in a tokenizer's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    /// `[PAD]`.
    pub pad: u32,
    /// `[UNK]`.
    pub unk: u32,
    /// `[CLS]`, first of every sequence.
    pub cls: u32,
    /// `[SEP]`, after each segment.
    pub sep: u32,
    /// `[MASK]`, the masked-LM placeholder.
    pub mask: u32,
}

impl SpecialIds {
    /// The ids a WordPiece vocabulary trained here gives them: 0 to 4 in BERT's order.
    pub const WORDPIECE: SpecialIds = SpecialIds {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };

    /// Whether `id` is one of the five.
    pub fn contains(&self, id: u32) -> bool {
        [self.pad, self.unk, self.cls, self.sep, self.mask].contains(&id)
    }
}

/// An encoder input whose tokens know which word (of the input, or of a pair's context) they
/// came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordAligned {
    /// The input.
    pub input: EncodedInput,
    /// Per token: the word's index, `None` for special tokens (and, for question-context
    /// pairs, for the question).
    pub words: Vec<Option<u32>>,
}

/// One encoder input: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, with segment ids 0 for the
/// first part and 1 for the second.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedInput {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment (token type) ids.
    pub segments: Vec<u32>,
}

/// A trained or loaded tokenizer.
#[derive(Clone)]
pub struct ZooTokenizer {
    inner: Tokenizer,
}

/// Runs `parse`, a panic inside it turned into an error: the tokenizers crate panics on some
/// malformed files (a decoder or normaliser whose JSON matches none of its kinds) instead of
/// failing. The panic's message is not printed: the error says it.
fn without_panics<T>(parse: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(parse));
    QUIET.with(|quiet| quiet.set(false));
    result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(format!("the tokenizers crate cannot read it: {message}"))
    })
}

impl ZooTokenizer {
    /// Builds the tokenizer `spec` asks for, training it on `text` where it needs training.
    pub fn build(spec: &TokenizerSpec, text: &str) -> Result<Self, TextError> {
        match spec {
            TokenizerSpec::Char => Self::char_level(text),
            TokenizerSpec::Word { vocab_size } => Self::word_level(text, *vocab_size),
            TokenizerSpec::ByteBpe { vocab_size } => Self::byte_bpe(text, *vocab_size),
            TokenizerSpec::WordPiece { vocab_size } => Self::wordpiece(text, *vocab_size),
            TokenizerSpec::File { path } => Self::load(Path::new(path)),
        }
    }

    /// A character vocabulary: every distinct character of `text`, in code point order.
    pub fn char_level(text: &str) -> Result<Self, TextError> {
        let chars: BTreeSet<char> = text.chars().collect();
        let vocab = chars
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32));
        let mut inner = with_vocabulary(vocab)?;
        inner.with_pre_tokenizer(Some(each_char()?));
        inner.with_decoder(Some(Fuse::new()));
        Ok(Self { inner })
    }

    /// A word vocabulary of the `vocab_size - 1` most frequent words of `text`, plus `<unk>`
    /// (id 0; a literal `<unk>` in the text, as PTB has, is that token). Ties in frequency go
    /// in code-point order, so the same text always gives the same ids. Counted here rather than
    /// by the `tokenizers` trainer, which leaves a hole in the ids when the text contains its
    /// special token.
    pub fn word_level(text: &str, vocab_size: usize) -> Result<Self, TextError> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for word in text.split_whitespace() {
            *counts.entry(word).or_default() += 1;
        }
        counts.remove(UNK);
        let mut words: Vec<(&str, usize)> = counts.into_iter().collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let vocab = std::iter::once(UNK)
            .chain(
                words
                    .iter()
                    .map(|(w, _)| *w)
                    .take(vocab_size.saturating_sub(1)),
            )
            .enumerate()
            .map(|(id, w)| (w.to_string(), id as u32));
        let mut inner = with_vocabulary(vocab)?;
        inner.with_pre_tokenizer(Some(WhitespaceSplit));
        Ok(Self { inner })
    }

    /// Byte-level BPE with `vocab_size` entries trained on `text`.
    pub fn byte_bpe(text: &str, vocab_size: usize) -> Result<Self, TextError> {
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build();
        let mut inner = Tokenizer::new(BPE::default());
        // GPT-2 does not invent a space before the first word.
        inner.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner
            .train(&mut TrainerWrapper::from(trainer), text.lines())
            .map_err(TextError::tokenizer)?;
        Ok(Self { inner })
    }

    /// BERT's WordPiece with `vocab_size` entries trained on `text` (see
    /// [`TokenizerSpec::WordPiece`]). Saved, it is a BERT tokenizer any Hugging Face loader reads,
    /// post-processor included.
    pub fn wordpiece(text: &str, vocab_size: usize) -> Result<Self, TextError> {
        let trainer = WordPieceTrainer::builder()
            .vocab_size(vocab_size)
            .show_progress(false)
            .special_tokens(
                BERT_SPECIAL_TOKENS
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            )
            .build();
        let mut inner = Tokenizer::new(WordPiece::default());
        // Lowercase and strip accents, as bert-base-uncased.
        inner.with_normalizer(Some(BertNormalizer::new(true, true, Some(true), true)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(WordPieceDecoder::default()));
        inner
            .train(&mut TrainerWrapper::from(trainer), text.lines())
            .map_err(TextError::tokenizer)?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .expect("trained with BERT's specials")
        };
        let (cls, sep) = (id("[CLS]"), id("[SEP]"));
        let template = TemplateProcessing::builder()
            .try_single("[CLS] $A:0 [SEP]:0")
            .and_then(|b| b.try_pair("[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"))
            .map_err(TextError::tokenizer)?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .map_err(TextError::tokenizer)?;
        inner.with_post_processor(Some(template));
        Ok(Self { inner })
    }

    /// This tokenizer, ending each input with `token` when asked for special tokens (as
    /// Hugging Face's T5 tokenizers do with `</s>`), unless it has a post-processor already.
    /// The zoo's own encoding never asks; a tokenizer exported for `transformers` does.
    pub fn ending_with(mut self, token: &str) -> Result<Self, TextError> {
        if self.has_post_processor() {
            return Ok(self);
        }
        let id = self
            .inner
            .token_to_id(token)
            .ok_or_else(|| TextError::tokenizer(format!("the vocabulary has no {token}")))?;
        let template = TemplateProcessing::builder()
            .try_single(format!("$A:0 {token}:0"))
            .and_then(|b| b.try_pair(format!("$A:0 {token}:0 $B:1 {token}:1")))
            .map_err(TextError::tokenizer)?
            .special_tokens(vec![(token, id)])
            .build()
            .map_err(TextError::tokenizer)?;
        self.inner.with_post_processor(Some(template));
        Ok(self)
    }

    /// The ids of BERT's special tokens; an error names the first one the vocabulary lacks.
    pub fn special_ids(&self) -> Result<SpecialIds, TextError> {
        let id = |token: &str| {
            self.inner.token_to_id(token).ok_or_else(|| {
                TextError::Tokenizer(format!(
                    "the vocabulary has no {token}: an encoder needs a WordPiece (BERT) tokenizer"
                ))
            })
        };
        Ok(SpecialIds {
            pad: id("[PAD]")?,
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
        })
    }

    /// Encoder inputs of texts or text pairs, with `[CLS]`/`[SEP]` and segment ids, each cut to
    /// at most `max_len` tokens (the longer part of a pair is cut first, as BERT does).
    pub fn encode_inputs(
        &self,
        inputs: &[(&str, Option<&str>)],
        max_len: usize,
    ) -> Result<Vec<EncodedInput>, TextError> {
        let inputs = inputs
            .iter()
            .map(|&(a, b)| match b {
                Some(b) => (a, b).into(),
                None => a.into(),
            })
            .collect();
        let encodings = self.encode_for_encoder(inputs, max_len)?;
        Ok(encodings.iter().map(encoded_input).collect())
    }

    /// Encoder inputs of texts given as words (`[CLS] words [SEP]`), each token with the index
    /// of the word it belongs to (`None` for `[CLS]` and `[SEP]`), cut to `max_len` tokens.
    pub fn encode_words(
        &self,
        sentences: &[&[String]],
        max_len: usize,
    ) -> Result<Vec<WordAligned>, TextError> {
        let inputs = sentences.iter().map(|&words| words.into()).collect();
        let encodings = self.encode_for_encoder(inputs, max_len)?;
        Ok(encodings
            .iter()
            .map(|e| WordAligned {
                input: encoded_input(e),
                words: e.get_word_ids().to_vec(),
            })
            .collect())
    }

    /// Encoder inputs of questions and contexts given as words (`[CLS] question [SEP] context
    /// [SEP]`), each token with the index of the context word it belongs to (`None` outside the
    /// context), cut to `max_len` tokens (the longer part first).
    pub fn encode_question_context(
        &self,
        pairs: &[(&str, &[String])],
        max_len: usize,
    ) -> Result<Vec<WordAligned>, TextError> {
        let inputs = pairs
            .iter()
            .map(|&(question, context)| {
                let question: Vec<&str> = question.split_whitespace().collect();
                let context: Vec<&str> = context.iter().map(String::as_str).collect();
                (question, context).into()
            })
            .collect();
        let encodings = self.encode_for_encoder(inputs, max_len)?;
        Ok(encodings
            .iter()
            .map(|e| WordAligned {
                input: encoded_input(e),
                words: e
                    .get_word_ids()
                    .iter()
                    .zip(e.get_sequence_ids())
                    .map(|(&word, sequence)| word.filter(|_| sequence == Some(1)))
                    .collect(),
            })
            .collect())
    }

    /// Encodes with `[CLS]`/`[SEP]` (the post-processor) and longest-first truncation.
    fn encode_for_encoder(
        &self,
        inputs: Vec<tokenizers::EncodeInput>,
        max_len: usize,
    ) -> Result<Vec<tokenizers::Encoding>, TextError> {
        self.special_ids()?;
        let mut tokenizer = self.inner.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            }))
            .map_err(TextError::tokenizer)?;
        tokenizer
            .encode_batch(inputs, true)
            .map_err(TextError::tokenizer)
    }

    /// Token ids of each line of `text`, no special tokens (sentences for pretraining).
    pub fn encode_lines(&self, text: &str) -> Result<Vec<Vec<u32>>, TextError> {
        let lines: Vec<&str> = text.lines().collect();
        let encodings = self
            .inner
            .encode_batch(lines, false)
            .map_err(TextError::tokenizer)?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Loads a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, TextError> {
        if !path.is_file() {
            return Err(TextError::Missing {
                what: "tokenizer".into(),
                path: path.to_path_buf(),
            });
        }
        let json = std::fs::read_to_string(path).map_err(|e| TextError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json(&json).map_err(|message| TextError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// A tokenizer from the text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let mut inner: Tokenizer =
            without_panics(|| json.parse().map_err(|e: tokenizers::Error| e.to_string()))?;
        // A character tokenizer saved before said "one character" in a form only Rust reads;
        // the same pattern in the form both read keeps the file exportable.
        if let Some(PreTokenizerWrapper::Split(split)) = inner.get_pre_tokenizer()
            && split.pattern == SplitPattern::Regex(ONE_CHARACTER_BEFORE.into())
        {
            inner.with_pre_tokenizer(Some(each_char().map_err(|e| e.to_string())?));
        }
        // The zoo pads each batch to its longest input and cuts each input to the run's length
        // itself; a file's own settings (Hugging Face's often pad every input to 128 tokens)
        // would hand it padding as if it were text.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| e.to_string())?;
        Ok(Self { inner })
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        let json = self.inner.to_string(true).map_err(|e| TextError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::files::write_atomically(path, json.as_bytes()).map_err(|e| TextError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        // One past the largest id: a loaded tokenizer.json may leave ids unused.
        self.inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize + 1)
    }

    /// Whether `other` maps the same tokens to the same ids (special tokens included).
    pub fn same_vocabulary(&self, other: &ZooTokenizer) -> bool {
        self.inner.get_vocab(true) == other.inner.get_vocab(true)
    }

    /// Adds `tokens` as special tokens (never split, never produced by normal text, left out
    /// when decoding) unless the vocabulary has them, and returns their ids in order. New ones
    /// take the ids after the vocabulary's last.
    pub fn add_special_tokens(&mut self, tokens: &[String]) -> Vec<u32> {
        let added: Vec<AddedToken> = tokens
            .iter()
            .filter(|t| self.inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        self.inner.add_special_tokens(&added);
        tokens
            .iter()
            .map(|t| self.inner.token_to_id(t).expect("just added"))
            .collect()
    }

    /// The text of `ids` without special tokens.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String, TextError> {
        self.inner.decode(ids, true).map_err(TextError::tokenizer)
    }

    /// The token of `id`, if the vocabulary has one.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether the tokenizer adds special tokens of its own when asked (a post-processor).
    pub fn has_post_processor(&self) -> bool {
        self.inner.get_post_processor().is_some()
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`. Long texts are encoded a chunk of lines at a time, in parallel.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        const CHUNK: usize = 1 << 16;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + CHUNK).min(text.len());
            // End chunks just after a newline so no word or character is split.
            if end < text.len() {
                end = text[start..end].rfind('\n').map_or(end, |i| start + i + 1);
                while !text.is_char_boundary(end) {
                    end += 1;
                }
            }
            chunks.push(&text[start..end]);
            start = end;
        }
        Ok(self.encode_each(&chunks)?.concat())
    }

    /// Token ids of each of `texts`, encoded in parallel. A character vocabulary refuses a
    /// character it does not have (naming it) rather than encoding it as unknown.
    pub fn encode_each(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TextError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| {
                self.unknown_character(texts)
                    .unwrap_or(TextError::tokenizer(e))
            })?;
        let ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        if self.is_char_level()
            && let Some(unk) = self.inner.token_to_id(UNK)
            && let Some(&at) = ids.iter().flatten().find(|&&i| i == unk)
        {
            return Err(TextError::UnknownCharacter(
                self.inner.decode(&[at], false).unwrap_or_default(),
            ));
        }
        Ok(ids)
    }

    /// Token ids of each of `texts` with the tokenizer's own special tokens (what its
    /// post-processor adds, such as BART's `<s> ... </s>`), encoded in parallel.
    pub fn encode_each_with_specials(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TextError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(TextError::tokenizer)?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        self.inner.decode(ids, false).map_err(TextError::tokenizer)
    }

    /// For a character vocabulary without an unknown token (whose encoding fails on a
    /// character it lacks), the first character of `texts` it lacks.
    fn unknown_character(&self, texts: &[&str]) -> Option<TextError> {
        if !self.is_char_level() {
            return None;
        }
        let lacking = texts
            .iter()
            .flat_map(|t| t.chars())
            .find(|c| self.inner.token_to_id(c.encode_utf8(&mut [0; 4])).is_none())?;
        Some(TextError::UnknownCharacter(lacking.to_string()))
    }

    fn is_char_level(&self) -> bool {
        matches!(
            self.inner.get_decoder(),
            Some(tokenizers::DecoderWrapper::Fuse(_))
        )
    }
}

fn encoded_input(encoding: &tokenizers::Encoding) -> EncodedInput {
    EncodedInput {
        ids: encoding.get_ids().to_vec(),
        segments: encoding.get_type_ids().to_vec(),
    }
}

/// A tokenizer that looks each piece up in `vocab`, unknown pieces becoming `<unk>`.
fn with_vocabulary(vocab: impl IntoIterator<Item = (String, u32)>) -> Result<Tokenizer, TextError> {
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK.into())
        .build()
        .map_err(TextError::tokenizer)?;
    Ok(Tokenizer::new(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (tests/fuzz.rs): JSON that breaks inside a decoder (a number out of
    /// range, a stray comma) makes the tokenizers crate panic ("Helper") instead of failing.
    #[test]
    fn a_malformed_component_is_an_error_not_a_panic() {
        let mut json: serde_json::Value = serde_json::from_str(
            &ZooTokenizer::char_level("abc\n")
                .unwrap()
                .inner
                .to_string(false)
                .unwrap(),
        )
        .unwrap();
        json["decoder"] = serde_json::json!({"type": "Fuse"});
        let text = json.to_string();
        assert!(ZooTokenizer::from_json(&text).is_ok());
        for broken in [r#"{"type":"Fuse","x":1e400}"#, r#"{"type":"Fuse",}"#] {
            let error = ZooTokenizer::from_json(&text.replace(r#"{"type":"Fuse"}"#, broken))
                .err()
                .unwrap_or_else(|| panic!("{broken}: accepted"));
            assert!(error.contains("tokenizers crate cannot read it"), "{error}");
        }
    }

    #[test]
    fn a_character_the_vocabulary_lacks_is_named() {
        let tokenizer = ZooTokenizer::char_level("abc\n").unwrap();
        match tokenizer.encode("ab\u{263a}c") {
            Err(TextError::UnknownCharacter(c)) => assert_eq!(c, "\u{263a}"),
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
    }

    #[test]
    fn ending_with_adds_the_token_only_when_special_tokens_are_asked_for() {
        let mut tokenizer = ZooTokenizer::word_level("a b c\nb c a\n", 10).unwrap();
        let eos = tokenizer.add_special_tokens(&["</s>".into()])[0];
        let plain = tokenizer.encode("a b").unwrap();
        let ending = tokenizer.ending_with("</s>").unwrap();
        assert_eq!(
            ending.encode("a b").unwrap(),
            plain,
            "the zoo's encoding is unchanged"
        );
        let with_specials = ending.inner.encode("a b", true).unwrap();
        assert_eq!(with_specials.get_ids(), [plain, vec![eos]].concat());
        // A tokenizer with a post-processor keeps its own.
        let bert = ZooTokenizer::wordpiece(&"the cat sat\n".repeat(20), 40).unwrap();
        let kept = bert.clone().ending_with("[SEP]").unwrap();
        assert_eq!(
            kept.inner.encode("cat", true).unwrap().get_ids(),
            bert.inner.encode("cat", true).unwrap().get_ids()
        );
        assert!(
            ZooTokenizer::word_level("a b\n", 10)
                .unwrap()
                .ending_with("</s>")
                .is_err()
        );
    }

    /// A Hugging Face BERT tokenizer (bert-base-uncased's layout: [PAD] 0, [UNK] 100, [CLS] 101,
    /// [SEP] 102, [MASK] 103), saved by `tokenizers` with the ids it gives a few texts.
    #[test]
    fn a_hugging_face_tokenizer_gives_the_reference_ids_and_its_own_specials() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/bert-encoder");
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        // The same file with Hugging Face's padding and truncation settings, as published
        // tokenizers often have them.
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
                .unwrap();
        json["padding"] = serde_json::json!({
            "strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"
        });
        json["truncation"] = serde_json::json!({
            "direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0
        });
        let padded =
            std::env::temp_dir().join(format!("zoo-hf-tokenizer-{}.json", std::process::id()));
        std::fs::write(&padded, json.to_string()).unwrap();
        for path in [dir.join("tokenizer.json"), padded.clone()] {
            let tokenizer = ZooTokenizer::load(&path).unwrap();
            let special = tokenizer.special_ids().unwrap();
            assert_eq!(
                [
                    special.pad,
                    special.unk,
                    special.cls,
                    special.sep,
                    special.mask
                ],
                [0, 100, 101, 102, 103]
            );
            for (i, texts) in reference["texts"].as_array().unwrap().iter().enumerate() {
                let texts: Vec<&str> = texts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                let input = tokenizer
                    .encode_inputs(&[(texts[0], texts.get(1).copied())], 64)
                    .unwrap()
                    .remove(0);
                let ids = |key: &str| -> Vec<u32> {
                    reference[key][i]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                        .collect()
                };
                assert_eq!(input.ids, ids("input_ids"), "{texts:?}");
                assert_eq!(input.segments, ids("token_type_ids"), "{texts:?}");
            }
        }
        std::fs::remove_file(padded).unwrap();
    }

    const TEXT: &str = "the cat sat on the mat.\nthe dog sat on the log.\nthe cat saw the dog.\n";

    /// Specials added after training take fresh ids, are never split, and are left out
    /// when decoding text; adding them again changes nothing.
    #[test]
    fn added_special_tokens_take_fresh_ids() {
        let text = "the cat sat on the mat\nthe dog sat on the log\n".repeat(20);
        let mut tok = ZooTokenizer::byte_bpe(&text, 300).unwrap();
        let before = tok.vocab_size();
        let specials: Vec<String> = ["<pad>", "<s>", "</s>"].map(String::from).to_vec();
        let ids = tok.add_special_tokens(&specials);
        assert_eq!(
            ids,
            vec![before as u32, before as u32 + 1, before as u32 + 2]
        );
        assert_eq!(tok.add_special_tokens(&specials), ids);
        assert_eq!(tok.vocab_size(), before + 3);
        let encoded = tok.encode("the cat</s>").unwrap();
        assert_eq!(encoded.last(), Some(&ids[2]));
        assert_eq!(tok.decode_text(&encoded).unwrap(), "the cat");
    }

    #[test]
    fn char_level_round_trips_and_sorts_its_vocabulary() {
        let tok = ZooTokenizer::char_level(TEXT).unwrap();
        let distinct: BTreeSet<char> = TEXT.chars().collect();
        assert_eq!(tok.vocab_size(), distinct.len());
        assert_eq!(tok.token_id("\n"), Some(0));
        let ids = tok.encode(TEXT).unwrap();
        assert_eq!(ids.len(), TEXT.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), TEXT);
    }

    #[test]
    fn char_level_rejects_characters_it_never_saw() {
        let tok = ZooTokenizer::char_level("abc").unwrap();
        let err = tok.encode("abz").unwrap_err().to_string();
        assert!(err.contains('z') || err.contains("unknown"), "{err}");
    }

    #[test]
    fn word_level_keeps_the_most_frequent_words_and_maps_the_rest_to_unk() {
        let tok = ZooTokenizer::word_level(TEXT, 4).unwrap();
        assert_eq!(tok.vocab_size(), 4);
        assert_eq!(tok.token_id(UNK), Some(0));
        // "the" (6), "sat" (2)... are kept; "log." is rare and becomes <unk>.
        let ids = tok.encode("the log.").unwrap();
        assert_eq!(ids, vec![tok.token_id("the").unwrap(), 0]);
        assert_eq!(
            tok.decode(&[tok.token_id("the").unwrap(), 0]).unwrap(),
            "the <unk>"
        );
    }

    #[test]
    fn a_literal_unk_in_the_text_is_the_unknown_token_and_ids_stay_dense() {
        // PTB writes rare words as "<unk>" itself.
        let text = "a <unk> b a <unk> c a <eos>\n<unk> a b <eos>";
        let tok = ZooTokenizer::word_level(text, 100).unwrap();
        // a, b, c, <eos> and <unk>: ids 0..5, no gaps.
        assert_eq!(tok.vocab_size(), 5);
        let ids = tok.encode("a <unk> zebra").unwrap();
        assert_eq!(ids, vec![tok.token_id("a").unwrap(), 0, 0]);
        assert!(tok.encode(text).unwrap().iter().all(|&id| id < 5));
    }

    #[test]
    fn byte_bpe_learns_merges_and_round_trips_any_text() {
        let tok = ZooTokenizer::byte_bpe(&TEXT.repeat(20), 300).unwrap();
        assert!(tok.vocab_size() > 256 && tok.vocab_size() <= 300);
        let ids = tok.encode(TEXT).unwrap();
        assert!(ids.len() < TEXT.len() / 2, "merges should shorten the text");
        // Bytes never seen in training still round-trip.
        let unseen = "Zürich ☃ 42\n";
        assert_eq!(tok.decode(&tok.encode(unseen).unwrap()).unwrap(), unseen);
    }

    #[test]
    fn wordpiece_normalises_as_bert_and_splits_unknown_words_into_pieces() {
        let text = "The Café served naïve coffee.\nthe cafe serves coffee, the coffee is served!\n"
            .repeat(20);
        let tok = ZooTokenizer::wordpiece(&text, 120).unwrap();
        let special = tok.special_ids().unwrap();
        assert_eq!(
            [
                special.pad,
                special.unk,
                special.cls,
                special.sep,
                special.mask
            ],
            [0, 1, 2, 3, 4]
        );
        // Lowercased, accents stripped: "CAFÉ" and "cafe" are the same word.
        assert_eq!(tok.encode("CAFÉ").unwrap(), tok.encode("cafe").unwrap());
        // A word never seen is spelled with continuation pieces, not [UNK].
        let ids = tok.encode("coffees").unwrap();
        assert!(ids.len() >= 2 && !ids.contains(&special.unk), "{ids:?}");
        assert_eq!(tok.decode(&ids).unwrap(), "coffees");
    }

    #[test]
    fn pairs_get_cls_and_sep_segment_ids_and_are_cut_longest_first() {
        let text = "a b c d e f g h\n".repeat(10);
        let tok = ZooTokenizer::wordpiece(&text, 60).unwrap();
        let s = tok.special_ids().unwrap();
        let id = |w: &str| tok.token_id(w).unwrap();
        let encoded = tok
            .encode_inputs(
                &[
                    ("a b", Some("c d e")),
                    ("a b c d e f", Some("g h")),
                    ("a", None),
                ],
                8,
            )
            .unwrap();
        assert_eq!(
            encoded[0].ids,
            [
                s.cls,
                id("a"),
                id("b"),
                s.sep,
                id("c"),
                id("d"),
                id("e"),
                s.sep
            ]
        );
        assert_eq!(encoded[0].segments, [0, 0, 0, 0, 1, 1, 1, 1]);
        // 6 + 2 words and 3 specials in 8 tokens: the longer first part loses 3.
        assert_eq!(
            encoded[1].ids,
            [
                s.cls,
                id("a"),
                id("b"),
                id("c"),
                s.sep,
                id("g"),
                id("h"),
                s.sep
            ]
        );
        assert_eq!(encoded[2].ids, [s.cls, id("a"), s.sep]);
        assert_eq!(encoded[2].segments, [0, 0, 0]);
        // A tokenizer without BERT's specials cannot make encoder inputs.
        let words = ZooTokenizer::word_level(&text, 10).unwrap();
        assert!(words.encode_inputs(&[("a", None)], 8).is_err());
    }

    #[test]
    fn word_aligned_encodings_map_pieces_to_words() {
        let text = "the cat sat on the mat\nwhere is the cat\n".repeat(10);
        let tok = ZooTokenizer::wordpiece(&text, 60).unwrap();
        let words: Vec<String> = ["the", "cats", "sat"].map(String::from).to_vec();
        let tagged = tok.encode_words(&[&words], 16).unwrap();
        let aligned = &tagged[0];
        assert_eq!(aligned.input.ids.len(), aligned.words.len());
        assert_eq!(aligned.words[0], None);
        assert_eq!(*aligned.words.last().unwrap(), None);
        // "cats" is split in pieces that all point at word 1.
        let of_cats = aligned.words.iter().filter(|w| **w == Some(1)).count();
        assert!(of_cats >= 2, "{aligned:?}");
        let pairs = tok
            .encode_question_context(&[("where is the cat", &words)], 16)
            .unwrap();
        let p = &pairs[0];
        // Question tokens carry no context word; context tokens do, in segment 1.
        let first_context = p.words.iter().position(Option::is_some).unwrap();
        assert_eq!(p.words[first_context], Some(0));
        assert_eq!(p.input.segments[first_context], 1);
        assert!(
            p.input.segments[..first_context - 1]
                .iter()
                .all(|&s| s == 0)
        );
    }

    #[test]
    fn a_saved_tokenizer_loads_back_identically() {
        let dir = std::env::temp_dir().join(format!("zoo-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for tok in [
            ZooTokenizer::char_level(TEXT).unwrap(),
            ZooTokenizer::word_level(TEXT, 10).unwrap(),
            ZooTokenizer::byte_bpe(TEXT, 270).unwrap(),
            ZooTokenizer::wordpiece(TEXT, 80).unwrap(),
        ] {
            let path = dir.join("tokenizer.json");
            tok.save(&path).unwrap();
            let back = ZooTokenizer::build(
                &TokenizerSpec::File {
                    path: path.display().to_string(),
                },
                "",
            )
            .unwrap();
            assert_eq!(back.encode(TEXT).unwrap(), tok.encode(TEXT).unwrap());
            assert_eq!(back.vocab_size(), tok.vocab_size());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn long_texts_encode_the_same_in_chunks() {
        let tok = ZooTokenizer::char_level(TEXT).unwrap();
        let long = TEXT.repeat(5000);
        let ids = tok.encode(&long).unwrap();
        assert_eq!(ids.len(), long.len());
        assert_eq!(tok.decode(&ids).unwrap(), long);
    }
}
