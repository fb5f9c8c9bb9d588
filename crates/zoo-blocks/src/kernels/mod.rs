//! Our own operations where Burn's are slow, through Burn's backend-extension mechanism.
//!
//! Each public function here runs our kernel on `flex` (f32) and Burn's ops everywhere else, and
//! has a test of parity with Burn's ops (values and gradients) beside a finite-difference check:
//!
//! - [`matmul_weight`] / [`linear`] / [`affine`]: products handed to gemm with transposed views in
//!   place (Burn zero-fills and then copies every output, and materialises transposes in the
//!   backward), a bias added inside the product and its gradient out of the weight's;
//! - [`attention_packed`] and [`attention`]: attention read straight from the packed QKV
//!   projection (or split heads), causal or bidirectional, with padded keys hidden, in blocks of
//!   query rows that skip a causal mask's hidden half, with dropout of the attention
//!   probabilities whose mask the backward draws again;
//! - [`lstm_sequence`], [`gru_sequence`]: a whole recurrent layer forward and backward through
//!   time;
//! - [`cross_entropy`]: the loss and, in a recorded forward, the logits' gradient in one parallel
//!   pass (Burn composes it from many single-threaded whole-tensor ops);
//! - [`layer_norm`], [`gelu`]: one parallel pass each way (the same);
//! - [`dropout`]: one parallel pass each way, the mask regenerated in the backward from a
//!   counter-based stream (Burn draws it on one thread and stores it);
//! - [`embedding`]: the weight's gradient built straight in an f32 buffer;
//! - [`sum_of_squares`]: a gradient's share of the clipping norm in one read, in a fixed order;
//! - [`adamw`] and [`sgd`]: the optimiser update of one parameter in one pass, over its own
//!   buffer; [`scale`]: a gradient's clipping in place.
//!
//! The files split by role, as Burn's custom-kernel example separates forward and backward:
//!
//! ```text
//! mod.rs        the op trait (ZooOps, with Burn's ops as its defaults) and the public wrappers
//! math.rs       exp_f32 and erf_f32: polynomial forms the compiler can inline and vectorise
//!               (libm's are a call per element)
//! flex/         the flex implementation: mod.rs implements ZooOps on slices; attention.rs,
//!               lstm.rs, gru.rs, layer_norm.rs, rows.rs (element loops), sequence.rs and
//!               strided.rs (gemm on strided views) hold the loops, each compiled for AVX-512,
//!               AVX2 + FMA and NEON beside the baseline and picked at run time
//! autodiff.rs   the backward of each op on the autodiff backend
//! tests.rs      parity and finite-difference tests
//! ```

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::nn::Linear;
use burn::tensor::{Bool, Int, Tensor};

