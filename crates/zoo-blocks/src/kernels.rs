//! Our own operations where Burn's are slow, through Burn's backend-extension mechanism.
//!
//! [`gelu`] is exact GELU, `x Φ(x)`. On `flex` Burn evaluates it one element at a time on one
//! thread with libm's `erff` (about 17 ns an element here, more than the matmul feeding it);
//! ours evaluates a rational approximation of erf that the compiler vectorises, in parallel
//! chunks, with its own backward. On every other backend, and for other dtypes, it is Burn's
//! `gelu`.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
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

#[cfg(feature = "flex")]
mod flex {
    use super::attention;
    use super::{ZooOps, erf_f32};
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
    use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
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

    impl<B: Backend + ZooOps, C: CheckpointStrategy> ZooOps for Autodiff<B, C> {
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
}
