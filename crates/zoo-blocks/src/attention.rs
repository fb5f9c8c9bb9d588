//! Self-attention with a fused QKV projection: causal (decoders) or bidirectional (encoders),
//! padding masks, grouped-query heads (multi-query when `n_kv_heads == 1`) and a KV cache for
//! incremental decoding.
//!
//! Positions that act inside attention live here too: RoPE rotates queries and keys, ALiBi adds
//! a per-head distance penalty to the scores.

use crate::kernels;
use crate::positions::{PositionKind, Rotary, alibi_bias, alibi_slopes};
use crate::probe::{self, MapKind};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// Shapes and options of a [`SelfAttention`].
#[derive(Clone, Debug)]
pub struct SelfAttentionConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads: `n_heads` for multi-head, 1 for multi-query, a divisor of
    /// `n_heads` in between for grouped-query attention.
    pub n_kv_heads: usize,
    /// Whether the projections carry a bias.
    pub bias: bool,
    /// Dropout on the attention weights and on the output projection.
    pub dropout: f64,
    /// Position scheme; only `Rope` and `Alibi` change what attention does.
    pub position: PositionKind,
    /// Longest sequence (RoPE's tables are built this long).
    pub max_len: usize,
    /// Standard deviation of the output projection's initial weights (GPT-2 scales it down by
    /// `sqrt(2 * n_layers)`); the QKV projection uses 0.02.
    pub proj_init_std: f64,
    /// Each position sees only itself and earlier ones (decoders); off, every position sees
    /// the whole sequence (encoders).
    pub causal: bool,
    /// Width of each head (0: `d_model / n_heads`). T5 v1.1 sets it apart from the width:
    /// the heads together are `n_heads * head_dim` wide.
    pub head_dim: usize,
    /// Divide the scores by `sqrt(head_dim)` (the transformer's scaled dot product); T5 does
    /// not (its initialisation accounts for it).
    pub scaled: bool,
}

impl SelfAttentionConfig {
    /// Causal multi-head attention with learned positions, no dropout, bias on, GPT-2's init.
    pub fn new(d_model: usize, n_heads: usize, max_len: usize) -> Self {
        Self {
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            bias: true,
            dropout: 0.0,
            position: PositionKind::Learned,
            max_len,
            proj_init_std: 0.02,
            causal: true,
            head_dim: 0,
            scaled: true,
        }
    }

    /// The same, every position seeing the whole sequence (an encoder's attention).
    pub fn bidirectional(d_model: usize, n_heads: usize, max_len: usize) -> Self {
        Self {
            causal: false,
            ..Self::new(d_model, n_heads, max_len)
        }
    }

    /// Width of each head after resolving the 0 default.
    pub fn head_width(&self) -> usize {
        if self.head_dim == 0 {
            self.d_model / self.n_heads.max(1)
        } else {
            self.head_dim
        }
    }