/// The operations the zoo implements itself.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait ZooOps: Backend {
    /// Exact GELU.
    fn zoo_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `grad * GELU'(x)`.
    fn zoo_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, grad)
    }

    /// Inverted dropout: each element of `x` kept with probability `1 - prob` and scaled by
    /// `1 / (1 - prob)`, else zeroed, by a mask that is a function of `seed` and the element's
    /// index alone. Its backward is the same op on the gradient: the mask is drawn again, never
    /// stored.
    fn zoo_dropout(
        x: FloatTensor<Self>,
        // `_prob`, `_seed`: without `flex` the generated dispatch has no backend to pass them to.
        _prob: f32,
        _seed: u64,
    ) -> FloatTensor<Self>;

    /// Attention `dropout(softmax(q kᵀ scale + mask)) v` over `[batch, heads, len, dim]` (keys
    /// and values `[batch, kv_heads, k_len, dim]`), the mask hiding later keys when
    /// `weights.causal` and the keys whose entry in `padding` (`[batch, k_len]`, or no element
    /// at all when no key is padded) is non-zero (see [`AttentionWeights`]); with the attention
    /// probabilities before dropout (`[batch, heads, len, k_len]`) that the backward needs.
    fn zoo_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        // Not an `Option`: this version of the extension macro dispatches those untranslated.
        padding: FloatTensor<Self>,
        // `_weights`: without `flex` the generated dispatch has no backend to pass it to.
        _weights: AttentionWeights,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dq, dk, dv)` of [`zoo_attention`](Self::zoo_attention) given its inputs,
    /// output, probabilities and the output's gradient (padded keys have probability 0: the
    /// padding is not needed again).
    fn zoo_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        _weights: AttentionWeights,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Self-attention straight from a packed QKV projection `[batch, len, (n_heads +
    /// 2 n_kv_heads) head_dim]` (queries, then keys, then values along each row) to
    /// `[batch, len, n_heads head_dim]`, masked as [`zoo_attention`](Self::zoo_attention) masks,
    /// with the attention probabilities before dropout.
    fn zoo_attention_packed(
        qkv: FloatTensor<Self>,
        padding: FloatTensor<Self>,
        _n_heads: usize,
        _n_kv_heads: usize,
        _weights: AttentionWeights,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of [`zoo_attention_packed`](Self::zoo_attention_packed) with respect to the
    /// packed projection.
    #[allow(clippy::too_many_arguments)]
    fn zoo_attention_packed_backward(
        qkv: FloatTensor<Self>,
        out: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        _n_heads: usize,
        _n_kv_heads: usize,
        _weights: AttentionWeights,
    ) -> FloatTensor<Self>;

    /// One AdamW update of a parameter from its gradient and moments (see [`AdamWStep`]): the new
    /// parameter, first moment and second moment.
    fn zoo_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        _step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// One SGD update of a parameter without momentum (see [`sgd`]): the new parameter.
    fn zoo_sgd(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        _lr: f32,
        _weight_decay: f32,
    ) -> FloatTensor<Self>;

    /// A whole LSTM layer over a sequence (see [`lstm_sequence`]): from the gates' input part
    /// `x_proj` (`[batch, len, 4 hidden]`), the recurrent weights (`[hidden, 4 hidden]`) and the
    /// starting state, `y` (`[batch, len + 1, hidden]`: every step's hidden state, then the final
    /// cell state), and the activated gates and cell states the backward needs.
    fn zoo_lstm(
        x_proj: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dx_proj, dweight, dh0, dc0)` of [`zoo_lstm`](Self::zoo_lstm) given its
    /// inputs, outputs and the gradient of `y`.
    #[allow(clippy::too_many_arguments)]
    fn zoo_lstm_backward(
        weight: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        y: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        cells: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// The rows of `weight` (`[vocab, d]`) that `ids` (`[batch, len]`) name, `[batch, len, d]`.
    fn zoo_embedding(weight: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        Self::embedding(weight, ids)
    }

    /// The gradient of [`zoo_embedding`](Self::zoo_embedding)'s `vocab` rows: each row of
    /// `grad` (`[batch, len, d]`) added into the row its id names, every other row zero.
    fn zoo_embedding_backward(
        grad: FloatTensor<Self>,
        ids: IntTensor<Self>,
        _vocab: usize,
    ) -> FloatTensor<Self>;

    /// Mean cross-entropy of `logits` (`[n, classes]`) against class ids `targets` (`[n]`)
    /// smoothed by `smoothing` (see [`cross_entropy`]), shape `[1]`.
    fn zoo_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        _smoothing: f32,
    ) -> FloatTensor<Self>;

    /// [`zoo_cross_entropy`](Self::zoo_cross_entropy) and its gradient with respect to the
    /// logits, `(softmax(logits) − (1 − ε) onehot(targets) − ε / classes) / n` (`ε` the
    /// smoothing), in one pass. A recorded forward given logits nothing else holds computes the
    /// gradient there and then, over their buffer while each row is in cache, and its backward
    /// only scales it (see [`zoo_scale`](Self::zoo_scale)); given logits the caller holds too,
    /// it leaves this to the backward.
    fn zoo_cross_entropy_with_gradient(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        _smoothing: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Whether a kernel given `x` may write over its buffer: nothing else holds it.
    fn zoo_may_overwrite(_x: &FloatTensor<Self>) -> bool {
        false
    }

    /// `x · factor`, `factor` a one-element tensor: a gradient computed ahead for a unit
    /// upstream gradient, scaled by the real one (a no-op on `flex` when that is 1, the usual
    /// case for a loss).
    fn zoo_scale(x: FloatTensor<Self>, factor: FloatTensor<Self>) -> FloatTensor<Self> {
        let rank = burn::backend::TensorMetadata::rank(&x);
        let factor = Self::float_reshape(factor, vec![1; rank].into());
        Self::float_mul(x, factor)
    }

    /// A whole GRU layer over a sequence (see [`gru_sequence`]): from the gates' input part
    /// `x_proj` (`[batch, len, 3 hidden]`), the recurrent weights (`[hidden, 3 hidden]`) and bias
    /// (`[3 hidden]`) and the starting state, every step's hidden state (`[batch, len, hidden]`),
    /// and the gates and candidate recurrent parts the backward needs.
    fn zoo_gru(
        x_proj: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dx_proj, dweight, dbias, dh0)` of [`zoo_gru`](Self::zoo_gru) given its
    /// inputs, outputs and the gradient of its output.
    fn zoo_gru_backward(
        weight: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        y: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        hn: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// `lhs · rhs` for 2-D operands, either of which may be a transposed view.
    fn zoo_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x · weight + bias` for 2-D `x` and `weight` (either may be a transposed view) and a bias
    /// as long as the output's rows, added in the product rather than by a pass after it.
    fn zoo_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The sums of a 2-D tensor's columns (`[rows, cols]` to `[cols]`): a bias's gradient.
    fn zoo_column_sums(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The sum of the squares of all of `x`'s elements, `[1]`, the same to the last bit
    /// however the threads share the work.
    fn zoo_sum_of_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// A linear layer's weight and bias gradients from its input `x` (`[rows, d_in]`) and its
    /// output's gradient `grad` (`[rows, d_out]`): `xᵀ · grad` (`[d_in, d_out]`) and the column
    /// sums of `grad` (`[d_out]`).
    fn zoo_linear_parameter_gradients(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let x_t = Self::float_transpose(x);
        (
            Self::zoo_matmul(x_t, grad.clone()),
            Self::zoo_column_sums(grad),
        )
    }

    /// LayerNorm of the rows of `x` (`[rows, d]`) with gain `gamma` and bias `beta` (`[d]`):
    /// the output, and each row's mean and reciprocal standard deviation (`[rows]`) that the
    /// backward needs.
    fn zoo_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        _epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dx, dgamma, dbeta)` of [`zoo_layer_norm`](Self::zoo_layer_norm) given its
    /// input, gain, row statistics and the output's gradient.
    fn zoo_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Exact GELU, `x Φ(x) = x/2 (1 + erf(x/√2))`; see the module docs.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if runs_on_flex(&x) {
        Tensor::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_gelu(
            x.into_dispatch(),
        ))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// `layer`'s dropout of `x`, as [`burn::nn::Dropout::forward`] (only while training, on an
/// autodiff device), through our kernel on flex: one parallel pass each way, the mask drawn
/// from a counter-based stream seeded from the device's generator (so a run seeded per step
/// draws the same masks), and regenerated in the backward instead of stored. Burn's draws each
/// mask element from one generator on one thread and keeps the mask for the backward.
pub fn dropout<const D: usize>(layer: &burn::nn::Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    if !runs_on_flex_f32(&x) {
        return layer.forward(x);
    }
    let seed = mask_seed(&x.device());
    dropout_with_seed(x, layer.prob as f32, seed)
}

/// The seed of a dropout mask's stream: 90 bits of the device's generator (three draws of 30:
/// integers may be 32-bit), folded into 64.
fn mask_seed(device: &burn::tensor::Device) -> u64 {
    let draws = Tensor::<1, Int>::random(
        [3],
        burn::tensor::Distribution::Uniform(0.0, (1u64 << 30) as f64),
        device,
    )
    .into_data()
    .convert::<i64>()
    .try_into_vec::<i64>()
    .expect("integers read back");
    ((draws[0] as u64) << 34) ^ ((draws[1] as u64) << 17) ^ draws[2] as u64
}

/// Our dropout kernel on flex with the mask stream seeded by `seed`.
fn dropout_with_seed<const D: usize>(x: Tensor<D>, prob: f32, seed: u64) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_dropout(
        x.into_dispatch(),
        prob,
        seed,
    ))
}

/// How the fused attention kernels weigh the values: the scores scaled by `scale`, later keys
/// hidden when `causal`, and the probabilities then dropped out with probability `dropout` (0
/// for none), by the mask that [`ZooOps::zoo_dropout`] draws from `seed` over the `[batch,
/// heads, len, k_len]` probabilities. The backward draws the mask again; only the probabilities
/// before dropout are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionWeights {
    pub scale: f32,
    pub causal: bool,
    pub dropout: f32,
    pub seed: u64,
}

impl AttentionWeights {
    /// Scores scaled by `scale`, masked causally or not, dropped out as `layer` drops (nothing
    /// outside training or off the autodiff device), with a mask seeded from `device`'s
    /// generator as [`dropout`] seeds.
    fn new(
        scale: f32,
        causal: bool,
        layer: &burn::nn::Dropout,
        device: &burn::tensor::Device,
    ) -> Self {
        let drops = layer.training.is_enabled() && device.is_autodiff() && layer.prob > 0.0;
        AttentionWeights {
            scale,
            causal,
            dropout: if drops { layer.prob as f32 } else { 0.0 },
            seed: if drops { mask_seed(device) } else { 0 },
        }
    }
}

/// How attention masks its scores: which keys each query sees.
#[derive(Clone, Debug)]
pub struct AttentionMask {
    /// Query `t` of `len` sees only keys `0..=t + k_len - len` (a decoder's self-attention).
    pub causal: bool,
    /// `[batch, k_len]`, true where a key is padding, hidden from every query.
    pub padding: Option<Tensor<2, Bool>>,
}

impl AttentionMask {
    /// The padding as our kernels take it: 1.0 where a key is hidden, else 0.0; no element
    /// when there is no padding.
    fn padding(&self, device: &burn::tensor::Device) -> FloatTensor<burn::backend::Dispatch> {
        match &self.padding {
            Some(padding) => padding.clone().float().into_dispatch(),
            None => Tensor::<1>::zeros([0], device).into_dispatch(),
        }
    }
}

/// Attention of `q` (`[batch, heads, len, head_dim]`) over `k` and `v` (`[batch, kv_heads,
/// k_len, head_dim]`, `kv_heads` dividing `heads`), masked as `mask` says, scores scaled by
/// `scale` and the attention probabilities dropped out as `dropout` drops, through our fused
/// kernel with its own backward: masks, repeated key/value heads and probabilities are never
/// built as tensors. `None` when the kernel does not serve the device (or a length is 0);
/// callers then compose Burn's ops.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f32,
    dropout: &burn::nn::Dropout,
) -> Option<Tensor<4>> {
    if !runs_on_flex_f32(&q) || q.dims()[2] == 0 || k.dims()[2] == 0 {
        return None;
    }
    let weights = AttentionWeights::new(scale, mask.causal, dropout, &q.device());
    Some(fused_attention(q, k, v, mask, weights))
}

