//! The autodiff side of [`ZooOps`](super::ZooOps): for each op a backward step that calls the
//! op's `_backward` kernel on the inner backend, so our kernels train as Burn's ops do.

use super::{AdamWStep, AttentionWeights, ZooOps};
use burn::backend::Backend;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, binary, unary};
use burn_autodiff::{Autodiff, NodeId};

#[derive(Debug)]
struct ZooGelu;

impl<B: Backend + ZooOps> Backward<B, 1> for ZooGelu {
    type State = NodeId;

    fn backward(self, ops: Ops<NodeId, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let input = checkpointer.retrieve_node_output(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::zoo_gelu_backward(input, grad)
        });
    }
}

#[derive(Debug)]
struct ZooDropout;

impl<B: Backend + ZooOps> Backward<B, 1> for ZooDropout {
    /// The probability and the seed: the backward draws the same mask again.
    type State = (f32, u64);

    fn backward(self, ops: Ops<(f32, u64), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (prob, seed) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::zoo_dropout(grad, prob, seed)
        });
    }
}

#[derive(Debug)]
struct ZooAttention;

type AttentionState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    AttentionWeights,
);

impl<B: Backend + ZooOps> Backward<B, 3> for ZooAttention {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, out, probs, weights) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = B::zoo_attention_backward(q, k, v, out, probs, grad, weights);
        for (parent, gradient) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

#[derive(Debug)]
struct ZooPackedAttention;

/// Packed projection, output, probabilities, query heads, key/value heads, weighting.
type PackedAttentionState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    usize,
    usize,
    AttentionWeights,
);

impl<B: Backend + ZooOps> Backward<B, 1> for ZooPackedAttention {
    type State = PackedAttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, out, probs, n_heads, n_kv_heads, weights) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::zoo_attention_packed_backward(qkv, out, probs, grad, n_heads, n_kv_heads, weights)
        });
    }
}

#[derive(Debug)]
struct ZooEmbedding;

impl<B: Backend + ZooOps> Backward<B, 1> for ZooEmbedding {
    /// The ids looked up and the vocabulary's size.
    type State = (IntTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (ids, vocab) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::zoo_embedding_backward(grad, ids, vocab)
        });
    }
}

#[derive(Debug)]
struct ZooCrossEntropy;

/// What the cross-entropy's backward starts from.
#[derive(Clone, Debug)]
enum CrossEntropyState<B: Backend> {
    /// The logits' gradient for a unit upstream gradient, computed by the forward over the
    /// logits' own buffer.
    Gradient(FloatTensor<B>),
    /// The logits, targets and smoothing, when the caller also held the logits: the gradient
    /// would have needed a buffer of its own in the forward, so it waits for the backward, by
    /// when the caller has usually let them go.
    Logits(FloatTensor<B>, IntTensor<B>, f32),
}

impl<B: Backend + ZooOps> Backward<B, 1> for ZooCrossEntropy {
    type State = CrossEntropyState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gradient = match ops.state {
            CrossEntropyState::Gradient(gradient) => gradient,
            CrossEntropyState::Logits(logits, targets, smoothing) => {
                B::zoo_cross_entropy_with_gradient(logits, targets, smoothing).1
            }
        };
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::zoo_scale(gradient, grad)
        });
    }
}

#[derive(Debug)]
struct ZooGru;

/// Recurrent weights, starting state, output, gates and candidate recurrent parts.
type GruState<B> = [FloatTensor<B>; 5];

