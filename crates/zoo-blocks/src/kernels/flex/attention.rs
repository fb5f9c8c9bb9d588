//! The fused causal-attention kernels behind [`crate::kernels::causal_attention`] and
//! [`crate::kernels::causal_attention_packed`],
//! one head at a time. Each head's `[len, dim]` query, key, value and output matrices are read and
//! written where they lie (described by [`Heads`]), so the packed QKV projection's output needs no
//! splitting or transposing, and the gradient lands packed the same way. The forward keeps each
//! head's attention probabilities for the backward; every product is one `gemm` call on one thread,
//! with heads (forward) or key/value heads (backward) in parallel.
//!
//! Dropout of the probabilities draws element `(b, h, t, j)`'s mask from the element's index in
//! the `[batch, heads, len, len]` probabilities, as the dropout kernel would over that tensor;
//! the forward keeps the probabilities before dropout and the backward draws the mask again.

use super::rows;
use super::strided::{Matrix, gemm};
use crate::kernels::AttentionWeights;
use rayon::prelude::*;

/// Where every head's `[len, dim]` matrix sits in a buffer: element `(t, j)` of head `h` of
/// batch row `b` is at `offset + b * batch + h * head + t * row + j`.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub offset: usize,
    pub batch: usize,
    pub head: usize,
    pub row: usize,
}

impl Heads {
    /// Heads of a contiguous `[batch, heads, len, dim]` tensor.
    pub fn split(heads: usize, len: usize, dim: usize) -> Self {
        Heads {
            offset: 0,
            batch: heads * len * dim,
            head: len * dim,
            row: dim,
        }
    }

    /// Heads side by side in the rows of a contiguous `[batch, len, width]` tensor, head `h`
    /// in columns `offset + h * dim ..`.
    pub fn packed(offset: usize, len: usize, width: usize, dim: usize) -> Self {
        Heads {
            offset,
            batch: len * width,
            head: dim,
            row: width,
        }
    }

    fn at(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.batch + h * self.head
    }

    /// Panics unless `heads` heads of every batch row fit in a buffer of `len` elements.
    fn check(&self, shape: &Shape, heads: usize, len: usize) {
        let last = self.at(shape.batch - 1, heads - 1) + (shape.len - 1) * self.row + shape.dim;
        assert!(
            last <= len,
            "attention heads {self:?} overrun a buffer of {len}"
        );
    }
}

/// `batch` rows of `heads` query heads sharing `kv_heads` key/value heads, `len` positions,
/// `dim` wide.
#[derive(Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub len: usize,
    pub dim: usize,
}

impl Shape {
    /// The key/value head query head `h` reads.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }
}

/// A read-only buffer and where its heads sit.
#[derive(Clone, Copy)]
pub struct Input<'a>(pub &'a [f32], pub Heads);

impl<'a> Input<'a> {
    fn matrix(&self, b: usize, h: usize) -> Matrix {
        Matrix::rows(self.0[self.1.at(b, h)..].as_ptr(), self.1.row)
    }

    /// Row `t` of head `(b, h)`, `dim` wide.
    fn row(&self, b: usize, h: usize, t: usize, dim: usize) -> &'a [f32] {
        &self.0[self.1.at(b, h) + t * self.1.row..][..dim]
    }
}

/// A buffer that parallel tasks write disjoint heads of, and where its heads sit.
#[derive(Clone, Copy)]
pub struct Output(*mut f32, usize, Heads);

// SAFETY: tasks only write the heads they own (see `forward` and `backward`).
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    pub fn new(buffer: &mut [f32], heads: Heads) -> Self {
        Output(buffer.as_mut_ptr(), buffer.len(), heads)
    }

    fn at(&self, b: usize, h: usize) -> *mut f32 {
        // SAFETY: in bounds, checked by `Heads::check` before any task runs.
        unsafe { self.0.add(self.2.at(b, h)) }
    }
}