fn fused_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    weights: AttentionWeights,
) -> Tensor<4> {
    let padding = mask.padding(&q.device());
    let (out, _probs) = <burn::backend::Dispatch as ZooOps>::zoo_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        padding,
        weights,
    );
    Tensor::from_dispatch(out)
}

/// Self-attention straight from a packed QKV projection (`[batch, len, (n_heads +
/// 2 n_kv_heads) head_dim]`: queries, keys, values along each row) to `[batch, len, n_heads
/// head_dim]`, masked as `mask` says, scores scaled by `scale` and the probabilities dropped
/// out as `dropout` drops, through our fused kernel: no splitting, transposing or repeating of
/// heads either way. `None` when the kernel does not serve the device.
pub fn attention_packed(
    qkv: Tensor<3>,
    n_heads: usize,
    n_kv_heads: usize,
    mask: &AttentionMask,
    scale: f32,
    dropout: &burn::nn::Dropout,
) -> Option<Tensor<3>> {
    if !runs_on_flex_f32(&qkv) || qkv.dims()[1] == 0 {
        return None;
    }
    let weights = AttentionWeights::new(scale, mask.causal, dropout, &qkv.device());
    Some(fused_attention_packed(
        qkv, n_heads, n_kv_heads, mask, weights,
    ))
}

