//! The fused LSTM kernels behind [`crate::kernels::lstm_sequence`]: a whole sequence of one layer, forward
//! and backward through time, on plain slices. Per time step one product multiplies the hidden
//! state by all four gates' recurrent weights (packed once per pass, see `sequence::Packed`;
//! added onto the precomputed input part), then one pass over `[batch, hidden]` applies the gates.
//! The backward runs the steps in reverse, one product per step for the gradient flowing to the
//! previous hidden state; the recurrent weights' gradient is one gemm over all steps at the end.
//! With enough work, each core runs half the batch through every step (`sequence::batch_cut`).
//! Gate order is PyTorch's `(i, f, g, o)`.
//!
//! Layouts (row-major): `x_proj` and `gates` `[batch, len, 4 hidden]`, `weight`
//! `[hidden, 4 hidden]`, states `[batch, hidden]`, `cells` `[batch, len, hidden]`, and `y`
//! `[batch, len + 1, hidden]`: the hidden state after every step, then the final cell state.

use super::sequence::{Dims, Packed, batch_cut, recurrent_weight_gradient, sigmoid, tanh};

vectorised! {
    /// One step of one sequence: turns the gates' pre-activations `g` (`[4 hidden]`) into their
    /// values in place, and writes the new cell and hidden states.
    // Kept out of line (multiversioned): as its own function its slices keep their no-alias
    // guarantee, which the vectoriser needs (inlined into the step loop, it stayed scalar).
    pub fn apply_gates(g: &mut [f32], c_prev: &[f32], c_new: &mut [f32], h_new: &mut [f32]) {
        let n = c_prev.len();
        let (i, rest) = g.split_at_mut(n);
        let (f, rest) = rest.split_at_mut(n);
        let (cand, o) = rest.split_at_mut(n);
        // Equal lengths, stated once, let the compiler drop every bounds check and vectorise.
        let (f, cand, o, c_new, h_new) = (
            &mut f[..n],
            &mut cand[..n],
            &mut o[..n],
            &mut c_new[..n],
            &mut h_new[..n],
        );
        for j in 0..n {
            i[j] = sigmoid(i[j]);
            f[j] = sigmoid(f[j]);
            cand[j] = tanh(cand[j]);
            o[j] = sigmoid(o[j]);
            c_new[j] = f[j] * c_prev[j] + i[j] * cand[j];
            h_new[j] = o[j] * tanh(c_new[j]);
        }
    }
}

vectorised! {
    /// One step of one sequence backwards: from the gates' values `g`, the cell states after and
    /// before the step, the gradient `dy` of the step's output and the gradients `dh` and `dc`
    /// arriving from the next step, writes the gates' pre-activation gradients `dg` and leaves in
    /// `dc` the gradient passed to the previous cell state.
    // Out of line and multiversioned, as `apply_gates`.
    pub fn gate_gradients(
        g: &[f32],
        c: &[f32],
        c_prev: &[f32],
        dy: &[f32],
        dh: &[f32],
        dc: &mut [f32],
        dg: &mut [f32],
    ) {
        let n = c.len();
        let (i, rest) = g.split_at(n);
        let (f, rest) = rest.split_at(n);
        let (cand, o) = rest.split_at(n);
        let (di, rest) = dg.split_at_mut(n);
        let (df, rest) = rest.split_at_mut(n);
        let (dcand, d_o) = rest.split_at_mut(n);
        // Equal lengths, stated once, let the compiler drop every bounds check and vectorise.
        let (f, cand, o, c_prev, dy, dh, dc) = (
            &f[..n],
            &cand[..n],
            &o[..n],
            &c_prev[..n],
            &dy[..n],
            &dh[..n],
            &mut dc[..n],
        );
        let (df, dcand, d_o) = (&mut df[..n], &mut dcand[..n], &mut d_o[..n]);
        for j in 0..n {
            let dh = dy[j] + dh[j];
            let tc = tanh(c[j]);
            let dc_here = dc[j] + dh * o[j] * (1.0 - tc * tc);
            dc[j] = dc_here * f[j];
            di[j] = dc_here * cand[j] * i[j] * (1.0 - i[j]);
            df[j] = dc_here * c_prev[j] * f[j] * (1.0 - f[j]);
            dcand[j] = dc_here * i[j] * (1.0 - cand[j] * cand[j]);
            d_o[j] = dh * tc * o[j] * (1.0 - o[j]);
        }
    }
}

