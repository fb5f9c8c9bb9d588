//! BART and Hugging Face checkpoints, both ways (`BartForConditionalGeneration`): `config.json`
//! read into a [`TransformerConfig`] (and written from one), `model.safetensors` read into a
//! `Transformer` (and written from one), for [`HfSeq2Seq`]. BART is the original post-norm transformer with
//! biases and exact GELU, plus what fairseq added: learned positions in a table per stack whose
//! first two rows are never used (`position_offset = 2`), a LayerNorm over the embeddings of each
//! stack (`embedding_norm`), and a bias on the logits (`output_bias`, `final_logits_bias`). Its
//! output is tied to the shared embeddings, and its decoder starts from `</s>`.
//!
//! One table of [`Link`]s says how each parameter and the checkpoint's tensors correspond, and
//! serves import and export alike.

use super::{HfFamily, HfSeq2Seq, check_class, decode_tokens, refuse_misfits, usize_of};
use crate::DecodeTokens;
use crate::transformer::{Positions, TransformerConfig};
use serde_json::{Value, json};
use zoo_blocks::hf::Link;
use zoo_blocks::{Activation, NormKind, NormPlacement};

/// The class the zoo reads and writes BARTs as.
pub(super) const CLASS: &str = "BartForConditionalGeneration";

/// BART's position tables start at row 2.
const POSITION_OFFSET: usize = 2;

/// BART's LayerNorms are PyTorch's default, whose epsilon its config does not name.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `<pad>`, the decoder's first input (`</s>`) and `</s>` in BART's vocabulary.
pub const BART_TOKENS: DecodeTokens = DecodeTokens {
    pad: 1,
    bos: 2,
    eos: 2,
};

/// `activation_function` names and the zoo's activations.
const ACTIVATIONS: [(&str, Activation); 3] = [
    ("gelu", Activation::Gelu),
    ("gelu_new", Activation::GeluTanh),
    ("relu", Activation::Relu),
];

/// Reads a BART's `config.json`; any option the zoo's transformer cannot express (a
/// pre-norm mBART-style stack, encoder and decoder of different widths) is refused by name.
pub(super) fn from_config(json: &Value) -> Result<HfSeq2Seq, String> {
    let class = check_class(json, "bart", CLASS)?;
    let usize_of = |key: &str| usize_of(json, key);
    let same = |encoder: &str, decoder: &str| -> Result<usize, String> {
        let (e, d) = (usize_of(encoder)?, usize_of(decoder)?);
        if e != d {
            return Err(format!(
                "{encoder} = {e} but {decoder} = {d}: the zoo's transformer has one for both"
            ));
        }
        Ok(e)
    };
    for key in ["normalize_before", "add_final_layer_norm"] {
        if json[key].as_bool() == Some(true) {
            return Err(format!(
                "{key} = true: the zoo reads BART's post-norm stacks (mBART's are not BART)"
            ));
        }
    }
    let name = json["activation_function"].as_str().unwrap_or("gelu");
    let activation = ACTIVATIONS
        .iter()
        .find(|(hf, _)| *hf == name)
        .map(|(_, ours)| *ours)
        .ok_or_else(|| {
            format!("activation_function = \"{name}\": the zoo has gelu, gelu_new and relu")
        })?;
    let vocab_size = usize_of("vocab_size")?;
    let config = TransformerConfig {
        src_vocab_size: vocab_size,
        tgt_vocab_size: vocab_size,
        max_len: usize_of("max_position_embeddings")?,
        n_encoder_layers: usize_of("encoder_layers")?,
        n_decoder_layers: usize_of("decoder_layers")?,
        n_head: same("encoder_attention_heads", "decoder_attention_heads")?,
        d_model: usize_of("d_model")?,
        d_ff: same("encoder_ffn_dim", "decoder_ffn_dim")?,
        dropout: json["dropout"].as_f64().unwrap_or(0.1),
        bias: true,
        position: Positions::Learned,
        norm: NormKind::LayerNorm,
        norm_placement: NormPlacement::Post,
        activation,
        scale_embeddings: json["scale_embedding"].as_bool().unwrap_or(false),
        share_embeddings: true,
        tie_output: json["tie_word_embeddings"].as_bool().unwrap_or(true),
        head_dim: 0,
        scaled_attention: true,
        layer_norm_eps: LAYER_NORM_EPS,
        scale_output: false,
        separate_positions: true,
        position_offset: POSITION_OFFSET,
        embedding_norm: true,
        output_bias: true,
        ..TransformerConfig::default()
    };
    config.validate()?;
    Ok(HfSeq2Seq {
        family: HfFamily::Bart,
        config,
        class,
        tokens: decode_tokens(json, BART_TOKENS),
    })
}

/// Refuses, by name, the first option of `c` a BART does not have.
pub(super) fn check_export(c: &TransformerConfig) -> Result<(), String> {
    let checks: [(bool, &str); 13] = [
        (c.position == Positions::Learned, "position (BART: learned)"),
        (c.separate_positions, "separate_positions (BART: true)"),
        (
            c.position_offset == POSITION_OFFSET,
            "position_offset (BART: 2)",
        ),
        (c.norm == NormKind::LayerNorm, "norm (BART: layer-norm)"),
        (
            c.norm_placement == NormPlacement::Post,
            "norm_placement (BART: post)",
        ),
        (c.bias, "bias (BART: true)"),
        (c.share_embeddings, "share_embeddings (BART: true)"),
        (c.embedding_norm, "embedding_norm (BART: true)"),
        (c.output_bias, "output_bias (BART: true)"),
        (c.scaled_attention, "scaled_attention (BART: true)"),
        (!c.scale_output, "scale_output (BART: false)"),
        (
            c.head_width() * c.n_head == c.d_model,
            "head_dim (BART: d_model / n_head)",
        ),
        (
            c.layer_norm_eps == LAYER_NORM_EPS,
            "layer_norm_eps (BART: 1e-5)",
        ),
    ];
    refuse_misfits(&checks, "BART")?;
    if !ACTIVATIONS.iter().any(|(_, ours)| *ours == c.activation) {
        return Err(format!(
            "activation = {:?}: BART has gelu, gelu-tanh and relu",
            c.activation
        ));
    }
    Ok(())
}

