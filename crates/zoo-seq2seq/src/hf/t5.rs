//! T5 and Hugging Face checkpoints, both ways (`T5ForConditionalGeneration`): `config.json`
//! read into a [`TransformerConfig`] (and written from one), `model.safetensors` read into a
//! `Transformer` (and written from one), for [`HfSeq2Seq`]. Both T5 generations fit the zoo's transformer through
//! its config: v1.0 (ReLU feed-forward, output tied to the embeddings and fed the decoder's
//! output scaled by `d_model^-1/2`) and v1.1 / flan (gated GELU, an output head of its own, and
//! heads whose widths together need not equal `d_model`). Both have pre-norm RMSNorm, no biases,
//! unscaled attention scores and one relative position bias per stack, kept by its first layer.
//!
//! One table of [`Link`]s says how each parameter and the checkpoint's tensors correspond, and
//! serves import and export alike.

use super::{HfFamily, HfSeq2Seq, check_class, decode_tokens, refuse_misfits, usize_of};
use crate::DecodeTokens;
use crate::transformer::{Positions, TransformerConfig};
use serde_json::{Value, json};
use zoo_blocks::hf::{HfTensors, Link};
use zoo_blocks::{Activation, NormKind, NormPlacement};

/// The class the zoo reads and writes T5s as.
pub(super) const CLASS: &str = "T5ForConditionalGeneration";

/// Padding, the decoder's first input and end of sequence in T5's own vocabulary: the decoder
/// starts from `<pad>`.
pub const T5_TOKENS: DecodeTokens = DecodeTokens {
    pad: 0,
    bos: 0,
    eos: 1,
};

/// Reads a T5's `config.json`; any option the zoo's transformer cannot express is refused by
/// name.
pub(super) fn from_config(json: &Value) -> Result<HfSeq2Seq, String> {
    let class = check_class(json, "t5", CLASS)?;
    let usize_of = |key: &str| usize_of(json, key);
    let activation = match json["feed_forward_proj"].as_str().unwrap_or("relu") {
        "relu" => Activation::Relu,
        "gated-gelu" => Activation::Geglu,
        other => {
            return Err(format!(
                "feed_forward_proj = \"{other}\": the zoo's transformer has \"relu\" and \"gated-gelu\""
            ));
        }
    };
    // Before transformers 5, `tie_word_embeddings` said both whether the output head is the
    // embedding matrix and whether the decoder's output is scaled first (v1.0 both, v1.1
    // neither); transformers 5 writes the second apart as `scale_decoder_outputs`.
    let tied = json["tie_word_embeddings"].as_bool().unwrap_or(true);
    let scaled_output = json["scale_decoder_outputs"].as_bool().unwrap_or(tied);
    let layers = usize_of("num_layers")?;
    let config = TransformerConfig {
        src_vocab_size: usize_of("vocab_size")?,
        tgt_vocab_size: usize_of("vocab_size")?,
        max_len: json["n_positions"].as_u64().unwrap_or(512) as usize,
        n_encoder_layers: layers,
        n_decoder_layers: json["num_decoder_layers"]
            .as_u64()
            .map_or(layers, |n| n as usize),
        n_head: usize_of("num_heads")?,
        d_model: usize_of("d_model")?,
        d_ff: usize_of("d_ff")?,
        dropout: json["dropout_rate"].as_f64().unwrap_or(0.1),
        bias: false,
        position: Positions::Relative,
        norm: NormKind::RmsNorm,
        norm_placement: NormPlacement::Pre,
        activation,
        scale_embeddings: false,
        share_embeddings: true,
        tie_output: tied,
        relative_buckets: usize_of("relative_attention_num_buckets").unwrap_or(32),
        relative_max_distance: usize_of("relative_attention_max_distance").unwrap_or(128),
        head_dim: usize_of("d_kv")?,
        scaled_attention: false,
        layer_norm_eps: json["layer_norm_epsilon"].as_f64().unwrap_or(1e-6),
        scale_output: scaled_output,
        separate_positions: false,
        position_offset: 0,
        embedding_norm: false,
        output_bias: false,
    };
    config.validate()?;
    Ok(HfSeq2Seq {
        family: HfFamily::T5,
        config,
        class,
        tokens: decode_tokens(json, T5_TOKENS),
    })
}

