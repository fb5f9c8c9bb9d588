//! The element loops of the fused kernels, one row or chunk at a time. Each is compiled for
//! AVX-512, AVX2 + FMA and NEON as well as the baseline (SSE2 on x86-64), and the widest the CPU
//! has is picked at run time: the baseline alone leaves these loops 4 floats wide and without
//! fused multiply-adds.

use crate::kernels::{erf_f32, exp_f32};

/// The largest of `xs` (−∞ when empty), in sixteen lanes so that it vectorises.
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    lanes.iter().fold(rest, |m, &x| m.max(x))
}

vectorised! {
    /// `log Σ e^x` over a row, shifted by its maximum so that nothing overflows.
    pub fn log_sum_exp(row: &[f32]) -> f32 {
        let max = max_of(row);
        max + lane_sum(row.len(), |i| exp_f32(row[i] - max)).ln()
    }
}

/// `Σ f(i)` over `0..n` in sixteen lanes: a single running sum is a chain of dependent additions
/// the compiler may not reorder, so it stays scalar.
#[inline(always)]
pub(super) fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let whole = n - n % 16;
    for start in (0..whole).step_by(16) {
        for (lane, sum) in lanes.iter_mut().enumerate() {
            *sum += f(start + lane);
        }
    }
    lanes.iter().sum::<f32>() + (whole..n).map(f).sum::<f32>()
}

vectorised! {
    /// The sum of a row, in sixteen lanes so that it vectorises.
    pub fn sum(row: &[f32]) -> f32 {
        lane_sum(row.len(), |i| row[i])
    }
}

vectorised! {
    /// The sum of the squares of a row, in sixteen lanes.
    pub fn sum_of_squares(row: &[f32]) -> f32 {
        lane_sum(row.len(), |i| row[i] * row[i])
    }
}

/// `row = e^(row · scale − shift)` in place, returning the new row's sum (in sixteen lanes: one
/// running sum is a chain of dependent additions that keeps the exponentials from vectorising).
#[inline(always)]
fn exp_in_place(row: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let chunk: &mut [f32; 16] = chunk.try_into().expect("16 wide");
        for i in 0..16 {
            chunk[i] = exp_f32(chunk[i] * scale - shift);
            lanes[i] += chunk[i];
        }
    }
    let mut rest = 0.0;
    for p in chunks.into_remainder() {
        *p = exp_f32(*p * scale - shift);
        rest += *p;
    }
    lanes.iter().sum::<f32>() + rest
}

vectorised! {
    /// A row of logits turned in place into `softmax(row) · scale − shift`, returning the row's
    /// log-sum-exp: cross-entropy's gradient and loss from one exponential per element (a
    /// log-sum-exp pass and then a softmax pass took two).
    pub fn softmax_gradient(row: &mut [f32], scale: f32, shift: f32) -> f32 {
        let max = max_of(row);
        let total = exp_in_place(row, 1.0, max);
        let factor = scale / total;
        row.iter_mut().for_each(|p| *p = *p * factor - shift);
        max + total.ln()
    }
}

vectorised! {
    /// Softmax in place of `scores · scale` (`scale` positive). The sum runs in sixteen lanes
    /// (see `exp_in_place`; a single running sum took 9% of BERT-mini's inference).
    pub fn softmax_scaled(row: &mut [f32], scale: f32) {
        let max = max_of(row) * scale;
        let inv = 1.0 / exp_in_place(row, scale, max);
        row.iter_mut().for_each(|p| *p *= inv);
    }
}

vectorised! {
    /// `ds = p ∘ (ds − Σ do ∘ o) · scale`: attention's score gradient for one query row, with
    /// `ds` holding `do · vᵀ` on entry.
    pub fn score_gradient(ds: &mut [f32], p: &[f32], d_out: &[f32], out: &[f32], scale: f32) {
        let delta: f32 = d_out.iter().zip(out).map(|(g, o)| g * o).sum();
        for (d, &p) in ds.iter_mut().zip(p) {
            *d = p * (*d - delta) * scale;
        }
    }
}

/// 1 / √(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU, `x Φ(x)`.
#[inline(always)]
fn gelu_of(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
}

vectorised! {
    /// Exact GELU of a chunk.
    pub fn gelu(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = gelu_of(v);
        }
    }
}

vectorised! {
    /// Exact GELU of a chunk, in place.
    pub fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_of(*v);
        }
    }
}

vectorised! {
    /// `grad · GELU'(x)` of a chunk, into `grad`.
    pub fn gelu_backward(grad: &mut [f32], x: &[f32]) {
        for (g, &v) in grad.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
            *g *= cdf + v * INV_SQRT_2PI * exp_f32(-0.5 * v * v);
        }
    }
}

/// Whether inverted dropout keeps element `n` of a tensor: when the top 24 bits of SplitMix64's
/// finaliser over `seed + n φ` reach `threshold` (`prob · 2²⁴`). A function of `(seed, n)` alone,
/// so the chunking (and the thread count) never changes the mask.
#[inline(always)]
fn kept(seed: u64, n: u64, threshold: u64) -> bool {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) >= threshold
}

/// The threshold [`kept`] compares with, and the scale of kept elements.
#[inline(always)]
fn dropout_constants(prob: f32) -> (u64, f32) {
    (
        (prob as f64 * (1u64 << 24) as f64) as u64,
        1.0 / (1.0 - prob),
    )
}

vectorised! {
    /// Inverted dropout of a chunk whose first element is element `first` of the tensor: each
    /// element kept (see [`kept`]) is scaled by `1 / (1 - prob)`, the others zeroed.
    pub fn dropout(out: &mut [f32], x: &[f32], prob: f32, seed: u64, first: u64) {
        let (threshold, scale) = dropout_constants(prob);
        for (n, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            *o = if kept(seed, first + n as u64, threshold) { v * scale } else { 0.0 };
        }
    }
}

vectorised! {
    /// [`dropout`] in place.
    pub fn dropout_in_place(x: &mut [f32], prob: f32, seed: u64, first: u64) {
        let (threshold, scale) = dropout_constants(prob);
        for (n, v) in x.iter_mut().enumerate() {
            *v = if kept(seed, first + n as u64, threshold) { *v * scale } else { 0.0 };
        }
    }
}
