//! Recurrent layers for language models: LSTM and GRU with PyTorch's equations and gate order.
//!
//! Burn's `Lstm` and `Gru` run two small matmuls per gate per time step. Here the input's
//! contribution to every gate at every time step is one matrix product before the loop, and each
//! step multiplies the hidden state by all gates' recurrent weights at once:
//!
//! - LSTM, gates `(i, f, g, o)`: `c' = σ(f) c + σ(i) tanh(g)`, `h' = σ(o) tanh(c')`;
//! - GRU, gates `(r, z, n)`: `r = σ(x_r + h_r)`, `z = σ(x_z + h_z)`, `n = tanh(x_n + r (h_n))`,
//!   `h' = (1 − z) n + z h`, where `x_*` include the input bias and `h_*` the recurrent bias (the
//!   candidate's recurrent bias sits inside the reset product, as in PyTorch and cuDNN).

use crate::kernels;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

/// Which recurrent cell a layer uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CellKind {
    /// Long short-term memory: four gates, a cell state beside the hidden state.
    #[default]
    Lstm,
    /// Gated recurrent unit: three gates, the hidden state only.
    Gru,
}

impl CellKind {
    /// Gates per hidden unit.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }
}

/// The state a recurrent layer carries from one time step, and one batch, to the next.
#[derive(Clone, Debug)]
pub struct RecurrentState {
    /// `[batch, d_hidden]`.
    pub hidden: Tensor<2>,
    /// The LSTM's cell state, `[batch, d_hidden]`; `None` for a GRU.
    pub cell: Option<Tensor<2>>,
}

impl RecurrentState {
    /// The same values cut from the graph that produced them: truncated backpropagation
    /// through time carries the state to the next window without its history.
    pub fn detach(self) -> Self {
        RecurrentState {
            hidden: self.hidden.detach(),
            cell: self.cell.map(Tensor::detach),
        }
    }

    /// The state of the batch rows `rows` (in that order, repeats allowed): decoding keeps the
    /// rows of the hypotheses that survive a step.
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        RecurrentState {
            hidden: self.hidden.clone().select(0, rows.clone()),
            cell: self.cell.clone().map(|c| c.select(0, rows)),
        }
    }
}

/// A recurrent layer's shape.
#[derive(Clone, Copy, Debug)]
pub struct RecurrentConfig {
    pub kind: CellKind,
    pub d_input: usize,
    pub d_hidden: usize,
}

impl RecurrentConfig {
    /// A layer with every weight and bias drawn from `U(-1/√d_hidden, 1/√d_hidden)`, as
    /// PyTorch initialises its recurrent layers.
    pub fn init(&self, device: &Device) -> Recurrent {
        let bound = 1.0 / (self.d_hidden as f64).sqrt();
        let uniform = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let width = self.kind.gates() * self.d_hidden;
        Recurrent {
            input: LinearConfig::new(self.d_input, width)
                .with_initializer(uniform.clone())
                .init(device),
            recurrent: uniform.init([self.d_hidden, width], device),
            recurrent_bias: (self.kind == CellKind::Gru).then(|| uniform.init([width], device)),
            kind: self.kind,
            d_hidden: self.d_hidden,
        }
    }
}

/// One LSTM or GRU layer over `[batch, len, d_input]` sequences; see the module docs.
#[derive(Module, Debug)]
pub struct Recurrent {
    /// Input to every gate, `[d_input, gates d_hidden]`, with the input bias (for an LSTM, the
    /// sum of PyTorch's two biases).
    pub input: Linear,
    /// Hidden state to every gate, `[d_hidden, gates d_hidden]`.
    pub recurrent: Param<Tensor<2>>,
    /// The GRU's recurrent bias, `[gates d_hidden]` (kept apart because the candidate's part is
    /// gated by the reset gate); `None` for an LSTM.
    pub recurrent_bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    kind: CellKind,
    d_hidden: usize,
}