fn fused_attention_packed(
    qkv: Tensor<3>,
    n_heads: usize,
    n_kv_heads: usize,
    mask: &AttentionMask,
    weights: AttentionWeights,
) -> Tensor<3> {
    let padding = mask.padding(&qkv.device());
    let (out, _probs) = <burn::backend::Dispatch as ZooOps>::zoo_attention_packed(
        qkv.into_dispatch(),
        padding,
        n_heads,
        n_kv_heads,
        weights,
    );
    Tensor::from_dispatch(out)
}

/// The scalars of one AdamW update at step `time` (from 1), as PyTorch applies it:
/// `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
/// `p ← p (1 − lr λ) − lr m̂ / (√v̂ + ε)` with `m̂ = m / (1 − β₁ᵗ)` and `v̂ = v / (1 − β₂ᵗ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub time: i32,
}

impl AdamWStep {
    /// `(p, m, v)` after the update of one element.
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    #[inline(always)]
    fn apply(&self, p: f32, g: f32, m: f32, v: f32, [bias_1, bias_2]: [f32; 2]) -> [f32; 3] {
        let m = self.beta_1 * m + (1.0 - self.beta_1) * g;
        let v = self.beta_2 * v + (1.0 - self.beta_2) * g * g;
        let delta = (m / bias_1) / ((v / bias_2).sqrt() + self.epsilon);
        [
            p * (1.0 - self.lr * self.weight_decay) - self.lr * delta,
            m,
            v,
        ]
    }

