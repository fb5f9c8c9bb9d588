//! The fused attention kernels behind [`crate::kernels::attention`] and
//! [`crate::kernels::attention_packed`], one head at a time: causal (decoders) or bidirectional
//! (encoders, and cross-attention, whose keys are another sequence's), with keys hidden by
//! padding. Each head's `[len, dim]` query, key, value and output matrices are read and
//! written where they lie (described by [`Heads`]), so the packed QKV projection's output needs no
//! splitting or transposing, and the gradient lands packed the same way. The forward keeps each
//! head's attention probabilities for the backward; every product is one `gemm` call on one thread,
//! with heads (forward) or key/value heads (backward) in parallel.
//!
//! Dropout of the probabilities draws element `(b, h, t, j)`'s mask from the element's index in
//! the `[batch, heads, q_len, k_len]` probabilities, as the dropout kernel would over that
//! tensor; the forward keeps the probabilities before dropout and the backward draws the mask
//! again. A padded key's probability is exactly 0, so its gradients are too and the backward
//! needs no mask.

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

    /// Panics unless `heads` heads of `rows` rows, in every batch row, fit in a buffer of
    /// `size` elements.
    fn check(&self, shape: &Shape, heads: usize, rows: usize, size: usize) {
        let last = self.at(shape.batch - 1, heads - 1) + (rows - 1) * self.row + shape.dim;
        assert!(
            last <= size,
            "attention heads {self:?} overrun a buffer of {size}"
        );
    }
}

/// `batch` rows of `heads` query heads of `q_len` positions sharing `kv_heads` key/value heads
/// of `k_len` positions, `dim` wide.
#[derive(Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub dim: usize,
}

impl Shape {
    /// The key/value head query head `h` reads.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }

    /// Panics unless every input and output fits its buffer and `probs` holds one
    /// `[q_len, k_len]` matrix per head.
    fn check(&self, queries: &[(Heads, usize)], keys: &[(Heads, usize)], probs: usize) {
        for &(heads, size) in queries {
            heads.check(self, self.heads, self.q_len, size);
        }
        for &(heads, size) in keys {
            heads.check(self, self.kv_heads, self.k_len, size);
        }
        assert_eq!(probs, self.batch * self.heads * self.q_len * self.k_len);
    }

    /// The keys `0..end` that query rows `..rows_end` may reach: all of them, or under a
    /// `causal` mask those up to the last row's position.
    fn keys_before(&self, causal: bool, rows_end: usize) -> usize {
        if causal {
            (rows_end + self.k_len - self.q_len).min(self.k_len)
        } else {
            self.k_len
        }
    }
}

/// Which keys each query sees: with `causal`, query `t` (at position `t + k_len - q_len` of the
/// keys' sequence) sees keys `0..=t + k_len - q_len`, else every key; and of those, none whose
/// entry in `padding` (`[batch, k_len]`, when given) is non-zero.
#[derive(Clone, Copy)]
struct Visible<'a> {
    causal: bool,
    padding: Option<&'a [f32]>,
}