impl<B: Backend + ZooOps> Backward<B, 4> for ZooGru {
    type State = GruState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [weight, h0, y, gates, hn] = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dw, db, dh0) = B::zoo_gru_backward(weight, h0, y, gates, hn, grad);
        for (parent, gradient) in ops.parents.into_iter().zip([dx, dw, db, dh0]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

#[derive(Debug)]
struct ZooLstm;

/// Recurrent weights, starting hidden and cell states, output, gates and cells.
type LstmState<B> = [FloatTensor<B>; 6];

impl<B: Backend + ZooOps> Backward<B, 4> for ZooLstm {
    type State = LstmState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [weight, h0, c0, y, gates, cells] = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dw, dh0, dc0) = B::zoo_lstm_backward(weight, h0, c0, y, gates, cells, grad);
        for (parent, gradient) in ops.parents.into_iter().zip([dx, dw, dh0, dc0]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

#[derive(Debug)]
struct ZooMatmul;

impl<B: Backend + ZooOps> Backward<B, 2> for ZooMatmul {
    /// The left operand when the right one needs its gradient, and the other way round.
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs) = ops.state;
        let lhs = lhs.map(|lhs| checkpointer.retrieve_node_output(lhs));
        let rhs = rhs.map(|rhs| checkpointer.retrieve_node_output(rhs));
        // Transposes are views on flex: gemm reads them in place.
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| B::zoo_matmul(grad, B::float_transpose(rhs.unwrap())),
            |grad| B::zoo_matmul(B::float_transpose(lhs.unwrap()), grad),
        );
    }
}

#[derive(Debug)]
struct ZooLinear;

impl<B: Backend + ZooOps> Backward<B, 3> for ZooLinear {
    /// As for [`ZooMatmul`]: the input when the weight needs its gradient, and the other way
    /// round. The bias's gradient needs neither.
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (x, weight) = ops.state;
        let x = x.map(|x| checkpointer.retrieve_node_output(x));
        let weight = weight.map(|weight| checkpointer.retrieve_node_output(weight));
        let grad = grads.consume::<B>(&ops.node);
        let [x_node, weight_node, bias_node] = ops.parents;
        if let (Some(weight_node), Some(bias_node)) = (&weight_node, &bias_node) {
            let x = x.expect("kept for the weight's gradient");
            let (dweight, dbias) = B::zoo_linear_parameter_gradients(x, grad.clone());
            grads.register::<B>(weight_node.id, dweight);
            grads.register::<B>(bias_node.id, dbias);
        } else if let Some(node) = bias_node {
            grads.register::<B>(node.id, B::zoo_column_sums(grad.clone()));
        } else if let Some(node) = weight_node {
            let x_t = B::float_transpose(x.expect("kept for the weight's gradient"));
            grads.register::<B>(node.id, B::zoo_matmul(x_t, grad.clone()));
        }
        if let Some(node) = x_node {
            let w_t = B::float_transpose(weight.expect("kept for the input's gradient"));
            grads.register::<B>(node.id, B::zoo_matmul(grad, w_t));
        }
    }
}

#[derive(Debug)]
struct ZooLayerNorm;

/// Input, gain, row means and row reciprocal standard deviations.
type LayerNormState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

impl<B: Backend + ZooOps> Backward<B, 3> for ZooLayerNorm {
    type State = LayerNormState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, mean, rstd) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dgamma, dbeta) = B::zoo_layer_norm_backward(x, gamma, mean, rstd, grad);
        for (parent, gradient) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

