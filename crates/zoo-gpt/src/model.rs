//! The decoder-only transformer (GPT), top to bottom: config, block, model, forward, loss,
//! incremental decoding.
//!
//! With the defaults this is GPT-2 / nanoGPT: learned positions, pre-norm LayerNorm, GELU,
//! weight tying, N(0, 0.02) init with residual projections scaled by `1/sqrt(2 n_layer)`.
//! Every choice that later models changed is a config field: RoPE or ALiBi, RMSNorm, post-norm,
//! SwiGLU, grouped-query attention.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use zoo_blocks::ModelSize;
use zoo_blocks::beam::{BeamSearch, StepDecoder, beam_search};
use zoo_blocks::decoding::ids_tensor;
use zoo_blocks::freeze_first;
use zoo_blocks::incremental::{IncrementalLm, last_rows};
use zoo_blocks::loss::cross_entropy;
use zoo_blocks::{
    AbsolutePositions, Activation, AttentionCache, FeedForward, FeedForwardConfig, Norm, NormKind,
    NormPlacement, PositionKind, Sampler, SelfAttention, SelfAttentionConfig, TokenEmbedding,
    TokenEmbeddingConfig,
};

/// Every shape and option of a GPT. Recipes override any field by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GptConfig {
    /// Vocabulary size; 0 means "take it from the tokenizer".
    pub vocab_size: usize,
    /// Longest context the model sees.
    pub block_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of query heads.
    pub n_head: usize,
    /// Number of key/value heads (0 = `n_head`: plain multi-head attention; 1 = multi-query).
    pub n_kv_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Hidden width of the feed-forward block (0 = `4 * n_embd`).
    pub d_ff: usize,
    /// Dropout on embeddings, attention weights and residual branches.
    pub dropout: f64,
    /// Bias in linear layers and LayerNorms.
    pub bias: bool,
    /// Position scheme.
    pub position: PositionKind,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// Pre-norm (GPT-2) or post-norm (original transformer).
    pub norm_placement: NormPlacement,
    /// Feed-forward non-linearity.
    pub activation: Activation,
    /// Share the token embedding with the output head.
    pub tie_weights: bool,
    /// The norms' epsilon (GPT-2's, PyTorch's: 1e-5).
    pub layer_norm_eps: f64,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            block_size: 128,
            n_layer: 4,
            n_head: 4,
            n_kv_head: 0,
            n_embd: 128,
            d_ff: 0,
            dropout: 0.0,
            bias: true,
            position: PositionKind::Learned,
            norm: NormKind::LayerNorm,
            norm_placement: NormPlacement::Pre,
            activation: Activation::Gelu,
            tie_weights: true,
            layer_norm_eps: 1e-5,
        }
    }
}

impl GptConfig {
    /// Key/value heads after resolving the 0 default.
    pub fn kv_heads(&self) -> usize {
        if self.n_kv_head == 0 {
            self.n_head
        } else {
            self.n_kv_head
        }
    }

    /// Feed-forward width after resolving the 0 default.
    pub fn ff_width(&self) -> usize {
        if self.d_ff == 0 {
            4 * self.n_embd
        } else {
            self.d_ff
        }
    }

    fn norm(&self, device: &Device) -> Norm {
        Norm::with_epsilon(
            self.norm,
            self.n_embd,
            self.bias,
            self.layer_norm_eps,
            device,
        )
    }

    fn attention(&self) -> SelfAttentionConfig {
        SelfAttentionConfig {
            d_model: self.n_embd,
            n_heads: self.n_head,
            n_kv_heads: self.kv_heads(),
            bias: self.bias,
            dropout: self.dropout,
            position: self.position,
            max_len: self.block_size,
            proj_init_std: self.residual_init_std(),
            causal: true,
            head_dim: 0,
            scaled: true,
        }
    }

    fn feed_forward(&self) -> FeedForwardConfig {
        FeedForwardConfig {
            d_model: self.n_embd,
            d_ff: self.ff_width(),
            activation: self.activation,
            bias: self.bias,
            dropout: self.dropout,
            out_init_std: self.residual_init_std(),
        }
    }