impl Recurrent {
    /// The cell this layer runs.
    pub fn kind(&self) -> CellKind {
        self.kind
    }

    /// Hidden units.
    pub fn d_hidden(&self) -> usize {
        self.d_hidden
    }

    /// The zero state for `batch` sequences.
    pub fn zero_state(&self, batch: usize, device: &Device) -> RecurrentState {
        let zeros = || Tensor::zeros([batch, self.d_hidden], device);
        RecurrentState {
            hidden: zeros(),
            cell: (self.kind == CellKind::Lstm).then(zeros),
        }
    }

    /// Runs the layer over `x` (`[batch, len, d_input]`) from `state` (zeros when `None`):
    /// the hidden state at every step, `[batch, len, d_hidden]`, and the state after the last.
    pub fn forward(
        &self,
        x: Tensor<3>,
        state: Option<RecurrentState>,
    ) -> (Tensor<3>, RecurrentState) {
        let [batch, len, _] = x.dims();
        let state = state.unwrap_or_else(|| self.zero_state(batch, &x.device()));
        // Every step's input contribution at once.
        let from_input = kernels::linear(&self.input, x);
        let recurrent = self.recurrent.val();
        match (self.kind, &self.recurrent_bias) {
            (CellKind::Lstm, _) => {
                let cell = state.cell.clone().expect("an LSTM state has a cell");
                let fused = kernels::lstm_sequence(
                    from_input.clone(),
                    recurrent.clone(),
                    state.hidden.clone(),
                    cell,
                );
                if let Some((out, hidden, cell)) = fused {
                    let cell = Some(cell);
                    return (out, RecurrentState { hidden, cell });
                }
            }
            (CellKind::Gru, Some(bias)) => {
                let fused = kernels::gru_sequence(
                    from_input.clone(),
                    recurrent.clone(),
                    bias.val(),
                    state.hidden.clone(),
                );
                if let Some((out, hidden)) = fused {
                    return (out, RecurrentState { hidden, cell: None });
                }
            }
            (CellKind::Gru, None) => unreachable!("a GRU layer has a recurrent bias"),
        }
        self.step_through(from_input, recurrent, state, len)
    }

    /// Runs the layer over each sequence of `x` from its last unpadded position back to its
    /// first (`reversal` says where each ends), from zeros: the outputs in the input's order,
    /// `[batch, len, d_hidden]`, each position's having read it and everything after it.
    /// Padded positions' outputs are not meaningful.
    pub fn forward_reversed(&self, x: Tensor<3>, reversal: &Reversal) -> Tensor<3> {
        let (out, _) = self.forward(reversal.apply(x), None);
        reversal.apply(out)
    }

    /// The sequence one step at a time in Burn's ops, where the fused kernels do not serve the
    /// device.
    fn step_through(
        &self,
        from_input: Tensor<3>,
        recurrent: Tensor<2>,
        mut state: RecurrentState,
        len: usize,
    ) -> (Tensor<3>, RecurrentState) {
        let [batch, _, width] = from_input.dims();
        let recurrent_bias = self.recurrent_bias.as_ref().map(|b| b.val().unsqueeze());
        let mut outputs = Vec::with_capacity(len);
        for t in 0..len {
            let x_t = from_input.clone().narrow(1, t, 1).reshape([batch, width]);
            let mut h_t = state.hidden.clone().matmul(recurrent.clone());
            if let Some(bias) = &recurrent_bias {
                h_t = h_t + bias.clone();
            }
            state = self.step(x_t, h_t, state);
            outputs.push(state.hidden.clone().unsqueeze_dim(1));
        }
        (Tensor::cat(outputs, 1), state)
    }