    /// Checks the head arithmetic; the message names the offending fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_heads == 0 || (self.head_dim == 0 && !self.d_model.is_multiple_of(self.n_heads)) {
            return Err(format!(
                "d_model ({}) must be a positive multiple of n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.position == PositionKind::Rope && !self.head_width().is_multiple_of(2) {
            return Err(format!(
                "RoPE needs an even head dimension, got {}",
                self.head_width()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Initialises the layer. Panics on a config that [`validate`](Self::validate) rejects.
    pub fn init(&self, device: &Device) -> SelfAttention {
        if let Err(message) = self.validate() {
            panic!("invalid attention config: {message}");
        }
        let head_dim = self.head_width();
        let qkv_width = (self.n_heads + 2 * self.n_kv_heads) * head_dim;
        let normal = |std| Initializer::Normal { mean: 0.0, std };
        SelfAttention {
            qkv: LinearConfig::new(self.d_model, qkv_width)
                .with_bias(self.bias)
                .with_initializer(normal(0.02))
                .init(device),
            proj: LinearConfig::new(self.n_heads * head_dim, self.d_model)
                .with_bias(self.bias)
                .with_initializer(normal(self.proj_init_std))
                .init(device),
            attn_dropout: DropoutConfig::new(self.dropout).init(),
            resid_dropout: DropoutConfig::new(self.dropout).init(),
            rotary: (self.position == PositionKind::Rope)
                .then(|| Rotary::new(self.max_len, head_dim, device)),
            alibi: self.position == PositionKind::Alibi,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            causal: self.causal,
            head_dim,
            scale: if self.scaled {
                (head_dim as f64).powf(-0.5)
            } else {
                1.0
            },
        }
    }
}

/// Multi-head self-attention; see the module docs.
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// One projection to queries, keys and values: `[d_model, (n_heads + 2 n_kv_heads) head_dim]`.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    rotary: Option<Rotary>,
    alibi: bool,
    n_heads: usize,
    n_kv_heads: usize,
    causal: bool,
    head_dim: usize,
    /// What the scores are multiplied by: `1 / sqrt(head_dim)`, or 1 (T5).
    scale: f64,
}

/// Keys and values of the tokens seen so far, per layer, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct AttentionCache {
    /// `[batch, n_kv_heads, past, head_dim]`.
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
}

impl AttentionCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens cached.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of the batch rows `rows` (in that order): beam search keeps the rows of the
    /// hypotheses that survive a step.
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            keys: self.keys.clone().map(|k| k.select(0, rows.clone())),
            values: self.values.clone().map(|v| v.select(0, rows)),
        }
    }

    /// Keeps the first `len` tokens: speculative decoding forgets the proposals it refused.
    pub fn truncate(&mut self, len: usize) {
        if len == 0 {
            *self = Self::new();
        } else if len < self.len() {
            self.keys = self.keys.take().map(|k| k.narrow(2, 0, len));
            self.values = self.values.take().map(|v| v.narrow(2, 0, len));
        }
    }

    fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let keys = match self.keys.take() {
            Some(past) => Tensor::cat(vec![past, keys], 2),
            None => keys,
        };
        let values = match self.values.take() {
            Some(past) => Tensor::cat(vec![past, values], 2),
            None => values,
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }
}

impl SelfAttention {
    /// Attends over `x` (`[batch, len, d_model]`).
    ///
    /// `padding` (`[batch, past + len]`, true where a key is padding) hides padded keys.
    /// With a `cache`, `x` continues the cached sequence: its tokens sit at positions
    /// `past..past + len`, and their keys and values are appended to the cache.
    pub fn forward(
        &self,
        x: Tensor<3>,
        padding: Option<Tensor<2, Bool>>,
        cache: Option<&mut AttentionCache>,
    ) -> Tensor<3> {
        self.forward_with_bias(x, padding, cache, None)
    }

