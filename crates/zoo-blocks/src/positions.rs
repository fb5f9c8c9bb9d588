//! Position information: learned and sinusoidal absolute embeddings (added to the token
//! embeddings), rotary embeddings (RoPE, applied to queries and keys), ALiBi (a per-head linear
//! bias on attention scores) and T5's relative position bias (a learned per-head bias for each
//! bucket of query-key distance).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// How a model encodes token positions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PositionKind {
    /// A learned vector per position (GPT-2, BERT).
    #[default]
    Learned,
    /// Fixed sines and cosines of geometrically spaced frequencies (the original transformer).
    Sinusoidal,
    /// Rotary embeddings: queries and keys rotated by position-dependent angles (RoFormer).
    Rope,
    /// Attention with linear biases: no embedding, a per-head penalty on distance (Press et al.).
    Alibi,
}

impl PositionKind {
    /// Whether this scheme adds a vector to the token embeddings.
    pub fn is_absolute(self) -> bool {
        matches!(self, PositionKind::Learned | PositionKind::Sinusoidal)
    }
}

/// Absolute position embeddings, added to the token embeddings.
#[derive(Module, Debug)]
pub enum AbsolutePositions {
    /// One learned vector per position.
    Learned(Embedding),
    /// A fixed `[max_len, d_model]` table.
    Sinusoidal(Tensor<2>),
}

impl AbsolutePositions {
    /// Builds the embeddings for `kind`; `None` for schemes that work inside attention.
    pub fn new(
        kind: PositionKind,
        max_len: usize,
        d_model: usize,
        device: &Device,
    ) -> Option<Self> {
        match kind {
            PositionKind::Learned => Some(AbsolutePositions::Learned(
                EmbeddingConfig::new(max_len, d_model)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    })
                    .init(device),
            )),
            PositionKind::Sinusoidal => Some(AbsolutePositions::Sinusoidal(sinusoidal_table(
                max_len, d_model, device,
            ))),
            PositionKind::Rope | PositionKind::Alibi => None,
        }
    }

    /// The embeddings of positions `start..start + len`, shaped `[1, len, d_model]`.
    pub fn forward(&self, start: usize, len: usize) -> Tensor<3> {
        match self {
            AbsolutePositions::Learned(embedding) => {
                let device = embedding.weight.device();
                let positions =
                    Tensor::<1, Int>::arange(start as i64..(start + len) as i64, &device);
                embedding.forward(positions.unsqueeze())
            }
            AbsolutePositions::Sinusoidal(table) => table.clone().narrow(0, start, len).unsqueeze(),
        }
    }

    /// The longest sequence these embeddings cover.
    pub fn max_len(&self) -> usize {
        match self {
            AbsolutePositions::Learned(embedding) => embedding.weight.dims()[0],
            AbsolutePositions::Sinusoidal(table) => table.dims()[0],
        }
    }
}

/// `table[p, 2i] = sin(p / 10000^(2i/d))`, `table[p, 2i+1] = cos(p / 10000^(2i/d))`.
pub fn sinusoidal_table(max_len: usize, d_model: usize, device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; max_len * d_model];
    for p in 0..max_len {
        for i in (0..d_model).step_by(2) {
            let angle = p as f64 / 10000f64.powf(i as f64 / d_model as f64);
            values[p * d_model + i] = angle.sin() as f32;
            if i + 1 < d_model {
                values[p * d_model + i + 1] = angle.cos() as f32;
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [max_len, d_model]), device)
}

/// Rotary position embeddings in the "rotate half" layout (GPT-NeoX, LLaMA): the head dimension
/// is split in two halves that form the real and imaginary parts of `head_dim / 2` rotations.
#[derive(Module, Debug)]
pub struct Rotary {
    /// `[max_len, head_dim]`: the cosine of each pair's angle, repeated for both halves.
    cos: Tensor<2>,
    /// `[max_len, head_dim]`: the sine, negated on the first half so one multiply-add rotates.
    sin: Tensor<2>,
}

impl Rotary {
    /// Tables for positions `0..max_len` with the usual base of 10000.
    pub fn new(max_len: usize, head_dim: usize, device: &Device) -> Self {
        assert!(
            head_dim.is_multiple_of(2),
            "RoPE needs an even head dimension, got {head_dim}"
        );
        let half = head_dim / 2;
        let mut cos = vec![0.0f32; max_len * head_dim];
        let mut sin = vec![0.0f32; max_len * head_dim];
        for p in 0..max_len {
            for i in 0..half {
                let angle = p as f64 / 10000f64.powf(2.0 * i as f64 / head_dim as f64);
                let (s, c) = angle.sin_cos();
                cos[p * head_dim + i] = c as f32;
                cos[p * head_dim + half + i] = c as f32;
                sin[p * head_dim + i] = -s as f32;
                sin[p * head_dim + half + i] = s as f32;
            }
        }
        let shape = [max_len, head_dim];
        Rotary {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `x` (`[batch, heads, len, head_dim]`) as if its first token sat at `start`.
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let [_, _, len, head_dim] = x.dims();
        let half = head_dim / 2;
        let cos = self.cos.clone().narrow(0, start, len).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, start, len).unsqueeze::<4>();
        // (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin); the sign lives in the sine table.
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        x * cos + swapped * sin
    }