    /// One time step from the gates' input and recurrent parts (`[batch, gates d_hidden]`).
    fn step(&self, x_t: Tensor<2>, h_t: Tensor<2>, state: RecurrentState) -> RecurrentState {
        match self.kind {
            CellKind::Lstm => {
                let [i, f, g, o] = (x_t + h_t).chunk(4, 1).try_into().expect("four gates");
                let cell = sigmoid(f) * state.cell.expect("an LSTM state has a cell")
                    + sigmoid(i) * tanh(g);
                RecurrentState {
                    hidden: sigmoid(o) * tanh(cell.clone()),
                    cell: Some(cell),
                }
            }
            CellKind::Gru => {
                let [x_r, x_z, x_n] = x_t.chunk(3, 1).try_into().expect("three gates");
                let [h_r, h_z, h_n] = h_t.chunk(3, 1).try_into().expect("three gates");
                let reset = sigmoid(x_r + h_r);
                let update = sigmoid(x_z + h_z);
                let candidate = tanh(x_n + reset * h_n);
                let hidden = (update.clone().neg() + 1.0) * candidate + update * state.hidden;
                RecurrentState { hidden, cell: None }
            }
        }
    }
}

/// Per row, the order that reverses the row's unpadded positions and leaves the padding after
/// them in place: a backward recurrent layer reads each sequence from its last word, and the
/// same order applied again puts its outputs back. Computed on the device, so nothing waits to
/// read the lengths back.
#[derive(Clone, Debug)]
pub struct Reversal(Tensor<2, Int>);

impl Reversal {
    /// The reversal of sequences whose padding (`true`, after the last word) is `padding`,
    /// `[batch, len]`.
    pub fn within(padding: &Tensor<2, Bool>) -> Self {
        let [batch, len] = padding.dims();
        let lengths = padding
            .clone()
            .bool_not()
            .int()
            .sum_dim(1)
            .expand([batch, len]);
        let positions = Tensor::<1, Int>::arange(0..len as i64, &padding.device())
            .unsqueeze::<2>()
            .expand([batch, len]);
        let reversed = lengths.clone() - positions.clone() - 1;
        Self(
            positions
                .clone()
                .mask_where(positions.lower(lengths), reversed),
        )
    }