    /// GPT-2 scales the init of projections into the residual stream by `1/sqrt(2 n_layer)`
    /// so the stream's variance does not grow with depth.
    fn residual_init_std(&self) -> f64 {
        0.02 / (2.0 * self.n_layer as f64).sqrt()
    }

    /// Checks that the shapes fit together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 {
            return Err("vocab_size is 0: set it or let the tokenizer decide".into());
        }
        for (name, value) in [
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        self.attention().validate()
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Result<Gpt, String> {
        self.validate()?;
        Ok(Gpt {
            tokens: TokenEmbeddingConfig {
                vocab_size: self.vocab_size,
                d_model: self.n_embd,
                tie_weights: self.tie_weights,
                head_bias: false,
            }
            .init(device),
            positions: AbsolutePositions::new(self.position, self.block_size, self.n_embd, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            blocks: (0..self.n_layer)
                .map(|_| GptBlock {
                    attention_norm: self.norm(device),
                    attention: self.attention().init(device),
                    ff_norm: self.norm(device),
                    feed_forward: self.feed_forward().init(device),
                    placement: self.norm_placement,
                })
                .collect(),
            final_norm: (self.norm_placement == NormPlacement::Pre).then(|| self.norm(device)),
            block_size: self.block_size,
        })
    }

    /// Parameter counts and compute per token, from the shapes alone.
    pub fn size(&self) -> ModelSize {
        let d = self.n_embd;
        let head_dim = d / self.n_head.max(1);
        let bias = self.bias as usize;
        let norm = if self.norm == NormKind::LayerNorm {
            d * (1 + bias)
        } else {
            d
        };
        let qkv = d * (self.n_head + 2 * self.kv_heads()) * head_dim
            + bias * (self.n_head + 2 * self.kv_heads()) * head_dim;
        let proj = d * d + bias * d;
        let branches = if self.activation.is_gated() { 2 } else { 1 };
        let ff = d * branches * self.ff_width()
            + bias * branches * self.ff_width()
            + self.ff_width() * d
            + bias * d;
        let per_block = 2 * norm + qkv + proj + ff;
        let final_norm = if self.norm_placement == NormPlacement::Pre {
            norm
        } else {
            0
        };
        let token_embedding = self.vocab_size * d;
        let position_embedding = if self.position == PositionKind::Learned {
            self.block_size * d
        } else {
            0
        };
        let head = if self.tie_weights {
            0
        } else {
            d * self.vocab_size
        };
        let non_embedding = self.n_layer * per_block + final_norm + head;
        let total = non_embedding + token_embedding + position_embedding;
        // Parameters that take part in a matmul per token: the blocks and the output head (tied
        // or not); embedding lookups cost no FLOPs.
        let matmul_params = self.n_layer * per_block + d * self.vocab_size;
        // PaLM's estimate (appendix B), as nanoGPT uses it: 6 FLOPs per parameter per token for
        // forward + backward, plus the attention scores and weighted sum, 12 * L * d * T.
        let attention_flops = 12 * self.n_layer * d * self.block_size;
        ModelSize {
            total,
            non_embedding,
            train_flops_per_token: 6 * matmul_params + attention_flops,
        }
    }
}

/// One transformer block: attention then feed-forward, each a residual branch.
#[derive(Module, Debug)]
pub struct GptBlock {
    attention_norm: Norm,
    attention: SelfAttention,
    ff_norm: Norm,
    feed_forward: FeedForward,
    #[module(skip)]
    placement: NormPlacement,
}

impl GptBlock {
    fn forward(&self, x: Tensor<3>, cache: Option<&mut AttentionCache>) -> Tensor<3> {
        match self.placement {
            NormPlacement::Pre => {
                let x = x.clone()
                    + self
                        .attention
                        .forward(self.attention_norm.forward(x), None, cache);
                x.clone() + self.feed_forward.forward(self.ff_norm.forward(x))
            }
            NormPlacement::Post => {
                let x = self
                    .attention_norm
                    .forward(x.clone() + self.attention.forward(x, None, cache));
                self.ff_norm
                    .forward(x.clone() + self.feed_forward.forward(x))
            }
        }
    }
}

/// The GPT language model.
#[derive(Module, Debug)]
pub struct Gpt {
    tokens: TokenEmbedding,
    positions: Option<AbsolutePositions>,
    dropout: Dropout,
    blocks: Vec<GptBlock>,
    final_norm: Option<Norm>,
    block_size: usize,
}

/// Per-layer keys and values for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct GptCache {
    layers: Vec<AttentionCache>,
}

