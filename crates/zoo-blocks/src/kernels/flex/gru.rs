//! The fused GRU kernels behind [`crate::kernels::gru_sequence`], as the LSTM's (`lstm.rs`): a whole
//! sequence of one layer forward and backward through time, one product per step for the hidden
//! state times all three gates' recurrent weights (packed once per pass), the recurrent weights'
//! gradient in one gemm at the end, half the batch on each core when there is enough work. Gate
//! order is PyTorch's `(r, z, n)`; the candidate's recurrent part (with its bias) is gated by `r`
//! after the product, as in PyTorch and cuDNN.
//!
//! Layouts (row-major): `x_proj` and `gates` `[batch, len, 3 hidden]`, `weight`
//! `[hidden, 3 hidden]`, `bias` `[3 hidden]`, `h0` `[batch, hidden]`, `y` and `hn`
//! `[batch, len, hidden]` (`hn`: the candidate's recurrent part, kept for the backward).

use super::sequence::{Dims, Packed, batch_cut, recurrent_weight_gradient, sigmoid, tanh};

vectorised! {
    /// One step of one sequence: from the input part `x` and recurrent product `gh` of the gates
    /// (`[3 hidden]` each) and the recurrent bias, writes the gates' values `(r, z, n)` to `g`,
    /// the candidate's recurrent part to `hn`, and the new hidden state to `h_new`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_gates(
        x: &[f32],
        gh: &[f32],
        bias: &[f32],
        h_prev: &[f32],
        g: &mut [f32],
        hn: &mut [f32],
        h_new: &mut [f32],
    ) {
        let n = h_prev.len();
        let (x, gh, bias, g) = (&x[..3 * n], &gh[..3 * n], &bias[..3 * n], &mut g[..3 * n]);
        let (hn, h_new) = (&mut hn[..n], &mut h_new[..n]);
        for j in 0..n {
            let r = sigmoid(x[j] + gh[j] + bias[j]);
            let z = sigmoid(x[n + j] + gh[n + j] + bias[n + j]);
            let recurrent = gh[2 * n + j] + bias[2 * n + j];
            let cand = tanh(x[2 * n + j] + r * recurrent);
            g[j] = r;
            g[n + j] = z;
            g[2 * n + j] = cand;
            hn[j] = recurrent;
            h_new[j] = (1.0 - z) * cand + z * h_prev[j];
        }
    }
}

vectorised! {
    /// One step of one sequence backwards: from the gates' values, `hn`, the previous hidden
    /// state, the gradient `dy` of the step's output and `dh` (on entry the gradient arriving
    /// from the next step, on exit the part that reaches the previous state directly, to which
    /// the caller adds `dgh · Wᵀ`), writes the gradients of the gates' input parts `dx` and of
    /// their recurrent parts `dgh`.
    #[allow(clippy::too_many_arguments)]
    pub fn gate_gradients(
        g: &[f32],
        hn: &[f32],
        h_prev: &[f32],
        dy: &[f32],
        dh: &mut [f32],
        dx: &mut [f32],
        dgh: &mut [f32],
    ) {
        let n = h_prev.len();
        let (g, hn, dy, dh) = (&g[..3 * n], &hn[..n], &dy[..n], &mut dh[..n]);
        let (dx, dgh) = (&mut dx[..3 * n], &mut dgh[..3 * n]);
        for j in 0..n {
            let (r, z, cand) = (g[j], g[n + j], g[2 * n + j]);
            let d = dy[j] + dh[j];
            let d_cand = d * (1.0 - z) * (1.0 - cand * cand);
            let d_r = d_cand * hn[j] * r * (1.0 - r);
            let d_z = d * (h_prev[j] - cand) * z * (1.0 - z);
            dh[j] = d * z;
            dx[j] = d_r;
            dx[n + j] = d_z;
            dx[2 * n + j] = d_cand;
            dgh[j] = d_r;
            dgh[n + j] = d_z;
            dgh[2 * n + j] = d_cand * r;
        }
    }
}

/// Runs the sequence from `h0`; fills `y`, and `gates` and `hn` for the backward.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    d: Dims,
    x_proj: &[f32],
    weight: &[f32],
    bias: &[f32],
    h0: &[f32],
    y: &mut [f32],
    gates: &mut [f32],
    hn: &mut [f32],
) {
    let Dims { batch, len, hidden } = d;
    let width = 3 * hidden;
    assert!(len > 0, "a GRU sequence needs at least one step");
    assert!(x_proj.len() == batch * len * width && gates.len() == x_proj.len());
    assert!(weight.len() == hidden * width && bias.len() == width && h0.len() == batch * hidden);
    assert!(y.len() == batch * len * hidden && hn.len() == y.len());
    let w = Packed::new(weight, hidden, width, false);
    let Some(first) = batch_cut(d, width) else {
        return forward_rows(d, x_proj, &w, bias, h0, y, gates, hn, true);
    };
    // Every slice is batch-major: the first `first` sequences' rows, then the rest's.
    let (da, db) = d.cut(first);
    let (xa, xb) = x_proj.split_at(first * len * width);
    let (h0a, h0b) = h0.split_at(first * hidden);
    let (ya, yb) = y.split_at_mut(first * len * hidden);
    let (ga, gb) = gates.split_at_mut(first * len * width);
    let (hna, hnb) = hn.split_at_mut(first * len * hidden);
    rayon::join(
        || forward_rows(da, xa, &w, bias, h0a, ya, ga, hna, false),
        || forward_rows(db, xb, &w, bias, h0b, yb, gb, hnb, false),
    );
}