/// The `config.json` that `transformers` builds the BART `hf` from.
pub(super) fn to_config(hf: &HfSeq2Seq) -> Value {
    let c = &hf.config;
    let activation = ACTIVATIONS
        .iter()
        .find(|(_, ours)| *ours == c.activation)
        .map_or("gelu", |(hf, _)| hf);
    json!({
        "architectures": [hf.class],
        "model_type": "bart",
        "vocab_size": c.tgt_vocab_size,
        "d_model": c.d_model,
        "encoder_layers": c.n_encoder_layers,
        "decoder_layers": c.n_decoder_layers,
        "encoder_attention_heads": c.n_head,
        "decoder_attention_heads": c.n_head,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.d_ff,
        "activation_function": activation,
        "max_position_embeddings": c.max_len,
        "scale_embedding": c.scale_embeddings,
        "dropout": c.dropout,
        "attention_dropout": c.dropout,
        "activation_dropout": 0.0,
        "tie_word_embeddings": c.tie_output,
        "is_encoder_decoder": true,
        "pad_token_id": hf.tokens.pad,
        "eos_token_id": hf.tokens.eos,
        "decoder_start_token_id": hf.tokens.bos,
        "forced_eos_token_id": hf.tokens.eos,
    })
}

/// How the checkpoint's tensors and the model's parameters correspond.
pub(super) fn links(c: &TransformerConfig) -> Vec<Link> {
    let (d, ff, v) = (c.d_model, c.d_ff, c.tgt_vocab_size);
    let projections = |hf: &str, parts: &[&str]| -> Vec<String> {
        parts.iter().map(|p| format!("{hf}.{p}_proj")).collect()
    };
    let mut links = vec![
        Link::same("model.shared.weight", "target_embedding.weight", &[v, d]),
        Link::same("final_logits_bias", "output_bias", &[1, v]),
    ];
    let rows = c.max_len + c.position_offset;
    for (stack, positions) in [("encoder", "positions"), ("decoder", "target_positions")] {
        links.push(Link::same(
            format!("model.{stack}.embed_positions.weight"),
            format!("{positions}.Learned.weight"),
            &[rows, d],
        ));
        links.extend(Link::layer_norm(
            &format!("model.{stack}.layernorm_embedding"),
            &format!("{stack}_embedding_norm"),
            d,
        ));
    }
    let self_attention = |hf: &str, zoo: &str| {
        let attention = format!("{hf}.self_attn");
        let mut links = Vec::new();
        links.extend(Link::joined_linear(
            &projections(&attention, &["q", "k", "v"]),
            &format!("{zoo}.attention.qkv"),
            d,
            d,
        ));
        links.extend(Link::linear(
            &format!("{attention}.out_proj"),
            &format!("{zoo}.attention.proj"),
            d,
            d,
        ));
        links.extend(Link::layer_norm(
            &format!("{hf}.self_attn_layer_norm"),
            &format!("{zoo}.attention_norm"),
            d,
        ));
        links
    };
    let feed_forward = |hf: &str, zoo: &str| {
        let mut links = Vec::new();
        links.extend(Link::linear(
            &format!("{hf}.fc1"),
            &format!("{zoo}.feed_forward.fc"),
            d,
            ff,
        ));
        links.extend(Link::linear(
            &format!("{hf}.fc2"),
            &format!("{zoo}.feed_forward.out"),
            ff,
            d,
        ));
        links.extend(Link::layer_norm(
            &format!("{hf}.final_layer_norm"),
            &format!("{zoo}.ff_norm"),
            d,
        ));
        links
    };
    for i in 0..c.n_encoder_layers {
        let (hf, zoo) = (format!("model.encoder.layers.{i}"), format!("encoder.{i}"));
        links.extend(self_attention(&hf, &zoo));
        links.extend(feed_forward(&hf, &zoo));
    }
    for i in 0..c.n_decoder_layers {
        let (hf, zoo) = (format!("model.decoder.layers.{i}"), format!("decoder.{i}"));
        links.extend(self_attention(&hf, &zoo));
        let cross = format!("{hf}.encoder_attn");
        links.extend(Link::linear(
            &format!("{cross}.q_proj"),
            &format!("{zoo}.cross_attention.query"),
            d,
            d,
        ));
        links.extend(Link::joined_linear(
            &projections(&cross, &["k", "v"]),
            &format!("{zoo}.cross_attention.key_value"),
            d,
            d,
        ));
        links.extend(Link::linear(
            &format!("{cross}.out_proj"),
            &format!("{zoo}.cross_attention.proj"),
            d,
            d,
        ));
        links.extend(Link::layer_norm(
            &format!("{hf}.encoder_attn_layer_norm"),
            &format!("{zoo}.cross_norm"),
            d,
        ));
        links.extend(feed_forward(&hf, &zoo));
    }
    if !c.tie_output {
        links.push(Link::weight("lm_head", "target_embedding.head", d, v));
    }
    links
}

/// The stacks' copies of the shared embeddings, which older files hold.
pub(super) const EMBEDDING_COPIES: [&str; 2] = [
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
];
