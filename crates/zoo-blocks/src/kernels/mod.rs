//! Our own operations where Burn's are slow, through Burn's backend-extension mechanism.
//!
//! Each public function here runs our kernel on `flex` (f32) and Burn's ops everywhere else, and
//! has a test of parity with Burn's ops (values and gradients) beside a finite-difference check:
//!
//! - [`matmul_weight`] / [`linear`]: products handed to gemm with transposed views in place (Burn
//!   zero-fills and then copies every output, and materialises transposes in the backward);
//! - [`causal_attention_packed`] and [`causal_attention`]: attention read straight from the
//!   packed QKV projection, in blocks of query rows that skip the masked half (`attention.rs`);
//! - [`lstm_sequence`], [`gru_sequence`]: a whole recurrent layer forward and backward through
//!   time (`lstm.rs`, `gru.rs`);
//! - [`cross_entropy`], [`layer_norm`], [`gelu`]: one parallel pass each way (Burn composes them
//!   from many single-threaded whole-tensor ops);
//! - [`adamw`]: the optimiser update of one parameter in one pass.
//!
//! Their element loops (`rows.rs`, and the recurrent gate loops) are compiled for AVX-512, AVX2 + FMA
//! and NEON beside the baseline and picked at run time; `exp_f32` and `erf_f32` are polynomial
//! forms the compiler can inline and vectorise (libm's are a call per element).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::nn::Linear;
use burn::tensor::{Int, Tensor};

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

    /// Causal attention `softmax(q kᵀ scale + causal mask) v` over `[batch, heads, len, dim]`,
    /// with the attention probabilities (`[batch, heads, len, len]`) that the backward needs.
    fn zoo_causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        // `_scale`: without `flex` the generated dispatch has no backend to pass it to.
        _scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dq, dk, dv)` of [`zoo_causal_attention`](Self::zoo_causal_attention) given
    /// its inputs, output, probabilities and the output's gradient.
    fn zoo_causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        _scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Causal attention straight from a packed QKV projection `[batch, len, (n_heads +
    /// 2 n_kv_heads) head_dim]` (queries, then keys, then values along each row) to
    /// `[batch, len, n_heads head_dim]`, with the attention probabilities.
    fn zoo_causal_attention_packed(
        qkv: FloatTensor<Self>,
        _n_heads: usize,
        _n_kv_heads: usize,
        _scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of [`zoo_causal_attention_packed`](Self::zoo_causal_attention_packed) with
    /// respect to the packed projection.
    #[allow(clippy::too_many_arguments)]
    fn zoo_causal_attention_packed_backward(
        qkv: FloatTensor<Self>,
        out: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        _n_heads: usize,
        _n_kv_heads: usize,
        _scale: f32,
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

    /// Mean cross-entropy of `logits` (`[n, classes]`) against class ids `targets` (`[n]`),
    /// shape `[1]`, and each row's log-sum-exp (`[n]`) for the backward.
    fn zoo_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of [`zoo_cross_entropy`](Self::zoo_cross_entropy) with respect to the
    /// logits: `(softmax(logits) − onehot(targets)) · grad / n`.
    fn zoo_cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        log_sum_exp: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

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

/// Causal attention of `q`, `k`, `v` (`[batch, heads, len, head_dim]`, keys and values as many
/// heads as queries), scores scaled by `scale`, through our fused kernel with its own backward.
/// `None` when the kernel does not serve the device; callers then compose Burn's ops.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Option<Tensor<4>> {
    if !runs_on_flex(&q) {
        return None;
    }
    let (out, _probs) = <burn::backend::Dispatch as ZooOps>::zoo_causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
    );
    Some(Tensor::from_dispatch(out))
}

/// Causal self-attention straight from a packed QKV projection (`[batch, len, (n_heads +
/// 2 n_kv_heads) head_dim]`: queries, keys, values along each row) to `[batch, len, n_heads
/// head_dim]`, scores scaled by `scale`, through our fused kernel: no splitting, transposing or
/// repeating of heads either way. `None` when the kernel does not serve the device.
pub fn causal_attention_packed(
    qkv: Tensor<3>,
    n_heads: usize,
    n_kv_heads: usize,
    scale: f32,
) -> Option<Tensor<3>> {
    if !runs_on_flex_f32(&qkv) {
        return None;
    }
    let (out, _probs) = <burn::backend::Dispatch as ZooOps>::zoo_causal_attention_packed(
        qkv.into_dispatch(),
        n_heads,
        n_kv_heads,
        scale,
    );
    Some(Tensor::from_dispatch(out))
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

/// Mean cross-entropy of `logits` (`[n, classes]`) against `targets` (`[n]`). On `flex` one
/// parallel pass over the logits each way (Burn's composed log-softmax makes several, one thread
/// each, and at a 10,000-word vocabulary they cost more than the model); elsewhere `None`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Option<Tensor<1>> {
    if !runs_on_flex_f32(&logits) {
        return None;
    }
    let (loss, _lse) = <burn::backend::Dispatch as ZooOps>::zoo_cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
    );
    Some(Tensor::from_dispatch(loss))
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
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, dims[D - 1]]);
    let out = Tensor::<2>::from_dispatch(<burn::backend::Dispatch as ZooOps>::zoo_matmul(
        x.into_dispatch(),
        weight.clone().into_dispatch(),
    ));
    let mut out_dims = dims;
    out_dims[D - 1] = weight.dims()[1];
    out.reshape(out_dims)
}