impl GptCache {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, AttentionCache::len)
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `len` tokens of every layer.
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|layer| layer.truncate(len));
    }

    /// The cache of batch rows `rows` (in that order, repeats allowed).
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            layers: self.layers.iter().map(|l| l.select(rows.clone())).collect(),
        }
    }
}

impl Gpt {
    /// This model with the token (and learned position) embeddings, when `embeddings`, and the
    /// first `layers` blocks kept out of training (fine-tuning). A head tied to the token
    /// embedding is that embedding: it is kept too.
    pub fn freeze(mut self, embeddings: bool, layers: usize) -> Self {
        if embeddings {
            self.tokens.weight = self.tokens.weight.set_require_grad(false);
            self.positions = self.positions.map(Module::no_grad);
        }
        self.blocks = freeze_first(self.blocks, layers);
        self
    }

    /// This model with its token embedding (and a head tied to it) in training, whatever froze
    /// it: a fine-tune that adds tokens must learn their rows.
    pub fn with_trainable_embeddings(mut self) -> Self {
        self.tokens.weight = self.tokens.weight.set_require_grad(true);
        self
    }

    /// Logits `[batch, len, vocab]` for token ids `[batch, len]`.
    ///
    /// With a cache, `ids` continue the cached sequence and the cache grows by `len`.
    pub fn forward(&self, ids: Tensor<2, Int>, cache: Option<&mut GptCache>) -> Tensor<3> {
        self.logits(self.hidden(ids, cache))
    }

    /// The next-token logits `[batch, len, vocab]` of the last block's (normed) states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.tokens.logits(hidden)
    }

    /// The last block's states `[batch, len, n_embd]` (after the final norm), what the
    /// logits and a classification head read; with a cache as [`Gpt::forward`].
    pub fn hidden(&self, ids: Tensor<2, Int>, cache: Option<&mut GptCache>) -> Tensor<3> {
        let [_, len] = ids.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        assert!(
            start + len <= self.block_size,
            "sequence of {} tokens exceeds block_size {}",
            start + len,
            self.block_size
        );
        let mut x = self.tokens.forward(ids);
        if let Some(positions) = &self.positions {
            x = x + positions.forward(start, len);
        }
        x = zoo_blocks::kernels::dropout(&self.dropout, x);
        match cache {
            Some(cache) => {
                cache
                    .layers
                    .resize_with(self.blocks.len(), AttentionCache::new);
                for (block, layer_cache) in self.blocks.iter().zip(&mut cache.layers) {
                    x = block.forward(x, Some(layer_cache));
                }
            }
            None => {
                for block in &self.blocks {
                    x = block.forward(x, None);
                }
            }
        }
        if let Some(norm) = &self.final_norm {
            x = norm.forward(x);
        }
        x
    }

    /// This model (of this run's config, so with its dropout) with the weights of
    /// `pretrained`, whose vocabulary may be smaller: the ids added after it keep their fresh
    /// rows.
    pub fn with_weights_of(mut self, mut pretrained: Gpt) -> Result<Self, String> {
        pretrained.tokens = self.tokens.clone().with_rows_of(pretrained.tokens)?;
        self.tokens = pretrained.tokens.clone();
        self.try_load_record(pretrained.into_record())
            .map_err(|e| e.to_string())
    }

    /// Mean next-token cross-entropy of `targets` (`[batch, len]`) given `ids`. The logits go
    /// to the loss alone, which on flex writes their gradient over them.
    pub fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let logits = self.forward(ids, None);
        let [batch, len, vocab] = logits.dims();
        cross_entropy(
            logits.reshape([batch * len, vocab]),
            targets.reshape([batch * len]),
        )
    }

    /// Continues `prompt` by `max_new_tokens` tokens picked by `sampler`, decoding one token at a
    /// time with the KV cache. Past `block_size` tokens the model reads the windows of
    /// [`zoo_blocks::incremental::window_start`].
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: &mut Sampler,
    ) -> Vec<u32> {
        zoo_blocks::generate(self, prompt, max_new_tokens, sampler)
    }

    /// Continues `prompt` by the best continuation beam search finds (up to `search.max_len`
    /// tokens, the end token excluded), prompt and continuation within `block_size`: a prompt
    /// too long for both keeps its end.
    pub fn beam_search(&self, prompt: &[u32], search: &BeamSearch) -> Result<Vec<u32>, String> {
        if search.max_len >= self.block_size {
            return Err(format!(
                "beam search reads the prompt and the {} new tokens at once: they must fit in \
                 the block of {} tokens",
                search.max_len, self.block_size
            ));
        }
        let (last, read) = prompt
            .split_last()
            .ok_or("beam search needs at least one prompt token")?;
        let read = &read[read
            .len()
            .saturating_sub(self.block_size - search.max_len - 1)..];
        let device = self.tokens.weight.device();
        let mut cache = GptCache::default();
        if !read.is_empty() {
            self.hidden(ids_tensor(read, &device), Some(&mut cache));
        }
        let mut found = beam_search(self, cache, &[*last], search, &device);
        Ok(found.remove(0))
    }

    /// The width of its states.
    pub fn width(&self) -> usize {
        self.tokens.weight.dims()[1]
    }

    /// The longest context.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.vocab_size()
    }
}

