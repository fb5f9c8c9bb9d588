//! `zoo attention`: what a model's attention heads look at for one input, as heatmaps and
//! numbers. A GPT's self-attention over the input's tokens, a BERT encoder's bidirectional
//! attention over the input as it reads it (`[CLS] ... [SEP]`), and an encoder-decoder's
//! cross-attention from each token of its greedy translation to the source's tokens.
//!
//! The maps are the weights the model computes, recorded as it runs
//! ([`zoo_blocks::probe`]): each query's row is a probability over the keys it may see.

use crate::ZooError;
use crate::dispatch::RunKind;
use crate::plot::heatmap::{Heatmap, Panel};
use crate::tasks::lm::model::LmModel;
use crate::tasks::lm::run::RunModel;
use crate::tasks::seq2seq::decode;
use crate::tasks::{encoder, lm, seq2seq};
use burn::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use zoo_blocks::decoding::ids_tensor;
use zoo_blocks::probe::{MapKind, RecordedMap, recording};
use zoo_seq2seq::{Seq2Seq, Strategy, source_batch};
use zoo_text::ZooTokenizer;

/// Every attention layer's maps for one input.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionMaps {
    /// Which attention: "GPT self-attention", "BERT self-attention", "cross-attention".
    pub attention: String,
    /// The query tokens (rows), as text.
    pub queries: Vec<String>,
    /// The key tokens (columns), as text.
    pub keys: Vec<String>,
    /// One entry per layer, bottom first.
    pub layers: Vec<LayerMaps>,
}

/// One layer's maps.
#[derive(Clone, Debug, Serialize)]
pub struct LayerMaps {
    /// The layer's index, from 0.
    pub layer: usize,
    /// Per head: `queries x keys` weights, one row per query.
    pub heads: Vec<Vec<Vec<f32>>>,
}

/// The attention maps of the run in `run_dir` (its last checkpoint, or `checkpoint`'s) for
/// `input`.
pub fn attention_maps(
    run_dir: &Path,
    input: &str,
    checkpoint: Option<usize>,
    device: &Device,
) -> Result<AttentionMaps, ZooError> {
    match RunKind::of_run(run_dir)? {
        RunKind::LanguageModel => {
            let run = lm::load(run_dir, checkpoint, device)?;
            let RunModel::Neural(LmModel::Gpt(gpt)) = &run.model else {
                return Err(ZooError::run_dir(
                    run_dir,
                    "is a recurrent or n-gram language model: it has no attention to draw",
                ));
            };
            let mut ids = run.tokenizer.encode(input)?;
            ids.drain(..ids.len().saturating_sub(gpt.block_size()));
            let tokens = labels(&run.tokenizer, &ids)?;
            let (_, maps) = recording(|| gpt.forward(ids_tensor(&ids, device), None));
            assembled("GPT self-attention", tokens.clone(), tokens, maps)
        }
        RunKind::Encoder => {
            let run = encoder::load(run_dir, checkpoint, device)?;
            let seq_len = run
                .recipe
                .sequence_len(&crate::models::ModelConfig::Bert(run.config.clone()));
            let encoded = run.tokenizer.encode_inputs(&[(input, None)], seq_len)?;
            let encoded = &encoded[0];
            let tokens = labels(&run.tokenizer, &encoded.ids)?;
            let as_tensor = |values: &[u32]| ids_tensor(values, device);
            let (_, maps) = recording(|| {
                run.model.encoder.forward(
                    as_tensor(&encoded.ids),
                    as_tensor(&encoded.segments),
                    None,
                )
            });
            assembled("BERT self-attention", tokens.clone(), tokens, maps)
        }
        RunKind::EncoderDecoder => {
            let run = seq2seq::load(run_dir, checkpoint, device)?;
            let sources = decode::encode_sources(&run, &[input])?;
            let output =
                decode::decode_sources(&run, &sources, &run.recipe.decoding, &Strategy::Greedy)
                    .remove(0);
            let tokens = decode::decode_tokens(&run);
            let source = &sources[0];
            let target_in = [vec![tokens.bos], output.clone()].concat();
            let (ids, padding) = source_batch(&sources, tokens.pad, device);
            let (_, maps) = recording(|| {
                run.model
                    .forward(ids, padding, ids_tensor(&target_in, device))
            });
            let mut cross: Vec<RecordedMap> = maps
                .into_iter()
                .filter(|m| m.kind == MapKind::Cross)
                .collect();
            // The RNN attends one step at a time: its steps' rows make its one map.
            if let Seq2Seq::Rnn(_) = run.model {
                let rows = cross.drain(..).map(|m| m.weights).collect();
                cross.push(RecordedMap {
                    kind: MapKind::Cross,
                    weights: Tensor::cat(rows, 2),
                });
            }
            // Each row predicts the next token: rows are labelled with what they output.
            let produced = [output, vec![tokens.eos]].concat();
            assembled(
                "cross-attention",
                labels(&run.vocab.target, &produced)?,
                labels(&run.vocab.source, source)?,
                cross,
            )
        }
    }
}

