//! The transformer encoder-decoder, top to bottom: config, encoder layer, decoder layer, model,
//! teacher-forced forward, incremental decoding.
//!
//! With [`TransformerConfig::default`] this is the original transformer (Vaswani et al. 2017):
//! sinusoidal positions added to embeddings scaled by `sqrt(d_model)`, post-norm LayerNorm,
//! ReLU feed-forward, source, target and output embeddings shared. The `t5-small` preset turns
//! it into a T5-style model: pre-norm RMSNorm, no biases, no absolute positions but a learned
//! relative position bias per stack, shared by that stack's layers.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use zoo_blocks::ModelSize;
use zoo_blocks::{
    AbsolutePositions, Activation, AttentionCache, CrossAttention, CrossAttentionConfig,
    FeedForward, FeedForwardConfig, MemoryKeys, Norm, NormKind, NormPlacement, PositionKind,
    RelativePositionBias, SelfAttention, SelfAttentionConfig, TokenEmbedding, TokenEmbeddingConfig,
};

use crate::decoding::EncoderDecoder;
use zoo_blocks::beam::StepDecoder;

/// How the transformer knows where tokens are.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Positions {
    /// Fixed sines and cosines added to the embeddings (the original transformer).
    #[default]
    Sinusoidal,
    /// A learned vector per position added to the embeddings.
    Learned,
    /// T5's learned bias on attention scores per bucket of relative distance.
    Relative,
}

/// Every shape and option of a transformer encoder-decoder. Recipes override any field by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Source vocabulary size; 0 means "take it from the tokenizer".
    pub src_vocab_size: usize,
    /// Target vocabulary size; 0 means "take it from the tokenizer".
    pub tgt_vocab_size: usize,
    /// Longest source and longest target, in tokens.
    pub max_len: usize,
    /// Encoder layers.
    pub n_encoder_layers: usize,
    /// Decoder layers.
    pub n_decoder_layers: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Hidden width of the feed-forward blocks.
    pub d_ff: usize,
    /// Dropout on embeddings, attention weights and residual branches.
    pub dropout: f64,
    /// Bias in linear layers and LayerNorms.
    pub bias: bool,
    /// Position scheme.
    pub position: Positions,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// Post-norm (original) or pre-norm (T5, and most models since).
    pub norm_placement: NormPlacement,
    /// Feed-forward non-linearity.
    pub activation: Activation,
    /// Multiply embeddings by `sqrt(d_model)` (the original, so they match sinusoidal
    /// positions' scale); T5 does not.
    pub scale_embeddings: bool,
    /// One embedding matrix for source and target (needs a joint vocabulary).
    pub share_embeddings: bool,
    /// The output projection is the target embedding matrix.
    pub tie_output: bool,
    /// Relative positions only: buckets of distance (T5: 32).
    pub relative_buckets: usize,
    /// Relative positions only: distances from this on share the last bucket (T5: 128).
    pub relative_max_distance: usize,
    /// Width of each attention head (0: `d_model / n_head`); T5 v1.1 sets it apart, the heads
    /// together then being `n_head * head_dim` wide.
    pub head_dim: usize,
    /// Divide attention scores by `sqrt(head_dim)`; T5 does not (its initialisation does).
    pub scaled_attention: bool,
    /// The norms' epsilon (T5: 1e-6).
    pub layer_norm_eps: f64,
    /// Multiply the decoder's output by `d_model^-1/2` before the output projection (T5 v1.0,
    /// whose tied embeddings are not scaled on the way in and so are as wide as the output).
    pub scale_output: bool,
    /// Learned positions only: the encoder and the decoder each have a table of their own
    /// (BART) rather than sharing one.
    pub separate_positions: bool,
    /// Learned positions only: position `i` is row `i + position_offset` of its table (BART's
    /// tables start at 2, a legacy of fairseq's padding rows).
    pub position_offset: usize,
    /// A norm over the embeddings (with positions) of each stack before its first layer
    /// (BART's `layernorm_embedding`).
    pub embedding_norm: bool,
    /// A learned bias added to the output logits (BART's `final_logits_bias`).
    pub output_bias: bool,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            src_vocab_size: 0,
            tgt_vocab_size: 0,
            max_len: 256,
            n_encoder_layers: 6,
            n_decoder_layers: 6,
            n_head: 8,
            d_model: 512,
            d_ff: 2048,
            dropout: 0.1,
            bias: true,
            position: Positions::Sinusoidal,
            norm: NormKind::LayerNorm,
            norm_placement: NormPlacement::Post,
            activation: Activation::Relu,
            scale_embeddings: true,
            share_embeddings: true,
            tie_output: true,
            relative_buckets: 32,
            relative_max_distance: 128,
            head_dim: 0,
            scaled_attention: true,
            layer_norm_eps: 1e-5,
            scale_output: false,
            separate_positions: false,
            position_offset: 0,
            embedding_norm: false,
            output_bias: false,
        }
    }
}