/// Runs the sequence from `(h0, c0)`; fills `y`, and `gates` (after their non-linearities) and
/// `cells` for the backward.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    d: Dims,
    x_proj: &[f32],
    weight: &[f32],
    h0: &[f32],
    c0: &[f32],
    y: &mut [f32],
    gates: &mut [f32],
    cells: &mut [f32],
) {
    let Dims { batch, len, hidden } = d;
    let width = 4 * hidden;
    assert!(len > 0, "an LSTM sequence needs at least one step");
    assert!(x_proj.len() == batch * len * width && gates.len() == x_proj.len());
    assert!(weight.len() == hidden * width && h0.len() == batch * hidden && c0.len() == h0.len());
    assert!(y.len() == batch * (len + 1) * hidden && cells.len() == batch * len * hidden);
    let w = Packed::new(weight, hidden, width, false);
    let Some(first) = batch_cut(d, width) else {
        return forward_rows(d, x_proj, &w, h0, c0, y, gates, cells, true);
    };
    // Every slice is batch-major: the first `first` sequences' rows, then the rest's.
    let (da, db) = d.cut(first);
    let (xa, xb) = x_proj.split_at(first * len * width);
    let (h0a, h0b) = h0.split_at(first * hidden);
    let (c0a, c0b) = c0.split_at(first * hidden);
    let (ya, yb) = y.split_at_mut(first * (len + 1) * hidden);
    let (ga, gb) = gates.split_at_mut(first * len * width);
    let (ca, cb) = cells.split_at_mut(first * len * hidden);
    rayon::join(
        || forward_rows(da, xa, &w, h0a, c0a, ya, ga, ca, false),
        || forward_rows(db, xb, &w, h0b, c0b, yb, gb, cb, false),
    );
}

/// [`forward`] for some of the batch's sequences, on one thread unless `share_columns`.
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    d: Dims,
    x_proj: &[f32],
    w: &Packed,
    h0: &[f32],
    c0: &[f32],
    y: &mut [f32],
    gates: &mut [f32],
    cells: &mut [f32],
    share_columns: bool,
) {
    let Dims { batch, len, hidden } = d;
    let width = 4 * hidden;
    gates.copy_from_slice(x_proj);
    for t in 0..len {
        // The previous hidden state: h0, or step t - 1 of y (rows (len + 1) hidden apart).
        let (h_prev, h_row) = if t == 0 {
            (h0, hidden)
        } else {
            (&y[(t - 1) * hidden..], (len + 1) * hidden)
        };
        w.product(
            h_prev,
            h_row,
            batch,
            &mut gates[t * width..],
            len * width,
            true,
            share_columns,
        );
        for b in 0..batch {
            let g = &mut gates[(b * len + t) * width..][..width];
            let (before, now) = cells.split_at_mut((b * len + t) * hidden);
            let c_prev = if t == 0 {
                &c0[b * hidden..][..hidden]
            } else {
                &before[(b * len + t - 1) * hidden..][..hidden]
            };
            let h = &mut y[(b * (len + 1) + t) * hidden..][..hidden];
            apply_gates(g, c_prev, &mut now[..hidden], h);
        }
    }
    for b in 0..batch {
        let last = &cells[(b * len + len - 1) * hidden..][..hidden];
        y[(b * (len + 1) + len) * hidden..][..hidden].copy_from_slice(last);
    }
}

