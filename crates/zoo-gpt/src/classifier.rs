//! A GPT fine-tuned to classify, as in the GPT-1 paper (Radford et al. 2018, section 3.2): the
//! input is the text between a start and an extract token (a pair's two texts joined by a
//! delimiter), a linear head reads the last block's state at the extract token, and the
//! language-model loss on the same input can be kept as an auxiliary objective,
//! `L = L_classes + lambda * L_lm` (the paper's lambda: 0.5).

use crate::model::Gpt;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use zoo_blocks::loss::cross_entropy;

/// A GPT and its classification head.
#[derive(Module, Debug)]
pub struct GptClassifier {
    /// The language model.
    pub gpt: Gpt,
    /// Classes from the state at the extract token.
    pub head: Linear,
}

/// The auxiliary language-model loss of a batch: which positions predict their next token and
/// what it is.
#[derive(Clone, Debug)]
pub struct AuxiliaryLm {
    /// Flat positions `b * len + t` scored (real tokens followed by a real token).
    pub positions: Tensor<1, Int>,
    /// The token after each.
    pub targets: Tensor<1, Int>,
    /// Its weight in the loss (lambda).
    pub weight: f64,
}

/// What a batch costs and predicts.
#[derive(Clone, Debug)]
pub struct ClassifierLoss {
    /// The classification loss, plus the weighted language-model loss when there is one.
    pub loss: Tensor<1>,
    /// The language-model loss alone (unweighted), when there is one.
    pub lm_loss: Option<Tensor<1>>,
    /// The predicted classes `[batch]`.
    pub predicted: Tensor<1, Int>,
}

impl GptClassifier {
    /// `gpt` with a fresh head of `num_labels` classes (GPT-2's initialisation: N(0, 0.02),
    /// no bias offset).
    pub fn new(gpt: Gpt, num_labels: usize, device: &Device) -> Self {
        let width = gpt.width();
        let head = LinearConfig::new(width, num_labels)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            })
            .init(device);
        Self { gpt, head }
    }

    /// Class logits `[batch, labels]` read at `extract` (flat positions `b * len + t`, one per
    /// sequence) of token ids `[batch, len]`, and the last block's states.
    pub fn logits(&self, ids: Tensor<2, Int>, extract: Tensor<1, Int>) -> (Tensor<2>, Tensor<3>) {
        let [batch, len] = ids.dims();
        let hidden = self.gpt.hidden(ids, None);
        let width = hidden.dims()[2];
        let states = hidden
            .clone()
            .reshape([batch * len, width])
            .select(0, extract);
        (zoo_blocks::kernels::linear(&self.head, states), hidden)
    }

    /// The loss of a batch of `labels`, with the auxiliary language-model loss `lm` when
    /// given.
    pub fn loss(
        &self,
        ids: Tensor<2, Int>,
        extract: Tensor<1, Int>,
        labels: Tensor<1, Int>,
        lm: Option<AuxiliaryLm>,
    ) -> ClassifierLoss {
        let [batch, len] = ids.dims();
        let (logits, hidden) = self.logits(ids, extract);
        let predicted = logits.clone().detach().argmax(1).reshape([batch]);
        let mut loss = cross_entropy(logits, labels);
        let lm_loss = lm.map(|lm| {
            let width = hidden.dims()[2];
            let states = hidden.reshape([batch * len, width]).select(0, lm.positions);
            let [n, _] = states.dims();
            let token_logits = self.gpt.logits(states.unsqueeze::<3>());
            let vocab = token_logits.dims()[2];
            let lm_loss = cross_entropy(token_logits.reshape([n, vocab]), lm.targets);
            loss = loss.clone() + lm_loss.clone() * lm.weight;
            lm_loss
        });
        ClassifierLoss {
            loss,
            lm_loss,
            predicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;
    use burn::tensor::{Distribution, TensorData};

    fn config(vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            block_size: 12,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            ..GptConfig::default()
        }
    }

    fn ints<const D: usize>(data: TensorData, device: &Device) -> Tensor<D, Int> {
        Tensor::from_data(data, device)
    }

    /// The head reads the state at the extract token: what comes after it (padding) changes
    /// nothing, what comes before it does.
    #[test]
    fn the_head_reads_the_extract_token_and_nothing_after_it() {
        let device = Device::flex();
        let model = GptClassifier::new(config(11).init(&device).unwrap(), 3, &device);
        let batch = |tail: i64, first: i64| {
            ints::<2>(TensorData::from([[first, 4, 5, 9, tail, tail]]), &device)
        };
        let extract = ints::<1>(TensorData::from([3i64]), &device);
        let logits = |ids| model.logits(ids, extract.clone()).0.into_data();
        assert_eq!(logits(batch(0, 2)), logits(batch(7, 2)));
        assert_ne!(logits(batch(0, 2)), logits(batch(0, 3)));
    }

    /// With the auxiliary loss: the class cross-entropy plus lambda times the next-token
    /// cross-entropy of the scored positions, which is the plain language model's loss when
    /// every position is scored.
    #[test]
    fn the_auxiliary_loss_is_the_language_models_own_weighted_by_lambda() {
        let device = Device::flex();
        let gpt = config(11).init(&device).unwrap();
        let model = GptClassifier::new(gpt.clone(), 2, &device);
        let ids = Tensor::<2>::random([2, 6], Distribution::Uniform(0.0, 11.0), &device).int();
        let next = Tensor::<2>::random([2, 6], Distribution::Uniform(0.0, 11.0), &device).int();
        let extract = ints::<1>(TensorData::from([5i64, 11]), &device);
        let labels = ints::<1>(TensorData::from([1i64, 0]), &device);
        let all: Vec<i64> = (0..12).collect();
        let lm = AuxiliaryLm {
            positions: ints::<1>(TensorData::new(all, [12]), &device),
            targets: next.clone().reshape([12]),
            weight: 0.5,
        };
        let value = |t: Tensor<1>| t.into_scalar::<f64>();
        let with = model.loss(ids.clone(), extract.clone(), labels.clone(), Some(lm));
        let without = model.loss(ids.clone(), extract, labels, None);
        let lm_loss = value(with.lm_loss.unwrap());
        let plain = value(gpt.loss(ids, next));
        assert!((lm_loss - plain).abs() < 1e-6, "{lm_loss} vs {plain}");
        let expected = value(without.loss) + 0.5 * plain;
        assert!((value(with.loss) - expected).abs() < 1e-6);
    }

    /// A GPT with three tokens added to its vocabulary computes what the pretrained one did
    /// on the tokens they share.
    #[test]
    fn a_grown_vocabulary_keeps_the_pretrained_model() {
        let device = Device::flex();
        let pretrained = config(11).init(&device).unwrap();
        let grown = config(14)
            .init(&device)
            .unwrap()
            .with_weights_of(pretrained.clone())
            .unwrap();
        let ids = Tensor::<2>::random([2, 5], Distribution::Uniform(0.0, 11.0), &device).int();
        let ours = grown.forward(ids.clone(), None).narrow(2, 0, 11);
        let theirs = pretrained.forward(ids, None);
        let diff = (ours - theirs).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
    }
}