/// The maps of a batch of one, as host numbers, checked against the tokens.
fn assembled(
    attention: &str,
    queries: Vec<String>,
    keys: Vec<String>,
    maps: Vec<RecordedMap>,
) -> Result<AttentionMaps, ZooError> {
    let mut layers = Vec::with_capacity(maps.len());
    for (layer, map) in maps.into_iter().enumerate() {
        let [batch, heads, rows, columns] = map.weights.dims();
        if batch != 1 || rows != queries.len() || columns != keys.len() {
            return Err(ZooError::Training(format!(
                "layer {layer}'s attention is {batch} x {rows} x {columns} for {} x {} tokens",
                queries.len(),
                keys.len()
            )));
        }
        let values: Vec<f32> = map
            .weights
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| ZooError::Training(format!("reading attention weights: {e:?}")))?;
        let heads = values
            .chunks(rows * columns)
            .take(heads)
            .map(|head| head.chunks(columns).map(<[f32]>::to_vec).collect())
            .collect();
        layers.push(LayerMaps { layer, heads });
    }
    if layers.is_empty() {
        return Err(ZooError::Training(format!(
            "the model recorded no {attention}"
        )));
    }
    Ok(AttentionMaps {
        attention: attention.into(),
        queries,
        keys,
        layers,
    })
}

/// Each token as a label: its text, with spaces and line ends made visible; a special token
/// (which decoding leaves out) as the tokenizer writes it.
fn labels(tokenizer: &ZooTokenizer, ids: &[u32]) -> Result<Vec<String>, ZooError> {
    ids.iter()
        .map(|&id| {
            let text = tokenizer.decode(&[id])?;
            let text = if text.is_empty() {
                tokenizer.id_token(id).unwrap_or_else(|| format!("#{id}"))
            } else {
                text
            };
            Ok(text.replace(' ', "␣").replace('\n', "⏎").replace('\t', "⇥"))
        })
        .collect()
}

impl AttentionMaps {
    /// Draws layer `layer` (every layer when `None`), each figure with one panel per head or
    /// only `head`'s, into `out` as `layer<L>.svg` / `.png` (`layer<L>-head<H>` for one head).
    /// Returns the files written.
    pub fn draw(
        &self,
        out: &Path,
        layer: Option<usize>,
        head: Option<usize>,
    ) -> Result<Vec<PathBuf>, ZooError> {
        let layers = self.select(layer, head)?;
        std::fs::create_dir_all(out).map_err(|e| ZooError::io(out, e.to_string()))?;
        let mut written = Vec::new();
        for maps in layers {
            let heads: Vec<usize> = match head {
                Some(h) => vec![h],
                None => (0..maps.heads.len()).collect(),
            };
            let stem = match head {
                Some(h) => format!("layer{}-head{h}", maps.layer),
                None => format!("layer{}", maps.layer),
            };
            let heatmap = Heatmap {
                title: format!("{}, layer {}", self.attention, maps.layer),
                rows: self.queries.clone(),
                columns: self.keys.clone(),
                panels: heads
                    .iter()
                    .map(|&h| Panel {
                        caption: format!("head {h}"),
                        values: maps.heads[h].concat(),
                    })
                    .collect(),
            };
            written.extend(heatmap.write(&out.join(stem))?);
        }
        Ok(written)
    }

    /// These maps cut to `layer` and `head`, as `zoo attention --json` writes them.
    pub fn only(&self, layer: Option<usize>, head: Option<usize>) -> Result<Self, ZooError> {
        let layers = self
            .select(layer, head)?
            .into_iter()
            .map(|maps| LayerMaps {
                layer: maps.layer,
                heads: match head {
                    Some(h) => vec![maps.heads[h].clone()],
                    None => maps.heads.clone(),
                },
            })
            .collect();
        Ok(AttentionMaps {
            layers,
            ..self.clone()
        })
    }

    fn select(
        &self,
        layer: Option<usize>,
        head: Option<usize>,
    ) -> Result<Vec<&LayerMaps>, ZooError> {
        let layers: Vec<&LayerMaps> = match layer {
            Some(l) => vec![self.layers.get(l).ok_or_else(|| {
                ZooError::Usage(format!(
                    "--layer {l}: the model has {} attention layers (0 to {})",
                    self.layers.len(),
                    self.layers.len() - 1
                ))
            })?],
            None => self.layers.iter().collect(),
        };
        let heads = self.layers[0].heads.len();
        if let Some(h) = head
            && h >= heads
        {
            return Err(ZooError::Usage(format!(
                "--head {h}: the model has {heads} heads (0 to {})",
                heads - 1
            )));
        }
        Ok(layers)
    }
}
