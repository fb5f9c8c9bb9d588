//! The recurrent language model, top to bottom: config, model, forward, loss, generation.
//!
//! This is the model of Zaremba et al. (2014) and PyTorch's `word_language_model` example: a
//! token embedding, a stack of LSTM (or GRU) layers, and a linear decoder to the vocabulary, with
//! dropout on the embedding, between layers and before the decoder, and optionally the decoder
//! tied to the embedding (Press & Wolf 2017; Inan et al. 2017). The state after one window of
//! text is the starting state of the next: training carries it across batches (truncated
//! backpropagation through time), evaluation across the whole split.
//!
//! With `bidirectional`, it is ELMo's biLM (Peters et al. 2018): a second stack reads the text
//! right to left and predicts each token from the ones after it, sharing the embedding and the
//! softmax with the forward stack; the loss is the mean of the two directions'. Each window then
//! stands alone (no state carries: the backward stack would need the next window's), as the
//! sentences whose features a downstream task reads do. [`RnnLm::layer_features`] gives those
//! features; generation uses the forward stack.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use zoo_blocks::beam::{BeamSearch, StepDecoder, beam_search};
use zoo_blocks::decoding::ids_tensor;
use zoo_blocks::incremental::{IncrementalLm, ROLLBACK, last_rows};
use zoo_blocks::kernels::affine;
use zoo_blocks::kernels::embedding;
use zoo_blocks::loss::cross_entropy;
use zoo_blocks::{CellKind, Recurrent, RecurrentConfig, RecurrentState, Reversal, Sampler};
use zoo_blocks::{ModelSize, freeze_first};

/// Every shape and option of a recurrent LM. Recipes override any field by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RnnConfig {
    /// Vocabulary size; 0 means "take it from the tokenizer".
    pub vocab_size: usize,
    /// LSTM or GRU.
    pub cell: CellKind,
    /// Stacked recurrent layers.
    pub n_layer: usize,
    /// Hidden units per layer.
    pub d_hidden: usize,
    /// Embedding width (0 = `d_hidden`; tying needs the two equal).
    pub d_embed: usize,
    /// Dropout on the embedding, between layers and before the decoder.
    pub dropout: f64,
    /// Share the embedding matrix with the decoder.
    pub tie_weights: bool,
    /// Add a backward stack: ELMo's biLM (see the module docs).
    pub bidirectional: bool,
}

impl Default for RnnConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            cell: CellKind::Lstm,
            n_layer: 2,
            d_hidden: 200,
            d_embed: 0,
            dropout: 0.2,
            tie_weights: false,
            bidirectional: false,
        }
    }
}

impl RnnConfig {
    /// Embedding width after resolving the 0 default.
    pub fn embed_width(&self) -> usize {
        if self.d_embed == 0 {
            self.d_hidden
        } else {
            self.d_embed
        }
    }

