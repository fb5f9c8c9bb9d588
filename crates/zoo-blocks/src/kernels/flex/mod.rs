//! The flex (CPU) implementation of [`ZooOps`]: each op reads its tensors as f32 slices and runs
//! the element loops of the files beside this one (vectorised per instruction set, parallel
//! over rows with rayon); tensors of other dtypes go to Burn's own ops.

mod attention;
mod gru;
mod layer_norm;
mod lstm;
mod rows;
mod sequence;
mod strided;

use super::{AdamWStep, AttentionWeights, ZooOps};
use burn::backend::DType;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn_flex::{Flex, FlexTensor, Layout};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
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
        // In place when nothing else holds the input (inference; a recorded forward keeps it for
        // the backward): no output to allocate and fill.
        if overwritable(&x) {
            return updated(x, |_, chunk| rows::gelu_in_place(chunk));
        }
        let Some(x) = contiguous_f32(&x) else {
            return Flex::gelu(x);
        };
        let input = x.as_slice::<f32>().expect("contiguous");
        // SAFETY: `rows::gelu` writes every element of its chunk.
        let [out] = unsafe {
            written_by([input.len()], |[out]| {
                out.par_chunks_mut(CHUNK)
                    .zip(input.par_chunks(CHUNK))
                    .for_each(|(o, i)| rows::gelu(o, i))
            })
        };
        from_f32(out, x.layout().shape().clone())
    }

    fn zoo_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (Some(x), DType::F32) = (contiguous_f32(&x), grad.dtype()) else {
            return Flex::gelu_backward(x, grad);
        };
        let input = x.as_slice::<f32>().expect("contiguous");
        // Into the incoming gradient when nothing else holds it (the usual case).
        updated(grad, |at, g| {
            rows::gelu_backward(g, &input[at..][..g.len()])
        })
    }

    fn zoo_dropout(x: FlexTensor, prob: f32, seed: u64) -> FlexTensor {
        // In place when nothing else holds the input: the forward's usually, as the backward
        // draws the mask again rather than keeping anything, and the backward's gradient.
        updated(x, |at, x| rows::dropout_in_place(x, prob, seed, at as u64))
    }

    fn zoo_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        padding: FlexTensor,
        weights: AttentionWeights,
    ) -> (FlexTensor, FlexTensor) {
        let shape = split_shape(&q, &k);
        let [q, k, v] = [&q, &k, &v].map(f32_contiguous);
        let padding = f32_contiguous(&padding);
        let [b, h, t, d, s] = [
            shape.batch,
            shape.heads,
            shape.q_len,
            shape.dim,
            shape.k_len,
        ];
        let (query, kv) = split_heads(&shape);
        // SAFETY: the forward writes every element of the output's heads (which tile it) and
        // of the probabilities.
        let [out, probs] = unsafe {
            written_by(
                [q.layout().num_elements(), b * h * t * s],
                |[out, probs]| {
                    attention::forward(
                        shape,
                        [input(&q, query), input(&k, kv), input(&v, kv)],
                        attention::Output::new(out, query),
                        probs,
                        key_padding(&padding),
                        weights,
                    )
                },
            )
        };
        (
            from_f32(out, [b, h, t, d].into()),
            from_f32(probs, [b, h, t, s].into()),
        )
    }

    fn zoo_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        probs: FlexTensor,
        grad: FlexTensor,
        weights: AttentionWeights,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = split_shape(&q, &k);
        let [q, k, v, out, probs, grad] = [&q, &k, &v, &out, &probs, &grad].map(f32_contiguous);
        let (query, kv) = split_heads(&shape);
        let [q_size, kv_size] = [&q, &k].map(|t| t.layout().num_elements());
        if shape.q_len == 0 {
            // No query attends: the keys and values get zero gradients.
            let zeros = || from_f32(zeroed(kv_size), k.layout().shape().clone());
            return (
                from_f32(Vec::new(), q.layout().shape().clone()),
                zeros(),
                zeros(),
            );
        }
        // SAFETY: with a query at least, the backward writes every element of the gradients'
        // heads, which tile them.
        let [dq, dk, dv] = unsafe {
            written_by([q_size, kv_size, kv_size], |[dq, dk, dv]| {
                attention::backward(
                    shape,
                    [input(&q, query), input(&k, kv), input(&v, kv)],
                    input(&out, query),
                    input(&grad, query),
                    probs.as_slice::<f32>().unwrap(),
                    [
                        attention::Output::new(dq, query),
                        attention::Output::new(dk, kv),
                        attention::Output::new(dv, kv),
                    ],
                    weights,
                )
            })
        };
        (
            from_f32(dq, q.layout().shape().clone()),
            from_f32(dk, k.layout().shape().clone()),
            from_f32(dv, k.layout().shape().clone()),
        )
    }

    fn zoo_attention_packed(
        qkv: FlexTensor,
        padding: FlexTensor,
        n_heads: usize,
        n_kv_heads: usize,
        weights: AttentionWeights,
    ) -> (FlexTensor, FlexTensor) {
        let shape = packed_shape(&qkv, n_heads, n_kv_heads);
        let qkv = f32_contiguous(&qkv);
        let padding = f32_contiguous(&padding);
        let [b, h, t, d] = [shape.batch, shape.heads, shape.q_len, shape.dim];
        let heads = packed_heads(&shape);
        // SAFETY: the forward writes every element of the output's heads (which tile it) and
        // of the probabilities.
        let [out, probs] = unsafe {
            written_by([b * t * h * d, b * h * t * t], |[out, probs]| {
                attention::forward(
                    shape,
                    heads.map(|heads| input(&qkv, heads)),
                    attention::Output::new(out, attention::Heads::packed(0, t, h * d, d)),
                    probs,
                    key_padding(&padding),
                    weights,
                )
            })
        };
        (
            from_f32(out, [b, t, h * d].into()),
            from_f32(probs, [b, h, t, t].into()),
        )
    }

    fn zoo_attention_packed_backward(
        qkv: FlexTensor,
        out: FlexTensor,
        probs: FlexTensor,
        grad: FlexTensor,
        n_heads: usize,
        n_kv_heads: usize,
        weights: AttentionWeights,
    ) -> FlexTensor {
        let shape = packed_shape(&qkv, n_heads, n_kv_heads);
        let [qkv, out, probs, grad] = [&qkv, &out, &probs, &grad].map(f32_contiguous);
        let [t, d] = [shape.q_len, shape.dim];
        let out_heads = attention::Heads::packed(0, t, shape.heads * d, d);
        let heads = packed_heads(&shape);
        // SAFETY: every element is written: each head of q, k and v gets its gradient (with no
        // query there are no keys either, and so no element).
        let [dqkv] = unsafe {
            written_by([qkv.layout().num_elements()], |[dqkv]| {
                attention::backward(
                    shape,
                    heads.map(|heads| input(&qkv, heads)),
                    input(&out, out_heads),
                    input(&grad, out_heads),
                    probs.as_slice::<f32>().unwrap(),
                    heads.map(|heads| attention::Output::new(dqkv, heads)),
                    weights,
                )
            })
        };
        from_f32(dqkv, qkv.layout().shape().clone())
    }

    fn zoo_adamw(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let grad = f32_contiguous(&grad);
        let g = grad.as_slice::<f32>().unwrap();
        let bias = step.bias_corrections();
        // The parameter and its moments are updated where they lie when nothing else holds
        // them (the moments, which the optimiser hands over), else in copies.
        let [mut p, mut m, mut v] = [param, moment_1, moment_2].map(unique_f32);
        let [ps, ms, vs] = [&mut p, &mut m, &mut v].map(|t| t.storage_mut::<f32>());
        ps.par_chunks_mut(CHUNK)
            .zip(ms.par_chunks_mut(CHUNK).zip(vs.par_chunks_mut(CHUNK)))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((ps, (ms, vs)), gs)| {
                for (((p, m), v), &g) in ps.iter_mut().zip(ms).zip(vs).zip(gs) {
                    [*p, *m, *v] = step.apply(*p, g, *m, *v, bias);
                }
            });
        (p, m, v)
    }

    fn zoo_sgd(param: FlexTensor, grad: FlexTensor, lr: f32, weight_decay: f32) -> FlexTensor {
        let grad = f32_contiguous(&grad);
        let grads = grad.as_slice::<f32>().unwrap();
        updated(param, |at, ps| {
            for (p, &g) in ps.iter_mut().zip(&grads[at..]) {
                // Burn's order: the decay added to the gradient, then the step.
                *p -= (g + *p * weight_decay) * lr;
            }
        })
    }

    fn zoo_embedding_backward(grad: FlexTensor, ids: FlexTensor, vocab: usize) -> FlexTensor {
        let grad = f32_contiguous(&grad);
        let d = *grad
            .layout()
            .shape()
            .last()
            .expect("an embedding's gradient has rows");
        let rows = grad.as_slice::<f32>().unwrap().chunks_exact(d.max(1));
        let ids = class_ids("embedding", ids, rows.len(), vocab);
        // Rows a few hundred wide, a few thousand of them: one thread adds them faster than
        // two could share the (repeating) ids.
        let mut weight = zeroed(vocab * d);
        for (row, id) in rows.zip(ids) {
            let dst = &mut weight[id * d..][..d];
            dst.iter_mut().zip(row).for_each(|(w, g)| *w += g);
        }
        from_f32(weight, [vocab, d].into())
    }

    fn zoo_cross_entropy(logits: FlexTensor, targets: FlexTensor, smoothing: f32) -> FlexTensor {
        let logits = f32_contiguous(&logits);
        let values = logits.as_slice::<f32>().unwrap();
        let [n, classes] = logits.layout().shape().dims::<2>();
        let targets = class_ids("cross-entropy", targets, n, classes);
        let total: f64 = values
            .par_chunks(classes.max(1))
            .zip(targets.par_iter())
            .map(|(row, &target)| {
                let row_sum = if smoothing > 0.0 { rows::sum(row) } else { 0.0 };
                let lse = rows::log_sum_exp(row);
                row_loss(lse, row[target], row_sum, classes, smoothing)
            })
            .sum();
        mean_loss(total, n)
    }

    fn zoo_cross_entropy_with_gradient(
        logits: FlexTensor,
        targets: FlexTensor,
        smoothing: f32,
    ) -> (FlexTensor, FlexTensor) {
        let [n, classes] = logits.layout().shape().dims::<2>();
        let targets = class_ids("cross-entropy", targets, n, classes);
        let scale = 1.0 / n.max(1) as f32;
        // The target distribution: 1 − ε on the target, ε spread over every class.
        let (on_target, everywhere) = (
            (1.0 - smoothing) * scale,
            smoothing * scale / classes as f32,
        );
        // The gradient overwrites the logits when nothing else holds them (the recorded forward
        // moves them in), sparing an output as large as the logits (a language model's
        // [tokens, vocabulary]).
        let mut gradient = unique_f32(logits);
        let total: f64 = gradient
            .storage_mut::<f32>()
            .par_chunks_mut(classes.max(1))
            .zip(targets.par_iter())
            .map(|(row, &target)| {
                // What the loss needs of the logits, read before they are overwritten.
                let target_logit = row[target];
                let row_sum = if smoothing > 0.0 { rows::sum(row) } else { 0.0 };
                let lse = rows::softmax_gradient(row, scale, everywhere);
                row[target] -= on_target;
                row_loss(lse, target_logit, row_sum, classes, smoothing)
            })
            .sum();
        (mean_loss(total, n), gradient)
    }

    fn zoo_may_overwrite(x: &FlexTensor) -> bool {
        overwritable(x)
    }

    fn zoo_scale(x: FlexTensor, factor: FlexTensor) -> FlexTensor {
        let factor = f32_contiguous(&factor);
        let factor = factor.as_slice::<f32>().unwrap()[0];
        if factor == 1.0 {
            return x;
        }
        updated(x, |_, chunk| chunk.iter_mut().for_each(|v| *v *= factor))
    }

    fn zoo_gru(
        x_proj: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        h0: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dims = sequence_dims(&x_proj, 3);
        let (batch, len, hidden) = (dims.batch, dims.len, dims.hidden);
        let width = 3 * hidden;
        let tensors = [&x_proj, &weight, &bias, &h0].map(f32_contiguous);
        let [x, w, b, h0] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
        let mut y = zeroed(batch * len * hidden);
        let mut gates = zeroed(x.len());
        let mut hn = zeroed(y.len());
        gru::forward(dims, x, w, b, h0, &mut y, &mut gates, &mut hn);
        (
            from_f32(y, [batch, len, hidden].into()),
            from_f32(gates, [batch, len, width].into()),
            from_f32(hn, [batch, len, hidden].into()),
        )
    }

    fn zoo_gru_backward(
        weight: FlexTensor,
        h0: FlexTensor,
        y: FlexTensor,
        gates: FlexTensor,
        hn: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let dims = sequence_dims(&gates, 3);
        let (batch, len, width) = (dims.batch, dims.len, 3 * dims.hidden);
        let tensors = [&weight, &h0, &y, &gates, &hn, &grad].map(f32_contiguous);
        let [w, h0s, y, gates, hn, dy] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
        let mut dx = zeroed(gates.len());
        let mut dw = zeroed(w.len());
        let mut db = zeroed(width);
        let mut dh0 = zeroed(h0s.len());
        gru::backward(
            dims, w, h0s, y, gates, hn, dy, &mut dx, &mut dw, &mut db, &mut dh0,
        );
        (
            from_f32(dx, [batch, len, width].into()),
            from_f32(dw, weight.layout().shape().clone()),
            from_f32(db, [width].into()),
            from_f32(dh0, h0.layout().shape().clone()),
        )
    }

    fn zoo_lstm(
        x_proj: FlexTensor,
        weight: FlexTensor,
        h0: FlexTensor,
        c0: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dims = sequence_dims(&x_proj, 4);
        let (batch, len, width) = (dims.batch, dims.len, 4 * dims.hidden);
        let tensors = [&x_proj, &weight, &h0, &c0].map(f32_contiguous);
        let [x, w, h0, c0] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
        let hidden = dims.hidden;
        let mut y = zeroed(batch * (len + 1) * hidden);
        let mut gates = zeroed(x.len());
        let mut cells = zeroed(batch * len * hidden);
        lstm::forward(dims, x, w, h0, c0, &mut y, &mut gates, &mut cells);
        (
            from_f32(y, [batch, len + 1, hidden].into()),
            from_f32(gates, [batch, len, width].into()),
            from_f32(cells, [batch, len, hidden].into()),
        )
    }

    fn zoo_lstm_backward(
        weight: FlexTensor,
        h0: FlexTensor,
        c0: FlexTensor,
        y: FlexTensor,
        gates: FlexTensor,
        cells: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let dims = sequence_dims(&gates, 4);
        let (batch, len, width) = (dims.batch, dims.len, 4 * dims.hidden);
        let tensors = [&weight, &h0, &c0, &y, &gates, &cells, &grad].map(f32_contiguous);
        let [w, h0s, c0s, y, gates, cells, dy] =
            tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
        let mut dx = zeroed(gates.len());
        let mut dw = zeroed(w.len());
        let mut dh0 = zeroed(h0s.len());
        let mut dc0 = zeroed(c0s.len());
        lstm::backward(
            dims, w, h0s, c0s, y, gates, cells, dy, &mut dx, &mut dw, &mut dh0, &mut dc0,
        );
        (
            from_f32(dx, [batch, len, width].into()),
            from_f32(dw, weight.layout().shape().clone()),
            from_f32(dh0, h0.layout().shape().clone()),
            from_f32(dc0, c0.layout().shape().clone()),
        )
    }

    fn zoo_matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        product(lhs, rhs, None)
    }

    fn zoo_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let bias = f32_contiguous(&bias);
        product(x, weight, Some(bias.as_slice::<f32>().expect("contiguous")))
    }

    fn zoo_column_sums(x: FlexTensor) -> FlexTensor {
        let x = f32_contiguous(&x);
        let [_, cols] = x.layout().shape().dims::<2>();
        let values = x.as_slice::<f32>().expect("contiguous");
        // Each chunk of rows sums its own share; the shares add up after, in chunk order, so
        // the sums do not depend on how the threads split the work (as for LayerNorm's dgamma).
        let shares: Vec<Vec<f32>> = values
            .par_chunks((cols * ROWS).max(1))
            .map(|chunk| {
                let mut share = vec![0.0f32; cols];
                for row in chunk.chunks_exact(cols) {
                    share.iter_mut().zip(row).for_each(|(s, x)| *s += x);
                }
                share
            })
            .collect();
        let mut sums = vec![0.0f32; cols];
        for share in shares {
            sums.iter_mut().zip(share).for_each(|(s, x)| *s += x);
        }
        from_f32(sums, [cols].into())
    }

    fn zoo_sum_of_squares(x: FlexTensor) -> FlexTensor {
        let x = f32_contiguous(&x);
        // Fixed chunks, each summed in f32 lanes, their sums added in f64 in chunk order.
        let shares: Vec<f64> = x
            .as_slice::<f32>()
            .unwrap()
            .par_chunks(CHUNK)
            .map(|chunk| rows::sum_of_squares(chunk) as f64)
            .collect();
        from_f32(vec![shares.iter().sum::<f64>() as f32], [1].into())
    }

    fn zoo_linear_parameter_gradients(x: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        let [rows, d_in] = x.layout().shape().dims::<2>();
        let [_, d_out] = grad.layout().shape().dims::<2>();
        // The bias's gradient as one more row of the weight's: `[x | 1]ᵀ · grad` holds `xᵀ · grad`
        // above the column sums of `grad`. Copying `x` with its column of ones costs less than
        // a pass over `grad` of its own once `grad` is the wider (a language model's decoder:
        // 200 inputs, 10,000 outputs; its gradient is 28 MB per step).
        if d_out < 2 * (d_in + 1) {
            let x_t = Flex::float_transpose(x);
            return (
                product(x_t, grad.clone(), None),
                Self::zoo_column_sums(grad),
            );
        }
        let x = f32_contiguous(&x);
        let mut with_ones = Vec::with_capacity(rows * (d_in + 1));
        for row in x.as_slice::<f32>().unwrap().chunks_exact(d_in.max(1)) {
            with_ones.extend_from_slice(row);
            with_ones.push(1.0);
        }
        let with_ones = Flex::float_transpose(from_f32(with_ones, [rows, d_in + 1].into()));
        let mut both = product_values(with_ones, grad, None);
        let dbias = both.split_off(d_in * d_out);
        (
            from_f32(both, [d_in, d_out].into()),
            from_f32(dbias, [d_out].into()),
        )
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
        let mut stats = vec![(0.0f32, 0.0f32); rows];
        // SAFETY: `layer_norm::forward` writes every element of its row.
        let [y] = unsafe {
            written_by([xs.len()], |[y]| {
                y.par_chunks_mut(d * ROWS)
                    .zip(xs.par_chunks(d * ROWS))
                    .zip(stats.par_chunks_mut(ROWS))
                    .for_each(|((y, x), stats)| {
                        for ((y, x), stats) in y.chunks_mut(d).zip(x.chunks(d)).zip(stats) {
                            *stats = layer_norm::forward(x, gamma, beta, y, epsilon);
                        }
                    })
            })
        };
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
        let tensors = [&x, &gamma, &mean, &rstd].map(f32_contiguous);
        let [xs, gamma, mean, rstd] = tensors.each_ref().map(|t| t.as_slice::<f32>().unwrap());
        let d = gamma.len();
        // The input's gradient is written over the output's when nothing else holds it.
        let mut dx = unique_f32(grad);
        // Each chunk of rows sums its own share of dgamma and dbeta; the shares add up after,
        // in chunk order. (Not with rayon's `reduce`: its tree follows how the work happened to
        // be split between threads, so float sums, and a resumed run, would differ run to run.)
        let shares: Vec<(Vec<f32>, Vec<f32>)> = dx
            .storage_mut::<f32>()
            .par_chunks_mut(d * ROWS)
            .zip(xs.par_chunks(d * ROWS))
            .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
            .map(|((grad, x), (mean, rstd))| {
                let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
                let rows = grad.chunks_mut(d).zip(x.chunks(d));
                for ((grad, x), stats) in rows.zip(mean.iter().zip(rstd)) {
                    let stats = (*stats.0, *stats.1);
                    layer_norm::backward(x, gamma, stats, grad, &mut dgamma, &mut dbeta);
                }
                (dgamma, dbeta)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
        for (g, b) in shares {
            dgamma.iter_mut().zip(g).for_each(|(total, g)| *total += g);
            dbeta.iter_mut().zip(b).for_each(|(total, b)| *total += b);
        }
        (
            dx,
            from_f32(dgamma, [d].into()),
            from_f32(dbeta, [d].into()),
        )
    }
}

/// The shape of a recurrent sequence from a `[batch, len, gates hidden]` tensor.
fn sequence_dims(t: &FlexTensor, gates: usize) -> sequence::Dims {
    let [batch, len, width] = t.layout().shape().dims::<3>();
    sequence::Dims {
        batch,
        len,
        hidden: width / gates,
    }
}

/// One row's cross-entropy smoothed by `smoothing` (`ε`), from its log-sum-exp, its target's
/// logit and the sum of its logits: `(1 − ε) (lse − x_target) + ε (lse − mean(x))`.
fn row_loss(lse: f32, target_logit: f32, row_sum: f32, classes: usize, smoothing: f32) -> f64 {
    let nll = (lse - target_logit) as f64;
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = lse as f64 - row_sum as f64 / classes as f64;
    (1.0 - smoothing as f64) * nll + smoothing as f64 * uniform
}

/// The mean of `n` rows' losses summing to `total`, as a `[1]` tensor.
fn mean_loss(total: f64, n: usize) -> FlexTensor {
    from_f32(vec![(total / n.max(1) as f64) as f32], [1].into())
}

/// `op`'s `n` class (or token) ids as indices, each checked against the number of classes.
fn class_ids(op: &str, targets: FlexTensor, n: usize, classes: usize) -> Vec<usize> {
    let ids = targets
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("class ids read back as integers");
    assert_eq!(ids.len(), n, "{op}: {n} rows but {} ids", ids.len());
    ids.into_iter()
        .map(|id| {
            assert!(
                (0..classes as i64).contains(&id),
                "{op}: id {id} outside 0..{classes}"
            );
            id as usize
        })
        .collect()
}

/// Rows per parallel task in the LayerNorm kernels.
const ROWS: usize = 16;

/// `lhs · rhs` for 2-D operands (either may be a transposed view), plus `bias` on every row when
/// given: the output starts as the bias's rows and gemm adds the product onto it, which spares
/// the whole-output pass that adding the bias after would take.
fn product(lhs: FlexTensor, rhs: FlexTensor, bias: Option<&[f32]>) -> FlexTensor {
    let (m, n) = (lhs.layout().shape()[0], rhs.layout().shape()[1]);
    from_f32(product_values(lhs, rhs, bias), [m, n].into())
}

/// [`product`]'s values, row-major.
fn product_values(lhs: FlexTensor, rhs: FlexTensor, bias: Option<&[f32]>) -> Vec<f32> {
    let (lhs, rhs) = (Matrix::of(lhs), Matrix::of(rhs));
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(
        k, rhs.rows,
        "zoo_matmul: [{m}, {k}] times [{}, {n}]",
        rhs.rows
    );
    let mut out = Vec::<f32>::with_capacity(m * n);
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            n,
            "zoo_linear: a bias of {} for {n} outputs",
            bias.len()
        );
        out.spare_capacity_mut()
            .par_chunks_mut((n * ROWS).max(1))
            .for_each(|rows| {
                for row in rows.chunks_exact_mut(n) {
                    row.iter_mut().zip(bias).for_each(|(o, &b)| {
                        o.write(b);
                    });
                }
            });
        // SAFETY: every element was just written.
        unsafe { out.set_len(m * n) };
    }
    if k == 0 {
        out.resize(m * n, 0.0);
    } else {
        let parallelism = strided::threads_for(m, n, k);
        // gemm runs a product of one row (decoding's) as a matrix-vector product on one
        // thread whatever it is told, and shares a few rows' product out poorly; reading
        // the weights is what bounds both, so each thread takes its own block of output
        // columns instead (at batch 8, GPT-2 small decodes 5% faster than with gemm's
        // threads).
        let threads = rayon::current_num_threads();
        let parallel = !matches!(parallelism, gemm::Parallelism::None);
        let split = m <= 8 && parallel && threads > 1;
        let blocks = if split { threads } else { 1 };
        let width = n.div_ceil(blocks).next_multiple_of(16);
        let (out_at, rhs_at) = (out.as_mut_ptr() as usize, rhs.ptr() as usize);
        let block = |b: usize| {
            let first = (b * width).min(n);
            let columns = width.min(n - first);
            if columns == 0 {
                return;
            }
            // SAFETY: the operands' pointers and strides describe [m, k] and [k, n]
            // matrices inside their storage (`Matrix::of`); this block's columns
            // `first..first + columns` of the right-hand side and of the `[m, n]` row-major
            // output start at these offsets, and no other block writes them. Without a bias,
            // gemm writes all of them without reading them (`read_dst` false), so the output
            // is initialised once every block has run; with one, it adds onto the bias rows.
            unsafe {
                gemm::gemm(
                    m,
                    columns,
                    k,
                    (out_at as *mut f32).add(first),
                    1,
                    n as isize,
                    bias.is_some(),
                    lhs.ptr(),
                    lhs.col_stride,
                    lhs.row_stride,
                    (rhs_at as *const f32).offset(first as isize * rhs.col_stride),
                    rhs.col_stride,
                    rhs.row_stride,
                    if bias.is_some() { 1.0 } else { 0.0 },
                    1.0,
                    false,
                    false,
                    false,
                    if split {
                        gemm::Parallelism::None
                    } else {
                        parallelism
                    },
                );
            }
        };
        if split {
            (0..blocks).into_par_iter().for_each(block);
        } else {
            block(0);
        }
        // SAFETY: the blocks above wrote every element (or the bias rows did).
        unsafe { out.set_len(m * n) };
    }
    out
}

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
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            f32_contiguous(&t)
        };
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