    /// [`forward`](Self::forward) with `position_bias` (`[1, n_heads, len, past + len]`) added
    /// to the scores: T5's relative position bias, computed once per stack and shared by its
    /// layers.
    pub fn forward_with_bias(
        &self,
        x: Tensor<3>,
        padding: Option<Tensor<2, Bool>>,
        cache: Option<&mut AttentionCache>,
        position_bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let [batch, len, _] = x.dims();
        let head_dim = self.head_dim;
        let past = cache.as_ref().map_or(0, |c| c.len());

        let qkv = kernels::linear(&self.qkv, x);
        let scale = self.scale;
        // Our fused kernels serve any mask and dropout, but neither a bias on the scores nor a
        // recording of the attention weights.
        let fusable = !self.alibi && position_bias.is_none() && !probe::is_recording();
        let mask = kernels::AttentionMask {
            causal: self.causal,
            padding: padding.clone(),
        };
        // Without a cache or rotation, the fused kernel reads the heads where the projection
        // left them.
        if fusable && self.rotary.is_none() && cache.is_none() {
            let packed = kernels::attention_packed(
                qkv.clone(),
                self.n_heads,
                self.n_kv_heads,
                &mask,
                scale as f32,
                &self.attn_dropout,
            );
            if let Some(y) = packed {
                return self.project(y);
            }
        }
        let heads = |start: usize, count: usize| {
            qkv.clone()
                .narrow(2, start * head_dim, count * head_dim)
                .reshape([batch, len, count, head_dim])
                .swap_dims(1, 2)
        };
        let mut q = heads(0, self.n_heads);
        let mut k = heads(self.n_heads, self.n_kv_heads);
        let v = heads(self.n_heads + self.n_kv_heads, self.n_kv_heads);
        if let Some(rotary) = &self.rotary {
            q = rotary.apply(q, past);
            k = rotary.apply(k, past);
        }
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let total = past + len;
        // The fused kernel on the rotated heads and the cache's keys, which it shares out to
        // the query heads itself.
        let fused = fusable
            .then(|| {
                let (q, k, v) = (q.clone(), k.clone(), v.clone());
                kernels::attention(q, k, v, &mask, scale as f32, &self.attn_dropout)
            })
            .flatten();
        let merge = |y: Tensor<4>| {
            y.swap_dims(1, 2)
                .reshape([batch, len, self.n_heads * head_dim])
        };
        if let Some(y) = fused {
            return self.project(merge(y));
        }
        let k = self.repeat_kv(k);
        let v = self.repeat_kv(v);
        let device = q.device();

        let alibi = self
            .alibi
            .then(|| alibi_bias(&alibi_slopes(self.n_heads), len, total, &device));
        let bias = match (alibi, position_bias) {
            (Some(alibi), Some(given)) => Some(alibi + given),
            (alibi, given) => alibi.or(given),
        }
        .map(|bias| bias.expand([batch, self.n_heads, len, total]));
        let padding = padding.map(|p| {
            p.reshape([batch, 1, 1, total])
                .expand([batch, self.n_heads, len, total])
        });

        let y = if device.is_autodiff() || probe::is_recording() {
            // Training off flex, or a recording: explicit scores so dropout can act on the
            // attention weights (and a recording gets them).
            let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
            if let Some(bias) = bias {
                scores = scores + bias;
            }
            let causal = self.causal.then(|| {
                causal_mask(len, total, &device)
                    .reshape([1, 1, len, total])
                    .expand([batch, self.n_heads, len, total])
            });
            let mask = match (causal, padding) {
                (Some(causal), Some(padding)) => Some(causal.bool_or(padding)),
                (causal, padding) => causal.or(padding),
            };
            if let Some(mask) = mask {
                scores = scores.mask_fill(mask, f32::NEG_INFINITY);
            }
            let weights = softmax(scores, 3);
            probe::record(MapKind::SelfAttention, weights.clone());
            crate::kernels::dropout(&self.attn_dropout, weights).matmul(v)
        } else {
            let options = AttentionModuleOptions {
                scale: Some(scale),
                softcap: None,
                is_causal: self.causal,
            };
            attention(q, k, v, padding, bias, options)
        };

        self.project(merge(y))
    }