/// `out = dropout(softmax(q kᵀ scale + causal mask)) v` for every head; `probs`
/// (`[batch, heads, len, len]`) receives the softmax, before dropout.
pub fn forward(
    shape: Shape,
    [q, k, v]: [Input; 3],
    out: Output,
    probs: &mut [f32],
    weights: AttentionWeights,
) {
    let Shape {
        heads, len, dim, ..
    } = shape;
    let dropout = Dropout::of(weights, len);
    q.1.check(&shape, heads, q.0.len());
    k.1.check(&shape, shape.kv_heads, k.0.len());
    v.1.check(&shape, shape.kv_heads, v.0.len());
    out.2.check(&shape, heads, out.1);
    assert_eq!(probs.len(), shape.batch * heads * len * len);
    probs
        .par_chunks_mut(len * len)
        .enumerate()
        .for_each(|(head, p)| {
            let (b, h) = (head / heads, head % heads);
            let g = shape.kv_head(h);
            let (q, k_t, v) = (q.matrix(b, h), k.matrix(b, g).transposed(), v.matrix(b, g));
            let mut dropped = dropout.scratch();
            for (r0, r1) in row_blocks(len) {
                let rows = r1 - r0;
                let block = &mut p[r0 * len..];
                // SAFETY: operands inside their checked buffers; this task alone writes head
                // (b, h) of `out` and its own `p`. Rows r0..r1 only see keys 0..r1.
                unsafe {
                    gemm(
                        rows,
                        r1,
                        dim,
                        block.as_mut_ptr(),
                        len,
                        false,
                        q.down(r0),
                        k_t,
                    );
                }
                for (i, row) in block.chunks_exact_mut(len).take(rows).enumerate() {
                    let (seen, future) = row.split_at_mut(r0 + i + 1);
                    future.fill(0.0);
                    rows::softmax_scaled(seen, weights.scale);
                }
                let p = dropout.apply(&mut dropped, block, head, r0..r1);
                let dst = out.at(b, h).wrapping_add(r0 * out.2.row);
                // SAFETY: as above.
                unsafe { gemm(rows, dim, r1, dst, out.2.row, false, p, v) };
            }
        });
}

/// The gradients of [`forward`] given its inputs, output, probabilities and the output's
/// gradient: with `p̃` the dropped probabilities and `mask(x)` dropout's mask and scale applied to
/// `x`, `dv = p̃ᵀ do`, `ds = p ∘ (mask(do vᵀ) − rowsum(do ∘ o))` (`rowsum(do ∘ o)` is
/// `rowsum(mask(do vᵀ) ∘ p)`, since `o = p̃ v`), `dq = ds k scale`, `dk = dsᵀ q scale`, summed
/// over the query heads that share a key/value head. Every element of `dq`, `dk` and `dv`'s
/// heads is written.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: Shape,
    [q, k, v]: [Input; 3],
    out: Input,
    grad: Input,
    probs: &[f32],
    [dq, dk, dv]: [Output; 3],
    weights: AttentionWeights,
) {
    let Shape {
        heads, len, dim, ..
    } = shape;
    let dropout = Dropout::of(weights, len);
    for (input, n) in [(q, heads), (k, shape.kv_heads), (v, shape.kv_heads)] {
        input.1.check(&shape, n, input.0.len());
    }
    out.1.check(&shape, heads, out.0.len());
    grad.1.check(&shape, heads, grad.0.len());
    dq.2.check(&shape, heads, dq.1);
    dk.2.check(&shape, shape.kv_heads, dk.1);
    dv.2.check(&shape, shape.kv_heads, dv.1);
    assert_eq!(probs.len(), shape.batch * heads * len * len);
    let group = heads / shape.kv_heads;
    (0..shape.batch * shape.kv_heads)
        .into_par_iter()
        .for_each(|task| {
            let (b, g) = (task / shape.kv_heads, task % shape.kv_heads);
            let mut ds = vec![0.0f32; len * len];
            let mut dropped = dropout.scratch();
            let (k, v_t) = (k.matrix(b, g), v.matrix(b, g).transposed());
            for h in g * group..(g + 1) * group {
                let head = b * heads + h;
                let p = &probs[head * len * len..][..len * len];
                // Last block first: it reaches every key, so the group's first head's first
                // block writes all of dk and dv, and everything after adds to them.
                for (n, (r0, r1)) in row_blocks(len).rev().enumerate() {
                    let write = h == g * group && n == 0;
                    let rows = r1 - r0;
                    // The weights the forward applied: the probabilities, dropped out.
                    let weighed = dropout.apply(&mut dropped, &p[r0 * len..], head, r0..r1);
                    let d_out = grad.matrix(b, h).down(r0);
                    // SAFETY: operands inside their checked buffers; this task alone writes
                    // the heads (b, g) of dk and dv, the query heads of group g of dq, `ds`
                    // and `dropped`. Rows r0..r1 only involve keys 0..r1.
                    unsafe {
                        let weighed_t = weighed.transposed();
                        gemm(
                            r1,
                            dim,
                            rows,
                            dv.at(b, g),
                            dv.2.row,
                            !write,
                            weighed_t,
                            d_out,
                        );
                    }
                    // `do vᵀ` is the gradient of the dropped probabilities; through the mask it
                    // becomes the probabilities' own.
                    let d_weighed = if dropout.drops() {
                        &mut dropped[r0 * len..]
                    } else {
                        &mut ds[r0 * len..]
                    };
                    // SAFETY: as above.
                    unsafe {
                        gemm(
                            rows,
                            r1,
                            dim,
                            d_weighed.as_mut_ptr(),
                            len,
                            false,
                            d_out,
                            v_t,
                        )
                    };
                    if dropout.drops() {
                        let d_weighed = &dropped[r0 * len..];
                        dropout.mask(&mut ds[r0 * len..], d_weighed, head, r0..r1);
                    }
                    let ds_block = &mut ds[r0 * len..];
                    let p_rows = p[r0 * len..].chunks_exact(len);
                    for (i, (ds, p)) in ds_block
                        .chunks_exact_mut(len)
                        .zip(p_rows)
                        .take(rows)
                        .enumerate()
                    {
                        let t = r0 + i;
                        let (d_out, out) = (grad.row(b, h, t, dim), out.row(b, h, t, dim));
                        rows::score_gradient(&mut ds[..r1], &p[..r1], d_out, out, weights.scale);
                    }
                    let ds_m = Matrix::rows(ds_block.as_ptr(), len);
                    let dq_at = dq.at(b, h).wrapping_add(r0 * dq.2.row);
                    // SAFETY: as above.
                    unsafe {
                        gemm(rows, dim, r1, dq_at, dq.2.row, false, ds_m, k);
                        let (ds_t, q) = (ds_m.transposed(), q.matrix(b, h).down(r0));
                        gemm(r1, dim, rows, dk.at(b, g), dk.2.row, !write, ds_t, q);
                    }
                }
            }
        });
}

