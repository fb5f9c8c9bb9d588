//! Cross-attention: queries from one sequence (a decoder's), keys and values from another (the
//! encoder's output, the "memory"). The memory's keys and values are projected once per source
//! ([`CrossAttention::memory`]) and reused at every decoding step; padded memory positions are
//! never attended to.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::kernels;
use crate::probe::{self, MapKind};

/// Shapes and options of a [`CrossAttention`].
#[derive(Clone, Debug)]
pub struct CrossAttentionConfig {
    /// Width of the queries' stream (and of the output).
    pub d_model: usize,
    /// Width of the memory (0: the same as `d_model`).
    pub d_memory: usize,
    /// Heads.
    pub n_heads: usize,
    /// Whether the projections carry a bias.
    pub bias: bool,
    /// Dropout on the attention weights and on the output projection.
    pub dropout: f64,
    /// Width of each head (0: `d_model / n_heads`; see
    /// [`SelfAttentionConfig`](crate::SelfAttentionConfig)).
    pub head_dim: usize,
    /// Divide the scores by `sqrt(head_dim)`; T5 does not.
    pub scaled: bool,
}

impl CrossAttentionConfig {
    /// Attention of `d_model`-wide queries over a memory as wide, bias on, no dropout.
    pub fn new(d_model: usize, n_heads: usize) -> Self {
        Self {
            d_model,
            d_memory: 0,
            n_heads,
            bias: true,
            dropout: 0.0,
            head_dim: 0,
            scaled: true,
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
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Initialises the layer (N(0, 0.02²) weights). Panics on a config that
    /// [`validate`](Self::validate) rejects.
    pub fn init(&self, device: &Device) -> CrossAttention {
        if let Err(message) = self.validate() {
            panic!("invalid cross-attention config: {message}");
        }
        let d_memory = if self.d_memory == 0 {
            self.d_model
        } else {
            self.d_memory
        };
        let linear = |d_in: usize, d_out: usize| {
            LinearConfig::new(d_in, d_out)
                .with_bias(self.bias)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device)
        };
        let (head_dim, inner) = (self.head_width(), self.n_heads * self.head_width());
        CrossAttention {
            query: linear(self.d_model, inner),
            key_value: linear(d_memory, 2 * inner),
            proj: linear(inner, self.d_model),
            attn_dropout: DropoutConfig::new(self.dropout).init(),
            resid_dropout: DropoutConfig::new(self.dropout).init(),
            n_heads: self.n_heads,
            scale: if self.scaled {
                (head_dim as f64).powf(-0.5)
            } else {
                1.0
            },
        }
    }
}

/// Multi-head cross-attention; see the module docs.
#[derive(Module, Debug)]
pub struct CrossAttention {
    /// Projects the queries.
    pub query: Linear,
    /// Projects the memory to keys and values side by side: `[d_memory, 2 n_heads head_dim]`.
    pub key_value: Linear,
    /// Output projection.
    pub proj: Linear,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_heads: usize,
    /// What the scores are multiplied by: `1 / sqrt(head_dim)`, or 1 (T5).
    scale: f64,
}

/// The memory's keys and values, `[batch, heads, memory_len, head_dim]` each, and which memory
/// positions are padding: computed once per source, used at every step.
#[derive(Clone, Debug)]
pub struct MemoryKeys {
    keys: Tensor<4>,
    values: Tensor<4>,
    padding: Option<Tensor<2, Bool>>,
}

impl MemoryKeys {
    /// Memory positions.
    pub fn len(&self) -> usize {
        self.keys.dims()[2]
    }

    /// True for an empty memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory of the batch rows `rows`, in that order (one source repeated for each of its
    /// beam hypotheses).
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            keys: self.keys.clone().select(0, rows.clone()),
            values: self.values.clone().select(0, rows.clone()),
            padding: self.padding.clone().map(|p| p.select(0, rows)),
        }
    }
}

impl CrossAttention {
    /// Projects `memory` (`[batch, memory_len, d_memory]`) to keys and values; `padding`
    /// (`[batch, memory_len]`) is true at padded positions.
    pub fn memory(&self, memory: Tensor<3>, padding: Option<Tensor<2, Bool>>) -> MemoryKeys {
        let [batch, len, _] = memory.dims();
        let kv = kernels::linear(&self.key_value, memory);
        let inner = kv.dims()[2] / 2;
        let head_dim = inner / self.n_heads;
        let heads = |start: usize| {
            kv.clone()
                .narrow(2, start, inner)
                .reshape([batch, len, self.n_heads, head_dim])
                .swap_dims(1, 2)
        };
        MemoryKeys {
            keys: heads(0),
            values: heads(inner),
            padding,
        }
    }