/// Whether a kernel may write its output over `t`: f32, held by nothing else, and its elements
/// the whole of its storage in order.
fn overwritable(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
        && t.is_unique()
        && t.layout().contiguous_offsets() == Some((0, t.layout().num_elements()))
        && t.storage::<f32>().len() == t.layout().num_elements()
}

/// `len` zeros, written by both cores when there are many: a large `vec![0.0; len]` is one
/// `memset` on the calling thread, which the other core waits out (2% of a 650-unit LSTM's
/// step, over its kernels' buffers).
pub(super) fn zeroed(len: usize) -> Vec<f32> {
    if len < 1 << 16 {
        return vec![0.0; len];
    }
    written_in_parallel(len, |_, chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)))
}

/// Vectors of these lengths that `write` fills, never zero-filled first: for kernels that write
/// every element of their outputs (zero fills of such outputs took 1.5% of a 6 x 384 GPT's step).
///
/// # Safety
/// `write` must write every element of the slices it is handed before reading it.
unsafe fn written_by<const N: usize>(
    lens: [usize; N],
    write: impl FnOnce([&mut [f32]; N]),
) -> [Vec<f32>; N] {
    let mut values = lens.map(|len| {
        let mut values = Vec::<f32>::with_capacity(len);
        if cfg!(test) {
            // The kernels' tests see NaN wherever a kernel fails to write, not whatever the
            // allocator handed out (often zeros).
            values.resize(len, f32::NAN);
        }
        values
    });
    let mut lengths = lens.iter();
    write(values.each_mut().map(|values| {
        let len = *lengths.next().expect("a length per vector");
        // SAFETY: the capacity holds `len` floats, and the caller writes each before reading it.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr(), len) }
    }));
    for (values, len) in values.iter_mut().zip(lens) {
        // SAFETY: `write` wrote every element.
        unsafe { values.set_len(len) };
    }
    values
}

