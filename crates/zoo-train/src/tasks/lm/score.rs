//! `zoo score`: how surprising a language model finds a text, token by token. Every token is
//! scored as `zoo eval` scores a split ([`token_losses`]), so the text's perplexity is the one
//! `zoo eval` reports for the same text.

use crate::ZooError;
use crate::tasks::lm::model::LmModel;
use crate::tasks::lm::run::{LoadedRun, RunModel, token_losses};
use serde::Serialize;

/// One scored token.
#[derive(Clone, Debug, Serialize)]
pub struct TokenScore {
    /// Its position among the text's tokens.
    pub position: usize,
    /// The token as text.
    pub token: String,
    /// Its log-probability given what came before (nats).
    pub log_prob: f64,
}

/// A text's token scores and perplexity.
#[derive(Clone, Debug, Serialize)]
pub struct ScoreReport {
    /// Every scored token, in order.
    pub tokens: Vec<TokenScore>,
    /// Tokens in the text (some are context only: see [`token_losses`]).
    pub text_tokens: usize,
    /// Mean negative log-likelihood of the scored tokens (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Every token of the text as text, scored or not.
    #[serde(skip)]
    pieces: Vec<String>,
}

/// Scores `text` with the run's model.
pub fn score(run: &LoadedRun, text: &str) -> Result<ScoreReport, ZooError> {
    if let RunModel::Neural(LmModel::Rnn(rnn)) = &run.model
        && rnn.is_bidirectional()
    {
        return Err(ZooError::Usage(
            "a biLM predicts every token both ways, so it gives no one log-probability per token: `zoo eval` gives its perplexity".into(),
        ));
    }
    let ids = run.tokenizer.encode(text)?;
    let losses = token_losses(run, &ids).map_err(|e| ZooError::Usage(format!("the text: {e}")))?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| run.tokenizer.decode(&[id]).unwrap_or_default())
        .collect();
    let tokens: Vec<TokenScore> = losses
        .iter()
        .map(|&(position, nll)| TokenScore {
            position,
            token: pieces[position].clone(),
            log_prob: -nll,
        })
        .collect();
    let loss = -tokens.iter().map(|t| t.log_prob).sum::<f64>() / tokens.len().max(1) as f64;
    Ok(ScoreReport {
        tokens,
        text_tokens: ids.len(),
        loss,
        perplexity: loss.exp(),
        pieces,
    })
}

impl ScoreReport {
    /// One line per token (position, log-probability, token), then the perplexity.
    pub fn table(&self) -> String {
        let mut out = String::from("position  log-prob  token\n");
        for t in &self.tokens {
            out.push_str(&format!(
                "{:>8}  {:>8.3}  {:?}\n",
                t.position, t.log_prob, t.token
            ));
        }
        out + &self.summary()
    }

    /// The text with each scored token coloured by its log-probability (ANSI colours: green
    /// above -2 nats, yellow to -5, red below; unscored context plain), then the perplexity.
    pub fn coloured(&self) -> String {
        let mut scored = self.tokens.iter().peekable();
        let mut out = String::new();
        for (position, piece) in self.pieces.iter().enumerate() {
            match scored.next_if(|t| t.position == position) {
                Some(t) => {
                    let colour = match t.log_prob {
                        p if p > -2.0 => 32,
                        p if p > -5.0 => 33,
                        _ => 31,
                    };
                    out.push_str(&format!("\x1b[{colour}m{piece}\x1b[0m"));
                }
                None => out.push_str(piece),
            }
        }
        out + "\n" + &self.summary()
    }

    fn summary(&self) -> String {
        format!(
            "perplexity {:.3} (loss {:.4}) over {} of the text's {} tokens\n",
            self.perplexity,
            self.loss,
            self.tokens.len(),
            self.text_tokens
        )
    }
}