    /// `x` (`[batch, len, width]`) with each row's positions reordered.
    pub fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, len, width] = x.dims();
        let index = self
            .0
            .clone()
            .unsqueeze_dim::<3>(2)
            .expand([batch, len, width]);
        x.gather(1, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, test_device};
    use burn::nn::{GruConfig, LstmConfig};
    use burn::tensor::{Distribution, TensorData};

    /// A `Linear` holding exactly `weight` and `bias`.
    fn linear(weight: Tensor<2>, bias: Tensor<1>) -> Linear {
        Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        }
    }

    fn input(device: &Device) -> Tensor<3> {
        Tensor::random([3, 7, 5], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn lstm_computes_what_burns_lstm_computes() {
        let device = test_device();
        let theirs = LstmConfig::new(5, 4, true)
            .with_batch_first(true)
            .init(&device);
        // PyTorch's gate order (i, f, g, o); burn keeps a separate input and hidden bias per
        // gate, which act as their sum.
        let forget = theirs
            .forget_gate
            .as_ref()
            .expect("an uncoupled forget gate");
        let gates = [
            &theirs.input_gate,
            forget,
            &theirs.cell_gate,
            &theirs.output_gate,
        ];
        let cat_weights = |of: fn(&burn::nn::GateController) -> &Linear| {
            Tensor::cat(gates.iter().map(|g| of(g).weight.val()).collect(), 1)
        };
        let bias = Tensor::cat(
            gates
                .iter()
                .map(|g| {
                    g.input_transform.bias.as_ref().unwrap().val()
                        + g.hidden_transform.bias.as_ref().unwrap().val()
                })
                .collect(),
            0,
        );
        let ours = Recurrent {
            input: linear(cat_weights(|g| &g.input_transform), bias),
            recurrent: Param::from_tensor(cat_weights(|g| &g.hidden_transform)),
            recurrent_bias: None,
            kind: CellKind::Lstm,
            d_hidden: 4,
        };
        let x = input(&device);
        let (expected, expected_state) = theirs.forward(x.clone(), None);
        let (out, state) = ours.forward(x, None);
        assert_close(out, expected, 1e-5);
        assert_close(state.hidden, expected_state.hidden, 1e-5);
        assert_close(state.cell.unwrap(), expected_state.cell, 1e-5);
    }

    #[test]
    fn gru_computes_what_burns_gru_computes() {
        let device = test_device();
        let theirs = GruConfig::new(5, 4, true).init(&device);
        // Ours keeps PyTorch's gate order (r, z, n).
        let gates = [&theirs.reset_gate, &theirs.update_gate, &theirs.new_gate];
        let cat = |f: &dyn Fn(&burn::nn::GateController) -> Tensor<2>| {
            Tensor::cat(gates.iter().map(|g| f(g)).collect(), 1)
        };
        let cat_bias = |f: &dyn Fn(&burn::nn::GateController) -> Tensor<1>| {
            Tensor::cat(gates.iter().map(|g| f(g)).collect(), 0)
        };
        let ours = Recurrent {
            input: linear(
                cat(&|g| g.input_transform.weight.val()),
                cat_bias(&|g| g.input_transform.bias.as_ref().unwrap().val()),
            ),
            recurrent: Param::from_tensor(cat(&|g| g.hidden_transform.weight.val())),
            recurrent_bias: Some(Param::from_tensor(cat_bias(&|g| {
                g.hidden_transform.bias.as_ref().unwrap().val()
            }))),
            kind: CellKind::Gru,
            d_hidden: 4,
        };
        let x = input(&device);
        let expected = theirs.forward(x.clone(), None);
        let (out, state) = ours.forward(x, None);
        assert_close(out.clone(), expected, 1e-5);
        assert_close(state.hidden, out.narrow(1, 6, 1).reshape([3, 4]), 0.0);
    }

    #[test]
    fn the_fused_kernels_match_stepping_through_burns_ops() {
        // [batch, len, input, hidden]. The second shape is enough work for the flex kernels to
        // run the batch in two parts, one per core (2 sequences and 3).
        let shapes = [[3, 9, 5, 6], [5, 20, 7, 64]];
        for ([batch, len, d_input, d_hidden], kind) in shapes
            .into_iter()
            .flat_map(|shape| [(shape, CellKind::Lstm), (shape, CellKind::Gru)])
        {
            let device = test_device().autodiff();
            let layer = RecurrentConfig {
                kind,
                d_input,
                d_hidden,
            }
            .init(&device);
            let normal = Distribution::Normal(0.0, 1.0);
            let x0 = Tensor::<3>::random([batch, len, d_input], normal, &device);
            let h0 = Tensor::<2>::random([batch, d_hidden], normal, &device);
            let c0 = Tensor::<2>::random([batch, d_hidden], normal, &device);
            // A loss on every output and on the final states, so every gradient path is used.
            let probe = Tensor::<3>::random([batch, len, d_hidden], normal, &device);
            let probe_state = Tensor::<2>::random([batch, d_hidden], normal, &device);
            let run = |fused: bool| {
                let x = x0.clone().detach().require_grad();
                let start = RecurrentState {
                    hidden: h0.clone().detach().require_grad(),
                    cell: (kind == CellKind::Lstm).then(|| c0.clone().detach().require_grad()),
                };
                let (out, end) = if fused {
                    layer.forward(x.clone(), Some(start.clone()))
                } else {
                    let from_input = kernels::linear(&layer.input, x.clone());
                    layer.step_through(from_input, layer.recurrent.val(), start.clone(), len)
                };
                let mut loss = (out.clone() * probe.clone()).sum()
                    + (end.hidden.clone() * probe_state.clone()).sum();
                if let Some(cell) = &end.cell {
                    loss = loss + (cell.clone() * probe_state.clone() * 0.5).sum();
                }
                let grads = loss.backward();
                let mut values = vec![
                    out.inner().flatten::<1>(0, 2),
                    x.grad(&grads).unwrap().flatten(0, 2),
                    end.hidden.inner().flatten(0, 1),
                    start.hidden.grad(&grads).unwrap().flatten(0, 1),
                    layer.recurrent.val().grad(&grads).unwrap().flatten(0, 1),
                    layer.input.weight.val().grad(&grads).unwrap().flatten(0, 1),
                ];
                if let (Some(end_cell), Some(start_cell)) = (&end.cell, &start.cell) {
                    values.push(end_cell.clone().inner().flatten(0, 1));
                    values.push(start_cell.grad(&grads).unwrap().flatten(0, 1));
                }
                if let Some(bias) = &layer.recurrent_bias {
                    values.push(bias.val().grad(&grads).unwrap());
                }
                values
            };
            let (fused, stepped) = (run(true), run(false));
            assert_eq!(fused.len(), stepped.len());
            for (a, b) in fused.into_iter().zip(stepped) {
                assert_close(a, b, 1e-5);
            }
        }
    }

    #[test]
    fn two_halves_with_carried_state_equal_one_whole() {
        let device = test_device();
        for kind in [CellKind::Lstm, CellKind::Gru] {
            let layer = RecurrentConfig {
                kind,
                d_input: 5,
                d_hidden: 6,
            }
            .init(&device);
            let x = input(&device);
            let (whole, whole_state) = layer.forward(x.clone(), None);
            let (first, state) = layer.forward(x.clone().narrow(1, 0, 3), None);
            let (second, state) = layer.forward(x.narrow(1, 3, 4), Some(state));
            assert_close(Tensor::cat(vec![first, second], 1), whole, 1e-6);
            assert_close(state.hidden, whole_state.hidden, 1e-6);
        }
    }

    #[test]
    fn recurrent_gradients_match_finite_differences() {
        for kind in [CellKind::Lstm, CellKind::Gru] {
            let device = test_device().autodiff();
            let layer = RecurrentConfig {
                kind,
                d_input: 3,
                d_hidden: 4,
            }
            .init(&device);
            let weights = Tensor::<3>::random([2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
            // A non-zero starting state, so its path through the cell is checked too.
            let start = RecurrentState {
                hidden: Tensor::random([2, 4], Distribution::Normal(0.0, 0.5), &device),
                cell: (kind == CellKind::Lstm)
                    .then(|| Tensor::random([2, 4], Distribution::Normal(0.0, 0.5), &device)),
            };
            check_gradients(
                [2, 5, 3],
                |x| (layer.forward(x, Some(start.clone())).0 * weights.clone()).sum(),
                &device,
            );
        }
    }

    #[test]
    fn a_reversed_run_reads_each_sequence_from_its_last_word() {
        let device = test_device();
        let layer = RecurrentConfig {
            kind: CellKind::Lstm,
            d_input: 5,
            d_hidden: 4,
        }
        .init(&device);
        // Row 0 holds 7 words, row 1 four and three padded positions, row 2 one.
        let lengths = [7usize, 4, 1];
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(
                lengths
                    .iter()
                    .flat_map(|&n| (0..7).map(move |t| t >= n))
                    .collect::<Vec<_>>(),
                [3, 7],
            ),
            &device,
        );
        let reversal = Reversal::within(&padding);
        let x = input(&device);
        // The order is its own inverse.
        assert_eq!(
            reversal.apply(reversal.apply(x.clone())).to_data(),
            x.to_data()
        );
        let out = layer.forward_reversed(x.clone(), &reversal);
        for (row, &n) in lengths.iter().enumerate() {
            // Each row's words alone, flipped, through the plain forward pass.
            let words = x.clone().narrow(0, row, 1).narrow(1, 0, n).flip([1]);
            let (alone, _) = layer.forward(words, None);
            assert_close(
                out.clone().narrow(0, row, 1).narrow(1, 0, n),
                alone.flip([1]),
                1e-6,
            );
        }
    }
}