    /// The bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    fn bias_corrections(&self) -> [f32; 2] {
        [
            1.0 - self.beta_1.powi(self.time),
            1.0 - self.beta_2.powi(self.time),
        ]
    }
}

/// `Σ x²` over every element of `x`, `[1]`, on `x`'s device: a gradient's share of a global
/// norm. On flex one parallel pass that reads `x` once, its chunks' sums added in a fixed order
/// (Burn's `square().sum()` writes the squares out first, and its whole-tensor sum is split
/// between threads as they come free, which changes its last bits from run to run, and so a
/// resumed run's clipping). Elsewhere each row is summed first, which keeps the sum in one
/// order there too.
pub fn sum_of_squares<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    if runs_on_flex_f32(&x) {
        return Tensor::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_sum_of_squares(
            x.into_dispatch(),
        ));
    }
    let squares = x.square();
    if D >= 2 {
        squares.sum_dim(D - 1).sum()
    } else {
        squares.sum()
    }
}

/// One AdamW update (see [`AdamWStep`]) of `param` given its gradient and moments: the new
/// parameter, first and second moments. On `flex` one parallel pass over the four tensors
/// (Burn's AdamW makes a dozen whole-tensor passes on one thread); elsewhere Burn's ops.
pub fn adamw<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    if runs_on_flex_f32(&param) {
        let (p, m, v) = <burn::backend::Dispatch as ZooOps>::zoo_adamw(
            param.into_dispatch(),
            grad.into_dispatch(),
            moment_1.into_dispatch(),
            moment_2.into_dispatch(),
            step,
        );
        return (
            Tensor::from_dispatch(p),
            Tensor::from_dispatch(m),
            Tensor::from_dispatch(v),
        );
    }
    let [bias_1, bias_2] = step.bias_corrections();
    let moment_1 = moment_1 * step.beta_1 + grad.clone() * (1.0 - step.beta_1);
    let moment_2 = moment_2 * step.beta_2 + grad.square() * (1.0 - step.beta_2);
    let delta = (moment_1.clone() / bias_1) / ((moment_2.clone() / bias_2).sqrt() + step.epsilon);
    let param = param * (1.0 - step.lr * step.weight_decay) - delta * step.lr;
    (param, moment_1, moment_2)
}

/// One SGD update without momentum of `param` given its gradient, as Burn's `Sgd` makes it:
/// `param - lr (grad + weight_decay param)`. On `flex` one parallel pass, over the parameter's
/// own buffer when nothing else holds it (Burn's makes two or three whole-tensor passes on one
/// thread); elsewhere Burn's ops.
pub fn sgd<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    lr: f32,
    weight_decay: f32,
) -> Tensor<D> {
    if runs_on_flex_f32(&param) {
        return Tensor::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_sgd(
            param.into_dispatch(),
            grad.into_dispatch(),
            lr,
            weight_decay,
        ));
    }
    let grad = match weight_decay {
        0.0 => grad,
        decay => grad + param.clone() * decay,
    };
    param - grad * lr
}

/// `x · factor`, `factor` a one-element tensor on the device (a clipping factor, read there
/// without a round trip to the host). On `flex` one parallel pass over `x`'s own buffer when
/// nothing else holds it, and none at all when `factor` is 1.
pub fn scale<const D: usize>(x: Tensor<D>, factor: Tensor<1>) -> Tensor<D> {
    if runs_on_flex_f32(&x) {
        return Tensor::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_scale(
            x.into_dispatch(),
            factor.into_dispatch(),
        ));
    }
    x * factor.reshape([1; D])
}

