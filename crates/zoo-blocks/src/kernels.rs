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

#[cfg(feature = "flex")]
mod flex {
    use super::{ZooOps, erf_f32};
    use burn::backend::DType;
    use burn::backend::ops::ActivationOps;
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

    fn contiguous_f32(t: &FlexTensor) -> Option<FlexTensor> {
        (t.dtype() == DType::F32).then(|| {
            if t.is_contiguous() {
                t.clone()
            } else {
                t.to_contiguous()
            }
        })
    }

    fn output(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
        let shape = like.layout().shape().clone();
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
            output(out, &x)
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
            output(out, &x)
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