impl Visible<'_> {
    /// Softmax in place of query `t`'s scores (batch row `b`; `row` holds `k_len`), scaled:
    /// keys the query does not see get probability exactly 0, and a query that sees no key
    /// attends to nothing (its row is all 0; composed ops would give NaN).
    fn softmax(&self, shape: &Shape, b: usize, t: usize, row: &mut [f32], scale: f32) {
        let (seen, unseen) = row.split_at_mut(shape.keys_before(self.causal, t + 1));
        unseen.fill(0.0);
        let Some(padding) = self.padding else {
            rows::softmax_scaled(seen, scale);
            return;
        };
        let hidden = &padding[b * shape.k_len..][..seen.len()];
        for (s, &h) in seen.iter_mut().zip(hidden) {
            if h != 0.0 {
                *s = f32::NEG_INFINITY;
            }
        }
        rows::softmax_scaled(seen, scale);
        // e^-∞ clamps to about 1e-38 (and a row with no key seen is NaN): exact zeros instead.
        for (p, &h) in seen.iter_mut().zip(hidden) {
            if h != 0.0 {
                *p = 0.0;
            }
        }
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

/// `out = dropout(softmax(q kᵀ scale + mask)) v` for every head, the mask hiding later keys
/// when `weights.causal` and the keys whose entry in `padding` (`[batch, k_len]`) is non-zero;
/// `probs` (`[batch, heads, q_len, k_len]`) receives the softmax, before dropout.
pub fn forward(
    shape: Shape,
    [q, k, v]: [Input; 3],
    out: Output,
    probs: &mut [f32],
    padding: Option<&[f32]>,
    weights: AttentionWeights,
) {
    let Shape {
        heads,
        q_len,
        k_len,
        dim,
        ..
    } = shape;
    let dropout = Dropout::of(weights, q_len, k_len);
    shape.check(
        &[(q.1, q.0.len()), (out.2, out.1)],
        &[(k.1, k.0.len()), (v.1, v.0.len())],
        probs.len(),
    );
    if let Some(padding) = padding {
        assert_eq!(padding.len(), shape.batch * k_len, "key padding");
    }
    assert!(
        !weights.causal || q_len <= k_len,
        "causal attention of {q_len} queries over {k_len} keys"
    );
    let visible = Visible {
        causal: weights.causal,
        padding,
    };
    probs
        .par_chunks_mut(q_len * k_len)
        .enumerate()
        .for_each(|(head, p)| {
            let (b, h) = (head / heads, head % heads);
            let g = shape.kv_head(h);
            let (q, k_t, v) = (q.matrix(b, h), k.matrix(b, g).transposed(), v.matrix(b, g));
            let mut dropped = dropout.scratch();
            for (r0, r1) in row_blocks(q_len, weights.causal) {
                let rows = r1 - r0;
                let keys = shape.keys_before(weights.causal, r1);
                let block = &mut p[r0 * k_len..];
                // SAFETY: operands inside their checked buffers; this task alone writes head
                // (b, h) of `out` and its own `p`. Rows r0..r1 only see keys 0..keys.
                unsafe {
                    gemm(
                        rows,
                        keys,
                        dim,
                        block.as_mut_ptr(),
                        k_len,
                        false,
                        q.down(r0),
                        k_t,
                    );
                }
                for (i, row) in block.chunks_exact_mut(k_len).take(rows).enumerate() {
                    visible.softmax(&shape, b, r0 + i, row, weights.scale);
                }
                let p = dropout.apply(&mut dropped, block, head, r0..r1, keys);
                let dst = out.at(b, h).wrapping_add(r0 * out.2.row);
                // SAFETY: as above.
                unsafe { gemm(rows, dim, keys, dst, out.2.row, false, p, v) };
            }
        });
}

/// The gradients of [`forward`] given its inputs, output, probabilities and the output's
/// gradient: with `p̃` the dropped probabilities and `mask(x)` dropout's mask and scale applied to
/// `x`, `dv = p̃ᵀ do`, `ds = p ∘ (mask(do vᵀ) − rowsum(do ∘ o))` (`rowsum(do ∘ o)` is
/// `rowsum(mask(do vᵀ) ∘ p)`, since `o = p̃ v`), `dq = ds k scale`, `dk = dsᵀ q scale`, summed
/// over the query heads that share a key/value head. Padded keys have `p = 0`, so nothing flows
/// to them and the backward needs no padding. Every element of `dq`, `dk` and `dv`'s heads is
/// written.
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
        heads,
        q_len,
        k_len,
        dim,
        ..
    } = shape;
    let dropout = Dropout::of(weights, q_len, k_len);
    shape.check(
        &[
            (q.1, q.0.len()),
            (out.1, out.0.len()),
            (grad.1, grad.0.len()),
            (dq.2, dq.1),
        ],
        &[
            (k.1, k.0.len()),
            (v.1, v.0.len()),
            (dk.2, dk.1),
            (dv.2, dv.1),
        ],
        probs.len(),
    );
    let group = heads / shape.kv_heads;
    (0..shape.batch * shape.kv_heads)
        .into_par_iter()
        .for_each(|task| {
            let (b, g) = (task / shape.kv_heads, task % shape.kv_heads);
            let mut ds = vec![0.0f32; q_len * k_len];
            let mut dropped = dropout.scratch();
            let (k, v_t) = (k.matrix(b, g), v.matrix(b, g).transposed());
            for h in g * group..(g + 1) * group {
                let head = b * heads + h;
                let p = &probs[head * q_len * k_len..][..q_len * k_len];
                // Last block first: it reaches every key, so the group's first head's first
                // block writes all of dk and dv, and everything after adds to them.
                for (n, (r0, r1)) in row_blocks(q_len, weights.causal).rev().enumerate() {
                    let write = h == g * group && n == 0;
                    let rows = r1 - r0;
                    let keys = shape.keys_before(weights.causal, r1);
                    // The weights the forward applied: the probabilities, dropped out.
                    let weighed = dropout.apply(&mut dropped, &p[r0 * k_len..], head, r0..r1, keys);
                    let d_out = grad.matrix(b, h).down(r0);
                    // SAFETY: operands inside their checked buffers; this task alone writes
                    // the heads (b, g) of dk and dv, the query heads of group g of dq, `ds`
                    // and `dropped`. Rows r0..r1 only involve keys 0..keys.
                    unsafe {
                        let weighed_t = weighed.transposed();
                        gemm(
                            keys,
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
                        &mut dropped[r0 * k_len..]
                    } else {
                        &mut ds[r0 * k_len..]
                    };
                    // SAFETY: as above.
                    unsafe {
                        gemm(
                            rows,
                            keys,
                            dim,
                            d_weighed.as_mut_ptr(),
                            k_len,
                            false,
                            d_out,
                            v_t,
                        )
                    };
                    if dropout.drops() {
                        let d_weighed = &dropped[r0 * k_len..];
                        dropout.mask(&mut ds[r0 * k_len..], d_weighed, head, r0..r1, keys);
                    }
                    let ds_block = &mut ds[r0 * k_len..];
                    let p_rows = p[r0 * k_len..].chunks_exact(k_len);
                    for (i, (ds, p)) in ds_block
                        .chunks_exact_mut(k_len)
                        .zip(p_rows)
                        .take(rows)
                        .enumerate()
                    {
                        let t = r0 + i;
                        let (d_out, out) = (grad.row(b, h, t, dim), out.row(b, h, t, dim));
                        rows::score_gradient(
                            &mut ds[..keys],
                            &p[..keys],
                            d_out,
                            out,
                            weights.scale,
                        );
                    }
                    let ds_m = Matrix::rows(ds_block.as_ptr(), k_len);
                    let dq_at = dq.at(b, h).wrapping_add(r0 * dq.2.row);
                    // SAFETY: as above.
                    unsafe {
                        gemm(rows, dim, keys, dq_at, dq.2.row, false, ds_m, k);
                        let (ds_t, q) = (ds_m.transposed(), q.matrix(b, h).down(r0));
                        gemm(keys, dim, rows, dk.at(b, g), dk.2.row, !write, ds_t, q);
                    }
                }
            }
        });
}