/// The gradients of [`forward`] given its inputs, outputs and `dy` (the gradient of `y`, whose
/// last slot is the final cell state's): fills `dx_proj`, `dweight`, `dh0` and `dc0`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: Dims,
    weight: &[f32],
    h0: &[f32],
    c0: &[f32],
    y: &[f32],
    gates: &[f32],
    cells: &[f32],
    dy: &[f32],
    dx_proj: &mut [f32],
    dweight: &mut [f32],
    dh0: &mut [f32],
    dc0: &mut [f32],
) {
    let Dims { batch, len, hidden } = d;
    let width = 4 * hidden;
    assert!(dy.len() == y.len() && dx_proj.len() == gates.len());
    assert!(gates.len() == batch * len * width && cells.len() == batch * len * hidden);
    assert!(dweight.len() == weight.len() && dh0.len() == h0.len() && dc0.len() == c0.len());
    let w_t = Packed::new(weight, hidden, width, true);
    if let Some(first) = batch_cut(d, width) {
        // Batch-major slices, cut as `forward` cuts them.
        let (da, db) = d.cut(first);
        let (c0a, c0b) = c0.split_at(first * hidden);
        let (ga, gb) = gates.split_at(first * len * width);
        let (ca, cb) = cells.split_at(first * len * hidden);
        let (dya, dyb) = dy.split_at(first * (len + 1) * hidden);
        let (dxa, dxb) = dx_proj.split_at_mut(first * len * width);
        let (dh0a, dh0b) = dh0.split_at_mut(first * hidden);
        let (dc0a, dc0b) = dc0.split_at_mut(first * hidden);
        rayon::join(
            || backward_rows(da, &w_t, c0a, ga, ca, dya, dxa, dh0a, dc0a, false),
            || backward_rows(db, &w_t, c0b, gb, cb, dyb, dxb, dh0b, dc0b, false),
        );
    } else {
        backward_rows(d, &w_t, c0, gates, cells, dy, dx_proj, dh0, dc0, true);
    }
    recurrent_weight_gradient(d, h0, y, (len + 1) * hidden, dx_proj, dweight);
}

/// The steps of [`backward`] for some of the batch's sequences (all but the weights' gradient),
/// on one thread unless `share_columns`; `w_t` holds the recurrent weights transposed.
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    d: Dims,
    w_t: &Packed,
    c0: &[f32],
    gates: &[f32],
    cells: &[f32],
    dy: &[f32],
    dx_proj: &mut [f32],
    dh0: &mut [f32],
    dc0: &mut [f32],
    share_columns: bool,
) {
    let Dims { batch, len, hidden } = d;
    let width = 4 * hidden;
    // Gradients reaching step t's state from step t + 1; the cell's starts as the final cell's.
    let mut dh_next = vec![0.0f32; batch * hidden];
    let mut dc_next = vec![0.0f32; batch * hidden];
    for b in 0..batch {
        let slot = &dy[(b * (len + 1) + len) * hidden..][..hidden];
        dc_next[b * hidden..][..hidden].copy_from_slice(slot);
    }
    for t in (0..len).rev() {
        for b in 0..batch {
            let at = |t: usize| (b * len + t) * hidden;
            let c_prev = if t == 0 {
                &c0[b * hidden..][..hidden]
            } else {
                &cells[at(t - 1)..][..hidden]
            };
            gate_gradients(
                &gates[(b * len + t) * width..][..width],
                &cells[at(t)..][..hidden],
                c_prev,
                &dy[(b * (len + 1) + t) * hidden..][..hidden],
                &dh_next[b * hidden..][..hidden],
                &mut dc_next[b * hidden..][..hidden],
                &mut dx_proj[(b * len + t) * width..][..width],
            );
        }
        // dh_{t-1} = dgates_t · Wᵀ
        w_t.product(
            &dx_proj[t * width..],
            len * width,
            batch,
            &mut dh_next,
            hidden,
            false,
            share_columns,
        );
    }
    dh0.copy_from_slice(&dh_next);
    dc0.copy_from_slice(&dc_next);
}