/// [`forward`] for some of the batch's sequences, on one thread unless `share_columns`.
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    d: Dims,
    x_proj: &[f32],
    w: &Packed,
    bias: &[f32],
    h0: &[f32],
    y: &mut [f32],
    gates: &mut [f32],
    hn: &mut [f32],
    share_columns: bool,
) {
    let Dims { batch, len, hidden } = d;
    let width = 3 * hidden;
    let mut gh = vec![0.0f32; batch * width];
    for t in 0..len {
        let (h_prev, h_row) = if t == 0 {
            (h0, hidden)
        } else {
            (&y[(t - 1) * hidden..], len * hidden)
        };
        w.product(h_prev, h_row, batch, &mut gh, width, false, share_columns);
        for b in 0..batch {
            let row = (b * len + t) * hidden;
            let (before, now) = y.split_at_mut(row);
            let h_prev = if t == 0 {
                &h0[b * hidden..][..hidden]
            } else {
                &before[row - hidden..]
            };
            apply_gates(
                &x_proj[(b * len + t) * width..][..width],
                &gh[b * width..][..width],
                bias,
                h_prev,
                &mut gates[(b * len + t) * width..][..width],
                &mut hn[row..][..hidden],
                &mut now[..hidden],
            );
        }
    }
}

/// The gradients of [`forward`] given its inputs, outputs and `dy` (the gradient of `y`): fills
/// `dx_proj`, `dweight`, `dbias` and `dh0`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: Dims,
    weight: &[f32],
    h0: &[f32],
    y: &[f32],
    gates: &[f32],
    hn: &[f32],
    dy: &[f32],
    dx_proj: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dh0: &mut [f32],
) {
    let Dims { batch, len, hidden } = d;
    let width = 3 * hidden;
    assert!(dy.len() == y.len() && dx_proj.len() == gates.len() && dbias.len() == width);
    assert!(dweight.len() == weight.len() && dh0.len() == h0.len());
    assert!(y.len() == batch * len * hidden && hn.len() == y.len());
    let w_t = Packed::new(weight, hidden, width, true);
    let mut dgh = vec![0.0f32; gates.len()];
    if let Some(first) = batch_cut(d, width) {
        // Batch-major slices, cut as `forward` cuts them.
        let (da, db) = d.cut(first);
        let (h0a, h0b) = h0.split_at(first * hidden);
        let (ya, yb) = y.split_at(first * len * hidden);
        let (ga, gb) = gates.split_at(first * len * width);
        let (hna, hnb) = hn.split_at(first * len * hidden);
        let (dya, dyb) = dy.split_at(first * len * hidden);
        let (dxa, dxb) = dx_proj.split_at_mut(first * len * width);
        let (dgha, dghb) = dgh.split_at_mut(first * len * width);
        let (dh0a, dh0b) = dh0.split_at_mut(first * hidden);
        rayon::join(
            || backward_rows(da, &w_t, h0a, ya, ga, hna, dya, dxa, dgha, dh0a, false),
            || backward_rows(db, &w_t, h0b, yb, gb, hnb, dyb, dxb, dghb, dh0b, false),
        );
    } else {
        backward_rows(d, &w_t, h0, y, gates, hn, dy, dx_proj, &mut dgh, dh0, true);
    }
    recurrent_weight_gradient(d, h0, y, len * hidden, &dgh, dweight);
    dbias.fill(0.0);
    for row in dgh.chunks_exact(width) {
        dbias.iter_mut().zip(row).for_each(|(b, g)| *b += g);
    }
}

/// The steps of [`backward`] for some of the batch's sequences: fills `dx_proj`, `dgh` (the
/// gradient of the recurrent products, for the weights' and bias's gradients) and `dh0`; on one
/// thread unless `share_columns`. `w_t` holds the recurrent weights transposed.
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    d: Dims,
    w_t: &Packed,
    h0: &[f32],
    y: &[f32],
    gates: &[f32],
    hn: &[f32],
    dy: &[f32],
    dx_proj: &mut [f32],
    dgh: &mut [f32],
    dh0: &mut [f32],
    share_columns: bool,
) {
    let Dims { batch, len, hidden } = d;
    let width = 3 * hidden;
    let mut dh = vec![0.0f32; batch * hidden];
    for t in (0..len).rev() {
        for b in 0..batch {
            let row = (b * len + t) * hidden;
            let h_prev = if t == 0 {
                &h0[b * hidden..][..hidden]
            } else {
                &y[row - hidden..][..hidden]
            };
            let at = (b * len + t) * width;
            gate_gradients(
                &gates[at..][..width],
                &hn[row..][..hidden],
                h_prev,
                &dy[row..][..hidden],
                &mut dh[b * hidden..][..hidden],
                &mut dx_proj[at..][..width],
                &mut dgh[at..][..width],
            );
        }
        // dh_{t-1} += dgh_t · Wᵀ
        w_t.product(
            &dgh[t * width..],
            len * width,
            batch,
            &mut dh,
            hidden,
            true,
            share_columns,
        );
    }
    dh0.copy_from_slice(&dh);
}