impl IncrementalLm for Gpt {
    type Cache = GptCache;

    fn empty_cache(&self) -> GptCache {
        GptCache::default()
    }

    fn cached_len(&self, cache: &GptCache) -> usize {
        cache.len()
    }

    fn extend(&self, tokens: &[u32], rows: usize, cache: &mut GptCache) -> Vec<Vec<f32>> {
        let device = self.tokens.weight.device();
        let hidden = self.hidden(ids_tensor(tokens, &device), Some(cache));
        // Only the rows asked for go through the vocabulary projection (a prompt's do not).
        let len = tokens.len();
        last_rows(self.logits(hidden.narrow(1, len - rows, rows)), rows)
    }

    fn truncate(&self, cache: &mut GptCache, len: usize) {
        cache.truncate(len);
    }

    fn context_len(&self) -> Option<usize> {
        Some(self.block_size)
    }
}

impl StepDecoder for Gpt {
    type State = GptCache;

    fn step(&self, previous: Tensor<2, Int>, cache: &mut GptCache) -> Tensor<2> {
        let logits = self.forward(previous, Some(cache));
        let [rows, _, vocab] = logits.dims();
        logits.reshape([rows, vocab])
    }

    fn select(&self, cache: &GptCache, rows: Tensor<1, Int>) -> GptCache {
        cache.select(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};
    use zoo_blocks::SamplingConfig;

    fn device() -> Device {
        let device = Device::flex();
        device.seed(3);
        device
    }

    fn tiny(position: PositionKind) -> GptConfig {
        GptConfig {
            vocab_size: 11,
            block_size: 12,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            position,
            ..GptConfig::default()
        }
    }

    fn ids(batch: usize, len: usize, device: &Device) -> Tensor<2, Int> {
        Tensor::<2>::random([batch, len], Distribution::Uniform(0.0, 11.0), device).int()
    }

    fn max_abs_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn the_size_formula_counts_every_parameter() {
        let device = device();
        for config in [
            tiny(PositionKind::Learned),
            GptConfig {
                tie_weights: false,
                bias: false,
                ..tiny(PositionKind::Rope)
            },
            GptConfig {
                activation: Activation::Swiglu,
                norm: NormKind::RmsNorm,
                n_kv_head: 1,
                ..tiny(PositionKind::Alibi)
            },
            GptConfig {
                norm_placement: NormPlacement::Post,
                ..tiny(PositionKind::Sinusoidal)
            },
        ] {
            let model = config.init(&device).unwrap();
            assert_eq!(config.size().total, model.num_params(), "{config:?}");
        }
    }

    #[test]
    fn logits_never_depend_on_later_tokens() {
        let device = device();
        for position in [
            PositionKind::Learned,
            PositionKind::Sinusoidal,
            PositionKind::Rope,
            PositionKind::Alibi,
        ] {
            let model = tiny(position).init(&device).unwrap();
            let x = ids(1, 10, &device);
            let y = model.forward(x.clone(), None);
            // A token different from the one there.
            let other = (x.clone().narrow(1, 6, 1).into_scalar::<i64>() + 1) % 11;
            let changed = x.slice_assign(
                [0..1, 6..7],
                Tensor::from_data(TensorData::from([[other]]), &device),
            );
            let y2 = model.forward(changed, None);
            assert!(max_abs_diff(y.clone().narrow(1, 0, 6), y2.clone().narrow(1, 0, 6)) < 1e-5);
            assert!(max_abs_diff(y.narrow(1, 6, 1), y2.narrow(1, 6, 1)) > 1e-5);
        }
    }

    #[test]
    fn cached_decoding_equals_the_full_forward() {
        let device = device();
        for placement in [NormPlacement::Pre, NormPlacement::Post] {
            let config = GptConfig {
                norm_placement: placement,
                n_kv_head: 1,
                ..tiny(PositionKind::Rope)
            };
            let model = config.init(&device).unwrap();
            let x = ids(2, 8, &device);
            let full = model.forward(x.clone(), None);
            let mut cache = GptCache::default();
            let mut steps = vec![model.forward(x.clone().narrow(1, 0, 3), Some(&mut cache))];
            for t in 3..8 {
                steps.push(model.forward(x.clone().narrow(1, t, 1), Some(&mut cache)));
            }
            assert!(max_abs_diff(Tensor::cat(steps, 1), full) < 1e-5);
        }
    }

    #[test]
    fn initial_loss_is_near_uniform() {
        let device = device();
        let model = tiny(PositionKind::Learned).init(&device).unwrap();
        let loss = model.loss(ids(4, 12, &device), ids(4, 12, &device));
        let loss = loss.into_scalar::<f32>();
        assert!((loss - (11f32).ln()).abs() < 0.1, "initial loss {loss}");
    }

    #[test]
    fn generation_is_seeded_and_runs_past_the_block_size() {
        let device = device();
        let model = tiny(PositionKind::Learned).init(&device).unwrap();
        let sample = |seed| {
            let mut sampler = Sampler::new(SamplingConfig {
                seed,
                ..SamplingConfig::default()
            });
            model.generate(&[1, 2, 3], 30, &mut sampler)
        };
        let a = sample(1);
        assert_eq!(a.len(), 33);
        assert_eq!(&a[..3], &[1, 2, 3]);
        assert!(a.iter().all(|&t| t < 11));
        assert_eq!(a, sample(1));
        assert_ne!(a, sample(2));
    }

    #[test]
    fn greedy_generation_matches_argmax_of_the_full_forward() {
        let device = device();
        let model = tiny(PositionKind::Alibi).init(&device).unwrap();
        let mut sampler = Sampler::new(SamplingConfig::greedy());
        let out = model.generate(&[4, 5], 6, &mut sampler);
        // Recompute each step without a cache.
        for t in 2..out.len() {
            let prefix = Tensor::<2, Int>::from_data(
                TensorData::new(out[..t].iter().map(|&v| v as i64).collect(), [1, t]),
                &device,
            );
            let logits = model.forward(prefix, None).narrow(1, t - 1, 1);
            let best = logits.argmax(2).into_scalar::<i64>();
            assert_eq!(best as u32, out[t]);
        }
    }
}