    /// The output at the first position alone (`[batch, 1, d_model]`) of bidirectional
    /// attention over `x`: `forward(x, padding, None)` narrowed to position 0, at the cost of
    /// one query instead of `len` (keys and values still come from every token). A classifier
    /// that reads only `[CLS]` needs nothing more from its last layer.
    ///
    /// Where our fused kernel does not serve (causal or ALiBi attention, a recording, other
    /// backends than flex), this is the full forward, narrowed.
    pub fn forward_first(&self, x: Tensor<3>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let [batch, len, d_model] = x.dims();
        let everything = |x: Tensor<3>, padding| self.forward(x, padding, None).narrow(1, 0, 1);
        if self.causal || self.alibi || probe::is_recording() || !kernels::runs_on_flex_f32(&x) {
            return everything(x, padding);
        }
        let head_dim = self.head_dim;
        let (queries, keys) = (self.n_heads * head_dim, self.n_kv_heads * head_dim);
        // The packed projection's columns are queries, keys, values: the first token takes the
        // query columns, every token the key and value columns.
        let weight = self.qkv.weight.val();
        let bias = self.qkv.bias.as_ref().map(|b| b.val());
        let columns = |start: usize, width: usize| {
            (
                weight.clone().narrow(1, start, width),
                bias.clone().map(|b| b.narrow(0, start, width)),
            )
        };
        let (q_weight, q_bias) = columns(0, queries);
        let (kv_weight, kv_bias) = columns(queries, 2 * keys);
        let first = x.clone().narrow(1, 0, 1).reshape([batch, 1, d_model]);
        let mut q = kernels::affine(first, q_weight, q_bias)
            .reshape([batch, 1, self.n_heads, head_dim])
            .swap_dims(1, 2);
        let kv = kernels::affine(x.clone(), kv_weight, kv_bias);
        let heads = |start: usize| {
            kv.clone()
                .narrow(2, start, keys)
                .reshape([batch, len, self.n_kv_heads, head_dim])
                .swap_dims(1, 2)
        };
        let (mut k, v) = (heads(0), heads(keys));
        if let Some(rotary) = &self.rotary {
            q = rotary.apply(q, 0);
            k = rotary.apply(k, 0);
        }
        let mask = kernels::AttentionMask {
            causal: false,
            padding: padding.clone(),
        };
        match kernels::attention(q, k, v, &mask, self.scale as f32, &self.attn_dropout) {
            Some(y) => self.project(y.swap_dims(1, 2).reshape([batch, 1, queries])),
            None => everything(x, padding),
        }
    }

    /// The output projection of the heads side by side (`[batch, len, n_heads head_dim]`),
    /// dropped out.
    fn project(&self, y: Tensor<3>) -> Tensor<3> {
        crate::kernels::dropout(&self.resid_dropout, kernels::linear(&self.proj, y))
    }

    /// Repeats each key/value head for the query heads that share it.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let group = self.n_heads / self.n_kv_heads;
        if group == 1 {
            return x;
        }
        let [batch, kv_heads, len, head_dim] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv_heads, group, len, head_dim])
            .reshape([batch, kv_heads * group, len, head_dim])
    }
}

