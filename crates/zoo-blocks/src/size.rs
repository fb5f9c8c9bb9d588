//! What a model's shapes cost, the one figure every family reports the same way.

use serde::Serialize;

/// Parameter counts and training compute of a model, from its shapes alone: what every family's
/// config returns from `size()`, and what `zoo info`, budgets and run summaries read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ModelSize {
    /// Every parameter.
    pub total: usize,
    /// Without the token (and learned position) embedding matrices.
    pub non_embedding: usize,
    /// FLOPs to train on one token, forward and backward (6 per weight of every matrix product
    /// the token passes through, plus attention's scores and weighted sums where there are any).
    pub train_flops_per_token: usize,
}