/// A [`Linear`] layer's forward through [`matmul_weight`].
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if !runs_on_flex_f32(&x) {
        return layer.forward(x);
    }
    let out = matmul_weight(x, layer.weight.val());
    match &layer.bias {
        Some(bias) => out + bias.val().unsqueeze(),
        None => out,
    }
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
fn runs_on_flex_f32<const D: usize>(x: &Tensor<D>) -> bool {
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

/// e^x for f32 in plain arithmetic the compiler can inline and vectorise (libm's `expf` is a
/// call per element): Cephes' `expf`, `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6
/// polynomial for `e^r`, and `2^n` built from exponent bits; within 2 ulp. Inputs are clamped to
/// `[-87.3, 88.7]`, so the result never overflows and at worst underflows to about 1e-38, not 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n ln 2 is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer in plain arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.376_26);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n: n + 127 lands in the low mantissa bits of (n + 127 + ROUND); integer arithmetic moves
    // it into the exponent (a float-to-int cast would be a saturating conversion per element).
    let biased = (n + (127.0 + ROUND)).to_bits() - ROUND.to_bits();
    e_r * f32::from_bits(biased << 23)
}

/// erf(x) for f32 as a ratio of an odd and an even polynomial on [-4, 4] (beyond it erf is ±1
/// in f32); the approximation Eigen and XLA use, accurate to a few ulp. Plain `*` and `+`, not
/// `mul_add`: without the `fma` target feature `mul_add` is a libm call and nothing vectorises.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
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

#[cfg(feature = "flex")]
mod attention;
#[cfg(feature = "flex")]
mod gru;
#[cfg(feature = "flex")]
mod lstm;
#[cfg(feature = "flex")]
mod rows;
#[cfg(feature = "flex")]
mod sequence;
#[cfg(feature = "flex")]
mod strided;