/// `t` as a buffer of its own ([`unique_f32`]: itself when nothing else holds it), with `update`
/// run over its chunks of [`CHUNK`] on both cores, given each chunk's offset.
fn updated(t: FlexTensor, update: impl Fn(usize, &mut [f32]) + Sync) -> FlexTensor {
    let mut t = unique_f32(t);
    t.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| update(c * CHUNK, chunk));
    t
}

/// A vector of `len` floats whose chunks of [`CHUNK`] `write` fills on both cores, given each
/// chunk's offset; never zero-filled first. `write` must write every element of its chunk.
fn written_in_parallel(
    len: usize,
    write: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| write(c * CHUNK, chunk));
    // SAFETY: `write` wrote every element of every chunk.
    unsafe { values.set_len(len) };
    values
}

/// `t` as a contiguous f32 tensor of its own to overwrite: `t` itself when it is
/// [`overwritable`], else a copy.
fn unique_f32(t: FlexTensor) -> FlexTensor {
    if overwritable(&t) {
        return t;
    }
    let source = f32_contiguous(&t);
    let source = source.as_slice::<f32>().unwrap();
    // Copied by both cores, into a buffer never zero-filled first.
    let values = written_in_parallel(source.len(), |at, chunk| {
        for (to, &from) in chunk.iter_mut().zip(&source[at..]) {
            to.write(from);
        }
    });
    from_f32(values, t.layout().shape().clone())
}

