//! What the fused recurrent kernels (`lstm.rs`, `gru.rs`) share: the shape of a sequence, the
//! gate non-linearities, and the recurrent weights' gradient over all steps.

use super::exp_f32;
use super::strided::{Matrix, gemm_parallel};

/// `batch` sequences of `len` steps through `hidden` units.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub len: usize,
    pub hidden: usize,
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// tanh through one exp (libm's `tanhf` is several times slower); saturates to ±1 cleanly.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp_f32(2.0 * x) + 1.0)
}

/// `dweight = Σ_t h_{t-1}ᵀ dgates_t` in one gemm over every step: `h0` (`[batch, hidden]`) and
/// the outputs `y` (each batch row's `len` hidden states `y_row` floats apart from the next
/// row's) give the previous states, laid out as `dgates`' rows (`[batch, len, width]`) are.
pub fn recurrent_weight_gradient(
    d: Dims,
    h0: &[f32],
    y: &[f32],
    y_row: usize,
    dgates: &[f32],
    dweight: &mut [f32],
) {
    let Dims { batch, len, hidden } = d;
    let width = dweight.len() / hidden;
    assert!(dgates.len() == batch * len * width && h0.len() == batch * hidden);
    assert!(y.len() >= (batch - 1) * y_row + len * hidden);
    let mut prev = vec![0.0f32; batch * len * hidden];
    for b in 0..batch {
        let rows = &mut prev[b * len * hidden..][..len * hidden];
        rows[..hidden].copy_from_slice(&h0[b * hidden..][..hidden]);
        rows[hidden..].copy_from_slice(&y[b * y_row..][..(len - 1) * hidden]);
    }
    let prev_t = Matrix::rows(prev.as_ptr(), hidden).transposed();
    let dg = Matrix::rows(dgates.as_ptr(), width);
    // SAFETY: `prev` is `[batch len, hidden]`, `dgates` `[batch len, width]` (asserted), and
    // `dweight` `[hidden, width]`, a buffer of its own.
    unsafe {
        gemm_parallel(
            hidden,
            width,
            batch * len,
            dweight.as_mut_ptr(),
            width,
            false,
            prev_t,
            dg,
        )
    };
}