/// Refuses, by name, the first option of `c` a T5 does not have.
pub(super) fn check_export(c: &TransformerConfig) -> Result<(), String> {
    let checks: [(bool, &str); 10] = [
        (c.position == Positions::Relative, "position (T5: relative)"),
        (c.norm == NormKind::RmsNorm, "norm (T5: rms-norm)"),
        (
            c.norm_placement == NormPlacement::Pre,
            "norm_placement (T5: pre)",
        ),
        (!c.bias, "bias (T5: false)"),
        (!c.scale_embeddings, "scale_embeddings (T5: false)"),
        (c.share_embeddings, "share_embeddings (T5: true)"),
        (!c.scaled_attention, "scaled_attention (T5: false)"),
        (!c.embedding_norm, "embedding_norm (T5: false)"),
        (!c.output_bias, "output_bias (T5: false)"),
        (
            matches!(c.activation, Activation::Relu | Activation::Geglu),
            "activation (T5: relu or geglu)",
        ),
    ];
    refuse_misfits(&checks, "T5")?;
    if c.n_encoder_layers == 0 || c.n_decoder_layers == 0 {
        return Err("a T5 has an encoder and a decoder".into());
    }
    Ok(())
}

/// The `config.json` that `transformers` builds the T5 `hf` from.
pub(super) fn to_config(hf: &HfSeq2Seq) -> Value {
    let c = &hf.config;
    json!({
        "architectures": [hf.class],
        "model_type": "t5",
        "vocab_size": c.tgt_vocab_size,
        "d_model": c.d_model,
        "d_kv": c.head_width(),
        "d_ff": c.d_ff,
        "num_layers": c.n_encoder_layers,
        "num_decoder_layers": c.n_decoder_layers,
        "num_heads": c.n_head,
        "relative_attention_num_buckets": c.relative_buckets,
        "relative_attention_max_distance": c.relative_max_distance,
        "dropout_rate": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps,
        "feed_forward_proj": if c.activation == Activation::Geglu { "gated-gelu" } else { "relu" },
        "tie_word_embeddings": c.tie_output,
        "scale_decoder_outputs": c.scale_output,
        "is_encoder_decoder": true,
        "n_positions": c.max_len,
        "pad_token_id": hf.tokens.pad,
        "eos_token_id": hf.tokens.eos,
        "decoder_start_token_id": hf.tokens.bos,
    })
}

