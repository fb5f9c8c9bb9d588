//! Named encoder-decoder shapes, the way fairseq names architectures. A recipe names one and
//! overrides any field.

use crate::rnn::{AttentionKind, RnnAttentionConfig};
use crate::transformer::{Positions, TransformerConfig};
use zoo_blocks::{CellKind, NormKind, NormPlacement};

/// Transformer presets, smallest first.
pub const TRANSFORMER_PRESETS: &[&str] = &[
    "transformer-tiny",
    "transformer-small",
    "t5-small",
    "transformer-base",
];

/// RNN encoder-decoder presets.
pub const RNN_ATTENTION_PRESETS: &[&str] = &["rnn-attention-tiny", "rnn-attention-small"];

/// The transformer config a preset names; `None` for an unknown name.
pub fn transformer_preset(name: &str) -> Option<TransformerConfig> {
    let base = TransformerConfig::default();
    Some(match name {
        // For tests and the embedded synthetic tasks.
        "transformer-tiny" => TransformerConfig {
            n_encoder_layers: 2,
            n_decoder_layers: 2,
            n_head: 4,
            d_model: 64,
            d_ff: 256,
            max_len: 128,
            dropout: 0.0,
            norm_placement: NormPlacement::Pre,
            ..base
        },
        // A CPU-sized model for Multi30k (the PyTorch tutorials' 3 layers of 256).
        "transformer-small" => TransformerConfig {
            n_encoder_layers: 3,
            n_decoder_layers: 3,
            n_head: 4,
            d_model: 256,
            d_ff: 1024,
            max_len: 128,
            ..base
        },
        // T5-small's shape (Raffel et al. 2020): 6 + 6 layers, 512 wide, 8 heads, d_ff 2048,
        // pre-norm RMSNorm, no biases, relative position bias, unscaled embeddings.
        "t5-small" => TransformerConfig {
            n_encoder_layers: 6,
            n_decoder_layers: 6,
            n_head: 8,
            d_model: 512,
            d_ff: 2048,
            max_len: 512,
            bias: false,
            position: Positions::Relative,
            norm: NormKind::RmsNorm,
            norm_placement: NormPlacement::Pre,
            scale_embeddings: false,
            ..base
        },
        // Vaswani et al. (2017), the base model: 6 + 6 layers, 512 wide, 8 heads, d_ff 2048.
        "transformer-base" => base,
        _ => return None,
    })
}

/// The RNN encoder-decoder config a preset names; `None` for an unknown name.
pub fn rnn_attention_preset(name: &str) -> Option<RnnAttentionConfig> {
    let base = RnnAttentionConfig::default();
    Some(match name {
        "rnn-attention-tiny" => RnnAttentionConfig {
            d_embed: 64,
            d_encoder: 64,
            d_decoder: 128,
            d_attention: 64,
            dropout: 0.0,
            max_len: 128,
            ..base
        },
        // Bahdanau's model at CPU scale: bidirectional GRU of 2 x 256, decoder 512, additive
        // attention.
        "rnn-attention-small" => RnnAttentionConfig {
            cell: CellKind::Gru,
            attention: AttentionKind::Additive,
            max_len: 128,
            ..base
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset validates once it has a vocabulary, and the sizes are the published ones:
    /// the base transformer, 6 + 6 layers of 512 with a shared 37,000-token vocabulary, about
    /// 63M (Vaswani et al. 2017, table 3, "base": 65M); t5-small exactly Hugging Face's count.
    #[test]
    fn presets_build_and_base_has_the_published_size() {
        for name in TRANSFORMER_PRESETS {
            let config = TransformerConfig {
                src_vocab_size: 100,
                tgt_vocab_size: 100,
                ..transformer_preset(name).unwrap()
            };
            config.validate().unwrap();
        }
        for name in RNN_ATTENTION_PRESETS {
            let config = RnnAttentionConfig {
                src_vocab_size: 100,
                tgt_vocab_size: 100,
                ..rnn_attention_preset(name).unwrap()
            };
            config.validate().unwrap();
        }
        let base = TransformerConfig {
            src_vocab_size: 37_000,
            tgt_vocab_size: 37_000,
            ..transformer_preset("transformer-base").unwrap()
        };
        let size = base.size();
        let (total, non_embedding) = (size.total, size.non_embedding);
        // Per encoder layer 4·512² + 2·512·2048 + biases and norms; per decoder layer one more
        // attention; plus one 37,000 x 512 embedding matrix.
        assert_eq!(non_embedding, 6 * 3_152_384 + 6 * 4_204_032);
        assert_eq!(total, non_embedding + 37_000 * 512);
        assert!((60_000_000..66_000_000).contains(&total), "{total}");
        // T5-small with its 32,128-token vocabulary: Hugging Face's t5-small has 60,506,624.
        let t5 = TransformerConfig {
            src_vocab_size: 32_128,
            tgt_vocab_size: 32_128,
            ..transformer_preset("t5-small").unwrap()
        };
        assert_eq!(t5.size().total, 60_506_624);
    }
}