    /// The longest sequence the tables cover.
    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// ALiBi's head slopes: a geometric sequence starting at `2^(-8/n)` for `n` a power of two, and
/// for other `n` the power-of-two sequence below it interleaved with the next one up, as in the
/// paper's reference code.
pub fn alibi_slopes(n_heads: usize) -> Vec<f32> {
    fn power_of_two(n: usize) -> Vec<f32> {
        let start = 2f64.powf(-8.0 / n as f64);
        (0..n).map(|i| start.powi(i as i32 + 1) as f32).collect()
    }
    if n_heads.is_power_of_two() {
        return power_of_two(n_heads);
    }
    let lower = 1 << (usize::BITS - 1 - n_heads.leading_zeros());
    let mut slopes = power_of_two(lower);
    slopes.extend(
        power_of_two(2 * lower)
            .into_iter()
            .step_by(2)
            .take(n_heads - lower),
    );
    slopes
}

/// ALiBi's additive score bias `[1, heads, q_len, k_len]` for queries at positions
/// `k_len - q_len ..k_len`: `-slope * |query position - key position|`, zero on the diagonal.
/// Symmetric, so an encoder's attention to later keys is penalised by distance too; in a
/// decoder the causal mask removes those keys anyway.
pub fn alibi_bias(slopes: &[f32], q_len: usize, k_len: usize, device: &Device) -> Tensor<4> {
    let offset = k_len - q_len;
    let mut values = Vec::with_capacity(slopes.len() * q_len * k_len);
    for slope in slopes {
        for i in 0..q_len {
            for j in 0..k_len {
                values.push(-slope * (i + offset).abs_diff(j) as f32);
            }
        }
    }
    Tensor::from_data(
        TensorData::new(values, [1, slopes.len(), q_len, k_len]),
        device,
    )
}

/// T5's relative position bias: a learned scalar per head for each bucket of `key position -
/// query position`, added to the attention scores. Distances below `num_buckets / 4` (per
/// direction when bidirectional) get a bucket each; larger ones share logarithmically wider
/// buckets up to `max_distance`, beyond which all fall in the last.
#[derive(Module, Debug)]
pub struct RelativePositionBias {
    /// `[num_buckets, n_heads]`.
    pub table: Embedding,
    num_buckets: usize,
    max_distance: usize,
    bidirectional: bool,
}

impl RelativePositionBias {
    /// A bias for `n_heads` heads (T5: 32 buckets, maximum distance 128; bidirectional in the
    /// encoder, not in the decoder).
    pub fn new(
        n_heads: usize,
        num_buckets: usize,
        max_distance: usize,
        bidirectional: bool,
        device: &Device,
    ) -> Self {
        Self {
            table: EmbeddingConfig::new(num_buckets, n_heads)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            num_buckets,
            max_distance,
            bidirectional,
        }
    }

    /// The bucket of `relative` = key position - query position (T5's
    /// `_relative_position_bucket`).
    pub fn bucket(&self, relative: i64) -> usize {
        relative_bucket(
            relative,
            self.num_buckets,
            self.max_distance,
            self.bidirectional,
        )
    }

    /// The bias `[1, n_heads, q_len, k_len]` for queries at positions `k_len - q_len..k_len`
    /// (a decoder continuing its cache) over keys `0..k_len`.
    pub fn forward(&self, q_len: usize, k_len: usize) -> Tensor<4> {
        let offset = (k_len - q_len) as i64;
        let buckets: Vec<i64> = (0..q_len as i64)
            .flat_map(|i| (0..k_len as i64).map(move |j| j - (i + offset)))
            .map(|relative| self.bucket(relative) as i64)
            .collect();
        let device = self.table.weight.device();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(buckets, [q_len, k_len]), &device);
        // [q, k, heads] -> [1, heads, q, k]
        self.table.forward(ids).permute([2, 0, 1]).unsqueeze_dim(0)
    }
}