/// The rows of `weight` (`[vocab, d]`) that `ids` (`[batch, len]`) name, as
/// `burn::tensor::module::embedding`. On flex the weight's gradient is built straight in an f32
/// buffer: Burn's zero-fills a byte buffer and then copies it to align it, a pass as large as
/// the embedding (26 MB a step for a 650-wide model of a 10,000-word vocabulary).
pub fn embedding(weight: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
    if !runs_on_flex_f32(&weight) {
        return burn::tensor::module::embedding(weight, ids);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_embedding(
        weight.into_dispatch(),
        ids.into_dispatch(),
    ))
}

/// Mean cross-entropy of `logits` (`[n, classes]`) against `targets` (`[n]`) smoothed by
/// `smoothing` (`ε`): each row's loss is `(1 − ε) (lse − x_target) + ε (lse − mean(x))`, the
/// cross-entropy against `1 − ε` on the target and `ε` spread over every class, as PyTorch's
/// `label_smoothing`. On `flex` one parallel pass over the logits for the loss and its gradient
/// (Burn's composed log-softmax makes several, one thread each, and at a 10,000-word vocabulary
/// they cost more than the model). Elsewhere the inputs come back as the error, for the
/// caller's own loss.
///
/// Pass logits nothing else holds: a recorded forward then writes the gradient over them in the
/// same pass as the loss. Logits the caller keeps are left alone, and their gradient waits for
/// the backward (a buffer as large as a language model's `[tokens, vocabulary]` otherwise).
pub fn cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    smoothing: f32,
) -> Result<Tensor<1>, Box<(Tensor<2>, Tensor<1, Int>)>> {
    if !runs_on_flex_f32(&logits) {
        return Err(Box::new((logits, targets)));
    }
    let loss = <burn::backend::Dispatch as ZooOps>::zoo_cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
        smoothing,
    );
    Ok(Tensor::from_dispatch(loss))
}

/// A whole GRU layer over a sequence, on our fused kernel: `x_proj` (`[batch, len,
/// 3 hidden]`) is the gates' input part for every step (input projection and input bias,
/// PyTorch's gate order `r, z, n`), `weight` (`[hidden, 3 hidden]`) and `bias` (`[3 hidden]`) the
/// recurrent weights and bias, `h0` the starting state. Returns every step's hidden state
/// (`[batch, len, hidden]`) and the final one, differentiable. `None` when the kernel does not
/// serve the device (or `len` is 0); callers then step through Burn's ops.
pub fn gru_sequence(
    x_proj: Tensor<3>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    h0: Tensor<2>,
) -> Option<(Tensor<3>, Tensor<2>)> {
    let [batch, len, _] = x_proj.dims();
    let hidden = weight.dims()[0];
    if !runs_on_flex_f32(&x_proj) || len == 0 {
        return None;
    }
    let (y, _gates, _hn) = <burn::backend::Dispatch as ZooOps>::zoo_gru(
        x_proj.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        h0.into_dispatch(),
    );
    let out = Tensor::<3>::from_dispatch(y);
    let last = out.clone().narrow(1, len - 1, 1).reshape([batch, hidden]);
    Some((out, last))
}

/// A whole LSTM layer over a sequence, on our fused kernel: `x_proj` (`[batch, len,
/// 4 hidden]`) is the gates' input part for every step (input projection and bias, PyTorch's gate
/// order `i, f, g, o`), `weight` (`[hidden, 4 hidden]`) the recurrent weights, `(h0, c0)` the
/// starting state. Returns every step's hidden state (`[batch, len, hidden]`) and the final
/// hidden and cell states, all differentiable. `None` when the kernel does not serve the device
/// (or `len` is 0); callers then step through Burn's ops.
pub fn lstm_sequence(
    x_proj: Tensor<3>,
    weight: Tensor<2>,
    h0: Tensor<2>,
    c0: Tensor<2>,
) -> Option<(Tensor<3>, Tensor<2>, Tensor<2>)> {
    let [batch, len, _] = x_proj.dims();
    let hidden = weight.dims()[0];
    if !runs_on_flex_f32(&x_proj) || len == 0 {
        return None;
    }
    let (y, _gates, _cells) = <burn::backend::Dispatch as ZooOps>::zoo_lstm(
        x_proj.into_dispatch(),
        weight.into_dispatch(),
        h0.into_dispatch(),
        c0.into_dispatch(),
    );
    // One output carries the outputs and the final cell state, so one node takes every gradient.
    let y = Tensor::<3>::from_dispatch(y);
    let out = y.clone().narrow(1, 0, len);
    let last = |slot: usize| y.clone().narrow(1, slot, 1).reshape([batch, hidden]);
    Some((out, last(len - 1), last(len)))
}

