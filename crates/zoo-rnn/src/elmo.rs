//! A task model on ELMo features (Peters et al. 2018, section 3.3): a frozen biLM (an
//! [`RnnLm`] with `bidirectional`) reads the text; each token's context-free vector `x_k` (the
//! biLM's word embedding) and a learned [`ScalarMix`] of all the biLM's layers at that token,
//! side by side (`[x_k; ELMo_k]`, as the paper enhances a task model's input), with dropout,
//! are the input of the task's own bidirectional LSTM; a linear head reads that LSTM's states,
//! max-pooled over the text for classification or at each token for tagging.
//!
//! `features = "embeddings"` gives the same model `x_k` alone: the paper's baseline of the same
//! task model on plain word vectors.

use crate::model::{RnnConfig, RnnLm};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use zoo_blocks::kernels::{dropout, linear};
use zoo_blocks::{CellKind, ModelSize, Recurrent, RecurrentConfig, Reversal, ScalarMix};

/// What of the biLM the task model reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Features {
    /// The token embedding and every layer, mixed: ELMo.
    #[default]
    Elmo,
    /// The token embedding alone: context-free word vectors.
    Embeddings,
}

/// Every shape and option of a task model on ELMo features. The biLM's fields are the shape of
/// the run it starts from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ElmoConfig {
    /// The biLM's vocabulary size.
    pub vocab_size: usize,
    /// The biLM's cell.
    pub cell: CellKind,
    /// The biLM's layers per direction.
    pub n_layer: usize,
    /// The biLM's hidden units per direction.
    pub d_hidden: usize,
    /// The biLM's embedding width (0 = `d_hidden`).
    pub d_embed: usize,
    /// Whether the biLM's softmax is tied to its embedding.
    pub tie_weights: bool,
    /// What the task model reads.
    pub features: Features,
    /// Hidden units per direction of the task's LSTM.
    pub d_task: usize,
    /// Dropout on the features and on the task LSTM's states.
    pub dropout: f64,
    /// Normalise each biLM layer at every token before mixing (see [`ScalarMix`]).
    pub normalize_layers: bool,
}

impl Default for ElmoConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            cell: CellKind::Lstm,
            n_layer: 2,
            d_hidden: 256,
            d_embed: 0,
            tie_weights: false,
            features: Features::Elmo,
            d_task: 128,
            dropout: 0.5,
            normalize_layers: true,
        }
    }
}

impl ElmoConfig {
    /// The biLM this model reads (without dropout: it is frozen).
    pub fn bilm(&self) -> RnnConfig {
        RnnConfig {
            vocab_size: self.vocab_size,
            cell: self.cell,
            n_layer: self.n_layer,
            d_hidden: self.d_hidden,
            d_embed: self.d_embed,
            dropout: 0.0,
            tie_weights: self.tie_weights,
            bidirectional: true,
        }
    }

    /// This model's biLM fields set to `bilm`'s.
    pub fn take_bilm_shape(&mut self, bilm: &RnnConfig) {
        self.vocab_size = bilm.vocab_size;
        self.cell = bilm.cell;
        self.n_layer = bilm.n_layer;
        self.d_hidden = bilm.d_hidden;
        self.d_embed = bilm.d_embed;
        self.tie_weights = bilm.tie_weights;
    }

    /// Layers the scalar mix reads: with ELMo features the embedding and each biLM layer;
    /// none with plain embeddings.
    pub fn mixed_layers(&self) -> usize {
        match self.features {
            Features::Elmo => 1 + self.n_layer,
            Features::Embeddings => 0,
        }
    }