    /// Checks that the shapes fit together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 {
            return Err("vocab_size is 0: set it or let the tokenizer decide".into());
        }
        for (name, value) in [("n_layer", self.n_layer), ("d_hidden", self.d_hidden)] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.tie_weights && self.embed_width() != self.d_hidden {
            return Err(format!(
                "tie_weights needs d_embed ({}) equal to d_hidden ({})",
                self.embed_width(),
                self.d_hidden
            ));
        }
        Ok(())
    }

    fn layer(&self, index: usize) -> RecurrentConfig {
        RecurrentConfig {
            kind: self.cell,
            d_input: if index == 0 {
                self.embed_width()
            } else {
                self.d_hidden
            },
            d_hidden: self.d_hidden,
        }
    }

    /// Recurrent stacks: one, or two when bidirectional.
    fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Builds the model with freshly initialised weights: embedding and decoder from
    /// `U(-0.1, 0.1)` with a zero decoder bias (as PyTorch's example), recurrent layers as
    /// PyTorch initialises them.
    pub fn init(&self, device: &Device) -> Result<RnnLm, String> {
        self.validate()?;
        let uniform = Initializer::Uniform {
            min: -0.1,
            max: 0.1,
        };
        Ok(RnnLm {
            embedding: uniform.init([self.vocab_size, self.embed_width()], device),
            layers: (0..self.n_layer)
                .map(|i| self.layer(i).init(device))
                .collect(),
            backward_layers: (0..self.n_layer)
                .filter(|_| self.bidirectional)
                .map(|i| self.layer(i).init(device))
                .collect(),
            decoder: (!self.tie_weights)
                .then(|| uniform.init([self.d_hidden, self.vocab_size], device)),
            decoder_bias: Initializer::Zeros.init([self.vocab_size], device),
            dropout: DropoutConfig::new(self.dropout).init(),
        })
    }

    /// Parameter counts and compute per token, from the shapes alone.
    pub fn size(&self) -> ModelSize {
        let (v, h) = (self.vocab_size, self.d_hidden);
        let gates = self.cell.gates();
        let recurrent: usize = self.directions()
            * (0..self.n_layer)
                .map(|i| {
                    let d_in = self.layer(i).d_input;
                    // input and recurrent matrices, the input bias, and a GRU's recurrent bias
                    let biases = if self.cell == CellKind::Gru { 2 } else { 1 };
                    gates * h * (d_in + h) + biases * gates * h
                })
                .sum::<usize>();
        let embedding = v * self.embed_width();
        let decoder = if self.tie_weights { 0 } else { h * v };
        let matmul_params: usize = self.directions()
            * ((0..self.n_layer)
                .map(|i| gates * h * (self.layer(i).d_input + h))
                .sum::<usize>()
                + h * v);
        ModelSize {
            total: embedding + recurrent + decoder + v,
            non_embedding: recurrent + v,
            train_flops_per_token: 6 * matmul_params,
        }
    }
}

/// Each layer's state; see [`RnnLm::forward`].
pub type RnnState = Vec<RecurrentState>;

/// A recurrent language model; see the module docs.
#[derive(Module, Debug)]
pub struct RnnLm {
    /// `[vocab_size, d_embed]`.
    pub embedding: Param<Tensor<2>>,
    /// The recurrent stack, bottom first.
    pub layers: Vec<Recurrent>,
    /// The backward stack of a biLM, bottom first (empty otherwise).
    pub backward_layers: Vec<Recurrent>,
    /// `[d_hidden, vocab_size]`; `None` when tied to the embedding.
    pub decoder: Option<Param<Tensor<2>>>,
    /// `[vocab_size]`.
    pub decoder_bias: Param<Tensor<1>>,
    dropout: Dropout,
}

impl RnnLm {
    /// This model with the embedding, when `embeddings`, and the first `layers` recurrent
    /// layers kept out of training (fine-tuning). A decoder tied to the embedding is that
    /// embedding: it is kept too.
    pub fn freeze(mut self, embeddings: bool, layers: usize) -> Self {
        if embeddings {
            self.embedding = self.embedding.set_require_grad(false);
        }
        self.layers = freeze_first(self.layers, layers);
        self.backward_layers = freeze_first(self.backward_layers, layers);
        self
    }

    /// Whether this is a biLM.
    pub fn is_bidirectional(&self) -> bool {
        !self.backward_layers.is_empty()
    }