impl<B: Backend + ZooOps, C: CheckpointStrategy> ZooOps for Autodiff<B, C> {
    fn zoo_attention_packed(
        qkv: FloatTensor<Self>,
        padding: FloatTensor<Self>,
        n_heads: usize,
        n_kv_heads: usize,
        weights: AttentionWeights,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let packed = qkv.primitive().clone();
        // The padding is a constant, and the backward does not need it (hidden keys have
        // probability 0).
        let padding = padding.primitive().clone();
        let (out, probs) =
            B::zoo_attention_packed(packed.clone(), padding, n_heads, n_kv_heads, weights);
        // The probabilities leave as a constant: nothing differentiates through them.
        let probs_leaf = FloatTensor::<Self>::new(probs.clone());
        let out = match ZooPackedAttention
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (packed, out.clone(), probs, n_heads, n_kv_heads, weights);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, probs_leaf)
    }

    fn zoo_attention_packed_backward(
        _qkv: FloatTensor<Self>,
        _out: FloatTensor<Self>,
        _probs: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _n_heads: usize,
        _n_kv_heads: usize,
        _weights: AttentionWeights,
    ) -> FloatTensor<Self> {
        panic!(
            "zoo's attention has no second-order gradient; its backward runs on the inner backend"
        )
    }

    fn zoo_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // An optimizer update is never differentiated: it runs on the inner tensors.
        let (p, m, v) = B::zoo_adamw(
            param.into_primitive(),
            grad.into_primitive(),
            moment_1.into_primitive(),
            moment_2.into_primitive(),
            step,
        );
        (
            FloatTensor::<Self>::new(p),
            FloatTensor::<Self>::new(m),
            FloatTensor::<Self>::new(v),
        )
    }

    fn zoo_sgd(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        lr: f32,
        weight_decay: f32,
    ) -> FloatTensor<Self> {
        // As for AdamW: runs on the inner tensors.
        let (param, grad) = (param.into_primitive(), grad.into_primitive());
        FloatTensor::<Self>::new(B::zoo_sgd(param, grad, lr, weight_decay))
    }

    fn zoo_sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // A gradient's share of a norm for clipping: never differentiated.
        FloatTensor::<Self>::new(B::zoo_sum_of_squares(x.into_primitive()))
    }

    fn zoo_embedding(weight: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        let vocab = burn::backend::TensorMetadata::shape(weight.primitive())[0];
        match ZooEmbedding
            .prepare::<C>([weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::zoo_embedding(weight.into_primitive(), ids.clone());
                prep.finish((ids, vocab), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::zoo_embedding(weight.into_primitive(), ids)),
        }
    }

    fn zoo_embedding_backward(
        _grad: FloatTensor<Self>,
        _ids: IntTensor<Self>,
        _vocab: usize,
    ) -> FloatTensor<Self> {
        panic!(
            "zoo's embedding has no second-order gradient; its backward runs on the inner backend"
        )
    }

    fn zoo_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        smoothing: f32,
    ) -> FloatTensor<Self> {
        match ZooCrossEntropy
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            // The logits are moved into the kernel, not cloned: held by nothing else, their
            // buffer becomes the gradient.
            OpsKind::Tracked(prep) => {
                let logits = logits.into_primitive();
                if B::zoo_may_overwrite(&logits) {
                    let (loss, gradient) =
                        B::zoo_cross_entropy_with_gradient(logits, targets, smoothing);
                    prep.finish(CrossEntropyState::Gradient(gradient), loss)
                } else {
                    let loss = B::zoo_cross_entropy(logits.clone(), targets.clone(), smoothing);
                    prep.finish(CrossEntropyState::Logits(logits, targets, smoothing), loss)
                }
            }
            OpsKind::UnTracked(prep) => prep.finish(B::zoo_cross_entropy(
                logits.into_primitive(),
                targets,
                smoothing,
            )),
        }
    }

    fn zoo_cross_entropy_with_gradient(
        _logits: FloatTensor<Self>,
        _targets: IntTensor<Self>,
        _smoothing: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        panic!(
            "zoo's cross-entropy has no second-order gradient; its backward runs on the inner backend"
        )
    }

    fn zoo_gru(
        x_proj: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [x, w, b, h0p] = [&x_proj, &weight, &bias, &h0].map(|t| t.primitive().clone());
        let (y, gates, hn) = B::zoo_gru(x, w.clone(), b, h0p.clone());
        // Gates and candidate parts leave as constants: nothing differentiates through them.
        let saved = (
            FloatTensor::<Self>::new(gates.clone()),
            FloatTensor::<Self>::new(hn.clone()),
        );
        let y = match ZooGru
            .prepare::<C>([x_proj.node(), weight.node(), bias.node(), h0.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish([w, h0p, y.clone(), gates, hn], y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, saved.0, saved.1)
    }

    fn zoo_gru_backward(
        _weight: FloatTensor<Self>,
        _h0: FloatTensor<Self>,
        _y: FloatTensor<Self>,
        _gates: FloatTensor<Self>,
        _hn: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        panic!("zoo's GRU has no second-order gradient; its backward runs on the inner backend")
    }

    fn zoo_lstm(
        x_proj: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let inputs = [&x_proj, &weight, &h0, &c0].map(|t| t.primitive().clone());
        let [x, w, h0p, c0p] = inputs;
        let (y, gates, cells) = B::zoo_lstm(x, w.clone(), h0p.clone(), c0p.clone());
        // Gates and cells leave as constants: nothing differentiates through them.
        let saved = (
            FloatTensor::<Self>::new(gates.clone()),
            FloatTensor::<Self>::new(cells.clone()),
        );
        let y = match ZooLstm
            .prepare::<C>([x_proj.node(), weight.node(), h0.node(), c0.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish([w, h0p, c0p, y.clone(), gates, cells], y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, saved.0, saved.1)
    }

    fn zoo_lstm_backward(
        _weight: FloatTensor<Self>,
        _h0: FloatTensor<Self>,
        _c0: FloatTensor<Self>,
        _y: FloatTensor<Self>,
        _gates: FloatTensor<Self>,
        _cells: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        panic!("zoo's LSTM has no second-order gradient; its backward runs on the inner backend")
    }

    fn zoo_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match ZooMatmul
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                prep.finish(
                    (lhs_state, rhs_state),
                    B::zoo_matmul(lhs.into_primitive(), rhs.into_primitive()),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::zoo_matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }

    fn zoo_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        match ZooLinear
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = weight_tracked.then(|| prep.checkpoint(&x));
                let weight_state = x_tracked.then(|| prep.checkpoint(&weight));
                let out = B::zoo_linear(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::zoo_linear(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }

    fn zoo_column_sums(_x: FloatTensor<Self>) -> FloatTensor<Self> {
        panic!("zoo's column sums serve a bias's gradient; they run on the inner backend")
    }

    fn zoo_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (xp, gp) = (x.primitive().clone(), gamma.primitive().clone());
        let (out, mean, rstd) =
            B::zoo_layer_norm(xp.clone(), gp.clone(), beta.primitive().clone(), epsilon);
        // The statistics leave as constants: nothing differentiates through them.
        let stats = (
            FloatTensor::<Self>::new(mean.clone()),
            FloatTensor::<Self>::new(rstd.clone()),
        );
        let out = match ZooLayerNorm
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xp, gp, mean, rstd), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, stats.0, stats.1)
    }

    fn zoo_layer_norm_backward(
        _x: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _mean: FloatTensor<Self>,
        _rstd: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        panic!(
            "zoo's LayerNorm has no second-order gradient; its backward runs on the inner backend"
        )
    }

    fn zoo_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ZooGelu.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::zoo_gelu(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::zoo_gelu(x.into_primitive())),
        }
    }

    fn zoo_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        match ZooDropout
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((prob, seed), B::zoo_dropout(x.into_primitive(), prob, seed))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::zoo_dropout(x.into_primitive(), prob, seed)),
        }
    }

    fn zoo_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        padding: FloatTensor<Self>,
        weights: AttentionWeights,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (qp, kp, vp) = (
            q.primitive().clone(),
            k.primitive().clone(),
            v.primitive().clone(),
        );
        // A constant the backward does not need, as for the packed op.
        let padding = padding.primitive().clone();
        let (out, probs) = B::zoo_attention(qp.clone(), kp.clone(), vp.clone(), padding, weights);
        // The probabilities leave as a constant: nothing differentiates through them.
        let probs_leaf = FloatTensor::<Self>::new(probs.clone());
        let out = match ZooAttention
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((qp, kp, vp, out.clone(), probs, weights), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, probs_leaf)
    }

    fn zoo_attention_backward(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _out: FloatTensor<Self>,
        _probs: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _weights: AttentionWeights,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        panic!(
            "zoo's attention has no second-order gradient; its backward runs on the inner backend"
        )
    }
}