impl TransformerConfig {
    /// Checks that the shapes fit together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("src_vocab_size", self.src_vocab_size),
            ("tgt_vocab_size", self.tgt_vocab_size),
        ] {
            if value == 0 {
                return Err(format!("{name} is 0: set it or let the tokenizer decide"));
            }
        }
        for (name, value) in [
            ("max_len", self.max_len),
            ("n_encoder_layers", self.n_encoder_layers),
            ("n_decoder_layers", self.n_decoder_layers),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
            ("d_ff", self.d_ff),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.share_embeddings && self.src_vocab_size != self.tgt_vocab_size {
            return Err(format!(
                "share_embeddings needs one vocabulary, but src_vocab_size is {} and \
                 tgt_vocab_size {}",
                self.src_vocab_size, self.tgt_vocab_size
            ));
        }
        if self.position == Positions::Relative && self.relative_buckets < 4 {
            return Err("relative_buckets must be at least 4".into());
        }
        // Distances below half the (decoder's) buckets each have a bucket; the rest share the
        // others on a log scale up to relative_max_distance, which must lie beyond them.
        if self.position == Positions::Relative
            && self.relative_max_distance <= self.relative_buckets / 2
        {
            return Err(format!(
                "relative_max_distance ({}) must exceed relative_buckets / 2 ({})",
                self.relative_max_distance,
                self.relative_buckets / 2
            ));
        }
        if self.position != Positions::Learned
            && (self.separate_positions || self.position_offset > 0)
        {
            return Err(
                "separate_positions and position_offset are for position = \"learned\"".into(),
            );
        }
        self.self_attention(false).validate()?;
        self.cross_attention().validate()
    }

    /// Width of each attention head after resolving the 0 default.
    pub fn head_width(&self) -> usize {
        if self.head_dim == 0 {
            self.d_model / self.n_head.max(1)
        } else {
            self.head_dim
        }
    }

    fn self_attention(&self, causal: bool) -> SelfAttentionConfig {
        SelfAttentionConfig {
            bias: self.bias,
            dropout: self.dropout,
            position: PositionKind::Learned, // positions are added outside attention
            causal,
            head_dim: self.head_dim,
            scaled: self.scaled_attention,
            ..SelfAttentionConfig::new(self.d_model, self.n_head, self.max_len)
        }
    }

    fn cross_attention(&self) -> CrossAttentionConfig {
        CrossAttentionConfig {
            bias: self.bias,
            dropout: self.dropout,
            head_dim: self.head_dim,
            scaled: self.scaled_attention,
            ..CrossAttentionConfig::new(self.d_model, self.n_head)
        }
    }

    fn feed_forward(&self) -> FeedForwardConfig {
        FeedForwardConfig {
            activation: self.activation,
            bias: self.bias,
            dropout: self.dropout,
            ..FeedForwardConfig::new(self.d_model, self.d_ff)
        }
    }

    fn norm(&self, device: &Device) -> Norm {
        Norm::with_epsilon(
            self.norm,
            self.d_model,
            self.bias,
            self.layer_norm_eps,
            device,
        )
    }

    /// Token embeddings with N(0, 1/d_model) entries (fairseq's choice): scaled by
    /// `sqrt(d_model)` they have unit variance, and as a tied output head they give unit-scale
    /// logits.
    fn embedding(&self, vocab_size: usize, tie: bool, device: &Device) -> TokenEmbedding {
        let mut embedding = TokenEmbeddingConfig {
            vocab_size,
            d_model: self.d_model,
            tie_weights: tie,
            head_bias: false,
        }
        .init(device);
        let std = (self.d_model as f64).powf(-0.5);
        embedding.weight = Param::from_tensor(Tensor::random(
            [vocab_size, self.d_model],
            burn::tensor::Distribution::Normal(0.0, std),
            device,
        ));
        embedding
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Result<Transformer, String> {
        self.validate()?;
        let rows = self.max_len + self.position_offset;
        let absolute = |kind| AbsolutePositions::new(kind, rows, self.d_model, device);
        let positions = match self.position {
            Positions::Sinusoidal => absolute(PositionKind::Sinusoidal),
            Positions::Learned => absolute(PositionKind::Learned),
            Positions::Relative => None,
        };
        let target_positions = (self.separate_positions && self.position == Positions::Learned)
            .then(|| absolute(PositionKind::Learned))
            .flatten();
        let embedding_norm = || self.embedding_norm.then(|| self.norm(device));
        let relative = |bidirectional| {
            (self.position == Positions::Relative).then(|| {
                RelativePositionBias::new(
                    self.n_head,
                    self.relative_buckets,
                    self.relative_max_distance,
                    bidirectional,
                    device,
                )
            })
        };
        let pre_norm = self.norm_placement == NormPlacement::Pre;
        Ok(Transformer {
            source_embedding: (!self.share_embeddings)
                .then(|| self.embedding(self.src_vocab_size, true, device)),
            target_embedding: self.embedding(self.tgt_vocab_size, self.tie_output, device),
            positions,
            target_positions,
            encoder_embedding_norm: embedding_norm(),
            decoder_embedding_norm: embedding_norm(),
            encoder_relative: relative(true),
            decoder_relative: relative(false),
            dropout: DropoutConfig::new(self.dropout).init(),
            encoder: (0..self.n_encoder_layers)
                .map(|_| EncoderLayer {
                    attention_norm: self.norm(device),
                    attention: self.self_attention(false).init(device),
                    ff_norm: self.norm(device),
                    feed_forward: self.feed_forward().init(device),
                    placement: self.norm_placement,
                })
                .collect(),
            encoder_norm: pre_norm.then(|| self.norm(device)),
            decoder: (0..self.n_decoder_layers)
                .map(|_| DecoderLayer {
                    attention_norm: self.norm(device),
                    attention: self.self_attention(true).init(device),
                    cross_norm: self.norm(device),
                    cross_attention: self.cross_attention().init(device),
                    ff_norm: self.norm(device),
                    feed_forward: self.feed_forward().init(device),
                    placement: self.norm_placement,
                })
                .collect(),
            decoder_norm: pre_norm.then(|| self.norm(device)),
            embedding_scale: if self.scale_embeddings {
                (self.d_model as f64).sqrt()
            } else {
                1.0
            },
            output_scale: if self.scale_output {
                (self.d_model as f64).powf(-0.5)
            } else {
                1.0
            },
            output_bias: self
                .output_bias
                .then(|| Param::from_tensor(Tensor::zeros([1, self.tgt_vocab_size], device))),
            position_offset: self.position_offset,
            max_len: self.max_len,
        })
    }

    /// Parameter counts and training compute, from the shapes alone.
    pub fn size(&self) -> ModelSize {
        let (d, ff) = (self.d_model, self.d_ff);
        let inner = self.n_head * self.head_width();
        let bias = self.bias as usize;
        let norm = match self.norm {
            NormKind::LayerNorm => d * (1 + bias),
            NormKind::RmsNorm => d,
        };
        let attention = 4 * d * inner + (3 * inner + d) * bias;
        let branches = if self.activation.is_gated() { 2 } else { 1 };
        let feed_forward = d * branches * ff + ff * d + (branches * ff + d) * bias;
        let encoder_layer = attention + feed_forward + 2 * norm;
        let decoder_layer = 2 * attention + feed_forward + 3 * norm;
        let final_norms = if self.norm_placement == NormPlacement::Pre {
            2 * norm
        } else {
            0
        };
        let tables = if self.separate_positions { 2 } else { 1 };
        let positions = match self.position {
            Positions::Learned => tables * (self.max_len + self.position_offset) * d,
            Positions::Sinusoidal => 0,
            Positions::Relative => 2 * self.relative_buckets * self.n_head,
        };
        let embedding_norms = if self.embedding_norm { 2 * norm } else { 0 };
        let output_bias = if self.output_bias {
            self.tgt_vocab_size
        } else {
            0
        };
        let head = if self.tie_output {
            0
        } else {
            d * self.tgt_vocab_size
        };
        let layers = self.n_encoder_layers * encoder_layer + self.n_decoder_layers * decoder_layer;
        let non_embedding = layers + final_norms + embedding_norms + positions + head + output_bias;
        let embeddings = self.tgt_vocab_size * d
            + if self.share_embeddings {
                0
            } else {
                self.src_vocab_size * d
            };
        ModelSize {
            total: non_embedding + embeddings,
            non_embedding,
            // 6 FLOPs per weight per token for forward and backward, taking one source and one
            // target token together: the encoder's weights see the source token, the decoder's
            // and the output projection's the target token.
            train_flops_per_token: 6 * (layers + d * self.tgt_vocab_size),
        }
    }
}

