//! Named BERT shapes: Google's BERT miniatures (Turc et al. 2019, "Well-Read Students Learn
//! Better") and BERT-base. The vocabulary size comes from the tokenizer unless a recipe sets it.

use crate::model::BertConfig;

/// The preset names, smallest first.
pub const PRESETS: &[&str] = &[
    "bert-tiny",
    "bert-mini",
    "bert-small",
    "bert-medium",
    "bert-base",
];

/// The config a preset names; `None` for an unknown name.
pub fn preset(name: &str) -> Option<BertConfig> {
    let shape = |n_layer, d_model, n_head| BertConfig {
        n_layer,
        d_model,
        n_head,
        ..BertConfig::default()
    };
    Some(match name {
        "bert-tiny" => shape(2, 128, 2),
        "bert-mini" => shape(4, 256, 4),
        "bert-small" => shape(4, 512, 8),
        "bert-medium" => shape(8, 512, 8),
        "bert-base" => shape(12, 768, 12),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_valid_shape_with_four_times_wide_feed_forward() {
        for name in PRESETS {
            let config = BertConfig {
                vocab_size: 100,
                ..preset(name).unwrap()
            };
            config.validate().unwrap();
            assert_eq!(config.ff_width(), 4 * config.d_model);
            assert_eq!(config.d_model / config.n_head, 64, "{name}: heads of 64");
        }
        assert!(preset("bert-huge").is_none());
    }
}