/// Dropout of the attention probabilities (when its probability is positive), each element's
/// mask drawn from its index in the `[batch, heads, len, len]` probabilities.
#[derive(Clone, Copy)]
struct Dropout {
    prob: f32,
    seed: u64,
    len: usize,
}

impl Dropout {
    fn of(weights: AttentionWeights, len: usize) -> Self {
        Dropout {
            prob: weights.dropout,
            seed: weights.seed,
            len,
        }
    }

    fn drops(&self) -> bool {
        self.prob > 0.0
    }

    /// A task's buffer for one head's dropped probabilities (none when nothing drops).
    fn scratch(&self) -> Vec<f32> {
        vec![0.0; if self.drops() { self.len * self.len } else { 0 }]
    }

    /// `out`'s rows `t` of `rows` (which start at row `rows.start`, `len` apart) = the masked
    /// and scaled `x` rows of head `head` (`b * heads + h`), over keys `0..rows.end`.
    fn mask(&self, out: &mut [f32], x: &[f32], head: usize, rows: std::ops::Range<usize>) {
        let len = self.len;
        for (i, t) in rows.clone().enumerate() {
            let first = ((head * len + t) * len) as u64;
            let (out, x) = (&mut out[i * len..][..rows.end], &x[i * len..][..rows.end]);
            rows::dropout(out, x, self.prob, self.seed, first);
        }
    }

    /// The rows `rows` of head `head`'s probabilities (`p`, starting at row `rows.start`) as
    /// the forward weighs the values with them: `p` itself, or `p` dropped out into `scratch`.
    fn apply(
        &self,
        scratch: &mut [f32],
        p: &[f32],
        head: usize,
        rows: std::ops::Range<usize>,
    ) -> Matrix {
        if !self.drops() {
            return Matrix::rows(p.as_ptr(), self.len);
        }
        let block = &mut scratch[rows.start * self.len..];
        self.mask(block, p, head, rows);
        Matrix::rows(block.as_ptr(), self.len)
    }
}

/// Query rows in blocks of [`BLOCK`]: `(first, end)` pairs. A block of rows attends to
/// keys `0..end` only, which skips nearly half of the causal products.
fn row_blocks(len: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    (0..len.div_ceil(BLOCK)).map(move |i| (i * BLOCK, ((i + 1) * BLOCK).min(len)))
}

/// Query rows per block: at 256 positions, 64 cut the attention's forward and backward by
/// about 10% here (32 was slower: smaller products run further from gemm's peak).
const BLOCK: usize = 64;