/// `x + f(norm(x))` (pre-norm) or `norm(x + f(x))` (post-norm).
fn residual(
    placement: NormPlacement,
    norm: &Norm,
    x: Tensor<3>,
    f: impl FnOnce(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    match placement {
        NormPlacement::Pre => x.clone() + f(norm.forward(x)),
        NormPlacement::Post => norm.forward(x.clone() + f(x)),
    }
}

/// Self-attention over the whole source, then feed-forward.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    attention_norm: Norm,
    attention: SelfAttention,
    ff_norm: Norm,
    feed_forward: FeedForward,
    #[module(skip)]
    placement: NormPlacement,
}

impl EncoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        padding: &Tensor<2, Bool>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let x = residual(self.placement, &self.attention_norm, x, |h| {
            self.attention
                .forward_with_bias(h, Some(padding.clone()), None, bias)
        });
        residual(self.placement, &self.ff_norm, x, |h| {
            self.feed_forward.forward(h)
        })
    }
}

/// Masked self-attention over the target so far, attention to the source, then feed-forward.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    attention_norm: Norm,
    attention: SelfAttention,
    cross_norm: Norm,
    cross_attention: CrossAttention,
    ff_norm: Norm,
    feed_forward: FeedForward,
    #[module(skip)]
    placement: NormPlacement,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        memory: &MemoryKeys,
        cache: Option<&mut AttentionCache>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let x = residual(self.placement, &self.attention_norm, x, |h| {
            self.attention.forward_with_bias(h, None, cache, bias)
        });
        let x = residual(self.placement, &self.cross_norm, x, |h| {
            self.cross_attention.forward(h, memory)
        });
        residual(self.placement, &self.ff_norm, x, |h| {
            self.feed_forward.forward(h)
        })
    }
}

