//! Recording the attention weights a model computes, for looking inside it (`zoo attention`).
//!
//! [`recording`] runs a forward pass with recording on for the calling thread: every
//! [`SelfAttention`](crate::SelfAttention) and [`CrossAttention`](crate::CrossAttention) (and
//! any model code that calls [`record`]) then takes the explicit path, softmax of the scores, and
//! hands its weights over in the order it ran. No model changes its signature, and nothing
//! is kept when recording is off (the default), so training and decoding are as fast as before.

use burn::tensor::Tensor;
use std::cell::RefCell;

/// Which attention a map comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Queries and keys from one sequence (causal or bidirectional).
    SelfAttention,
    /// Queries from a decoder over an encoder's memory.
    Cross,
}

/// One attention layer's weights: `[batch, heads, queries, keys]`, each query's row summing to
/// one over the keys it may see.
#[derive(Clone, Debug)]
pub struct RecordedMap {
    /// Self- or cross-attention.
    pub kind: MapKind,
    /// The weights.
    pub weights: Tensor<4>,
}

thread_local! {
    static RECORDED: RefCell<Option<Vec<RecordedMap>>> = const { RefCell::new(None) };
}

/// Runs `forward` with recording on and returns its result and the maps recorded, in the order
/// the layers ran.
pub fn recording<R>(forward: impl FnOnce() -> R) -> (R, Vec<RecordedMap>) {
    let outer = RECORDED.with(|r| r.borrow_mut().replace(Vec::new()));
    let result = forward();
    let maps = RECORDED.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer));
    (result, maps.unwrap_or_default())
}

/// Whether a forward pass is being recorded on this thread: attention layers then compute
/// their weights explicitly.
pub fn is_recording() -> bool {
    RECORDED.with(|r| r.borrow().is_some())
}

/// Hands `weights` (`[batch, heads, queries, keys]`) to the recording, if there is one.
pub fn record(kind: MapKind, weights: Tensor<4>) {
    RECORDED.with(|r| {
        if let Some(maps) = r.borrow_mut().as_mut() {
            maps.push(RecordedMap { kind, weights });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_device};
    use crate::{CrossAttentionConfig, PositionKind, SelfAttentionConfig};
    use burn::tensor::{Bool, Distribution, TensorData};

    fn random(shape: [usize; 3], device: &burn::tensor::Device) -> Tensor<3> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn host(weights: &Tensor<4>) -> (Vec<f32>, [usize; 4]) {
        let dims = weights.dims();
        (weights.clone().into_data().try_to_vec().unwrap(), dims)
    }

    /// Every row of `weights` sums to one, and `hidden(query, key)` keys get nothing.
    fn check_rows(weights: &Tensor<4>, hidden: impl Fn(usize, usize, usize) -> bool) {
        let (values, [batch, heads, queries, keys]) = host(weights);
        for b in 0..batch {
            for h in 0..heads {
                for q in 0..queries {
                    let row = &values[((b * heads + h) * queries + q) * keys..][..keys];
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "row {b}/{h}/{q} sums to {sum}");
                    for (k, &w) in row.iter().enumerate() {
                        if hidden(b, q, k) {
                            assert_eq!(w, 0.0, "row {b}/{h}/{q} sees key {k}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn causal_maps_are_lower_triangular_rows_of_probabilities() {
        let device = test_device();
        for position in [
            PositionKind::Learned,
            PositionKind::Rope,
            PositionKind::Alibi,
        ] {
            let layer = SelfAttentionConfig {
                position,
                ..SelfAttentionConfig::new(16, 4, 16)
            }
            .init(&device);
            let x = random([2, 7, 16], &device);
            let plain = layer.forward(x.clone(), None, None);
            let (recorded, maps) = recording(|| layer.forward(x, None, None));
            // The explicit path gives what the fused one gives.
            assert_close(recorded, plain, 1e-5);
            assert_eq!(maps.len(), 1);
            assert_eq!(maps[0].kind, MapKind::SelfAttention);
            assert_eq!(maps[0].weights.dims(), [2, 4, 7, 7]);
            check_rows(&maps[0].weights, |_, q, k| k > q);
        }
        assert!(!is_recording(), "recording ends with its forward");
        let layer = SelfAttentionConfig::new(16, 4, 16).init(&device);
        layer.forward(random([1, 3, 16], &device), None, None);
        let ((), maps) = recording(|| ());
        assert!(maps.is_empty(), "nothing is kept outside a recording");
    }

    #[test]
    fn bidirectional_and_cross_maps_give_padding_nothing() {
        let device = test_device();
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![false, false, false, false, false, false, true, true],
                [2, 4],
            ),
            &device,
        );
        let layer = SelfAttentionConfig::bidirectional(16, 4, 16).init(&device);
        let (_, maps) =
            recording(|| layer.forward(random([2, 4, 16], &device), Some(padding.clone()), None));
        check_rows(&maps[0].weights, |b, _, k| b == 1 && k >= 2);
        // Bidirectional: a query sees the keys after it.
        let (values, _) = host(&maps[0].weights);
        assert!(values[1] > 0.0);

        let cross = CrossAttentionConfig::new(16, 2).init(&device);
        let memory = cross.memory(random([2, 4, 16], &device), Some(padding));
        let (_, maps) = recording(|| cross.forward(random([2, 3, 16], &device), &memory));
        assert_eq!(maps[0].kind, MapKind::Cross);
        assert_eq!(maps[0].weights.dims(), [2, 2, 3, 4]);
        check_rows(&maps[0].weights, |b, _, k| b == 1 && k >= 2);
    }
}
