//! What the fused recurrent kernels (`lstm.rs`, `gru.rs`) share: the shape of a sequence, the
//! gate non-linearities, and the recurrent weights' gradient over all steps.

use super::strided::{Matrix, gemm_parallel};
use super::zeroed;
use crate::kernels::exp_f32;
use rayon::prelude::*;

/// `batch` sequences of `len` steps through `hidden` units.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub len: usize,
    pub hidden: usize,
}

impl Dims {
    /// The first `rows` sequences of the batch, and the rest.
    pub fn cut(self, rows: usize) -> (Dims, Dims) {
        let rest = self.batch - rows;
        (
            Dims {
                batch: rows,
                ..self
            },
            Dims {
                batch: rest,
                ..self
            },
        )
    }
}

/// The fewest multiply-adds a whole sequence's recurrent products must take before its batch is
/// shared between the two cores (a join costs some microseconds; this is tens of them).
const SHARED_SEQUENCE: usize = 1 << 20;

/// Where to cut the batch so that each core runs its part through every step on its own. A
/// sequence's steps depend on each other but the batch's sequences do not, so two parts need
/// no hand-off between steps; splitting each step's product across the cores instead took two
/// hand-offs per step and left the gates' pass to one core. `None` for a single sequence (whose
/// wide products still split by columns, see [`Packed::product`]) or too little work to share.
/// `width` is the gates' width, the recurrent weights' columns.
pub fn batch_cut(d: Dims, width: usize) -> Option<usize> {
    (d.batch >= 2 && d.batch * d.len * d.hidden * width >= SHARED_SEQUENCE).then_some(d.batch / 2)
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
    // Every element is copied in: nothing to zero first.
    let mut prev = Vec::with_capacity(batch * len * hidden);
    for b in 0..batch {
        prev.extend_from_slice(&h0[b * hidden..][..hidden]);
        prev.extend_from_slice(&y[b * y_row..][..(len - 1) * hidden]);
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

/// Columns per panel of a [`Packed`] matrix: two AVX registers (one AVX-512 register).
const PANEL: usize = 16;
/// The most rows of the thin operand one kernel call carries. Their sums over a panel's
/// columns fill 12 of AVX2's 16 vector registers, leaving room for the panel's row and a
/// broadcast; more rows (or wider panels) spill the sums to memory, which halved the rate.
const ROWS: usize = 6;

/// A `[k, n]` weight matrix laid out once for many thin products `h · W` (`h` a few rows): panels
/// of [`PANEL`] columns, each `[k, PANEL]` contiguous (the last zero-padded). A recurrent layer
/// multiplies the same weights at every step; gemm re-packed them on every call.
pub struct Packed {
    panels: Vec<f32>,
    k: usize,
    n: usize,
}

impl Packed {
    /// Packs `w` (`[k, n]`, row `r` at `w[r * row..]`), or its transpose when `transposed`.
    pub fn new(w: &[f32], rows: usize, cols: usize, transposed: bool) -> Self {
        let (k, n) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let count = n.div_ceil(PANEL);
        let mut panels = zeroed(count * k * PANEL);
        let fill = |(p, panel): (usize, &mut [f32])| {
            let width = n.saturating_sub(p * PANEL).min(PANEL);
            if transposed {
                // Column `col` of the panel is row `col` of `w`: copied a PANEL x PANEL tile at a
                // time, so that both the rows read and the panel rows written stay in L1 (one
                // element at a time down the rows took 2% of a 650-unit LSTM's step).
                for first in (0..k).step_by(PANEL) {
                    let depth = PANEL.min(k - first);
                    for j in 0..width {
                        let src = &w[(p * PANEL + j) * cols + first..][..depth];
                        for (i, &v) in src.iter().enumerate() {
                            panel[(first + i) * PANEL + j] = v;
                        }
                    }
                }
            } else {
                for (kk, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
                    dst[..width].copy_from_slice(&w[kk * cols + p * PANEL..][..width]);
                }
            }
        };
        // Both cores from a quarter of a million weights (a 650-unit LSTM's 1.7 million took
        // about 1% of its step on one).
        if k * n >= 1 << 18 {
            panels
                .par_chunks_exact_mut(k * PANEL)
                .enumerate()
                .for_each(fill);
        } else {
            panels
                .chunks_exact_mut(k * PANEL)
                .enumerate()
                .for_each(fill);
        }
        Self { panels, k, n }
    }

    /// `out (+)= h · W` for `h` rows `h_row` floats apart and `out` rows `out_row` apart (`batch`
    /// rows each), adding to `out` when `accumulate`. When `share_columns`, panels are split
    /// across two threads if the product is large enough to pay for it; a caller whose batch is
    /// already split across the cores passes `false`.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        h: &[f32],
        h_row: usize,
        batch: usize,
        out: &mut [f32],
        out_row: usize,
        accumulate: bool,
        share_columns: bool,
    ) {
        assert!(batch == 0 || (h.len() >= (batch - 1) * h_row + self.k));
        assert!(batch == 0 || (out.len() >= (batch - 1) * out_row + self.n));
        let count = self.n.div_ceil(PANEL);
        let out = SharedOut(out.as_mut_ptr());
        // Rows go in groups of at most ROWS, as even as can be: 20 rows as 5 + 5 + 5 + 5, not
        // 6 + 6 + 6 + 2.
        let groups = batch.div_ceil(ROWS);
        let run = |panels: std::ops::Range<usize>| {
            for p in panels {
                let panel = &self.panels[p * self.k * PANEL..][..self.k * PANEL];
                let columns = p * PANEL..self.n.min((p + 1) * PANEL);
                let group = Group {
                    panel,
                    k: self.k,
                    h,
                    h_row,
                    out,
                    out_row,
                    accumulate,
                };
                for g in 0..groups {
                    let rows = g * batch / groups..(g + 1) * batch / groups;
                    match rows.len() {
                        1 => group.product::<1>(rows.start, columns.clone()),
                        2 => group.product::<2>(rows.start, columns.clone()),
                        3 => group.product::<3>(rows.start, columns.clone()),
                        4 => group.product::<4>(rows.start, columns.clone()),
                        5 => group.product::<5>(rows.start, columns.clone()),
                        _ => group.product::<ROWS>(rows.start, columns.clone()),
                    }
                }
            }
        };
        if share_columns && batch * self.k * self.n >= 1 << 20 && count >= 2 {
            rayon::join(|| run(0..count / 2), || run(count / 2..count));
        } else {
            run(0..count);
        }
    }
}

/// One panel of a [`Packed`] product and where its rows come from and go.
struct Group<'a> {
    panel: &'a [f32],
    k: usize,
    h: &'a [f32],
    h_row: usize,
    out: SharedOut,
    out_row: usize,
    accumulate: bool,
}

