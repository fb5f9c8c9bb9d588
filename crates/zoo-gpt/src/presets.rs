//! Named GPT shapes, the way fairseq names architectures. A recipe names one and overrides any
//! field.

use crate::model::GptConfig;

/// The preset names, smallest first.
pub const PRESETS: &[&str] = &[
    "gpt-nano",
    "gpt-micro",
    "gpt-mini",
    "gpt-baby-char",
    "gpt-shakespeare-char",
    "gpt2-small",
];

/// The config a preset names; `None` for an unknown name.
pub fn preset(name: &str) -> Option<GptConfig> {
    let base = GptConfig::default();
    let config = match name {
        // minGPT's model_type shapes (vocabulary and block size come from the data).
        "gpt-nano" => GptConfig {
            n_layer: 3,
            n_head: 3,
            n_embd: 48,
            ..base
        },
        "gpt-micro" => GptConfig {
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            ..base
        },
        "gpt-mini" => GptConfig {
            n_layer: 6,
            n_head: 6,
            n_embd: 192,
            ..base
        },
        // nanoGPT's README "baby GPT" for a CPU: train.py defaults (no bias) with these flags.
        "gpt-baby-char" => GptConfig {
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            dropout: 0.0,
            bias: false,
            ..base
        },
        // nanoGPT's config/train_shakespeare_char.py.
        "gpt-shakespeare-char" => GptConfig {
            n_layer: 6,
            n_head: 6,
            n_embd: 384,
            block_size: 256,
            dropout: 0.2,
            bias: false,
            ..base
        },
        // GPT-2 124M.
        "gpt2-small" => GptConfig {
            vocab_size: 50257,
            block_size: 1024,
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
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
        assert!(preset("gpt-huge").is_none());
    }

    #[test]
    fn gpt2_small_has_124m_parameters() {
        let size = preset("gpt2-small").unwrap().size();
        // 124,439,808 with GPT-2's tied head and learned positions.
        assert_eq!(size.total, 124_439_808);
    }
}
