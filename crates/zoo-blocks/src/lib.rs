//! Building blocks every zoo model family shares.
//!
//! Each block is a Burn [`Module`](burn::module::Module) with no backend of its own: it runs on
//! whatever device its parameters were initialised on. The blocks promise properties that the
//! tests in each file check: causality, KV-cache equivalence, gradients that match finite
//! differences, and MQA/GQA reducing to multi-head attention when `n_kv_heads == n_heads`.

pub mod attention;
pub mod beam;
pub mod cross_attention;
pub mod decoding;
pub mod embedding;
pub mod feed_forward;
pub mod hf;
pub mod incremental;
pub mod kernels;
pub mod loss;
pub mod norm;
pub mod positions;
pub mod probe;
pub mod recurrent;
pub mod scalar_mix;
pub mod size;
pub mod speculative;

#[cfg(test)]
pub(crate) mod testing;

pub use attention::{AttentionCache, SelfAttention, SelfAttentionConfig};
pub use cross_attention::{CrossAttention, CrossAttentionConfig, MemoryKeys};
pub use decoding::{Sampler, SamplingConfig};
pub use embedding::{TokenEmbedding, TokenEmbeddingConfig};
pub use feed_forward::{Activation, FeedForward, FeedForwardConfig};
pub use incremental::{IncrementalLm, generate};
pub use norm::{Norm, NormKind, NormPlacement};
pub use positions::{AbsolutePositions, PositionKind, RelativePositionBias, Rotary, alibi_slopes};
pub use recurrent::{CellKind, Recurrent, RecurrentConfig, RecurrentState, Reversal};
pub use scalar_mix::ScalarMix;
pub use size::ModelSize;

/// `layers` with the first `count` kept out of training (their parameters take no gradient).
pub fn freeze_first<M: burn::module::Module>(layers: Vec<M>, count: usize) -> Vec<M> {
    layers
        .into_iter()
        .enumerate()
        .map(|(i, layer)| if i < count { layer.no_grad() } else { layer })
        .collect()
}