/// LayerNorm one row at a time, on plain slices.
#[cfg(feature = "flex")]
mod layer_norm_rows {
    vectorised! {
        /// Normalises `x` into `y`; returns the row's mean and reciprocal standard deviation.
        pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], eps: f32) -> (f32, f32) {
            let n = x.len() as f32;
            let mean = x.iter().sum::<f32>() / n;
            let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let rstd = 1.0 / (var + eps).sqrt();
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                *y = (x - mean) * rstd * g + b;
            }
            (mean, rstd)
        }
    }

    vectorised! {
        /// With `x̂ = (x - mean) rstd` and `g = dy ∘ gamma`:
        /// `dx = rstd (g - mean(g) - x̂ mean(g ∘ x̂))`; adds the row's `dy ∘ x̂` and `dy` to
        /// `dgamma` and `dbeta`. `stats` is the row's `(mean, rstd)`.
        #[allow(clippy::too_many_arguments)]
        pub fn backward(
            x: &[f32],
            gamma: &[f32],
            stats: (f32, f32),
            dy: &[f32],
            dx: &mut [f32],
            dgamma: &mut [f32],
            dbeta: &mut [f32],
        ) {
            let (mean, rstd) = stats;
            let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
            for i in 0..x.len() {
                let x_hat = (x[i] - mean) * rstd;
                let g = dy[i] * gamma[i];
                sum_g += g;
                sum_gx += g * x_hat;
                dgamma[i] += dy[i] * x_hat;
                dbeta[i] += dy[i];
            }
            let n = x.len() as f32;
            let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
            for i in 0..x.len() {
                let x_hat = (x[i] - mean) * rstd;
                dx[i] = rstd * (dy[i] * gamma[i] - mean_g - x_hat * mean_gx);
            }
        }
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::{AdamWStep, ZooOps, attention, gru, layer_norm_rows, lstm, rows, sequence};
    use burn::backend::DType;
    use burn::backend::ops::{ActivationOps, FloatTensorOps};
    use burn_flex::{Flex, FlexTensor, Layout};
    use rayon::prelude::*;

    const CHUNK: usize = 1 << 14;
    /// `t` laid out contiguously (a cheap clone when it already is).
    fn contiguous(t: &FlexTensor) -> FlexTensor {
        if t.is_contiguous() {
            t.clone()
        } else {
            t.to_contiguous()
        }
    }

    /// `t` as a contiguous f32 tensor; `None` for other dtypes.
    fn contiguous_f32(t: &FlexTensor) -> Option<FlexTensor> {
        (t.dtype() == DType::F32).then(|| contiguous(t))
    }

    /// A contiguous f32 tensor of `shape` holding `values`.
    fn from_f32(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
        FlexTensor::new(
            burn::tensor::Bytes::from_elems(values),
            Layout::contiguous(shape),
            DType::F32,
        )
    }

    impl ZooOps for Flex {
        fn zoo_gelu(x: FlexTensor) -> FlexTensor {
            let Some(x) = contiguous_f32(&x) else {
                return Flex::gelu(x);
            };
            let input = x.as_slice::<f32>().expect("contiguous");
            let mut out = vec![0.0f32; input.len()];
            out.par_chunks_mut(CHUNK)
                .zip(input.par_chunks(CHUNK))
                .for_each(|(o, i)| rows::gelu(o, i));
            from_f32(out, x.layout().shape().clone())
        }

        fn zoo_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
            let (Some(x), Some(grad)) = (contiguous_f32(&x), contiguous_f32(&grad)) else {
                return Flex::gelu_backward(x, grad);
            };
            let input = x.as_slice::<f32>().expect("contiguous");
            let upstream = grad.as_slice::<f32>().expect("contiguous");
            let mut out = vec![0.0f32; input.len()];
            out.par_chunks_mut(CHUNK)
                .zip(input.par_chunks(CHUNK).zip(upstream.par_chunks(CHUNK)))
                .for_each(|(o, (i, g))| rows::gelu_backward(o, i, g));
            from_f32(out, x.layout().shape().clone())
        }

        fn zoo_causal_attention(
            q: FlexTensor,
            k: FlexTensor,
            v: FlexTensor,
            scale: f32,
        ) -> (FlexTensor, FlexTensor) {
            let shape = split_shape(&q, &k);
            let [q, k, v] = [&q, &k, &v].map(f32_contiguous);
            let mut out = vec![0.0f32; q.layout().num_elements()];
            let mut probs = vec![0.0f32; shape.batch * shape.heads * shape.len * shape.len];
            let (query, kv) = split_heads(&shape);
            attention::forward(
                shape,
                [input(&q, query), input(&k, kv), input(&v, kv)],
                attention::Output::new(&mut out, query),
                &mut probs,
                scale,
            );
            let [b, h, t, d] = [shape.batch, shape.heads, shape.len, shape.dim];
            (
                from_f32(out, [b, h, t, d].into()),
                from_f32(probs, [b, h, t, t].into()),
            )
        }

        fn zoo_causal_attention_backward(
            q: FlexTensor,
            k: FlexTensor,
            v: FlexTensor,
            out: FlexTensor,
            probs: FlexTensor,
            grad: FlexTensor,
            scale: f32,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let shape = split_shape(&q, &k);
            let [q, k, v, out, probs, grad] = [&q, &k, &v, &out, &probs, &grad].map(f32_contiguous);
            let (query, kv) = split_heads(&shape);
            let mut dq = vec![0.0f32; q.layout().num_elements()];
            let mut dk = vec![0.0f32; k.layout().num_elements()];
            let mut dv = vec![0.0f32; k.layout().num_elements()];
            attention::backward(
                shape,
                [input(&q, query), input(&k, kv), input(&v, kv)],
                input(&out, query),
                input(&grad, query),
                probs.as_slice::<f32>().unwrap(),
                [
                    attention::Output::new(&mut dq, query),
                    attention::Output::new(&mut dk, kv),
                    attention::Output::new(&mut dv, kv),
                ],
                scale,
            );
            (
                from_f32(dq, q.layout().shape().clone()),
                from_f32(dk, k.layout().shape().clone()),
                from_f32(dv, k.layout().shape().clone()),
            )
        }

        fn zoo_causal_attention_packed(
            qkv: FlexTensor,
            n_heads: usize,
            n_kv_heads: usize,
            scale: f32,
        ) -> (FlexTensor, FlexTensor) {
            let shape = packed_shape(&qkv, n_heads, n_kv_heads);
            let qkv = f32_contiguous(&qkv);
            let [b, h, t, d] = [shape.batch, shape.heads, shape.len, shape.dim];
            let mut out = vec![0.0f32; b * t * h * d];
            let mut probs = vec![0.0f32; b * h * t * t];
            let heads = packed_heads(&shape);
            attention::forward(
                shape,
                heads.map(|heads| input(&qkv, heads)),
                attention::Output::new(&mut out, attention::Heads::packed(0, t, h * d, d)),
                &mut probs,
                scale,
            );
            (
                from_f32(out, [b, t, h * d].into()),
                from_f32(probs, [b, h, t, t].into()),
            )
        }

        fn zoo_causal_attention_packed_backward(
            qkv: FlexTensor,
            out: FlexTensor,
            probs: FlexTensor,
            grad: FlexTensor,
            n_heads: usize,
            n_kv_heads: usize,
            scale: f32,
        ) -> FlexTensor {
            let shape = packed_shape(&qkv, n_heads, n_kv_heads);
            let [qkv, out, probs, grad] = [&qkv, &out, &probs, &grad].map(f32_contiguous);
            let [t, d] = [shape.len, shape.dim];
            let out_heads = attention::Heads::packed(0, t, shape.heads * d, d);
            let heads = packed_heads(&shape);
            // Every element is written: each head of q, k and v gets its gradient.
            let mut dqkv = vec![0.0f32; qkv.layout().num_elements()];
            let d_heads = heads.map(|heads| attention::Output::new(&mut dqkv, heads));
            attention::backward(
                shape,
                heads.map(|heads| input(&qkv, heads)),
                input(&out, out_heads),
                input(&grad, out_heads),
                probs.as_slice::<f32>().unwrap(),
                d_heads,
                scale,
            );
            from_f32(dqkv, qkv.layout().shape().clone())
        }

        fn zoo_adamw(
            param: FlexTensor,
            grad: FlexTensor,
            moment_1: FlexTensor,
            moment_2: FlexTensor,
            step: AdamWStep,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let tensors = [&param, &grad, &moment_1, &moment_2].map(f32_contiguous);
            let [p, g, m, v] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let bias = step.bias_corrections();
            let mut out = [p, m, v].map(|x| vec![0.0f32; x.len()]);
            let [out_p, out_m, out_v] = &mut out;
            out_p
                .par_chunks_mut(CHUNK)
                .zip(out_m.par_chunks_mut(CHUNK).zip(out_v.par_chunks_mut(CHUNK)))
                .enumerate()
                .for_each(|(c, (out_p, (out_m, out_v)))| {
                    let at = c * CHUNK;
                    for i in 0..out_p.len() {
                        let j = at + i;
                        [out_p[i], out_m[i], out_v[i]] = step.apply(p[j], g[j], m[j], v[j], bias);
                    }
                });
            let shape = param.layout().shape().clone();
            let [p, m, v] = out;
            (
                from_f32(p, shape.clone()),
                from_f32(m, shape.clone()),
                from_f32(v, shape),
            )
        }

        fn zoo_cross_entropy(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
            let logits = f32_contiguous(&logits);
            let values = logits.as_slice::<f32>().unwrap();
            let [n, classes] = logits.layout().shape().dims::<2>();
            let targets = class_ids(targets, n, classes);
            let mut lse = vec![0.0f32; n];
            let total: f64 = lse
                .par_iter_mut()
                .zip(values.par_chunks(classes))
                .zip(targets.par_iter())
                .map(|((lse, row), &target)| {
                    *lse = rows::log_sum_exp(row);
                    (*lse - row[target]) as f64
                })
                .sum();
            let loss = vec![(total / n.max(1) as f64) as f32];
            (from_f32(loss, [1].into()), from_f32(lse, [n].into()))
        }

        fn zoo_cross_entropy_backward(
            logits: FlexTensor,
            targets: FlexTensor,
            log_sum_exp: FlexTensor,
            grad: FlexTensor,
        ) -> FlexTensor {
            let tensors = [&logits, &log_sum_exp, &grad].map(f32_contiguous);
            let [values, lse, grad] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let [n, classes] = logits.layout().shape().dims::<2>();
            let targets = class_ids(targets, n, classes);
            let scale = grad[0] / n.max(1) as f32;
            let mut out = vec![0.0f32; values.len()];
            out.par_chunks_mut(classes)
                .zip(values.par_chunks(classes))
                .zip(lse.par_iter().zip(targets.par_iter()))
                .for_each(|((out, row), (&lse, &target))| {
                    rows::scaled_softmax(out, row, lse, scale);
                    out[target] -= scale;
                });
            from_f32(out, [n, classes].into())
        }

        fn zoo_gru(
            x_proj: FlexTensor,
            weight: FlexTensor,
            bias: FlexTensor,
            h0: FlexTensor,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let dims = sequence_dims(&x_proj, 3);
            let (batch, len, hidden) = (dims.batch, dims.len, dims.hidden);
            let width = 3 * hidden;
            let tensors = [&x_proj, &weight, &bias, &h0].map(f32_contiguous);
            let [x, w, b, h0] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let mut y = vec![0.0f32; batch * len * hidden];
            let mut gates = vec![0.0f32; x.len()];
            let mut hn = vec![0.0f32; y.len()];
            gru::forward(dims, x, w, b, h0, &mut y, &mut gates, &mut hn);
            (
                from_f32(y, [batch, len, hidden].into()),
                from_f32(gates, [batch, len, width].into()),
                from_f32(hn, [batch, len, hidden].into()),
            )
        }

        fn zoo_gru_backward(
            weight: FlexTensor,
            h0: FlexTensor,
            y: FlexTensor,
            gates: FlexTensor,
            hn: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
            let dims = sequence_dims(&gates, 3);
            let (batch, len, width) = (dims.batch, dims.len, 3 * dims.hidden);
            let tensors = [&weight, &h0, &y, &gates, &hn, &grad].map(f32_contiguous);
            let [w, h0s, y, gates, hn, dy] =
                tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let mut dx = vec![0.0f32; gates.len()];
            let mut dw = vec![0.0f32; w.len()];
            let mut db = vec![0.0f32; width];
            let mut dh0 = vec![0.0f32; h0s.len()];
            gru::backward(
                dims, w, h0s, y, gates, hn, dy, &mut dx, &mut dw, &mut db, &mut dh0,
            );
            (
                from_f32(dx, [batch, len, width].into()),
                from_f32(dw, weight.layout().shape().clone()),
                from_f32(db, [width].into()),
                from_f32(dh0, h0.layout().shape().clone()),
            )
        }

        fn zoo_lstm(
            x_proj: FlexTensor,
            weight: FlexTensor,
            h0: FlexTensor,
            c0: FlexTensor,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let dims = sequence_dims(&x_proj, 4);
            let (batch, len, width) = (dims.batch, dims.len, 4 * dims.hidden);
            let tensors = [&x_proj, &weight, &h0, &c0].map(f32_contiguous);
            let [x, w, h0, c0] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let hidden = dims.hidden;
            let mut y = vec![0.0f32; batch * (len + 1) * hidden];
            let mut gates = vec![0.0f32; x.len()];
            let mut cells = vec![0.0f32; batch * len * hidden];
            lstm::forward(dims, x, w, h0, c0, &mut y, &mut gates, &mut cells);
            (
                from_f32(y, [batch, len + 1, hidden].into()),
                from_f32(gates, [batch, len, width].into()),
                from_f32(cells, [batch, len, hidden].into()),
            )
        }

        fn zoo_lstm_backward(
            weight: FlexTensor,
            h0: FlexTensor,
            c0: FlexTensor,
            y: FlexTensor,
            gates: FlexTensor,
            cells: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
            let dims = sequence_dims(&gates, 4);
            let (batch, len, width) = (dims.batch, dims.len, 4 * dims.hidden);
            let tensors = [&weight, &h0, &c0, &y, &gates, &cells, &grad].map(f32_contiguous);
            let [w, h0s, c0s, y, gates, cells, dy] =
                tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let mut dx = vec![0.0f32; gates.len()];
            let mut dw = vec![0.0f32; w.len()];
            let mut dh0 = vec![0.0f32; h0s.len()];
            let mut dc0 = vec![0.0f32; c0s.len()];
            lstm::backward(
                dims, w, h0s, c0s, y, gates, cells, dy, &mut dx, &mut dw, &mut dh0, &mut dc0,
            );
            (
                from_f32(dx, [batch, len, width].into()),
                from_f32(dw, weight.layout().shape().clone()),
                from_f32(dh0, h0.layout().shape().clone()),
                from_f32(dc0, c0.layout().shape().clone()),
            )
        }

        fn zoo_matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
            let (lhs, rhs) = (Matrix::of(lhs), Matrix::of(rhs));
            let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
            assert_eq!(
                k, rhs.rows,
                "zoo_matmul: [{m}, {k}] times [{}, {n}]",
                rhs.rows
            );
            let mut out = Vec::<f32>::with_capacity(m * n);
            if k == 0 {
                out.resize(m * n, 0.0);
            } else {
                // Above about 192³ multiply-adds gemm's own threads pay off (flex's threshold).
                let parallelism = if m * n * k >= 192 * 192 * 192 {
                    gemm::Parallelism::Rayon(0)
                } else {
                    gemm::Parallelism::None
                };
                // SAFETY: the operands' pointers and strides describe [m, k] and [k, n] matrices
                // inside their storage (`Matrix::of`); gemm writes all of the `[m, n]` row-major
                // output without reading it (`read_dst` false), so it is initialised after.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        lhs.ptr(),
                        lhs.col_stride,
                        lhs.row_stride,
                        rhs.ptr(),
                        rhs.col_stride,
                        rhs.row_stride,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                    out.set_len(m * n);
                }
            }
            from_f32(out, [m, n].into())
        }

        fn zoo_layer_norm(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            epsilon: f32,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let [x, gamma, beta] = [&x, &gamma, &beta].map(f32_contiguous);
            let [xs, gamma, beta] = [&x, &gamma, &beta].map(|t| t.as_slice::<f32>().unwrap());
            let d = gamma.len();
            let rows = xs.len() / d;
            let mut y = vec![0.0f32; xs.len()];
            let mut stats = vec![(0.0f32, 0.0f32); rows];
            y.par_chunks_mut(d * ROWS)
                .zip(xs.par_chunks(d * ROWS))
                .zip(stats.par_chunks_mut(ROWS))
                .for_each(|((y, x), stats)| {
                    for ((y, x), stats) in y.chunks_mut(d).zip(x.chunks(d)).zip(stats) {
                        *stats = layer_norm_rows::forward(x, gamma, beta, y, epsilon);
                    }
                });
            let (mean, rstd) = stats.into_iter().unzip();
            (
                from_f32(y, x.layout().shape().clone()),
                from_f32(mean, [rows].into()),
                from_f32(rstd, [rows].into()),
            )
        }

        fn zoo_layer_norm_backward(
            x: FlexTensor,
            gamma: FlexTensor,
            mean: FlexTensor,
            rstd: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let tensors = [&x, &gamma, &mean, &rstd, &grad].map(f32_contiguous);
            let [xs, gamma, mean, rstd, dy] =
                tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let d = gamma.len();
            let mut dx = vec![0.0f32; xs.len()];
            // Each chunk of rows sums its own share of dgamma and dbeta; the shares add up after.
            let add = |(mut g, mut b): (Vec<f32>, Vec<f32>), (g2, b2): (Vec<f32>, Vec<f32>)| {
                g.iter_mut().zip(g2).for_each(|(g, g2)| *g += g2);
                b.iter_mut().zip(b2).for_each(|(b, b2)| *b += b2);
                (g, b)
            };
            let (dgamma, dbeta) = dx
                .par_chunks_mut(d * ROWS)
                .zip(xs.par_chunks(d * ROWS).zip(dy.par_chunks(d * ROWS)))
                .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
                .map(|((dx, (x, dy)), (mean, rstd))| {
                    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
                    let rows = dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d));
                    for (((dx, x), dy), stats) in rows.zip(mean.iter().zip(rstd)) {
                        let stats = (*stats.0, *stats.1);
                        layer_norm_rows::backward(x, gamma, stats, dy, dx, &mut dgamma, &mut dbeta);
                    }
                    (dgamma, dbeta)
                })
                .reduce(|| (vec![0.0; d], vec![0.0; d]), add);
            (
                from_f32(dx, x.layout().shape().clone()),
                from_f32(dgamma, [d].into()),
                from_f32(dbeta, [d].into()),
            )
        }
    }

    /// The shape of a recurrent sequence from a `[batch, len, gates hidden]` tensor.
    fn sequence_dims(t: &FlexTensor, gates: usize) -> sequence::Dims {
        let [batch, len, width] = t.layout().shape().dims::<3>();
        sequence::Dims {
            batch,
            len,
            hidden: width / gates,
        }
    }

    /// Class ids as indices, checked against the number of classes.
    fn class_ids(targets: FlexTensor, n: usize, classes: usize) -> Vec<usize> {
        let ids = targets
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("class ids read back as integers");
        assert_eq!(
            ids.len(),
            n,
            "cross-entropy: {n} rows but {} targets",
            ids.len()
        );
        ids.into_iter()
            .map(|id| {
                assert!(
                    (0..classes as i64).contains(&id),
                    "cross-entropy: class id {id} outside 0..{classes}"
                );
                id as usize
            })
            .collect()
    }

    /// Rows per parallel task in the LayerNorm kernels.
    const ROWS: usize = 16;

    /// A 2-D f32 operand as gemm reads it: row-major or a transposed view, in place.
    struct Matrix {
        tensor: FlexTensor,
        rows: usize,
        cols: usize,
        row_stride: isize,
        col_stride: isize,
    }

    impl Matrix {
        fn of(t: FlexTensor) -> Self {
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                f32_contiguous(&t)
            };
            // Row-major and transposed views go to gemm as they are; anything else is copied.
            let in_place = |t: &FlexTensor| match t.layout().as_2d_strides() {
                Some((_, _, rs, cs)) => rs >= 0 && cs >= 0 && (rs == 1 || cs == 1),
                None => false,
            };
            let tensor = if in_place(&t) { t } else { t.to_contiguous() };
            let (rows, cols, row_stride, col_stride) = tensor
                .layout()
                .as_2d_strides()
                .expect("zoo_matmul takes 2-D operands");
            Self {
                tensor,
                rows,
                cols,
                row_stride,
                col_stride,
            }
        }

        fn ptr(&self) -> *const f32 {
            self.tensor.storage::<f32>()[self.tensor.layout().start_offset()..].as_ptr()
        }
    }

    /// `t` as a contiguous f32 tensor, cast if it is another float dtype.
    fn f32_contiguous(t: &FlexTensor) -> FlexTensor {
        contiguous_f32(t).unwrap_or_else(|| {
            contiguous(&Flex::float_cast(t.clone(), burn::backend::FloatDType::F32))
        })
    }

    /// The shape of attention over `[batch, heads, len, dim]` queries and
    /// `[batch, kv_heads, len, dim]` keys.
    fn split_shape(q: &FlexTensor, k: &FlexTensor) -> attention::Shape {
        let [batch, heads, len, dim] = q.layout().shape().dims::<4>();
        attention::Shape {
            batch,
            heads,
            kv_heads: k.layout().shape().dims::<4>()[1],
            len,
            dim,
        }
    }

    /// Where the query heads and the key/value heads sit in contiguous split tensors.
    fn split_heads(shape: &attention::Shape) -> (attention::Heads, attention::Heads) {
        let (t, d) = (shape.len, shape.dim);
        (
            attention::Heads::split(shape.heads, t, d),
            attention::Heads::split(shape.kv_heads, t, d),
        )
    }

    /// The shape of attention over a packed `[batch, len, (heads + 2 kv_heads) dim]` projection.
    fn packed_shape(qkv: &FlexTensor, heads: usize, kv_heads: usize) -> attention::Shape {
        let [batch, len, width] = qkv.layout().shape().dims::<3>();
        assert!(
            heads.is_multiple_of(kv_heads) && width % (heads + 2 * kv_heads) == 0,
            "packed attention: width {width} is not {heads} query + 2 x {kv_heads} key/value heads"
        );
        attention::Shape {
            batch,
            heads,
            kv_heads,
            len,
            dim: width / (heads + 2 * kv_heads),
        }
    }

    /// Where the query, key and value heads sit in a packed projection: side by side in that
    /// order along each row.
    fn packed_heads(shape: &attention::Shape) -> [attention::Heads; 3] {
        let (t, d) = (shape.len, shape.dim);
        let width = (shape.heads + 2 * shape.kv_heads) * d;
        let kv_start = shape.heads * d;
        [0, kv_start, kv_start + shape.kv_heads * d]
            .map(|offset| attention::Heads::packed(offset, t, width, d))
    }

    /// A contiguous f32 tensor's elements and where its heads sit.
    fn input(t: &FlexTensor, heads: attention::Heads) -> attention::Input<'_> {
        attention::Input(t.as_slice::<f32>().expect("contiguous f32"), heads)
    }
}