    /// Attends from `x` (`[batch, len, d_model]`) over `memory`. Each query position is
    /// independent of the others, so decoding one token at a time equals the full forward.
    pub fn forward(&self, x: Tensor<3>, memory: &MemoryKeys) -> Tensor<3> {
        let [batch, len, _] = x.dims();
        let q = kernels::linear(&self.query, x);
        let inner = q.dims()[2];
        let head_dim = inner / self.n_heads;
        let q = q
            .reshape([batch, len, self.n_heads, head_dim])
            .swap_dims(1, 2);
        let (k, v) = (memory.keys.clone(), memory.values.clone());
        let merge = |y: Tensor<4>| y.swap_dims(1, 2).reshape([batch, len, inner]);
        // Our fused kernel, unless a recording wants the attention weights.
        let mask = kernels::AttentionMask {
            causal: false,
            padding: memory.padding.clone(),
        };
        let fused = (!probe::is_recording())
            .then(|| {
                let (q, k, v) = (q.clone(), k.clone(), v.clone());
                kernels::attention(q, k, v, &mask, self.scale as f32, &self.attn_dropout)
            })
            .flatten();
        if let Some(y) = fused {
            return self.project(merge(y));
        }
        let memory_len = memory.len();
        let mask = memory.padding.clone().map(|p| {
            p.reshape([batch, 1, 1, memory_len])
                .expand([batch, self.n_heads, len, memory_len])
        });
        let y = if q.device().is_autodiff() || probe::is_recording() {
            // Training off flex, or a recording: explicit weights so dropout can act on them
            // (and a recording gets them).
            let mut scores = q.matmul(k.swap_dims(2, 3)) * self.scale;
            if let Some(mask) = mask {
                scores = scores.mask_fill(mask, f32::NEG_INFINITY);
            }
            let weights = softmax(scores, 3);
            probe::record(MapKind::Cross, weights.clone());
            crate::kernels::dropout(&self.attn_dropout, weights).matmul(v)
        } else {
            let options = AttentionModuleOptions {
                scale: Some(self.scale),
                softcap: None,
                is_causal: false,
            };
            attention(q, k, v, mask, None, options)
        };
        self.project(merge(y))
    }

    /// The output projection of the heads side by side (`[batch, len, n_heads head_dim]`),
    /// dropped out.
    fn project(&self, y: Tensor<3>) -> Tensor<3> {
        crate::kernels::dropout(&self.resid_dropout, kernels::linear(&self.proj, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, test_device};
    use burn::tensor::{Distribution, TensorData};

    fn layer(device: &Device) -> CrossAttention {
        CrossAttentionConfig {
            d_memory: 12,
            ..CrossAttentionConfig::new(16, 4)
        }
        .init(device)
    }

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// Memory sequence 0 is 3 long (2 padding), sequence 1 is 5: changing padded memory never
    /// changes an output, on the inference and the training path.
    #[test]
    fn padded_memory_never_changes_outputs() {
        for device in [test_device(), test_device().autodiff()] {
            let layer = layer(&device);
            let padding = Tensor::<2, Bool>::from_data(
                TensorData::new(
                    vec![
                        false, false, false, true, true, false, false, false, false, false,
                    ],
                    [2, 5],
                ),
                &device,
            );
            let x = random([2, 4, 16], &device);
            let memory = random([2, 5, 12], &device);
            let y = layer.forward(
                x.clone(),
                &layer.memory(memory.clone(), Some(padding.clone())),
            );
            let noise = random([1, 2, 12], &device) * 5.0;
            let changed = memory.slice_assign([0..1, 3..5, 0..12], noise);
            let y2 = layer.forward(x, &layer.memory(changed, Some(padding)));
            assert_close(y, y2, 1e-5);
        }
    }

    /// The memory's keys and values, computed once, serve one query at a time exactly as the
    /// whole query sequence at once.
    #[test]
    fn step_by_step_decoding_equals_the_full_forward() {
        let device = test_device();
        let layer = layer(&device);
        let x = random([2, 6, 16], &device);
        let memory = layer.memory(random([2, 7, 12], &device), None);
        let full = layer.forward(x.clone(), &memory);
        for t in 0..6 {
            let step = layer.forward(x.clone().narrow(1, t, 1), &memory);
            assert_close(step, full.clone().narrow(1, t, 1), 1e-5);
        }
    }

    /// Attending over the sequence itself, cross-attention is the encoder's self-attention
    /// with the same weights (queries, keys and values side by side in one projection).
    #[test]
    fn attending_to_itself_it_is_bidirectional_self_attention() {
        use crate::attention::SelfAttentionConfig;
        use burn::module::Param;
        let device = test_device();
        let cross = CrossAttentionConfig::new(16, 4).init(&device);
        let mut own = SelfAttentionConfig::bidirectional(16, 4, 8).init(&device);
        let joined = |a: &Linear, b: &Linear| {
            let weight = Tensor::cat(vec![a.weight.val(), b.weight.val()], 1);
            let bias = Tensor::cat(
                vec![
                    a.bias.as_ref().unwrap().val(),
                    b.bias.as_ref().unwrap().val(),
                ],
                0,
            );
            (Param::from_tensor(weight), Some(Param::from_tensor(bias)))
        };
        (own.qkv.weight, own.qkv.bias) = joined(&cross.query, &cross.key_value);
        own.proj = cross.proj.clone();
        let x = random([2, 5, 16], &device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                [[false; 5], [false, false, false, true, true]].concat(),
                [2, 5],
            ),
            &device,
        );
        let by_self = own.forward(x.clone(), Some(padding.clone()), None);
        let by_cross = cross.forward(x.clone(), &cross.memory(x, Some(padding)));
        assert_close(by_self, by_cross, 1e-5);
    }

    #[test]
    fn gradients_match_finite_differences_for_queries_and_memory() {
        let device = test_device().autodiff();
        let layer = CrossAttentionConfig {
            d_memory: 6,
            ..CrossAttentionConfig::new(8, 2)
        }
        .init(&device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false, false, true, false, false, false], [2, 3]),
            &device,
        );
        let weights = random([2, 4, 8], &device);
        let memory = random([2, 3, 6], &device);
        check_gradients(
            [2, 4, 8],
            |x| {
                let keys = layer.memory(memory.clone(), Some(padding.clone()));
                (layer.forward(x, &keys) * weights.clone()).sum()
            },
            &device,
        );
        let x = random([2, 4, 8], &device);
        check_gradients(
            [2, 3, 6],
            |memory| {
                let keys = layer.memory(memory, Some(padding.clone()));
                (layer.forward(x.clone(), &keys) * weights.clone()).sum()
            },
            &device,
        );
    }
}