    /// Logits `[batch, len, vocab]` for token ids `[batch, len]`, continuing from `state` (zeros
    /// when `None`), and the state after the last token.
    pub fn forward(&self, ids: Tensor<2, Int>, state: Option<RnnState>) -> (Tensor<3>, RnnState) {
        let mut states = state.map(Vec::into_iter);
        let mut x =
            zoo_blocks::kernels::dropout(&self.dropout, embedding(self.embedding.val(), ids));
        let mut next = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (out, state) = layer.forward(x, states.as_mut().and_then(Iterator::next));
            next.push(state);
            x = zoo_blocks::kernels::dropout(&self.dropout, out);
        }
        (self.decode(x), next)
    }

    /// The shared softmax's logits for hidden states `[batch, len, d_hidden]`.
    fn decode(&self, x: Tensor<3>) -> Tensor<3> {
        let weight = match &self.decoder {
            Some(decoder) => decoder.val(),
            None => self.embedding.val().transpose(),
        };
        affine(x, weight, Some(self.decoder_bias.val()))
    }

    /// A biLM's backward logits `[batch, len, vocab]` for ids `[batch, len]` (no padding):
    /// position `t`'s predict the token before it from the tokens at `t` and after.
    pub fn backward_logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        assert!(self.is_bidirectional(), "only a biLM reads backwards");
        let mut x = zoo_blocks::kernels::dropout(
            &self.dropout,
            embedding(self.embedding.val(), ids.flip([1])),
        );
        for layer in &self.backward_layers {
            x = zoo_blocks::kernels::dropout(&self.dropout, layer.forward(x, None).0);
        }
        self.decode(x).flip([1])
    }

    /// The context-free vectors of ids `[batch, len]`: the embedding's rows, without dropout.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.embedding.val(), ids)
    }

    /// A biLM's layers as ELMo's features for ids `[batch, len]` whose `padding` (true after
    /// each sequence's last token) is given, without dropout: layer 0 is the token embedding
    /// twice over (`[batch, len, 2 d_embed]`, as the paper duplicates its context-free layer to
    /// the width of the others), layer `k` the forward and backward stacks' `k`th outputs side by
    /// side (`[batch, len, 2 d_hidden]`). Only the first `layers` are computed.
    pub fn layer_features(
        &self,
        ids: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        layers: usize,
    ) -> Vec<Tensor<3>> {
        assert!(self.is_bidirectional(), "features are a biLM's");
        let embedded = self.embed(ids);
        let mut features = vec![Tensor::cat(vec![embedded.clone(), embedded.clone()], 2)];
        let reversal = Reversal::within(&padding);
        let (mut forward, mut backward) = (embedded.clone(), embedded);
        for (f, b) in self.layers.iter().zip(&self.backward_layers) {
            if features.len() >= layers {
                break;
            }
            forward = f.forward(forward, None).0;
            backward = b.forward_reversed(backward, &reversal);
            features.push(Tensor::cat(vec![forward.clone(), backward.clone()], 2));
        }
        features
    }

    /// Mean next-token cross-entropy of `targets` (`[batch, len]`) given `ids` and the state
    /// before them, and the state after. A biLM's loss is the mean of that and the backward
    /// stack's: it reads `targets` right to left, from zeros, and predicts `ids`.
    pub fn loss(
        &self,
        ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<RnnState>,
    ) -> (Tensor<1>, RnnState) {
        let flat = |logits: Tensor<3>, targets: Tensor<2, Int>| {
            let [batch, len, vocab] = logits.dims();
            cross_entropy(
                logits.reshape([batch * len, vocab]),
                targets.reshape([batch * len]),
            )
        };
        let (logits, state) = self.forward(ids.clone(), state);
        let mut loss = flat(logits, targets.clone());
        if self.is_bidirectional() {
            // The window read backwards: the last target first, each predicting the id
            // before it.
            let backward = self.backward_logits(targets);
            loss = (loss + flat(backward, ids)) / 2.0;
        }
        (loss, state)
    }

    /// `state` as named tensors (`layer.0.hidden`, `layer.0.cell`, ...): what a checkpoint keeps
    /// of the state training carries from one window to the next.
    pub fn state_tensors(state: &RnnState) -> Vec<(String, TensorData)> {
        let mut named = Vec::new();
        for (i, layer) in state.iter().enumerate() {
            named.push((format!("layer.{i}.hidden"), layer.hidden.to_data()));
            if let Some(cell) = &layer.cell {
                named.push((format!("layer.{i}.cell"), cell.to_data()));
            }
        }
        named
    }

    /// The state [`state_tensors`](Self::state_tensors) named, on `device`, after checking
    /// that it fits this model: a state for each layer, a cell state exactly for LSTM layers,
    /// `[batch, d_hidden]` each with one batch size throughout. An error names the tensor.
    pub fn state_from_tensors(
        &self,
        mut named: std::collections::BTreeMap<String, TensorData>,
        device: &Device,
    ) -> Result<RnnState, String> {
        let mut batch = None;
        let mut take = |name: String, width: usize| -> Result<Option<Tensor<2>>, String> {
            let Some(data) = named.remove(&name) else {
                return Ok(None);
            };
            let shape = data.shape().to_vec();
            if shape.len() != 2 || shape[1] != width || batch.is_some_and(|b| b != shape[0]) {
                return Err(format!(
                    "{name} has shape {shape:?}, expected [{}, {width}]",
                    batch.map_or("batch".to_string(), |b: usize| b.to_string())
                ));
            }
            batch = Some(shape[0]);
            Ok(Some(Tensor::from_data(data.convert::<f32>(), device)))
        };
        let mut state = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let width = layer.d_hidden();
            let hidden = take(format!("layer.{i}.hidden"), width)?
                .ok_or_else(|| format!("layer.{i}.hidden is missing"))?;
            let cell = take(format!("layer.{i}.cell"), width)?;
            if cell.is_some() != (layer.kind() == CellKind::Lstm) {
                return Err(format!(
                    "layer {i} is {:?}: its cell state is {}",
                    layer.kind(),
                    if cell.is_some() {
                        "unexpected"
                    } else {
                        "missing"
                    }
                ));
            }
            state.push(RecurrentState { hidden, cell });
        }
        match named.into_keys().next() {
            Some(extra) => Err(format!("{extra} belongs to no layer of this model")),
            None => Ok(state),
        }
    }

    /// Continues `prompt` by `max_new_tokens` tokens picked by `sampler`: the prompt runs through
    /// once, then each new token advances the state by one step.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: &mut Sampler,
    ) -> Vec<u32> {
        zoo_blocks::generate(self, prompt, max_new_tokens, sampler)
    }

    /// Continues `prompt` by the best continuation beam search finds (up to `search.max_len`
    /// tokens, the end token excluded).
    pub fn beam_search(&self, prompt: &[u32], search: &BeamSearch) -> Result<Vec<u32>, String> {
        let (last, read) = prompt
            .split_last()
            .ok_or("beam search needs at least one prompt token")?;
        let device = self.embedding.device();
        let state = (!read.is_empty()).then(|| self.forward(ids_tensor(read, &device), None).1);
        let mut found = beam_search(self, state, &[*last], search, &device);
        Ok(found.remove(0))
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embedding.dims()[0]
    }
}