/// The encoder-decoder transformer.
#[derive(Module, Debug)]
pub struct Transformer {
    /// `None` when the source shares the target's embeddings.
    source_embedding: Option<TokenEmbedding>,
    /// Target embeddings, and the output head (tied or not).
    target_embedding: TokenEmbedding,
    /// Absolute positions: the encoder's, and the decoder's too unless it has its own.
    positions: Option<AbsolutePositions>,
    /// The decoder's own learned positions (`separate_positions`).
    target_positions: Option<AbsolutePositions>,
    encoder_embedding_norm: Option<Norm>,
    decoder_embedding_norm: Option<Norm>,
    encoder_relative: Option<RelativePositionBias>,
    decoder_relative: Option<RelativePositionBias>,
    dropout: Dropout,
    encoder: Vec<EncoderLayer>,
    encoder_norm: Option<Norm>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: Option<Norm>,
    embedding_scale: f64,
    /// What the decoder's output is multiplied by before the output projection.
    output_scale: f64,
    /// Added to the logits (`output_bias`), `[1, tgt_vocab]` as BART keeps it.
    output_bias: Option<Param<Tensor<2>>>,
    /// Position `i` is row `i + position_offset` of a learned table.
    position_offset: usize,
    max_len: usize,
}

/// What the decoder attends to: each decoder layer's keys and values of the encoder output,
/// projected once per source.
#[derive(Clone, Debug)]
pub struct TransformerMemory {
    layers: Vec<MemoryKeys>,
}

