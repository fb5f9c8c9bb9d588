//! Token embeddings and the output head, optionally sharing one matrix (weight tying, Press &
//! Wolf 2017): the head's logits are then `h · Eᵀ`.

use crate::kernels;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

/// Shapes and options of a [`TokenEmbedding`].
#[derive(Clone, Debug)]
pub struct TokenEmbeddingConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Embedding width.
    pub d_model: usize,
    /// Share the embedding matrix with the output head.
    pub tie_weights: bool,
    /// Whether an untied head carries a bias.
    pub head_bias: bool,
}

impl TokenEmbeddingConfig {
    /// Initialises embeddings (and the head) from N(0, 0.02²), as GPT-2 does.
    pub fn init(&self, device: &Device) -> TokenEmbedding {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let weight = init.init_with(
            [self.vocab_size, self.d_model],
            Some(self.vocab_size),
            Some(self.d_model),
            device,
        );
        let head = (!self.tie_weights).then(|| {
            LinearConfig::new(self.d_model, self.vocab_size)
                .with_bias(self.head_bias)
                .with_initializer(init)
                .init(device)
        });
        TokenEmbedding { weight, head }
    }
}

/// Token embedding plus output head; see the module docs.
#[derive(Module, Debug)]
pub struct TokenEmbedding {
    /// `[vocab_size, d_model]`.
    pub weight: Param<Tensor<2>>,
    /// The untied output head, `None` when tied to `weight`.
    pub head: Option<Linear>,
}

impl TokenEmbedding {
    /// Looks up `ids` (`[batch, len]`) to `[batch, len, d_model]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        kernels::embedding(self.weight.val(), ids)
    }

    /// Projects hidden states `[batch, len, d_model]` to logits `[batch, len, vocab_size]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.head {
            Some(head) => kernels::linear(head, hidden),
            None => kernels::matmul_weight(hidden, self.weight.val().transpose()),
        }
    }

    /// Whether the head shares the embedding matrix.
    /// This embedding (of a vocabulary at least `pretrained`'s) with `pretrained`'s rows for
    /// the ids they share and its own (fresh) rows for the ids added after them: how a
    /// fine-tuning run that adds tokens (GPT-1's start, delimiter and extract) keeps the
    /// pretrained vocabulary. The head, when untied, likewise.
    pub fn with_rows_of(self, pretrained: TokenEmbedding) -> Result<Self, String> {
        let (ours, theirs) = (self.weight.dims(), pretrained.weight.dims());
        if ours[1] != theirs[1] || ours[0] < theirs[0] || self.is_tied() != pretrained.is_tied() {
            return Err(format!(
                "a token embedding of {ours:?} (tied: {}) cannot take the rows of one of {theirs:?} (tied: {})",
                self.is_tied(),
                pretrained.is_tied()
            ));
        }
        let (vocab, known) = (ours[0], theirs[0]);
        let grown = |fresh: Tensor<2>, taken: Tensor<2>, dim: usize| {
            Tensor::cat(vec![taken, fresh.narrow(dim, known, vocab - known)], dim)
        };
        let weight = grown(self.weight.val(), pretrained.weight.val(), 0);
        let head = match (self.head, pretrained.head) {
            (Some(mut head), Some(taken)) => {
                head.weight = Param::initialized(
                    head.weight.id,
                    grown(head.weight.val(), taken.weight.val(), 1),
                );
                if let (Some(bias), Some(taken)) = (head.bias.as_mut(), taken.bias) {
                    let rows = |t: Tensor<1>| t.unsqueeze::<2>();
                    let joined = grown(rows(bias.val()), rows(taken.val()), 1);
                    *bias = Param::initialized(bias.id, joined.reshape([vocab]));
                }
                Some(head)
            }
            _ => None,
        };
        Ok(Self {
            weight: Param::initialized(self.weight.id, weight),
            head,
        })
    }

    pub fn is_tied(&self) -> bool {
        self.head.is_none()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.weight.dims()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_device};
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn tied_head_scores_each_token_by_its_embedding() {
        let device = test_device();
        let emb = TokenEmbeddingConfig {
            vocab_size: 5,
            d_model: 4,
            tie_weights: true,
            head_bias: false,
        }
        .init(&device);
        assert!(emb.is_tied());
        let ids = Tensor::<2, Int>::from_data(TensorData::from([[3i64, 1]]), &device);
        let hidden = emb.forward(ids);
        let logits = emb.logits(hidden.clone());
        // logit[v] = <e_token, e_v>: the diagonal entry is the squared norm of the embedding.
        let e3 = emb.weight.val().narrow(0, 3, 1);
        let expected = e3.clone().matmul(emb.weight.val().transpose());
        assert_close(logits.narrow(1, 0, 1).reshape([1, 5]), expected, 1e-6);
    }

    #[test]
    fn tied_weights_receive_gradient_from_both_uses() {
        let device = test_device().autodiff();
        let emb = TokenEmbeddingConfig {
            vocab_size: 5,
            d_model: 4,
            tie_weights: true,
            head_bias: false,
        }
        .init(&device);
        let ids = Tensor::<2, Int>::from_data(TensorData::from([[0i64, 1]]), &device);
        // Rows 2..5 are never looked up, so only the head can give them a gradient.
        let out = emb.logits(emb.forward(ids));
        let w = Tensor::<3>::random([1, 2, 5], Distribution::Normal(0.0, 1.0), &device);
        let grads = (out * w).sum().backward();
        let g = emb.weight.grad(&grads).unwrap();
        let unused_rows = g.narrow(0, 2, 3).abs().sum().into_scalar::<f32>();
        assert!(unused_rows > 0.0);
    }

    #[test]
    fn a_grown_vocabulary_keeps_the_pretrained_rows_and_adds_fresh_ones() {
        let device = test_device();
        let config = |vocab_size| TokenEmbeddingConfig {
            vocab_size,
            d_model: 3,
            tie_weights: false,
            head_bias: true,
        };
        let pretrained = config(5).init(&device);
        let fresh = config(7).init(&device);
        let grown = fresh.clone().with_rows_of(pretrained.clone()).unwrap();
        assert_close(
            grown.weight.val().narrow(0, 0, 5),
            pretrained.weight.val(),
            0.0,
        );
        assert_close(
            grown.weight.val().narrow(0, 5, 2),
            fresh.weight.val().narrow(0, 5, 2),
            0.0,
        );
        let (head, taken) = (grown.head.unwrap(), pretrained.head.clone().unwrap());
        assert_close(head.weight.val().narrow(1, 0, 5), taken.weight.val(), 0.0);
        assert_eq!(head.bias.unwrap().dims(), [7]);
        assert!(config(4).init(&device).with_rows_of(pretrained).is_err());
    }

    #[test]
    fn untied_head_has_its_own_weights() {
        let emb = TokenEmbeddingConfig {
            vocab_size: 7,
            d_model: 3,
            tie_weights: false,
            head_bias: true,
        }
        .init(&test_device());
        assert_eq!(emb.head.as_ref().unwrap().weight.dims(), [3, 7]);
        assert_eq!(emb.num_params(), 7 * 3 + 3 * 7 + 7);
    }
}
