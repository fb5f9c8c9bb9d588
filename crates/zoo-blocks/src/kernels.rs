//! Our own operations where Burn's are slow, through Burn's backend-extension mechanism.
//!
//! [`gelu`] is exact GELU, `x Φ(x)`. On `flex` Burn evaluates it one element at a time on one
//! thread with libm's `erff` (about 17 ns an element here, more than the matmul feeding it);
//! ours evaluates a rational approximation of erf that the compiler vectorises, in parallel
//! chunks, with its own backward. On every other backend, and for other dtypes, it is Burn's
//! `gelu`.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::nn::Linear;
use burn::tensor::Tensor;

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

/// One attention head at a time, on row-major slices: the fused causal-attention kernels behind
/// [`causal_attention`]. The forward keeps each head's attention probabilities for the backward;
/// every product is one `gemm` call per head (heads run in parallel, each call on one thread).
#[cfg(feature = "flex")]
mod attention {
    /// A head's forward tensors (`[len, dim]`, probabilities `[len, len]`) and the gradient of
    /// its output.
    pub struct Head<'a> {
        pub q: &'a [f32],
        pub k: &'a [f32],
        pub v: &'a [f32],
        pub out: &'a [f32],
        pub probs: &'a [f32],
        pub grad: &'a [f32],
    }

    /// A row-major matrix operand, possibly read transposed.
    #[derive(Clone, Copy)]
    struct Operand<'a> {
        data: &'a [f32],
        cols: usize,
        transposed: bool,
    }

    fn plain(data: &[f32], cols: usize) -> Operand<'_> {
        Operand {
            data,
            cols,
            transposed: false,
        }
    }

    fn transposed(data: &[f32], cols: usize) -> Operand<'_> {
        Operand {
            data,
            cols,
            transposed: true,
        }
    }

    /// `dst = lhs · rhs`, with `dst` `[m, n]` row-major and `k` the inner dimension.
    fn matmul(dst: &mut [f32], lhs: Operand, rhs: Operand, m: usize, n: usize, k: usize) {
        let strides = |op: Operand| -> (isize, isize) {
            if op.transposed {
                (op.cols as isize, 1)
            } else {
                (1, op.cols as isize)
            }
        };
        let ((lhs_cs, lhs_rs), (rhs_cs, rhs_rs)) = (strides(lhs), strides(rhs));
        assert!(dst.len() >= m * n && lhs.data.len() >= m * k && rhs.data.len() >= k * n);
        // SAFETY: the three buffers hold the [m, k], [k, n] and [m, n] matrices the strides
        // describe (checked above), and `dst` does not alias the operands.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.data.as_ptr(),
                lhs_cs,
                lhs_rs,
                rhs.data.as_ptr(),
                rhs_cs,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// `out = softmax(q kᵀ scale + causal mask) v`; `probs` receives the softmax.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        probs: &mut [f32],
        len: usize,
        dim: usize,
        scale: f32,
    ) {
        matmul(probs, plain(q, dim), transposed(k, dim), len, len, dim);
        for (i, row) in probs.chunks_exact_mut(len).enumerate() {
            let (seen, future) = row.split_at_mut(i + 1);
            future.fill(0.0);
            let max = seen.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) * scale;
            let mut sum = 0.0;
            for p in seen.iter_mut() {
                *p = (*p * scale - max).exp();
                sum += *p;
            }
            let inv = 1.0 / sum;
            seen.iter_mut().for_each(|p| *p *= inv);
        }
        matmul(out, plain(probs, len), plain(v, dim), len, dim, len);
    }

    /// `dv = pᵀ do`, `ds = p ∘ (do vᵀ − rowsum(do ∘ o))`, `dq = ds k scale`, `dk = dsᵀ q scale`;
    /// `scratch` holds `[len, len]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        h: Head,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        scratch: &mut [f32],
        len: usize,
        dim: usize,
        scale: f32,
    ) {
        matmul(
            dv,
            transposed(h.probs, len),
            plain(h.grad, dim),
            len,
            dim,
            len,
        );
        matmul(
            scratch,
            plain(h.grad, dim),
            transposed(h.v, dim),
            len,
            len,
            dim,
        );
        for (i, (ds, p)) in scratch
            .chunks_exact_mut(len)
            .zip(h.probs.chunks_exact(len))
            .enumerate()
        {
            let rows = i * dim..(i + 1) * dim;
            let delta: f32 = h.grad[rows.clone()]
                .iter()
                .zip(&h.out[rows])
                .map(|(g, o)| g * o)
                .sum();
            for (d, &p) in ds.iter_mut().zip(p) {
                *d = p * (*d - delta) * scale;
            }
        }
        matmul(dq, plain(scratch, len), plain(h.k, dim), len, dim, len);
        matmul(dk, transposed(scratch, len), plain(h.q, dim), len, dim, len);
    }
}

/// LayerNorm one row at a time, on plain slices.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod layer_norm_rows {
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

    /// With `x̂ = (x - mean) rstd` and `g = dy ∘ gamma`:
    /// `dx = rstd (g - mean(g) - x̂ mean(g ∘ x̂))`; adds the row's `dy ∘ x̂` and `dy` to
    /// `dgamma` and `dbeta`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        x: &[f32],
        gamma: &[f32],
        (mean, rstd): (f32, f32),
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
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