/// The decoder's self-attention keys and values so far, per layer.
#[derive(Clone, Debug, Default)]
pub struct TransformerCache {
    layers: Vec<AttentionCache>,
}

impl TransformerCache {
    /// Target tokens decoded so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, AttentionCache::len)
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decoding state: the source's memory and the decoder's cache.
#[derive(Clone, Debug)]
pub struct TransformerState {
    memory: TransformerMemory,
    cache: TransformerCache,
}

impl Transformer {
    /// This model with the embeddings (tokens, positions and their norms), when `embeddings`,
    /// and the first `layers` encoder layers kept out of training (fine-tuning). An output
    /// head tied to the target embedding is that embedding: it is kept too.
    pub fn freeze(mut self, embeddings: bool, layers: usize) -> Self {
        if embeddings {
            self.source_embedding = self.source_embedding.map(|e| TokenEmbedding {
                weight: e.weight.set_require_grad(false),
                ..e
            });
            self.target_embedding.weight = self.target_embedding.weight.set_require_grad(false);
            self.positions = self.positions.map(Module::no_grad);
            self.target_positions = self.target_positions.map(Module::no_grad);
            self.encoder_embedding_norm = self.encoder_embedding_norm.map(Module::no_grad);
            self.decoder_embedding_norm = self.decoder_embedding_norm.map(Module::no_grad);
        }
        self.encoder = zoo_blocks::freeze_first(self.encoder, layers);
        self
    }

    /// The input of a stack: the embeddings of `ids` (at positions from `start`), scaled, with
    /// their positions added and `norm` applied.
    fn embed(
        &self,
        embedding: &TokenEmbedding,
        ids: Tensor<2, Int>,
        start: usize,
        positions: Option<&AbsolutePositions>,
        norm: Option<&Norm>,
    ) -> Tensor<3> {
        let [_, len] = ids.dims();
        assert!(
            start + len <= self.max_len,
            "sequence of {} tokens exceeds max_len {}",
            start + len,
            self.max_len
        );
        let mut x = embedding.forward(ids) * self.embedding_scale;
        if let Some(positions) = positions {
            x = x + positions.forward(start + self.position_offset, len);
        }
        if let Some(norm) = norm {
            x = norm.forward(x);
        }
        zoo_blocks::kernels::dropout(&self.dropout, x)
    }

    /// The encoder's output `[batch, src_len, d_model]` for `source` (`[batch, src_len]`);
    /// `padding` is true at padded source positions, which no output depends on.
    pub fn encode(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let embedding = self
            .source_embedding
            .as_ref()
            .unwrap_or(&self.target_embedding);
        let [_, len] = source.dims();
        let norm = self.encoder_embedding_norm.as_ref();
        let mut x = self.embed(embedding, source, 0, self.positions.as_ref(), norm);
        let bias = self.encoder_relative.as_ref().map(|r| r.forward(len, len));
        for layer in &self.encoder {
            x = layer.forward(x, &padding, bias.clone());
        }
        match &self.encoder_norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }

    /// Each decoder layer's keys and values of `encoded`, computed once per source.
    pub fn memory(&self, encoded: Tensor<3>, padding: Tensor<2, Bool>) -> TransformerMemory {
        TransformerMemory {
            layers: self
                .decoder
                .iter()
                .map(|layer| {
                    layer
                        .cross_attention
                        .memory(encoded.clone(), Some(padding.clone()))
                })
                .collect(),
        }
    }