    /// Checks that the shapes fit together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.bilm().validate()?;
        if self.d_task == 0 {
            return Err("d_task must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        let bilm = self.bilm();
        if self.features == Features::Elmo && bilm.embed_width() != self.d_hidden {
            return Err(format!(
                "ELMo mixes the embedding with the layers: the biLM's d_embed ({}) must equal its d_hidden ({})",
                bilm.embed_width(),
                self.d_hidden
            ));
        }
        Ok(())
    }

    /// Width of the features the task LSTM reads: the embedding, and ELMo's mix (twice as
    /// wide: each layer is two directions side by side).
    fn feature_width(&self) -> usize {
        let embed = self.bilm().embed_width();
        match self.features {
            Features::Elmo => 3 * embed,
            Features::Embeddings => embed,
        }
    }

    fn task_layer(&self) -> RecurrentConfig {
        RecurrentConfig {
            kind: CellKind::Lstm,
            d_input: self.feature_width(),
            d_hidden: self.d_task,
        }
    }

    /// Builds the model for `labels` labels with fresh weights (the biLM's too: load them
    /// with [`ElmoModel::with_bilm`]).
    pub fn init(&self, labels: usize, device: &Device) -> Result<ElmoModel, String> {
        self.validate()?;
        Ok(ElmoModel {
            bilm: self.bilm().init(device)?.no_grad(),
            mix: (self.features == Features::Elmo)
                .then(|| ScalarMix::new(self.mixed_layers(), self.normalize_layers, device)),
            forward: self.task_layer().init(device),
            backward: self.task_layer().init(device),
            head: LinearConfig::new(2 * self.d_task, labels).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        })
    }

    /// Parameter counts and training compute per token from the shapes alone (labels not
    /// counted): the frozen biLM's forward pass (without its softmax) and the task model's
    /// training.
    pub fn size(&self) -> ModelSize {
        let bilm = self.bilm().size();
        let h = self.d_task;
        let task_matmuls = 2 * 4 * h * (self.feature_width() + h);
        let mix = match self.features {
            Features::Elmo => self.mixed_layers() + 1,
            Features::Embeddings => 0,
        };
        let task = task_matmuls + 2 * 4 * h + mix;
        let bilm_forward = match self.features {
            Features::Elmo => {
                (bilm.train_flops_per_token / 6).saturating_sub(2 * self.d_hidden * self.vocab_size)
            }
            Features::Embeddings => 0,
        };
        ModelSize {
            total: bilm.total + task,
            non_embedding: bilm.non_embedding + task,
            train_flops_per_token: 2 * bilm_forward + 6 * task_matmuls,
        }
    }
}

/// A classifier or tagger on a frozen biLM's features; see the module docs.
#[derive(Module, Debug)]
pub struct ElmoModel {
    /// The biLM, frozen.
    pub bilm: RnnLm,
    /// The task's view of the biLM's layers (ELMo features only).
    pub mix: Option<ScalarMix>,
    /// The task LSTM, left to right.
    pub forward: Recurrent,
    /// The task LSTM, right to left.
    pub backward: Recurrent,
    /// The task LSTM's states to labels.
    pub head: Linear,
    dropout: Dropout,
}

impl ElmoModel {
    /// This model reading `bilm` (a trained biLM of this model's shape), frozen.
    pub fn with_bilm(mut self, bilm: RnnLm) -> Self {
        self.bilm = bilm.no_grad();
        self
    }