#[cfg(feature = "flex")]
mod flex {
    use super::{ZooOps, attention, erf_f32, layer_norm_rows};
    use burn::backend::DType;
    use burn::backend::ops::{ActivationOps, FloatTensorOps};
    use burn_flex::{Flex, FlexTensor, Layout};
    use rayon::prelude::*;

    const CHUNK: usize = 1 << 14;
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// 1 / sqrt(2 pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;

    fn gelu(x: f32) -> f32 {
        0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2))
    }

    fn gelu_derivative(x: f32) -> f32 {
        let cdf = 0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
        cdf + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
    }

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
                .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = gelu(v)));
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
                .for_each(|(o, (i, g))| {
                    for ((o, &v), &g) in o.iter_mut().zip(i).zip(g) {
                        *o = g * gelu_derivative(v);
                    }
                });
            from_f32(out, x.layout().shape().clone())
        }

        fn zoo_causal_attention(
            q: FlexTensor,
            k: FlexTensor,
            v: FlexTensor,
            scale: f32,
        ) -> (FlexTensor, FlexTensor) {
            let shape = Shape4::of(&q);
            let (q, k, v) = (f32_contiguous(&q), f32_contiguous(&k), f32_contiguous(&v));
            let (q, k, v) = (
                q.as_slice::<f32>().unwrap(),
                k.as_slice::<f32>().unwrap(),
                v.as_slice::<f32>().unwrap(),
            );
            let (t, d) = (shape.len, shape.dim);
            let mut out = vec![0.0f32; q.len()];
            let mut probs = vec![0.0f32; shape.heads() * t * t];
            out.par_chunks_mut(t * d)
                .zip(probs.par_chunks_mut(t * t))
                .enumerate()
                .for_each(|(h, (out, probs))| {
                    let at = h * t * d;
                    attention::forward(
                        &q[at..at + t * d],
                        &k[at..at + t * d],
                        &v[at..at + t * d],
                        out,
                        probs,
                        t,
                        d,
                        scale,
                    );
                });
            (shape.tensor(out, d), shape.tensor(probs, t))
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
            let shape = Shape4::of(&q);
            let tensors = [&q, &k, &v, &out, &probs, &grad].map(f32_contiguous);
            let [q, k, v, out, probs, grad] =
                tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
            let (t, d) = (shape.len, shape.dim);
            let mut dq = vec![0.0f32; q.len()];
            let mut dk = vec![0.0f32; q.len()];
            let mut dv = vec![0.0f32; q.len()];
            let mut scratch = vec![0.0f32; shape.heads() * t * t];
            dq.par_chunks_mut(t * d)
                .zip(dk.par_chunks_mut(t * d))
                .zip(dv.par_chunks_mut(t * d))
                .zip(scratch.par_chunks_mut(t * t))
                .enumerate()
                .for_each(|(h, (((dq, dk), dv), scratch))| {
                    let at = h * t * d;
                    fn head(x: &[f32], at: usize, n: usize) -> &[f32] {
                        &x[at..at + n]
                    }
                    let n = t * d;
                    attention::backward(
                        attention::Head {
                            q: head(q, at, n),
                            k: head(k, at, n),
                            v: head(v, at, n),
                            out: head(out, at, n),
                            probs: head(probs, h * t * t, t * t),
                            grad: head(grad, at, n),
                        },
                        dq,
                        dk,
                        dv,
                        scratch,
                        t,
                        d,
                        scale,
                    );
                });
            (
                shape.tensor(dq, d),
                shape.tensor(dk, d),
                shape.tensor(dv, d),
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
            let t = if t.dtype() == DType::F32 { t } else { f32_contiguous(&t) };
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

    /// `[batch, heads, len, dim]`.
    struct Shape4 {
        batch: usize,
        n_heads: usize,
        len: usize,
        dim: usize,
    }

    impl Shape4 {
        fn of(t: &FlexTensor) -> Self {
            let dims = t.layout().shape().dims::<4>();
            Self {
                batch: dims[0],
                n_heads: dims[1],
                len: dims[2],
                dim: dims[3],
            }
        }

        fn heads(&self) -> usize {
            self.batch * self.n_heads
        }

        /// `[batch, heads, len, last]` holding `values`.
        fn tensor(&self, values: Vec<f32>, last: usize) -> FlexTensor {
            from_f32(values, [self.batch, self.n_heads, self.len, last].into())
        }
    }
}

mod autodiff {
    use super::ZooOps;
    use burn::backend::Backend;
    use burn::backend::tensor::FloatTensor;
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
    type LayerNormState<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

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
                let held = if transposed { w0.clone().transpose() } else { w0.clone() };
                let held = held.detach().require_grad();
                let weight = if transposed { held.clone().transpose() } else { held.clone() };
                let out = if ours {
                    matmul_weight(x.clone(), weight)
                } else {
                    x.clone().matmul(weight.unsqueeze())
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                (out.inner(), x.grad(&grads).unwrap(), held.grad(&grads).unwrap())
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
                (out.inner(), x.grad(&grads).unwrap(), gamma.grad(&grads).unwrap(), beta_grad)
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
}