/// T5's bucketing of a relative position (see [`RelativePositionBias`]).
pub fn relative_bucket(
    relative: i64,
    num_buckets: usize,
    max_distance: usize,
    bidirectional: bool,
) -> usize {
    let (mut buckets, mut base) = (num_buckets, 0);
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            base = buckets;
        }
        relative.unsigned_abs() as usize
    } else {
        // Only keys at or before the query count; later ones share bucket 0.
        (-relative).max(0) as usize
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return base + distance;
    }
    let log_ratio =
        (distance as f64 / max_exact as f64).ln() / (max_distance as f64 / max_exact as f64).ln();
    let large = max_exact + (log_ratio * (buckets - max_exact) as f64) as usize;
    base + large.min(buckets - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_device, to_vec};
    use burn::tensor::Distribution;

    #[test]
    fn sinusoidal_table_matches_the_formula() {
        let table = to_vec(sinusoidal_table(8, 4, &test_device()));
        let p = 5.0f64;
        assert!((table[5 * 4] as f64 - p.sin()).abs() < 1e-6);
        assert!((table[5 * 4 + 1] as f64 - p.cos()).abs() < 1e-6);
        assert!((table[5 * 4 + 2] as f64 - (p / 100.0).sin()).abs() < 1e-6);
    }

    #[test]
    fn rope_preserves_norms_and_makes_scores_depend_on_distance_only() {
        let device = test_device();
        let rope = Rotary::new(32, 8, &device);
        let q = Tensor::<4>::random([1, 1, 1, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([1, 1, 1, 8], Distribution::Normal(0.0, 1.0), &device);
        let norm = |t: Tensor<4>| t.square().sum().into_scalar::<f32>();
        assert!((norm(rope.apply(q.clone(), 9)) - norm(q.clone())).abs() < 1e-4);
        let score = |i: usize, j: usize| {
            (rope.apply(q.clone(), i) * rope.apply(k.clone(), j))
                .sum()
                .into_scalar::<f32>()
        };
        assert!((score(3, 1) - score(12, 10)).abs() < 1e-4);
        assert!((score(3, 1) - score(3, 2)).abs() > 1e-4);
    }

    #[test]
    fn rope_at_position_zero_is_the_identity() {
        let device = test_device();
        let rope = Rotary::new(4, 6, &device);
        let x = Tensor::<4>::random([2, 3, 1, 6], Distribution::Normal(0.0, 1.0), &device);
        assert_close(rope.apply(x.clone(), 0), x, 1e-6);
    }

    #[test]
    fn alibi_slopes_follow_the_paper() {
        assert_eq!(
            alibi_slopes(8),
            (1..=8).map(|i| 0.5f32.powi(i)).collect::<Vec<_>>()
        );
        let six = alibi_slopes(6);
        assert_eq!(six.len(), 6);
        assert_eq!(&six[..4], &alibi_slopes(4)[..]);
        assert_eq!(six[4], alibi_slopes(8)[0]);
        assert_eq!(six[5], alibi_slopes(8)[2]);
    }

    /// T5's buckets (32, max distance 128): exact below 8 per direction, logarithmic to 128,
    /// later keys offset by 16 when bidirectional; the causal version folds later keys into 0.
    #[test]
    fn relative_buckets_follow_t5() {
        let bidirectional = |r| relative_bucket(r, 32, 128, true);
        let cases = [
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-16, 10),
            (-127, 15),
            (-500, 15),
            (1, 17),
            (16, 26),
            (500, 31),
        ];
        for (relative, bucket) in cases {
            assert_eq!(bidirectional(relative), bucket, "relative {relative}");
        }
        let causal = |r| relative_bucket(r, 32, 128, false);
        assert_eq!(
            [causal(3), causal(0), causal(-3), causal(-15)],
            [0, 0, 3, 15]
        );
        assert_eq!([causal(-16), causal(-1000)], [16, 31]);
    }

    #[test]
    fn relative_bias_looks_up_each_pairs_bucket_per_head() {
        let device = test_device();
        let bias = RelativePositionBias::new(3, 32, 128, true, &device);
        let out = bias.forward(2, 5);
        assert_eq!(out.dims(), [1, 3, 2, 5]);
        let table = to_vec(bias.table.weight.val());
        let values = to_vec(out);
        // Query 1 (position 4) and key 0: relative -4, bucket 4; head 2.
        let bucket = bias.bucket(-4);
        assert_eq!(values[2 * 10 + 5], table[bucket * 3 + 2]);
    }

    #[test]
    fn alibi_bias_penalises_distance() {
        let bias = to_vec(alibi_bias(&[0.5], 2, 3, &test_device()));
        // Queries at positions 1 and 2 over keys 0..3: symmetric in distance, so an encoder's
        // later keys are penalised as its earlier ones.
        assert_eq!(bias, vec![-0.5, 0.0, -0.5, -1.0, -0.5, 0.0]);
    }
}