    /// Labels the head scores.
    pub fn labels(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// The task LSTM's states `[batch, len, 2 d_task]` for ids `[batch, len]` with `padding`
    /// (true after each text's last token).
    fn states(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        // The biLM is frozen: nothing flows back into it.
        let x = match &self.mix {
            Some(mix) => {
                let layers: Vec<Tensor<3>> = self
                    .bilm
                    .layer_features(ids, padding.clone(), mix.layers())
                    .into_iter()
                    .map(Tensor::detach)
                    .collect();
                // Layer 0 is the embedding twice over.
                let width = layers[0].dims()[2] / 2;
                let embedded = layers[0].clone().narrow(2, 0, width);
                Tensor::cat(vec![embedded, mix.forward(layers)], 2)
            }
            None => self.bilm.embed(ids).detach(),
        };
        let x = dropout(&self.dropout, x);
        let (forward, _) = self.forward.forward(x.clone(), None);
        let backward = self
            .backward
            .forward_reversed(x, &Reversal::within(&padding));
        dropout(&self.dropout, Tensor::cat(vec![forward, backward], 2))
    }

    /// Class logits `[batch, labels]`: the head on the task states max-pooled over each
    /// text's tokens.
    pub fn class_logits(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<2> {
        let states = self.states(ids, padding.clone());
        let [batch, len, width] = states.dims();
        let pooled = states
            .mask_fill(
                padding.unsqueeze_dim::<3>(2).expand([batch, len, width]),
                f32::NEG_INFINITY,
            )
            .max_dim(1)
            .reshape([batch, width]);
        linear(&self.head, pooled)
    }

    /// Tag logits `[batch, len, labels]` at every position (padded ones' mean nothing).
    pub fn tag_logits(&self, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        linear(&self.head, self.states(ids, padding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::TensorData;
    use zoo_blocks::loss::cross_entropy;

    fn config(features: Features) -> ElmoConfig {
        ElmoConfig {
            vocab_size: 17,
            n_layer: 2,
            d_hidden: 6,
            d_task: 5,
            dropout: 0.0,
            features,
            ..ElmoConfig::default()
        }
    }

    fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
        let ids = TensorData::new(vec![3i64, 9, 4, 1, 16, 2, 5, 0, 0, 0], [2, 5]);
        let padding = TensorData::new(
            [[false; 5], [false, false, true, true, true]].concat(),
            [2, 5],
        );
        (
            Tensor::from_data(ids, device),
            Tensor::from_data(padding, device),
        )
    }

    /// Training reaches the mix and the task model and never the biLM: no biLM weight takes
    /// a gradient, so no optimiser step (weight decay included) can move it.
    #[test]
    fn no_gradient_reaches_the_bilm() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let model = config(Features::Elmo).init(2, &device).unwrap();
        let (ids, padding) = batch(&device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &device);
        let loss = cross_entropy(model.class_logits(ids, padding), labels);
        let grads = loss.backward();
        let bilm = &model.bilm;
        assert!(bilm.decoder_bias.val().grad(&grads).is_none());
        let mut frozen = vec![bilm.embedding.val()];
        frozen.extend(bilm.decoder.as_ref().map(|d| d.val()));
        for layer in bilm.layers.iter().chain(&bilm.backward_layers) {
            frozen.extend([layer.recurrent.val(), layer.input.weight.val()]);
        }
        assert_eq!(frozen.len(), 10);
        assert!(frozen.iter().all(|w| w.grad(&grads).is_none()));
        let mix = model.mix.as_ref().expect("ELMo features are mixed");
        let mix = mix.weights.val().grad(&grads).expect("the mix trains");
        assert!(mix.abs().sum().into_scalar::<f32>() > 0.0);
        assert!(model.forward.recurrent.val().grad(&grads).is_some());
    }

    /// A text's class and tags do not depend on the padding beside it in a batch.
    #[test]
    fn padding_changes_nothing() {
        let device = Device::flex();
        device.seed(4);
        for features in [Features::Elmo, Features::Embeddings] {
            let model = config(features).init(3, &device).unwrap();
            let (ids, padding) = batch(&device);
            let together = model.class_logits(ids.clone(), padding.clone());
            let short = ids.clone().narrow(0, 1, 1).narrow(1, 0, 2);
            let alone = model.class_logits(short.clone(), Tensor::full([1, 2], false, &device));
            let diff = (together.narrow(0, 1, 1) - alone)
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-6, "{features:?}: {diff}");
            let tags = model
                .tag_logits(ids, padding)
                .narrow(0, 1, 1)
                .narrow(1, 0, 2);
            let alone = model.tag_logits(short, Tensor::full([1, 2], false, &device));
            assert!((tags - alone).abs().max().into_scalar::<f32>() < 1e-6);
        }
    }

    /// ELMo's mix reads the embedding and every biLM layer, and needs the embedding as wide
    /// as the layers; plain embeddings have no mix. The size counts every parameter but the
    /// head's.
    #[test]
    fn the_features_decide_the_mix() {
        let device = Device::flex();
        for (features, layers) in [(Features::Elmo, Some(3)), (Features::Embeddings, None)] {
            let config = config(features);
            let model = config.init(2, &device).unwrap();
            assert_eq!(model.mix.as_ref().map(ScalarMix::layers), layers);
            assert_eq!(config.size().total + (2 * 5 + 1) * 2, model.num_params());
        }
        let narrow = ElmoConfig {
            d_embed: 4,
            ..config(Features::Elmo)
        };
        let message = narrow.validate().unwrap_err();
        assert!(
            message.contains("d_embed (4) must equal its d_hidden (6)"),
            "{message}"
        );
    }
}