/// `t` as a contiguous f32 tensor, cast if it is another float dtype.
fn f32_contiguous(t: &FlexTensor) -> FlexTensor {
    contiguous_f32(t)
        .unwrap_or_else(|| contiguous(&Flex::float_cast(t.clone(), burn::backend::FloatDType::F32)))
}

/// The shape of attention over `[batch, heads, len, dim]` queries and
/// `[batch, kv_heads, len, dim]` keys.
fn split_shape(q: &FlexTensor, k: &FlexTensor) -> attention::Shape {
    let [batch, heads, q_len, dim] = q.layout().shape().dims::<4>();
    let [_, kv_heads, k_len, _] = k.layout().shape().dims::<4>();
    attention::Shape {
        batch,
        heads,
        kv_heads,
        q_len,
        k_len,
        dim,
    }
}

/// Where the query heads and the key/value heads sit in contiguous split tensors.
fn split_heads(shape: &attention::Shape) -> (attention::Heads, attention::Heads) {
    let d = shape.dim;
    (
        attention::Heads::split(shape.heads, shape.q_len, d),
        attention::Heads::split(shape.kv_heads, shape.k_len, d),
    )
}

/// The shape of attention over a packed `[batch, len, (heads + 2 kv_heads) dim]` projection.
fn packed_shape(qkv: &FlexTensor, heads: usize, kv_heads: usize) -> attention::Shape {
    let [batch, len, width] = qkv.layout().shape().dims::<3>();
    assert!(
        heads.is_multiple_of(kv_heads) && width % (heads + 2 * kv_heads) == 0,
        "packed attention: width {width} is not {heads} query + 2 x {kv_heads} key/value heads"
    );
    attention::Shape {
        batch,
        heads,
        kv_heads,
        q_len: len,
        k_len: len,
        dim: width / (heads + 2 * kv_heads),
    }
}

/// Where the query, key and value heads sit in a packed projection: side by side in that
/// order along each row.
fn packed_heads(shape: &attention::Shape) -> [attention::Heads; 3] {
    let (t, d) = (shape.q_len, shape.dim);
    let width = (shape.heads + 2 * shape.kv_heads) * d;
    let kv_start = shape.heads * d;
    [0, kv_start, kv_start + shape.kv_heads * d]
        .map(|offset| attention::Heads::packed(offset, t, width, d))
}

/// The keys' padding as the attention kernel takes it: none when the tensor has no element.
fn key_padding(padding: &FlexTensor) -> Option<&[f32]> {
    let values = padding.as_slice::<f32>().expect("contiguous f32");
    (!values.is_empty()).then_some(values)
}

/// A contiguous f32 tensor's elements and where its heads sit.
fn input(t: &FlexTensor, heads: attention::Heads) -> attention::Input<'_> {
    attention::Input(t.as_slice::<f32>().expect("contiguous f32"), heads)
}
