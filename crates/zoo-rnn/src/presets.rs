//! Named model shapes. The word-level ones are Zaremba et al.'s PTB models as PyTorch's
//! `word_language_model` example trains them (vocabulary from the data): small 2x200,
//! medium 2x650 with dropout 0.5, large 2x1500 with dropout 0.65.

use crate::model::RnnConfig;
use zoo_blocks::CellKind;

/// Every preset name.
pub const PRESETS: &[&str] = &[
    "lstm-small",
    "lstm-medium",
    "lstm-large",
    "gru-small",
    "gru-medium",
    "gru-large",
    "lstm-char",
];

/// The config a preset names; `None` for an unknown name.
pub fn preset(name: &str) -> Option<RnnConfig> {
    let (cell, shape) = match name.split_once('-')? {
        ("lstm", shape) => (CellKind::Lstm, shape),
        ("gru", shape) => (CellKind::Gru, shape),
        _ => return None,
    };
    let base = RnnConfig {
        cell,
        ..RnnConfig::default()
    };
    let config = match shape {
        "small" => RnnConfig {
            d_hidden: 200,
            dropout: 0.2,
            ..base
        },
        "medium" => RnnConfig {
            d_hidden: 650,
            dropout: 0.5,
            ..base
        },
        "large" => RnnConfig {
            d_hidden: 1500,
            dropout: 0.65,
            ..base
        },
        // Character-level (Karpathy's char-rnn default shape: 2 x 512 on tinyshakespeare).
        "char" if cell == CellKind::Lstm => RnnConfig {
            d_hidden: 512,
            d_embed: 64,
            dropout: 0.2,
            ..base
        },
        _ => return None,
    };
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_resolves() {
        for name in PRESETS {
            assert!(preset(name).is_some(), "{name}");
        }
        for unknown in ["lstm-huge", "gru-char", "rnn-small", "lstm"] {
            assert!(preset(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn medium_has_the_parameter_count_of_zarembas_model() {
        // PTB's 10,000 words, 2 x 650 LSTM, untied. PyTorch counts 19,780,400: embedding 6.5M,
        // per layer 4 x 650 x 1300 weights and two 2,600-wide biases, decoder 6.5M + 10,000.
        // Ours sums each layer's two biases into one: 2 x 2,600 = 5,200 fewer.
        let config = RnnConfig {
            vocab_size: 10_000,
            ..preset("lstm-medium").unwrap()
        };
        assert_eq!(config.size().total, 19_780_400 - 5_200);
    }
}