/// What a recurrent model has read, for incremental decoding: the state after the last token,
/// and the states after each of its recent tokens, so that it can go back to any of them (a
/// recurrent state cannot be cut back like a KV cache).
#[derive(Clone, Debug, Default)]
pub struct RnnCache {
    /// Tokens read.
    read: usize,
    /// `(tokens read, the state after them)`, newest last: at most [`ROLLBACK`] of them.
    recent: VecDeque<(usize, RnnState)>,
}

impl IncrementalLm for RnnLm {
    type Cache = RnnCache;

    fn empty_cache(&self) -> RnnCache {
        RnnCache::default()
    }

    fn cached_len(&self, cache: &RnnCache) -> usize {
        cache.read
    }

    /// The tokens before the last `rows` go through in one forward; the last `rows` one at a
    /// time, keeping the state after each.
    fn extend(&self, tokens: &[u32], rows: usize, cache: &mut RnnCache) -> Vec<Vec<f32>> {
        let device = self.embedding.device();
        let keep = |cache: &mut RnnCache, count: usize, state: &RnnState| {
            cache.read += count;
            cache.recent.push_back((cache.read, state.clone()));
            if cache.recent.len() > ROLLBACK {
                cache.recent.pop_front();
            }
        };
        let mut state = cache.recent.back().map(|(_, state)| state.clone());
        let (lead, last) = tokens.split_at(tokens.len() - rows);
        if !lead.is_empty() {
            let (_, after) = self.forward(ids_tensor(lead, &device), state);
            keep(cache, lead.len(), &after);
            state = Some(after);
        }
        let mut out = Vec::with_capacity(rows);
        for &token in last {
            let (logits, after) = self.forward(ids_tensor(&[token], &device), state);
            out.extend(last_rows(logits, 1));
            keep(cache, 1, &after);
            state = Some(after);
        }
        out
    }