/// How the checkpoint's tensors and the model's parameters correspond. A T5 block is a list
/// of sublayers, each a norm and what it feeds: `layer.0` self-attention, in the decoder
/// `layer.1` cross-attention, and the last one the feed-forward.
pub(super) fn links(c: &TransformerConfig) -> Vec<Link> {
    let (d, ff, inner) = (c.d_model, c.d_ff, c.n_head * c.head_width());
    let linear = |hf: &str, parts: &[&str], zoo: &str, d_in: usize, d_out: usize| Link::Linear {
        hf: parts.iter().map(|p| format!("{hf}.{p}.weight")).collect(),
        zoo: format!("{zoo}.weight"),
        d_in,
        d_outs: vec![d_out; parts.len()],
    };
    // Sublayer `hf` (`encoder.block.0.layer.1`): its norm as `zoo_norm`, then `links` of
    // what it holds.
    let sublayer = |hf: &str, zoo_norm: &str, links: Vec<Link>| {
        let norm = Link::same(
            format!("{hf}.layer_norm.weight"),
            format!("{zoo_norm}.Rms.gamma"),
            &[d],
        );
        std::iter::once(norm).chain(links).collect::<Vec<_>>()
    };
    let self_attention = |hf: &str, zoo: &str| {
        let (hf, zoo) = (format!("{hf}.SelfAttention"), format!("{zoo}attention"));
        vec![
            linear(&hf, &["q", "k", "v"], &format!("{zoo}.qkv"), d, inner),
            linear(&hf, &["o"], &format!("{zoo}.proj"), inner, d),
        ]
    };
    let cross_attention = |hf: &str, zoo: &str| {
        let (hf, zoo) = (
            format!("{hf}.EncDecAttention"),
            format!("{zoo}cross_attention"),
        );
        vec![
            linear(&hf, &["q"], &format!("{zoo}.query"), d, inner),
            linear(&hf, &["k", "v"], &format!("{zoo}.key_value"), d, inner),
            linear(&hf, &["o"], &format!("{zoo}.proj"), inner, d),
        ]
    };
    let feed_forward = |hf: &str, zoo: &str| {
        let (hf, zoo) = (format!("{hf}.DenseReluDense"), format!("{zoo}feed_forward"));
        let gated = c.activation == Activation::Geglu;
        let wi: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
        vec![
            linear(&hf, wi, &format!("{zoo}.fc"), d, ff),
            linear(&hf, &["wo"], &format!("{zoo}.out"), ff, d),
        ]
    };
    let final_norm = |stack: &str| {
        Link::same(
            format!("{stack}.final_layer_norm.weight"),
            format!("{stack}_norm.Rms.gamma"),
            &[d],
        )
    };
    let mut links = vec![Link::same(
        "shared.weight",
        "target_embedding.weight",
        &[c.tgt_vocab_size, d],
    )];
    for stack in ["encoder", "decoder"] {
        // One relative position bias per stack, kept by its first block.
        links.push(Link::same(
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            format!("{stack}_relative.table.weight"),
            &[c.relative_buckets, c.n_head],
        ));
    }
    for i in 0..c.n_encoder_layers {
        let (hf, zoo) = (format!("encoder.block.{i}.layer"), format!("encoder.{i}."));
        let attention = format!("{hf}.0");
        links.extend(sublayer(
            &attention,
            &format!("{zoo}attention_norm"),
            self_attention(&attention, &zoo),
        ));
        let ff_layer = format!("{hf}.1");
        links.extend(sublayer(
            &ff_layer,
            &format!("{zoo}ff_norm"),
            feed_forward(&ff_layer, &zoo),
        ));
    }
    links.push(final_norm("encoder"));
    for i in 0..c.n_decoder_layers {
        let (hf, zoo) = (format!("decoder.block.{i}.layer"), format!("decoder.{i}."));
        let attention = format!("{hf}.0");
        links.extend(sublayer(
            &attention,
            &format!("{zoo}attention_norm"),
            self_attention(&attention, &zoo),
        ));
        let cross = format!("{hf}.1");
        links.extend(sublayer(
            &cross,
            &format!("{zoo}cross_norm"),
            cross_attention(&cross, &zoo),
        ));
        let ff_layer = format!("{hf}.2");
        links.extend(sublayer(
            &ff_layer,
            &format!("{zoo}ff_norm"),
            feed_forward(&ff_layer, &zoo),
        ));
    }
    links.push(final_norm("decoder"));
    if !c.tie_output {
        links.push(Link::weight(
            "lm_head",
            "target_embedding.head",
            d,
            c.tgt_vocab_size,
        ));
    }
    links
}

/// The stacks' copies of the shared embeddings, which a file may hold.
pub(super) const EMBEDDING_COPIES: [&str; 2] =
    ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"];

/// transformers 5 writes `tie_word_embeddings: true` for every T5, also one whose output head is
/// its own and saved apart as `lm_head.weight`; as transformers does on loading, a head that
/// differs from the embeddings is kept as the model's own (and the config says so).
pub(super) fn untie_saved_head(config: &mut TransformerConfig, tensors: &HfTensors) {
    if config.tie_output
        && let Some(head) = tensors.get("lm_head.weight")
        && tensors.get("shared.weight") != Some(head)
    {
        config.tie_output = false;
    }
}