/// `x · weight` over the last dimension of `x` (`[..., d_in]` by `[d_in, d_out]`): the leading
/// dimensions fold into the rows of one matrix product. On `flex` it runs through our own matmul,
/// which hands transposed views straight to gemm (Burn's copies them, zero-fills and then copies
/// every output, and computes a batched weight gradient that it then reduces).
pub fn matmul_weight<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    if !runs_on_flex_f32(&x) {
        return x.matmul(weight.unsqueeze());
    }
    over_rows(x, weight, |x, weight| {
        <burn::backend::Dispatch as ZooOps>::zoo_matmul(x, weight)
    })
}

/// A [`Linear`] layer's forward through [`affine`] (Burn's own elsewhere).
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if !runs_on_flex_f32(&x) {
        return layer.forward(x);
    }
    affine(
        x,
        layer.weight.val(),
        layer.bias.as_ref().map(|bias| bias.val()),
    )
}

/// `x · weight + bias` over the last dimension of `x`: on `flex`, [`matmul_weight`] with the
/// bias added inside the product (the output starts as the bias's rows, so no pass over the
/// output after it) and the bias's gradient summed in parallel.
pub fn affine<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let Some(bias) = bias else {
        return matmul_weight(x, weight);
    };
    if !runs_on_flex_f32(&x) {
        return x.matmul(weight.unsqueeze()) + bias.unsqueeze();
    }
    let bias = bias.into_dispatch();
    over_rows(x, weight, |x, weight| {
        <burn::backend::Dispatch as ZooOps>::zoo_linear(x, weight, bias)
    })
}

type DispatchFloat = FloatTensor<burn::backend::Dispatch>;

/// `product(x, weight)` with the leading dimensions of `x` folded into the rows of one 2-D
/// product and unfolded from its output.
fn over_rows<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    product: impl FnOnce(DispatchFloat, DispatchFloat) -> DispatchFloat,
) -> Tensor<D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, dims[D - 1]]);
    let mut out_dims = dims;
    out_dims[D - 1] = weight.dims()[1];
    let out = Tensor::<2>::from_dispatch(product(x.into_dispatch(), weight.into_dispatch()));
    out.reshape(out_dims)
}

/// LayerNorm over the last dimension, `(x - mean) / sqrt(var + epsilon) * gamma + beta`. On
/// `flex` one fused pass per row each way (Burn composes it from a dozen whole-tensor ops and
/// their backwards); elsewhere Burn's `layer_norm`.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    if !runs_on_flex_f32(&x) {
        return burn::tensor::module::layer_norm(x, gamma, beta, epsilon);
    }
    let dims = x.dims();
    let d = dims[D - 1];
    let x = x.reshape([dims[..D - 1].iter().product::<usize>(), d]);
    // Without a bias the kernel adds zeros, a constant nothing differentiates.
    let beta = beta.unwrap_or_else(|| Tensor::zeros([d], &gamma.device()));
    let (out, _mean, _rstd) = <burn::backend::Dispatch as ZooOps>::zoo_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon as f32,
    );
    Tensor::<2>::from_dispatch(out).reshape(dims)
}

/// Whether `x` is an f32 tensor on `flex`, the case the matmul and LayerNorm kernels serve.
pub(crate) fn runs_on_flex_f32<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == burn::tensor::DType::F32 && runs_on_flex(x)
}

#[cfg(feature = "flex")]
fn runs_on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    let device = x.device();
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

#[cfg(not(feature = "flex"))]
fn runs_on_flex<const D: usize>(_: &Tensor<D>) -> bool {
    false
}

/// Marks a function (inside the `flex` kernels) to be compiled per instruction set and dispatched at run time.
#[cfg(feature = "flex")]
macro_rules! vectorised {
    ($(#[$meta:meta])* pub fn $($rest:tt)*) => {
        $(#[$meta])*
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma",
            "x86_64+avx2+fma",
            "aarch64+neon",
        ))]
        pub fn $($rest)*
    };
}

mod math;
pub use math::{erf_f32, exp_f32};

mod autodiff;
#[cfg(feature = "flex")]
mod flex;
#[cfg(test)]
mod tests;