/// Dropout of the attention probabilities (when its probability is positive), each element's
/// mask drawn from its index in the `[batch, heads, q_len, k_len]` probabilities.
#[derive(Clone, Copy)]
struct Dropout {
    prob: f32,
    seed: u64,
    q_len: usize,
    k_len: usize,
}

impl Dropout {
    fn of(weights: AttentionWeights, q_len: usize, k_len: usize) -> Self {
        Dropout {
            prob: weights.dropout,
            seed: weights.seed,
            q_len,
            k_len,
        }
    }

    fn drops(&self) -> bool {
        self.prob > 0.0
    }

    /// A task's buffer for one head's dropped probabilities (none when nothing drops).
    fn scratch(&self) -> Vec<f32> {
        vec![
            0.0;
            if self.drops() {
                self.q_len * self.k_len
            } else {
                0
            }
        ]
    }

    /// `out`'s rows `t` of `rows` (which start at row `rows.start`, `k_len` apart) = the masked
    /// and scaled `x` rows of head `head` (`b * heads + h`), over keys `0..keys`.
    fn mask(
        &self,
        out: &mut [f32],
        x: &[f32],
        head: usize,
        rows: std::ops::Range<usize>,
        keys: usize,
    ) {
        let len = self.k_len;
        for (i, t) in rows.enumerate() {
            let first = ((head * self.q_len + t) * len) as u64;
            let (out, x) = (&mut out[i * len..][..keys], &x[i * len..][..keys]);
            rows::dropout(out, x, self.prob, self.seed, first);
        }
    }

    /// The rows `rows` of head `head`'s probabilities (`p`, starting at row `rows.start`) as
    /// the forward weighs the values with them, over keys `0..keys`: `p` itself, or `p` dropped
    /// out into `scratch`.
    fn apply(
        &self,
        scratch: &mut [f32],
        p: &[f32],
        head: usize,
        rows: std::ops::Range<usize>,
        keys: usize,
    ) -> Matrix {
        if !self.drops() {
            return Matrix::rows(p.as_ptr(), self.k_len);
        }
        let block = &mut scratch[rows.start * self.k_len..];
        self.mask(block, p, head, rows, keys);
        Matrix::rows(block.as_ptr(), self.k_len)
    }
}

/// Query rows in blocks: `(first, end)` pairs. Under a causal mask, blocks of [`BLOCK`] rows, each
/// attending to the keys before its end only, which skips nearly half of the products; without
/// one, every row sees every key and a single block makes the products as large as they can be
/// (two blocks of 64 kept BERT-mini's 128-token inference about 3% slower).
fn row_blocks(len: usize, causal: bool) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    let block = if causal { BLOCK } else { len.max(1) };
    (0..len.div_ceil(block)).map(move |i| (i * block, ((i + 1) * block).min(len)))
}

/// Query rows per block: at 256 positions, 64 cut the causal attention's forward and backward
/// by about 10% here (32 was slower: smaller products run further from gemm's peak).
const BLOCK: usize = 64;