impl Group<'_> {
    /// Rows `first..first + R` of the product, in the panel's `columns` of `out`.
    fn product<const R: usize>(&self, first: usize, columns: std::ops::Range<usize>) {
        let h: [&[f32]; R] = std::array::from_fn(|r| &self.h[(first + r) * self.h_row..][..self.k]);
        let sums = panel_product::<R>(self.panel, h, self.k);
        for (r, sums) in sums.iter().enumerate() {
            // SAFETY: row first + r, `columns` of `out` (in bounds, asserted by
            // `Packed::product`); threads own disjoint panels, so disjoint columns.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out
                        .get()
                        .add((first + r) * self.out_row + columns.start),
                    columns.len(),
                )
            };
            if self.accumulate {
                dst.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
            } else {
                dst.copy_from_slice(&sums[..columns.len()]);
            }
        }
    }
}

/// A destination two threads write disjoint columns of.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: see `Packed::product`: the threads write disjoint panels' columns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

vectorised! {
    /// `sums[r] = Σ_k h[r][k] · panel[k]` for `R` rows of `h` (`k` long each): the sums stay in
    /// registers and each panel row is read once.
    pub fn panel_product<const R: usize>(panel: &[f32], h: [&[f32]; R], k: usize) -> [[f32; PANEL]; R] {
        // Fused multiply-adds where the instruction set has them: a constant per compiled copy,
        // evaluated at compile time (as a `let`, it was a call per panel).
        const FMA: bool = multiversion::target::selected_target!().supports_feature_str("fma");
        let h = h.map(|row| &row[..k]);
        let mut sums = [[0.0f32; PANEL]; R];
        for (kk, w) in panel[..k * PANEL].chunks_exact(PANEL).enumerate() {
            let w: &[f32; PANEL] = w.try_into().unwrap();
            for r in 0..R {
                let s = h[r][kk];
                for j in 0..PANEL {
                    sums[r][j] = if FMA {
                        s.mul_add(w[j], sums[r][j])
                    } else {
                        sums[r][j] + s * w[j]
                    };
                }
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn packed_products_match_a_plain_matrix_product() {
        // Every group size from one row to ROWS (batches 1 to 13), a partial last panel, and
        // two products large enough to be split across two threads.
        let small = (1..=13).map(|batch| (batch, 70, 150));
        for (batch, k, n) in small.chain([(3, 5, 7), (9, 700, 700), (20, 200, 800)]) {
            for transposed in [false, true] {
                // `w` holds W (`[k, n]`) or its transpose (`[n, k]`).
                let w = values(k * n, 1);
                let at = |kk: usize, j: usize| {
                    if transposed {
                        w[j * k + kk]
                    } else {
                        w[kk * n + j]
                    }
                };
                let packed = if transposed {
                    Packed::new(&w, n, k, true)
                } else {
                    Packed::new(&w, k, n, false)
                };
                // Rows of `h` and `out` further apart than their width, as in a sequence.
                let (h_row, out_row) = (k + 3, n + 5);
                let h = values(batch * h_row, 2);
                for accumulate in [false, true] {
                    let mut out = values(batch * out_row, 3);
                    let before = out.clone();
                    packed.product(&h, h_row, batch, &mut out, out_row, accumulate, true);
                    for b in 0..batch {
                        for j in 0..n {
                            let dot: f32 = (0..k).map(|kk| h[b * h_row + kk] * at(kk, j)).sum();
                            let expected = dot
                                + if accumulate {
                                    before[b * out_row + j]
                                } else {
                                    0.0
                                };
                            let got = out[b * out_row + j];
                            assert!(
                                (got - expected).abs() < 1e-3,
                                "{batch}x{k}x{n} {transposed}: {got} vs {expected}"
                            );
                        }
                        // Beyond each row's n columns nothing is touched.
                        for j in n..out_row.min(out.len() - b * out_row) {
                            assert_eq!(out[b * out_row + j], before[b * out_row + j]);
                        }
                    }
                }
            }
        }
    }
}