mod autodiff {
    use super::{AdamWStep, ZooOps};
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

        fn backward(
            self,
            ops: Ops<NodeId, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let input = checkpointer.retrieve_node_output(ops.state);
            unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                B::zoo_gelu_backward(input, grad)
            });
        }
    }

    #[derive(Debug)]
    struct ZooCausalAttention;

    type AttentionState<B> = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        f32,
    );

    impl<B: Backend + ZooOps> Backward<B, 3> for ZooCausalAttention {
        type State = AttentionState<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (q, k, v, out, probs, scale) = ops.state;
            let grad = grads.consume::<B>(&ops.node);
            let (dq, dk, dv) = B::zoo_causal_attention_backward(q, k, v, out, probs, grad, scale);
            for (parent, gradient) in ops.parents.into_iter().zip([dq, dk, dv]) {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, gradient);
                }
            }
        }
    }

    #[derive(Debug)]
    struct ZooPackedAttention;

    /// Packed projection, output, probabilities, query heads, key/value heads, scale.
    type PackedAttentionState<B> = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        usize,
        usize,
        f32,
    );

    impl<B: Backend + ZooOps> Backward<B, 1> for ZooPackedAttention {
        type State = PackedAttentionState<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (qkv, out, probs, n_heads, n_kv_heads, scale) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                B::zoo_causal_attention_packed_backward(
                    qkv, out, probs, grad, n_heads, n_kv_heads, scale,
                )
            });
        }
    }

    #[derive(Debug)]
    struct ZooCrossEntropy;

    /// Logits, targets and the rows' log-sum-exp.
    type CrossEntropyState<B> = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    impl<B: Backend + ZooOps> Backward<B, 1> for ZooCrossEntropy {
        type State = CrossEntropyState<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (logits, targets, lse) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                B::zoo_cross_entropy_backward(logits, targets, lse, grad)
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
        fn zoo_causal_attention_packed(
            qkv: FloatTensor<Self>,
            n_heads: usize,
            n_kv_heads: usize,
            scale: f32,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let packed = qkv.primitive().clone();
            let (out, probs) =
                B::zoo_causal_attention_packed(packed.clone(), n_heads, n_kv_heads, scale);
            // The probabilities leave as a constant: nothing differentiates through them.
            let probs_leaf = FloatTensor::<Self>::new(probs.clone());
            let out = match ZooPackedAttention
                .prepare::<C>([qkv.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let state = (packed, out.clone(), probs, n_heads, n_kv_heads, scale);
                    prep.finish(state, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            (out, probs_leaf)
        }

        fn zoo_causal_attention_packed_backward(
            _qkv: FloatTensor<Self>,
            _out: FloatTensor<Self>,
            _probs: FloatTensor<Self>,
            _grad: FloatTensor<Self>,
            _n_heads: usize,
            _n_kv_heads: usize,
            _scale: f32,
        ) -> FloatTensor<Self> {
            panic!(
                "zoo's causal attention has no second-order gradient; its backward runs on the inner backend"
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

        fn zoo_cross_entropy(
            logits: FloatTensor<Self>,
            targets: IntTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let values = logits.primitive().clone();
            let (loss, lse) = B::zoo_cross_entropy(values.clone(), targets.clone());
            let lse_leaf = FloatTensor::<Self>::new(lse.clone());
            let loss = match ZooCrossEntropy
                .prepare::<C>([logits.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((values, targets, lse), loss),
                OpsKind::UnTracked(prep) => prep.finish(loss),
            };
            (loss, lse_leaf)
        }

        fn zoo_cross_entropy_backward(
            _logits: FloatTensor<Self>,
            _targets: IntTensor<Self>,
            _log_sum_exp: FloatTensor<Self>,
            _grad: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
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
            panic!(
                "zoo's LSTM has no second-order gradient; its backward runs on the inner backend"
            )
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

        fn zoo_causal_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f32,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (qp, kp, vp) = (
                q.primitive().clone(),
                k.primitive().clone(),
                v.primitive().clone(),
            );
            let (out, probs) = B::zoo_causal_attention(qp.clone(), kp.clone(), vp.clone(), scale);
            // The probabilities leave as a constant: nothing differentiates through them.
            let probs_leaf = FloatTensor::<Self>::new(probs.clone());
            let out = match ZooCausalAttention
                .prepare::<C>([q.node(), k.node(), v.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((qp, kp, vp, out.clone(), probs, scale), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            (out, probs_leaf)
        }

        fn zoo_causal_attention_backward(
            _q: FloatTensor<Self>,
            _k: FloatTensor<Self>,
            _v: FloatTensor<Self>,
            _out: FloatTensor<Self>,
            _probs: FloatTensor<Self>,
            _grad: FloatTensor<Self>,
            _scale: f32,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            panic!(
                "zoo's causal attention has no second-order gradient; its backward runs on the inner backend"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, erf_reference, test_device, to_vec};
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn the_rational_erf_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -4000..=4000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf_f32(x as f32) as f64 - erf_reference(x)).abs());
        }
        assert!(worst < 5e-7, "max error {worst}");
        // Saturates (to within an ulp of ±1) and stays finite far out.
        assert!((erf_f32(9.0) - 1.0).abs() < 2e-7 && (erf_f32(-1e30) + 1.0).abs() < 2e-7);
    }

    #[test]
    fn gelu_matches_burns_gelu_values_and_gradients() {
        let device = test_device().autodiff();
        let x =
            Tensor::<2>::random([64, 300], Distribution::Normal(0.0, 3.0), &device).require_grad();
        let ours = gelu(x.clone());
        let theirs = burn::tensor::activation::gelu(x.clone());
        assert_close(ours.clone().inner(), theirs.clone().inner(), 2e-6);
        let weights = Tensor::<2>::random([64, 300], Distribution::Normal(0.0, 1.0), &device);
        let g_ours = x.grad(&(ours * weights.clone()).sum().backward()).unwrap();
        let g_theirs = x.grad(&(theirs * weights).sum().backward()).unwrap();
        assert_close(g_ours, g_theirs, 2e-5);
    }

    #[test]
    fn gelu_handles_non_contiguous_inputs() {
        let device = test_device();
        let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 2.0), &device).transpose();
        assert_close(gelu(x.clone()), burn::tensor::activation::gelu(x), 2e-6);
        let exact = to_vec(gelu(Tensor::<1>::from_data(
            TensorData::from([0.0f32, 1.0]),
            &device,
        )));
        assert!((exact[1] - 0.841_344_7).abs() < 1e-6 && exact[0] == 0.0);
    }

    #[test]
    fn gelu_gradients_match_finite_differences() {
        let device = test_device().autodiff();
        let weights = Tensor::<2>::random([3, 5], Distribution::Normal(0.0, 1.0), &device);
        check_gradients([3, 5], |x| (gelu(x) * weights.clone()).sum(), &device);
    }

    #[test]
    fn matmul_matches_burns_for_plain_and_transposed_operands() {
        let device = test_device().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        // Inputs `[2, 3, 40]` against a `[40, 30]` weight, held as is or as a transposed view.
        let x0 = Tensor::<3>::random([2, 3, 40], normal, &device);
        let w0 = Tensor::<2>::random([40, 30], normal, &device);
        let probe = Tensor::<3>::random([2, 3, 30], normal, &device);
        for transposed in [false, true] {
            // Output, input gradient and weight gradient, each side on a graph of its own.
            let run = |ours: bool| {
                let x = x0.clone().detach().require_grad();
                let held = if transposed {
                    w0.clone().transpose()
                } else {
                    w0.clone()
                };
                let held = held.detach().require_grad();
                let weight = if transposed {
                    held.clone().transpose()
                } else {
                    held.clone()
                };
                let out = if ours {
                    matmul_weight(x.clone(), weight)
                } else {
                    x.clone().matmul(weight.unsqueeze())
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                (
                    out.inner(),
                    x.grad(&grads).unwrap(),
                    held.grad(&grads).unwrap(),
                )
            };
            let (ours, theirs) = (run(true), run(false));
            assert_close(ours.0, theirs.0, 1e-5);
            assert_close(ours.1, theirs.1, 1e-5);
            assert_close(ours.2, theirs.2, 1e-5);
        }
    }

    #[test]
    fn matmul_gradients_match_finite_differences() {
        let device = test_device().autodiff();
        let weight = Tensor::<2>::random([4, 3], Distribution::Normal(0.0, 1.0), &device);
        let probe = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        check_gradients(
            [5, 4],
            |x| (matmul_weight(x, weight.clone()) * probe.clone()).sum(),
            &device,
        );
        let x = Tensor::<2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device);
        check_gradients(
            [3, 4],
            |w| (matmul_weight(x.clone(), w.transpose()) * probe.clone()).sum(),
            &device,
        );
    }

    #[test]
    fn layer_norm_matches_burns_values_and_gradients() {
        let device = test_device().autodiff();
        // More rows than one parallel task takes, so the dgamma shares are summed.
        let x0 = Tensor::<3>::random([3, 50, 24], Distribution::Normal(2.0, 3.0), &device);
        let gamma0 = Tensor::<1>::random([24], Distribution::Normal(1.0, 0.5), &device);
        let beta0 = Tensor::<1>::random([24], Distribution::Normal(0.0, 0.5), &device);
        let probe = Tensor::<3>::random([3, 50, 24], Distribution::Normal(0.0, 1.0), &device);
        for with_bias in [true, false] {
            // Output and the gradients of input, gain and bias, each side on its own graph.
            let run = |ours: bool| {
                let x = x0.clone().detach().require_grad();
                let gamma = gamma0.clone().detach().require_grad();
                let beta = beta0.clone().detach().require_grad();
                let bias = with_bias.then(|| beta.clone());
                let out = if ours {
                    layer_norm(x.clone(), gamma.clone(), bias, 1e-5)
                } else {
                    burn::tensor::module::layer_norm(x.clone(), gamma.clone(), bias, 1e-5)
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                let beta_grad = beta.grad(&grads).map(to_vec);
                (
                    out.inner(),
                    x.grad(&grads).unwrap(),
                    gamma.grad(&grads).unwrap(),
                    beta_grad,
                )
            };
            let (ours, theirs) = (run(true), run(false));
            assert_close(ours.0, theirs.0, 1e-5);
            assert_close(ours.1, theirs.1, 1e-4);
            assert_close(ours.2, theirs.2, 1e-4);
            assert_eq!(ours.3.is_some(), with_bias);
            if let (Some(ours), Some(theirs)) = (ours.3, theirs.3) {
                assert!(ours.iter().zip(&theirs).all(|(a, b)| (a - b).abs() < 1e-4));
            }
        }
    }

    #[test]
    fn adamw_kernel_matches_the_formula() {
        let device = test_device();
        let normal = Distribution::Normal(0.0, 1.0);
        // More elements than one parallel chunk, so chunk offsets are exercised.
        let n = 3 * (1 << 14) + 5;
        let [p, g, m] = [0; 3].map(|_| Tensor::<1>::random([n], normal, &device));
        let v = Tensor::<1>::random([n], Distribution::Uniform(0.0, 2.0), &device);
        let step = AdamWStep {
            lr: 0.01,
            beta_1: 0.9,
            beta_2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            time: 3,
        };
        let (p2, m2, v2) = adamw(p.clone(), g.clone(), m.clone(), v.clone(), step);
        let m_ref = m * 0.9 + g.clone() * 0.1;
        let v_ref = v * 0.95 + g.square() * 0.05;
        let (bias_1, bias_2) = (1.0 - 0.9f32.powi(3), 1.0 - 0.95f32.powi(3));
        let delta = (m_ref.clone() / bias_1) / ((v_ref.clone() / bias_2).sqrt() + 1e-8);
        let p_ref = p * (1.0 - 0.01 * 0.1) - delta * 0.01;
        assert_close(p2, p_ref, 1e-6);
        assert_close(m2, m_ref, 1e-6);
        assert_close(v2, v_ref, 1e-6);
    }

    #[test]
    fn the_polynomial_exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 / 10_000.0;
            let exact = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64) - exact).abs() / exact);
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) < 1.2e-38 && exp_f32(-1e4) >= 0.0 && exp_f32(1e4).is_finite());
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