/// `[q_len, k_len]`, true where query `i` (at position `k_len - q_len + i`) must not see key `j`.
pub fn causal_mask(q_len: usize, k_len: usize, device: &Device) -> Tensor<2, Bool> {
    let offset = k_len - q_len;
    let values: Vec<bool> = (0..q_len)
        .flat_map(|i| (0..k_len).map(move |j| j > i + offset))
        .collect();
    Tensor::from_data(TensorData::new(values, [q_len, k_len]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, test_device, to_vec};
    use burn::tensor::Distribution;

    const SCHEMES: [PositionKind; 4] = [
        PositionKind::Learned,
        PositionKind::Sinusoidal,
        PositionKind::Rope,
        PositionKind::Alibi,
    ];

    fn config(position: PositionKind, n_kv_heads: usize) -> SelfAttentionConfig {
        SelfAttentionConfig {
            n_kv_heads,
            position,
            ..SelfAttentionConfig::new(16, 4, 32)
        }
    }

    fn input(batch: usize, len: usize, device: &Device) -> Tensor<3> {
        Tensor::random([batch, len, 16], Distribution::Normal(0.0, 1.0), device)
    }

    /// Changing the token at `t + 1` must leave outputs at `0..=t` as they were, on the
    /// inference path and on the training path.
    #[test]
    fn outputs_never_depend_on_later_tokens() {
        for device in [test_device(), test_device().autodiff()] {
            for position in SCHEMES {
                let layer = config(position, 2).init(&device);
                let x = input(2, 10, &device);
                let y = layer.forward(x.clone(), None, None);
                for t in 0..9 {
                    let noise = Tensor::random([2, 1, 16], Distribution::Normal(0.0, 5.0), &device);
                    let changed = x.clone().slice_assign([0..2, t + 1..t + 2, 0..16], noise);
                    let y2 = layer.forward(changed, None, None);
                    assert_close(
                        y.clone().narrow(1, 0, t + 1),
                        y2.clone().narrow(1, 0, t + 1),
                        1e-5,
                    );
                    let later = to_vec(y.clone().narrow(1, t + 1, 1) - y2.narrow(1, t + 1, 1));
                    assert!(
                        later.iter().any(|d| d.abs() > 1e-4),
                        "{position:?} ignores t+1"
                    );
                }
            }
        }
    }

    /// A position bias of -1e9 on a key hides it exactly as padding does, on both paths; a
    /// bias that differs by query and head changes the output.
    #[test]
    fn a_position_bias_acts_on_the_scores() {
        for device in [test_device(), test_device().autodiff()] {
            let layer = SelfAttentionConfig::bidirectional(16, 4, 32).init(&device);
            let x = input(2, 5, &device);
            let mut hidden = vec![0.0f32; 4 * 5 * 5];
            for (i, v) in hidden.iter_mut().enumerate() {
                if i % 5 == 3 {
                    *v = -1e9;
                }
            }
            let bias = Tensor::<4>::from_data(TensorData::new(hidden, [1, 4, 5, 5]), &device);
            let padding = Tensor::<2, Bool>::from_data(
                TensorData::from([[false, false, false, true, false]; 2]),
                &device,
            );
            let biased = layer.forward_with_bias(x.clone(), None, None, Some(bias));
            let padded = layer.forward(x.clone(), Some(padding), None);
            assert_close(biased, padded, 1e-5);
            let random = Tensor::<4>::random([1, 4, 5, 5], Distribution::Normal(0.0, 1.0), &device);
            let moved = layer.forward_with_bias(x.clone(), None, None, Some(random));
            let plain = layer.forward(x, None, None);
            assert!(to_vec(moved - plain).iter().any(|d| d.abs() > 1e-4));
        }
    }

    #[test]
    fn cached_decoding_equals_the_full_forward() {
        let device = test_device();
        for position in SCHEMES {
            let layer = config(position, 2).init(&device);
            let x = input(2, 9, &device);
            let full = layer.forward(x.clone(), None, None);
            let mut cache = AttentionCache::new();
            // A prompt of 4 tokens, then one token at a time, then a chunk of 2.
            let mut pieces = vec![layer.forward(x.clone().narrow(1, 0, 4), None, Some(&mut cache))];
            for t in 4..7 {
                pieces.push(layer.forward(x.clone().narrow(1, t, 1), None, Some(&mut cache)));
            }
            pieces.push(layer.forward(x.clone().narrow(1, 7, 2), None, Some(&mut cache)));
            assert_eq!(cache.len(), 9);
            assert_close(Tensor::cat(pieces, 1), full, 1e-5);
        }
    }

    #[test]
    fn a_cache_cut_back_reads_on_as_if_it_had_never_read_further() {
        let device = test_device();
        for position in SCHEMES {
            let layer = config(position, 2).init(&device);
            let x = input(1, 9, &device);
            let full = layer.forward(x.clone(), None, None);
            let mut cache = AttentionCache::new();
            layer.forward(x.clone().narrow(1, 0, 7), None, Some(&mut cache));
            // Forget tokens 5 and 6 (refused proposals), read other ones in their place, forget
            // those too, then read the real ones.
            cache.truncate(5);
            layer.forward(x.clone().narrow(1, 1, 3), None, Some(&mut cache));
            cache.truncate(5);
            assert_eq!(cache.len(), 5);
            let tail = layer.forward(x.clone().narrow(1, 5, 4), None, Some(&mut cache));
            assert_close(tail, full.narrow(1, 5, 4), 1e-5);
            cache.truncate(0);
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn training_and_inference_paths_agree() {
        let device = test_device();
        for position in SCHEMES {
            let layer = config(position, 4).init(&device);
            let x = input(2, 7, &device);
            let inference = layer.forward(x.clone(), None, None);
            let trained = layer.clone().fork(&device.clone().autodiff());
            let training = trained.forward(x.autodiff(), None, None);
            assert_close(training.inner(), inference, 1e-5);
        }
    }

    #[test]
    fn grouped_query_with_all_heads_equals_multi_head() {
        let device = test_device();
        let gqa = config(PositionKind::Rope, 4).init(&device);
        // Build plain multi-head attention from the same weights: with n_kv_heads == n_heads the
        // fused projection's layout [q | k | v] is exactly multi-head attention's.
        let x = input(2, 6, &device);
        let y = gqa.forward(x.clone(), None, None);
        let [_, width] = gqa.qkv.weight.dims();
        assert_eq!(width, 3 * 16);
        let w = gqa.qkv.weight.val();
        let b = gqa.qkv.bias.as_ref().unwrap().val();
        let project = |i: usize| {
            x.clone()
                .matmul(w.clone().narrow(1, 16 * i, 16).unsqueeze())
                + b.clone().narrow(0, 16 * i, 16).unsqueeze()
        };
        let split = |t: Tensor<3>| t.reshape([2, 6, 4, 4]).swap_dims(1, 2);
        let rotary = Rotary::new(32, 4, &device);
        let (q, k, v) = (
            rotary.apply(split(project(0)), 0),
            rotary.apply(split(project(1)), 0),
            split(project(2)),
        );
        let scores = q.matmul(k.swap_dims(2, 3)) * 0.5;
        let mask = causal_mask(6, 6, &device)
            .reshape([1, 1, 6, 6])
            .expand([2, 4, 6, 6]);
        let heads = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3).matmul(v);
        let reference = gqa.proj.forward(heads.swap_dims(1, 2).reshape([2, 6, 16]));
        assert_close(y, reference, 1e-5);
    }

    #[test]
    fn multi_query_shares_one_key_value_head() {
        let device = test_device();
        let mqa = config(PositionKind::Learned, 1).init(&device);
        assert_eq!(mqa.qkv.weight.dims(), [16, 16 + 2 * 4]);
        let y = mqa.forward(input(1, 5, &device), None, None);
        assert_eq!(y.dims(), [1, 5, 16]);
    }

    #[test]
    fn padded_keys_do_not_change_unpadded_outputs() {
        let device = test_device();
        let layer = config(PositionKind::Alibi, 2).init(&device);
        // Sequence 0 is 7 long; sequence 1 has 3 padding tokens at the start (left padding).
        let x = input(2, 7, &device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                [[false; 7], [true, true, true, false, false, false, false]].concat(),
                [2, 7],
            ),
            &device,
        );
        let y = layer.forward(x.clone(), Some(padding.clone()), None);
        let noise = Tensor::random([1, 3, 16], Distribution::Normal(0.0, 5.0), &device);
        let changed = x.slice_assign([1..2, 0..3, 0..16], noise);
        let y2 = layer.forward(changed, Some(padding), None);
        assert_close(y.narrow(1, 3, 4), y2.narrow(1, 3, 4), 1e-5);
    }

    /// An encoder's attention: right padding (as batches of sentences are padded) never changes
    /// the real tokens' outputs, on the inference path and on the training path, for every
    /// position scheme; and, unlike a decoder's, early outputs do depend on later tokens.
    #[test]
    fn bidirectional_attention_sees_everything_but_padding() {
        for device in [test_device(), test_device().autodiff()] {
            for position in SCHEMES {
                let layer = SelfAttentionConfig {
                    causal: false,
                    ..config(position, 2)
                }
                .init(&device);
                // Sequence 0 is 4 tokens and 3 padding; sequence 1 is 7 tokens.
                let x = input(2, 7, &device);
                let padding = Tensor::<2, Bool>::from_data(
                    TensorData::new([&[false; 4][..], &[true; 3], &[false; 7]].concat(), [2, 7]),
                    &device,
                );
                let y = layer.forward(x.clone(), Some(padding.clone()), None);
                let noise = Tensor::random([1, 3, 16], Distribution::Normal(0.0, 5.0), &device);
                let changed = x.clone().slice_assign([0..1, 4..7, 0..16], noise);
                let y2 = layer.forward(changed, Some(padding.clone()), None);
                assert_close(y.clone().narrow(1, 0, 4), y2.narrow(1, 0, 4), 1e-5);
                // The unpadded sequence's first output moves when its last token does.
                let noise = Tensor::random([1, 1, 16], Distribution::Normal(0.0, 5.0), &device);
                let changed = x.slice_assign([1..2, 6..7, 0..16], noise);
                let y3 = layer.forward(changed, Some(padding), None);
                let moved = (y.narrow(0, 1, 1).narrow(1, 0, 1)
                    - y3.narrow(0, 1, 1).narrow(1, 0, 1))
                .abs()
                .max()
                .into_scalar::<f32>();
                assert!(
                    moved > 1e-4,
                    "{position:?}: the first output ignored the last token"
                );
            }
        }
    }

    /// `forward_first` is the full forward at position 0, values and gradients (of the input
    /// and of the packed projection, whose query columns only the first token reaches), for
    /// every position scheme, shared key heads, padding and a causal layer (which falls back).
    #[test]
    fn the_first_position_alone_equals_the_full_forward_there() {
        for device in [test_device(), test_device().autodiff()] {
            for position in SCHEMES {
                for (n_kv_heads, causal) in [(4, false), (1, false), (2, true)] {
                    let layer = SelfAttentionConfig {
                        causal,
                        ..config(position, n_kv_heads)
                    }
                    .init(&device);
                    // Sequence 0 is 5 tokens and 2 padding; sequence 1 is 7 tokens.
                    let padding = Tensor::<2, Bool>::from_data(
                        TensorData::new(
                            [&[false; 5][..], &[true; 2], &[false; 7]].concat(),
                            [2, 7],
                        ),
                        &device,
                    );
                    let weights =
                        Tensor::<3>::random([2, 1, 16], Distribution::Normal(0.0, 1.0), &device);
                    let x = input(2, 7, &device);
                    let x = match device.is_autodiff() {
                        true => x.require_grad(),
                        false => x,
                    };
                    let full = layer
                        .forward(x.clone(), Some(padding.clone()), None)
                        .narrow(1, 0, 1);
                    let first = layer.forward_first(x.clone(), Some(padding));
                    assert_eq!(first.dims(), [2, 1, 16]);
                    assert_close(first.clone(), full.clone(), 1e-5);
                    if !device.is_autodiff() {
                        continue;
                    }
                    let gradients = |y: Tensor<3>| {
                        let grads = (y * weights.clone()).sum().backward();
                        (
                            x.grad(&grads).unwrap(),
                            layer.qkv.weight.grad(&grads).unwrap(),
                        )
                    };
                    let (dx_full, dw_full) = gradients(full);
                    let (dx_first, dw_first) = gradients(first);
                    assert_close(dx_first, dx_full, 1e-5);
                    assert_close(dw_first, dw_full, 1e-5);
                }
            }
        }
    }

    #[test]
    fn bidirectional_attention_gradients_match_finite_differences() {
        let device = test_device().autodiff();
        let layer = SelfAttentionConfig {
            n_kv_heads: 1,
            ..SelfAttentionConfig::bidirectional(8, 2, 8)
        }
        .init(&device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![false, false, false, true, false, false, false, false],
                [2, 4],
            ),
            &device,
        );
        let weights = Tensor::<3>::random([2, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        check_gradients(
            [2, 4, 8],
            |x| (layer.forward(x, Some(padding.clone()), None) * weights.clone()).sum(),
            &device,
        );
    }

    #[test]
    fn attention_gradients_match_finite_differences() {
        let device = test_device().autodiff();
        for position in SCHEMES {
            let layer = SelfAttentionConfig {
                n_kv_heads: 1,
                position,
                ..SelfAttentionConfig::new(8, 2, 8)
            }
            .init(&device);
            let weights = Tensor::<3>::random([2, 4, 8], Distribution::Normal(0.0, 1.0), &device);
            check_gradients(
                [2, 4, 8],
                |x| (layer.forward(x, None, None) * weights.clone()).sum(),
                &device,
            );
        }
    }
}