    /// Logits `[batch, len, tgt_vocab]` for target tokens `target` (`[batch, len]`). With a
    /// cache, `target` continues the cached tokens and the cache grows by `len`.
    pub fn decode(
        &self,
        target: Tensor<2, Int>,
        memory: &TransformerMemory,
        cache: Option<&mut TransformerCache>,
    ) -> Tensor<3> {
        let [_, len] = target.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let positions = self.target_positions.as_ref().or(self.positions.as_ref());
        let norm = self.decoder_embedding_norm.as_ref();
        let mut x = self.embed(&self.target_embedding, target, start, positions, norm);
        let bias = self
            .decoder_relative
            .as_ref()
            .map(|r| r.forward(len, start + len));
        match cache {
            Some(cache) => {
                cache
                    .layers
                    .resize_with(self.decoder.len(), AttentionCache::new);
                for ((layer, keys), layer_cache) in self
                    .decoder
                    .iter()
                    .zip(&memory.layers)
                    .zip(&mut cache.layers)
                {
                    x = layer.forward(x, keys, Some(layer_cache), bias.clone());
                }
            }
            None => {
                for (layer, keys) in self.decoder.iter().zip(&memory.layers) {
                    x = layer.forward(x, keys, None, bias.clone());
                }
            }
        }
        if let Some(norm) = &self.decoder_norm {
            x = norm.forward(x);
        }
        if self.output_scale != 1.0 {
            x = x * self.output_scale;
        }
        let logits = self.target_embedding.logits(x);
        match &self.output_bias {
            Some(bias) => logits + bias.val().unsqueeze(),
            None => logits,
        }
    }

    /// Teacher-forced logits `[batch, tgt_len, tgt_vocab]`: `target_in` is the target shifted
    /// right (starting with the begin token).
    pub fn forward(
        &self,
        source: Tensor<2, Int>,
        source_padding: Tensor<2, Bool>,
        target_in: Tensor<2, Int>,
    ) -> Tensor<3> {
        let encoded = self.encode(source, source_padding.clone());
        let memory = self.memory(encoded, source_padding);
        self.decode(target_in, &memory, None)
    }

    /// Longest source or target.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl StepDecoder for Transformer {
    type State = TransformerState;

    fn step(&self, previous: Tensor<2, Int>, state: &mut TransformerState) -> Tensor<2> {
        let logits = self.decode(previous, &state.memory, Some(&mut state.cache));
        let [rows, _, vocab] = logits.dims();
        logits.reshape([rows, vocab])
    }