    fn truncate(&self, cache: &mut RnnCache, len: usize) {
        if len == 0 {
            *cache = RnnCache::default();
            return;
        }
        while cache.recent.back().is_some_and(|(read, _)| *read > len) {
            cache.recent.pop_back();
        }
        assert!(
            cache.recent.back().is_some_and(|(read, _)| *read == len),
            "a recurrent cache keeps the states of its recent tokens only: {len} tokens is too far back"
        );
        cache.read = len;
    }

    fn context_len(&self) -> Option<usize> {
        None
    }
}

impl StepDecoder for RnnLm {
    /// Each layer's state, `None` before the first token.
    type State = Option<RnnState>;

    fn step(&self, previous: Tensor<2, Int>, state: &mut Option<RnnState>) -> Tensor<2> {
        let (logits, after) = self.forward(previous, state.take());
        *state = Some(after);
        let [rows, _, vocab] = logits.dims();
        logits.reshape([rows, vocab])
    }

    fn select(&self, state: &Option<RnnState>, rows: Tensor<1, Int>) -> Option<RnnState> {
        state.as_ref().map(|layers| {
            layers
                .iter()
                .map(|layer| layer.select(rows.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use zoo_blocks::SamplingConfig;

    fn device() -> Device {
        let device = Device::flex();
        device.seed(5);
        device
    }

    fn tiny(cell: CellKind, tie_weights: bool) -> RnnConfig {
        RnnConfig {
            vocab_size: 13,
            cell,
            n_layer: 2,
            d_hidden: 8,
            d_embed: 0,
            dropout: 0.0,
            tie_weights,
            bidirectional: false,
        }
    }

    fn bilm(cell: CellKind, tie_weights: bool) -> RnnConfig {
        RnnConfig {
            bidirectional: true,
            ..tiny(cell, tie_weights)
        }
    }

    fn ids(values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
    }

    #[test]
    fn the_size_formula_counts_every_parameter() {
        let device = device();
        for cell in [CellKind::Lstm, CellKind::Gru] {
            for (tie, both_ways) in [(false, false), (true, false), (false, true), (true, true)] {
                let config = RnnConfig {
                    bidirectional: both_ways,
                    ..tiny(cell, tie)
                };
                let model = config.init(&device).unwrap();
                assert_eq!(
                    config.size().total,
                    model.num_params(),
                    "{cell:?} tied={tie}"
                );
            }
        }
    }

    #[test]
    fn a_state_survives_its_tensors_and_a_misfit_is_named() {
        let device = device();
        for cell in [CellKind::Lstm, CellKind::Gru] {
            let model = tiny(cell, true).init(&device).unwrap();
            let (_, state) = model.forward(ids(&[1, 5, 2], &device), None);
            let named: std::collections::BTreeMap<_, _> =
                RnnLm::state_tensors(&state).into_iter().collect();
            let back = model.state_from_tensors(named.clone(), &device).unwrap();
            for (a, b) in state.iter().zip(&back) {
                assert_eq!(a.hidden.to_data(), b.hidden.to_data());
                assert_eq!(
                    a.cell.as_ref().map(|c| c.to_data()),
                    b.cell.as_ref().map(|c| c.to_data())
                );
            }
            // Continuing from the restored state is continuing from the state itself.
            let next = ids(&[9, 12], &device);
            let (a, _) = model.forward(next.clone(), Some(state));
            let (b, _) = model.forward(next, Some(back));
            assert_eq!(a.to_data(), b.to_data());

            let mut wide = named.clone();
            wide.insert(
                "layer.1.hidden".into(),
                TensorData::new(vec![0f32; 9], [1, 9]),
            );
            let e = model.state_from_tensors(wide, &device).unwrap_err();
            assert!(e.contains("layer.1.hidden has shape [1, 9]"), "{e}");
            let mut missing = named.clone();
            missing.remove("layer.0.hidden");
            let e = model.state_from_tensors(missing, &device).unwrap_err();
            assert!(e.contains("layer.0.hidden is missing"), "{e}");
            let mut extra = named;
            extra.insert(
                "layer.2.hidden".into(),
                TensorData::new(vec![0f32; 8], [1, 8]),
            );
            let e = model.state_from_tensors(extra, &device).unwrap_err();
            assert!(e.contains("layer.2.hidden belongs to no layer"), "{e}");
        }
    }

    #[test]
    fn carrying_the_state_across_windows_equals_one_long_window() {
        let device = device();
        for cell in [CellKind::Lstm, CellKind::Gru] {
            let model = tiny(cell, true).init(&device).unwrap();
            let tokens = [1, 5, 2, 9, 12, 0, 3, 7];
            let (whole, _) = model.forward(ids(&tokens, &device), None);
            let (first, state) = model.forward(ids(&tokens[..5], &device), None);
            let (second, _) = model.forward(ids(&tokens[5..], &device), Some(state));
            let joined = Tensor::cat(vec![first, second], 1);
            let diff = (joined - whole).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-6, "{cell:?}: {diff}");
        }
    }

    #[test]
    fn outputs_never_depend_on_later_tokens() {
        let device = device();
        let model = tiny(CellKind::Lstm, false).init(&device).unwrap();
        let (a, _) = model.forward(ids(&[1, 2, 3, 4, 5], &device), None);
        let (b, _) = model.forward(ids(&[1, 2, 3, 11, 0], &device), None);
        let diff = (a.narrow(1, 0, 3) - b.narrow(1, 0, 3))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn tied_weights_need_equal_widths() {
        let config = RnnConfig {
            d_embed: 6,
            ..tiny(CellKind::Lstm, true)
        };
        let message = config.validate().unwrap_err();
        assert!(message.contains("tie_weights"), "{message}");
    }

    #[test]
    fn greedy_generation_continues_with_the_most_likely_token() {
        let device = device();
        let model = tiny(CellKind::Gru, false).init(&device).unwrap();
        let mut sampler = Sampler::new(SamplingConfig::greedy());
        let tokens = model.generate(&[3, 4], 3, &mut sampler);
        assert_eq!(tokens.len(), 5);
        // The third token is the argmax after the prompt; check it against a plain forward.
        let (logits, _) = model.forward(ids(&[3, 4], &device), None);
        let last = logits
            .narrow(1, 1, 1)
            .reshape([13])
            .argmax(0)
            .into_scalar::<i64>();
        assert_eq!(tokens[2] as i64, last);
    }

    /// A biLM's backward logits at position `t` predict token `t - 1` from tokens `t..`: they
    /// never depend on the token they predict or any before it.
    #[test]
    fn the_backward_stack_never_sees_earlier_tokens() {
        let device = device();
        let model = bilm(CellKind::Lstm, false).init(&device).unwrap();
        let a = model.backward_logits(ids(&[1, 2, 3, 4, 5, 6], &device));
        let b = model.backward_logits(ids(&[9, 0, 7, 4, 5, 6], &device));
        let same = (a.clone().narrow(1, 3, 3) - b.clone().narrow(1, 3, 3))
            .abs()
            .max();
        assert_eq!(same.into_scalar::<f32>(), 0.0);
        let changed = (a.narrow(1, 2, 1) - b.narrow(1, 2, 1)).abs().max();
        assert!(changed.into_scalar::<f32>() > 0.0);
    }

    /// The biLM's loss is the mean of the forward loss and the backward stack's loss over the
    /// window read right to left, computed here from the logits by hand.
    #[test]
    fn a_bilm_loss_averages_both_directions() {
        let device = device();
        for cell in [CellKind::Lstm, CellKind::Gru] {
            let model = bilm(cell, true).init(&device).unwrap();
            let window = [3i64, 1, 4, 1, 5, 9, 2, 6];
            let (inputs, targets) = (ids(&window[..7], &device), ids(&window[1..], &device));
            let (loss, _) = model.loss(inputs.clone(), targets.clone(), None);
            let log_softmax = |logits: Tensor<3>| -> Vec<Vec<f64>> {
                let rows: Vec<f32> = logits.into_data().try_to_vec().unwrap();
                rows.chunks(13)
                    .map(|row| {
                        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
                        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                        row.iter().map(|&x| x as f64 - max - sum.ln()).collect()
                    })
                    .collect()
            };
            let forward = log_softmax(model.forward(inputs.clone(), None).0);
            let backward = log_softmax(model.backward_logits(targets.clone()));
            let mut total = 0.0;
            for t in 0..7 {
                total -= forward[t][window[t + 1] as usize];
                total -= backward[t][window[t] as usize];
            }
            let expected = total / 14.0;
            let got = loss.into_scalar::<f64>();
            assert!(
                (got - expected).abs() < 1e-5,
                "{cell:?}: {got} vs {expected}"
            );
        }
    }

    /// Features of a padded batch are those of each sentence alone; layer 0 is the embedding
    /// twice, layer k the two stacks' k-th outputs (the forward one as `forward` computes it).
    #[test]
    fn layer_features_ignore_padding_and_stack_both_directions() {
        let device = device();
        let model = bilm(CellKind::Lstm, false).init(&device).unwrap();
        let (long, short) = ([4i64, 8, 1, 11, 2], [7i64, 3, 12]);
        let padded: Vec<i64> = long.iter().chain(&short).chain(&[0, 0]).copied().collect();
        let batch = Tensor::<2, Int>::from_data(TensorData::new(padded, [2, 5]), &device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                [[false; 5], [false, false, false, true, true]].concat(),
                [2, 5],
            ),
            &device,
        );
        let together = model.layer_features(batch, padding, 3);
        assert_eq!(together.len(), 3);
        assert_eq!(together[0].dims(), [2, 5, 16]);
        assert_eq!(together[2].dims(), [2, 5, 16]);
        let alone = model.layer_features(
            ids(&short, &device),
            Tensor::full([1, 3], false, &device),
            3,
        );
        for (k, (both, one)) in together.iter().zip(&alone).enumerate() {
            let diff = (both.clone().narrow(0, 1, 1).narrow(1, 0, 3) - one.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-6, "layer {k}: {diff}");
        }
        // The forward half of the top layer is the forward stack's output.
        let mut x = embedding(model.embedding.val(), ids(&short, &device));
        for layer in &model.layers {
            x = layer.forward(x, None).0;
        }
        let top = alone[2].clone().narrow(2, 0, 8);
        assert!((top - x).abs().max().into_scalar::<f32>() < 1e-6);
        // Asking for fewer layers computes fewer.
        assert_eq!(
            model
                .layer_features(
                    ids(&short, &device),
                    Tensor::full([1, 3], false, &device),
                    1
                )
                .len(),
            1
        );
    }
}