    fn select(&self, state: &TransformerState, rows: Tensor<1, Int>) -> TransformerState {
        TransformerState {
            memory: TransformerMemory {
                layers: state
                    .memory
                    .layers
                    .iter()
                    .map(|m| m.select(rows.clone()))
                    .collect(),
            },
            cache: TransformerCache {
                layers: state
                    .cache
                    .layers
                    .iter()
                    .map(|c| c.select(rows.clone()))
                    .collect(),
            },
        }
    }
}

impl EncoderDecoder for Transformer {
    fn start(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> TransformerState {
        let encoded = self.encode(source, padding.clone());
        TransformerState {
            memory: self.memory(encoded, padding),
            cache: TransformerCache::default(),
        }
    }

    fn max_target_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::transformer_preset;
    use crate::tests::{assert_close, ids};
    use burn::tensor::TensorData;

    fn device() -> Device {
        let device = Device::flex();
        device.seed(11);
        device
    }

    /// The original (post-norm, sinusoidal, shared embeddings), learned positions with separate
    /// vocabularies, and the T5-style model, all tiny.
    fn configs() -> Vec<TransformerConfig> {
        let tiny = TransformerConfig {
            src_vocab_size: 13,
            tgt_vocab_size: 13,
            ..transformer_preset("transformer-tiny").unwrap()
        };
        // T5 v1.0's shape: relative positions, RMSNorm, no biases, unscaled embeddings and
        // attention scores, the tied output fed the decoder's output scaled.
        let t5_v1_0 = TransformerConfig {
            bias: false,
            position: Positions::Relative,
            norm: NormKind::RmsNorm,
            scale_embeddings: false,
            relative_buckets: 8,
            relative_max_distance: 16,
            scale_output: true,
            scaled_attention: false,
            layer_norm_eps: 1e-6,
            ..tiny.clone()
        };
        vec![
            TransformerConfig {
                norm_placement: NormPlacement::Post,
                ..tiny.clone()
            },
            TransformerConfig {
                position: Positions::Learned,
                share_embeddings: false,
                tie_output: false,
                src_vocab_size: 17,
                ..tiny.clone()
            },
            // BART's shape: post-norm, learned positions of each stack's own from row 2, a norm
            // over the embeddings, a bias on the logits.
            TransformerConfig {
                norm_placement: NormPlacement::Post,
                position: Positions::Learned,
                separate_positions: true,
                position_offset: 2,
                embedding_norm: true,
                output_bias: true,
                ..tiny.clone()
            },
            t5_v1_0.clone(),
            // T5 v1.1's shape: heads narrower than the width allows, gated GELU, an output
            // head of its own, unscaled.
            TransformerConfig {
                head_dim: 3,
                activation: Activation::Geglu,
                tie_output: false,
                scale_output: false,
                ..t5_v1_0
            },
        ]
    }

    #[test]
    fn relative_distances_must_reach_past_the_exact_buckets() {
        let config = TransformerConfig {
            position: Positions::Relative,
            relative_buckets: 8,
            relative_max_distance: 4,
            src_vocab_size: 13,
            tgt_vocab_size: 13,
            ..transformer_preset("transformer-tiny").unwrap()
        };
        let e = config.validate().unwrap_err();
        assert!(e.contains("relative_max_distance (4)"), "{e}");
        let fine = TransformerConfig {
            relative_max_distance: 5,
            ..config
        };
        fine.validate().unwrap();
    }

    #[test]
    fn the_size_from_shapes_counts_every_parameter() {
        let device = device();
        for config in configs() {
            let model = config.init(&device).unwrap();
            assert_eq!(config.size().total, model.num_params(), "{config:?}");
        }
    }

    /// Source 0 has 4 tokens and 3 padding, source 1 has 7: whatever the padding holds, the
    /// decoder's logits are those of source 0 decoded alone, on the inference and training
    /// paths.
    #[test]
    fn source_padding_never_changes_outputs() {
        for base in [device(), device().autodiff()] {
            for config in configs() {
                let model = config.init(&base).unwrap();
                let target = ids(&[&[1, 5, 2], &[1, 3, 3]], &base);
                let padding = Tensor::<2, Bool>::from_data(
                    TensorData::from([[false, false, false, false, true, true, true], [false; 7]]),
                    &base,
                );
                let padded = |fill: i64| {
                    ids(
                        &[&[4, 7, 9, 2, fill, fill, fill], &[3, 5, 6, 8, 10, 11, 2]],
                        &base,
                    )
                };
                let a = model.forward(padded(0), padding.clone(), target.clone());
                let b = model.forward(padded(12), padding.clone(), target.clone());
                assert_close(a.clone(), b, 1e-5);
                let alone = model.forward(
                    ids(&[&[4, 7, 9, 2]], &base),
                    Tensor::from_data(TensorData::from([[false; 4]]), &base),
                    ids(&[&[1, 5, 2]], &base),
                );
                assert_close(a.narrow(0, 0, 1), alone, 1e-5);
            }
        }
    }

    /// Decoding a token at a time with the self-attention cache and the memory computed once
    /// equals the teacher-forced forward; and no logit depends on a later target token.
    #[test]
    fn cached_decoding_equals_the_full_forward_and_is_causal() {
        let device = device();
        for config in configs() {
            let model = config.init(&device).unwrap();
            let source = ids(&[&[4, 7, 9, 2, 0], &[3, 5, 6, 8, 2]], &device);
            let padding = Tensor::<2, Bool>::from_data(
                TensorData::from([[false, false, false, false, true], [false; 5]]),
                &device,
            );
            let target = ids(&[&[1, 5, 2, 6, 6, 3], &[1, 3, 3, 4, 9, 10]], &device);
            let full = model.forward(source.clone(), padding.clone(), target.clone());

            let mut state = model.start(source.clone(), padding.clone());
            let steps: Vec<Tensor<3>> = (0..6)
                .map(|t| {
                    model
                        .step(target.clone().narrow(1, t, 1), &mut state)
                        .unsqueeze_dim(1)
                })
                .collect();
            assert_eq!(state.cache.len(), 6);
            assert_close(Tensor::cat(steps, 1), full.clone(), 1e-5);

            let changed = target.slice_assign([0..2, 4..5], ids(&[&[12], &[0]], &device));
            let memory = model.memory(model.encode(source, padding.clone()), padding);
            let after = model.decode(changed, &memory, None);
            assert_close(
                after.clone().narrow(1, 0, 4),
                full.clone().narrow(1, 0, 4),
                1e-5,
            );
            let moved = (after.narrow(1, 4, 1) - full.narrow(1, 4, 1))
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(moved > 1e-4, "position 4 ignores its own token");
        }
    }
}
