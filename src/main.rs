//! `zoo`: train, evaluate, sample from and measure the zoo's models. A switchboard: it parses
//! the command line, picks the device, calls `zoo-train` and prints what comes back. Run files,
//! tokenizers and models are the crates' business.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use zoo::device::{DeviceChoice, pick_device};
use zoo_blocks::SamplingConfig;
use zoo_text::{DataDir, DatasetRegistry};
use zoo_train::ZooError;
use zoo_train::attention::attention_maps;
use zoo_train::dispatch::{Evaluation, TrainOptions};
use zoo_train::launcher::Launcher;
use zoo_train::models::{ARCHITECTURES, ModelConfig};
use zoo_train::tasks::encoder::predict::{Pooling, PredictInput, embed};
use zoo_train::tasks::lm::decode::{self, Decoding};
use zoo_train::tasks::seq2seq::decode::DecodingOptions;

#[derive(Parser)]
#[command(
    name = "zoo",
    version,
    about = "Train, compare and fine-tune sequence models on Burn."
)]
struct Cli {
    /// Backend to run on (among those compiled in); also read from BURN_DEVICE.
    #[arg(long, global = true, env = "BURN_DEVICE", default_value = zoo::device::DEFAULT_BACKEND)]
    device: DeviceChoice,
    /// Directory holding the datasets (default: $ZOO_DATA_DIR, else ~/.cache/zoo/datasets).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a recipe; checkpoints, tokenizer and metrics go to the run directory.
    Train {
        /// The recipe file.
        recipe: PathBuf,
        /// Run directory (default: runs/<recipe name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Stop after this many steps (resumable), whatever the recipe's budget.
        #[arg(long)]
        stop_after_steps: Option<usize>,
        /// Split each batch across these devices (data parallelism), the first holding the
        /// model: `cuda:0,cuda:1`; recorded in the run's recipe as training.devices.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
    },
    /// Score a run over a whole split: loss and perplexity (language models), accuracy
    /// (encoders), or BLEU and exact match of decoded outputs (encoder-decoders).
    Eval {
        /// The run directory.
        run_dir: PathBuf,
        /// Split to score.
        #[arg(long, default_value = "val")]
        split: String,
        /// Checkpoint epoch (default: the last).
        #[arg(long)]
        checkpoint: Option<usize>,
        #[command(flatten)]
        decoding: DecodingArgs,
    },
    /// Translate with an encoder-decoder run: one sentence, or a file of one per line.
    Translate {
        /// The run directory (an encoder-decoder run).
        run_dir: PathBuf,
        /// The sentence to translate.
        #[arg(long, conflicts_with = "file")]
        input: Option<String>,
        /// One sentence per line; one output line each.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Write the outputs here instead of printing them.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Sample with this temperature instead of greedy or beam decoding.
        #[arg(long)]
        temperature: Option<f64>,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Checkpoint epoch (default: the last).
        #[arg(long)]
        checkpoint: Option<usize>,
        #[command(flatten)]
        decoding: DecodingArgs,
    },
    /// Continue a prompt with a language model run: sampling (the KV cache or recurrent
    /// state), speculative decoding with a draft run, or beam search.
    Generate {
        /// The run directory.
        run_dir: PathBuf,
        /// Text to continue.
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Tokens to generate.
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        /// Softmax temperature (0: greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample among the k most likely tokens (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Sample from the smallest set of tokens with this much probability.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Checkpoint epoch (default: the last).
        #[arg(long)]
        checkpoint: Option<usize>,
        /// Speculative decoding: a smaller language model run with the same tokenizer
        /// proposes tokens that this run checks; the output follows this run's distribution.
        #[arg(long, conflicts_with_all = ["beam", "length_penalty"])]
        draft: Option<PathBuf>,
        /// Tokens the draft proposes per round.
        #[arg(long, default_value_t = 4, requires = "draft")]
        draft_tokens: usize,
        /// The draft's checkpoint epoch (default: the last).
        #[arg(long, requires = "draft")]
        draft_checkpoint: Option<usize>,
        /// Beam search with this many hypotheses for the likeliest continuation (instead of
        /// sampling; ends at the tokenizer's end-of-text token, if it has one).
        #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "seed"])]
        beam: Option<usize>,
        /// Beam search ranks finished hypotheses by log-probability / length^this.
        #[arg(long, default_value_t = 1.0, requires = "beam")]
        length_penalty: f64,
        /// Print the decoding's figures on stderr: tokens per second, and a draft's acceptance.
        #[arg(long)]
        stats: bool,
    },
    /// Score a text with a language model: each token's log-probability and the perplexity.
    Score {
        /// The run directory (a GPT, recurrent or n-gram language model).
        run_dir: PathBuf,
        /// The text.
        #[arg(long, conflicts_with = "file")]
        input: Option<String>,
        /// A file holding the text.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print JSON: every token's position, text and log-probability, and the perplexity.
        #[arg(long, conflicts_with = "color")]
        json: bool,
        /// Print the text with each token coloured by its log-probability.
        #[arg(long)]
        color: bool,
        /// Checkpoint epoch (default: the last).
        #[arg(long)]
        checkpoint: Option<usize>,
    },
    /// Draw what each attention head looks at for one input: heatmaps (SVG and PNG) of a GPT's
    /// self-attention, a BERT encoder's, or an encoder-decoder's cross-attention from its
    /// translation to the source.
    Attention {
        /// The run directory (a GPT, BERT or encoder-decoder run, or a Hugging Face directory).
        run_dir: PathBuf,
        /// The text.
        #[arg(long)]
        input: String,
        /// Only this layer (from 0; default: every layer, one figure each).
        #[arg(long)]
        layer: Option<usize>,
        /// Only this head (from 0; default: every head, one panel each).
        #[arg(long)]
        head: Option<usize>,
        /// Where the figures go.
        #[arg(long, default_value = "attention")]
        out: PathBuf,
        /// Print the weights as JSON instead of drawing them.
        #[arg(long)]
        json: bool,
        /// Checkpoint epoch (default: the last).
        #[arg(long)]
        checkpoint: Option<usize>,
    },
    /// Apply a fine-tuned encoder to text: a label, tags, an answer span, or [MASK] fillers.
    Predict {
        /// The run directory (a BERT run).
        run_dir: PathBuf,
        /// The text (for span QA, the question).
        #[arg(long, conflicts_with = "file")]
        input: Option<String>,
        /// Span QA: the text to take the answer from.
        #[arg(long)]
        context: Option<String>,
        /// One input per line (span QA: question, a tab, context); one output line each.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Turn a Hugging Face model directory (config.json, model.safetensors, tokenizer.json) into
    /// a run directory that every command works on (BERT models so far).
    Import {
        /// The Hugging Face model directory.
        hf_dir: PathBuf,
        /// The run directory to write.
        #[arg(long)]
        out: PathBuf,
        /// The dataset `zoo eval` scores the run on (default: the embedded corpus).
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Write a run as a Hugging Face model directory that `transformers` loads (BERT runs as
    /// BertForMaskedLM / BertForSequenceClassification, GPT runs in GPT-2's shape as
    /// GPT2LMHeadModel).
    Export {
        /// The run directory.
        run_dir: PathBuf,
        /// The Hugging Face directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Checkpoint epoch (default: the last).
        #[arg(long)]
        checkpoint: Option<usize>,
    },
    /// Sentence embeddings from an encoder run (or a Hugging Face BERT directory): one line of
    /// numbers per input, or JSON.
    Embed {
        /// The run directory.
        run_dir: PathBuf,
        /// The text to embed.
        #[arg(long, conflicts_with = "file")]
        input: Option<String>,
        /// One text per line.
        #[arg(long)]
        file: Option<PathBuf>,
        /// How the token vectors become one: their mean (padding left out) or the [CLS] vector.
        #[arg(long, value_enum, default_value = "mean")]
        pooling: PoolingArg,
        /// Scale each embedding to unit length.
        #[arg(long)]
        normalize: bool,
        /// Print a JSON array of arrays.
        #[arg(long)]
        json: bool,
    },
    /// Parameters, FLOPs per token and training memory of a preset or recipe.
    Info {
        /// A preset name (e.g. gpt-mini) or a recipe file.
        model: String,
        /// Vocabulary size for presets that take it from the tokenizer.
        #[arg(long)]
        vocab_size: Option<usize>,
        /// Batch size, for the per-step figures.
        #[arg(long, default_value_t = 12)]
        batch_size: usize,
    },
    /// Train a set of recipes on one shared budget (steps, tokens, FLOPs or seconds) and write a
    /// report: a table of costs and metrics, plots, and the commands that repeat each run.
    /// Finished runs are skipped and interrupted ones resumed when it is run again.
    Compare {
        /// The comparison file (e.g. recipes/compare/char-lm.toml).
        file: PathBuf,
        /// The comparison's directory (default: runs/compare/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only write the report, from the runs finished so far.
        #[arg(long)]
        report_only: bool,
    },
    /// Measure training throughput.
    Bench {
        #[command(subcommand)]
        family: BenchFamily,
    },
    /// The backends compiled in and what each can run on (the adapters wgpu finds).
    Devices,
    /// List presets and datasets.
    List,
}

/// `zoo embed --pooling`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PoolingArg {
    Mean,
    Cls,
}

/// How an encoder-decoder decodes; unset values come from the run's `[decoding]`.
#[derive(Args)]
struct DecodingArgs {
    /// Beam width (1: greedy).
    #[arg(long)]
    beam: Option<usize>,
    /// Beam search ranks hypotheses by log-probability / length^this.
    #[arg(long)]
    length_penalty: Option<f64>,
}

impl DecodingArgs {
    fn options(&self) -> DecodingOptions {
        DecodingOptions {
            beam: self.beam,
            length_penalty: self.length_penalty,
        }
    }
}

#[derive(Subcommand)]
enum BenchFamily {
    /// Forward + backward + AdamW steps of a GPT on random tokens (dropout off unless
    /// --dropout).
    Gpt(GptBench),
    /// Truncated-BPTT steps of a recurrent LM on random tokens (SGD, clipping, dropout on).
    Rnn(RnnBench),
    /// Masked-LM training steps of a BERT on random tokens (dropout on), then inference.
    Bert(BertBench),
    /// Incremental decoding of a GPT with its KV cache (random weights and prompts), against
    /// the bound that reading the weights once per step sets on this machine.
    Generate(GenerateBench),
    /// Teacher-forced training steps of a transformer encoder-decoder on random pairs
    /// (label smoothing 0.1, dropout on), then greedy and beam decoding with the cache.
    Seq2seq(Seq2SeqBench),
    /// Forward and training time per sequence, and training memory, against sequence length,
    /// for LSTM, GRU and GPT models of about 3M parameters; a table and log-log plots. Each
    /// point runs in a process of its own so its peak memory is its own.
    Scaling(ScalingBench),
    /// One point of `bench scaling`, printed as a JSON line.
    #[command(hide = true)]
    ScalingPoint(ScalingPointArgs),
}

#[derive(Args)]
struct ScalingBench {
    /// Families to measure (lstm, gru, gpt).
    #[arg(long, value_delimiter = ',', default_value = "lstm,gru,gpt")]
    archs: Vec<String>,
    /// Sequence lengths.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,128,256,512,1024,2048,4096"
    )]
    seq_lens: Vec<usize>,
    /// Sequences per batch, the same at every length (with fewer sequences at longer lengths
    /// the RNNs' small per-time-step products would lose efficiency, and that is not the
    /// length's cost).
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Timed forward passes and training steps per point (after one untimed each).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Where the table and plots go.
    #[arg(long, default_value = "runs/bench/scaling")]
    out: PathBuf,
    /// Measure nothing: redraw the table and plots from the directory's scaling.json.
    #[arg(long)]
    report_only: bool,
}

#[derive(Args)]
struct ScalingPointArgs {
    #[arg(long)]
    arch: String,
    #[arg(long)]
    seq_len: usize,
    #[arg(long)]
    batch: usize,
    #[arg(long)]
    steps: usize,
}

#[derive(Args)]
struct BertBench {
    /// The preset to time.
    #[arg(long, default_value = "bert-mini")]
    preset: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Vocabulary size (BERT's uncased WordPiece: 30,522).
    #[arg(long, default_value_t = 30_522)]
    vocab_size: usize,
    /// Timed steps (and inference batches).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[derive(Args)]
struct GenerateBench {
    /// The preset to time (a GPT).
    #[arg(long, default_value = "gpt2-small")]
    preset: String,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Prompt tokens, read in one pass.
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Sample each token from the k likeliest (0: greedy).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Vocabulary size (default: the preset's, or 65 when it has none).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Timed runs (after one untimed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

#[derive(Args)]
struct Seq2SeqBench {
    /// The preset to time (a transformer encoder-decoder).
    #[arg(long, default_value = "transformer-small")]
    preset: String,
    /// Sentence pairs per step (and sources decoded at once).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Source tokens per sentence (Multi30k's are about 20).
    #[arg(long, default_value_t = 20)]
    src_len: usize,
    /// Target tokens per sentence, trained and decoded.
    #[arg(long, default_value_t = 20)]
    tgt_len: usize,
    /// One vocabulary for both sides (a joint BPE of Multi30k: about 8,000).
    #[arg(long, default_value_t = 8_000)]
    vocab_size: usize,
    /// Dropout (default: the preset's; `torch_seq2seq.py`'s 11th argument, 0.1 by default).
    #[arg(long)]
    dropout: Option<f64>,
    /// Beam width of the beam-search timing.
    #[arg(long, default_value_t = 4)]
    beam: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

#[derive(Args)]
struct RnnBench {
    /// The preset to time.
    #[arg(long, default_value = "lstm-small")]
    preset: String,
    /// Parallel streams per step.
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// Tokens per stream per step.
    #[arg(long, default_value_t = 35)]
    bptt: usize,
    /// Vocabulary size (PTB's 10,000 words by default).
    #[arg(long, default_value_t = 10_000)]
    vocab_size: usize,
    /// Tie the decoder to the embedding (default: untied, as the PyTorch reference times).
    #[arg(long)]
    tied: bool,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
}

#[derive(Args)]
struct GptBench {
    /// The preset to time.
    #[arg(long, default_value = "gpt-baby-char")]
    preset: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 12)]
    batch_size: usize,
    /// Tokens per sequence (default: the preset's block size).
    #[arg(long)]
    block_size: Option<usize>,
    /// Vocabulary size (default: the preset's, or 65 as for tinyshakespeare characters).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Layers (default: the preset's).
    #[arg(long)]
    n_layer: Option<usize>,
    /// Heads (default: the preset's).
    #[arg(long)]
    n_head: Option<usize>,
    /// Width (default: the preset's).
    #[arg(long)]
    n_embd: Option<usize>,
    /// Dropout, as nanoGPT applies it (embeddings, attention weights, both residual branches;
    /// its shakespeare-char recipe: 0.2). `torch_gpt.py` takes it as its 9th argument.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, the same in mimalloc 2
/// and 3; libmimalloc-sys has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A training step frees and reallocates the same large activation buffers every time. By
/// default mimalloc hands freed memory back to the OS after 10 ms, and the kernel then zeroes
/// fresh huge pages on the next step's first touch: measured here as 15% of a GPT step. Keeping
/// freed memory (the process's footprint stays at its peak, as PyTorch's caching allocator's
/// does) removes that.
fn keep_freed_memory() {
    // SAFETY: setting an option is a plain store that mimalloc allows at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Lets a closed output pipe end the process quietly, as it ends `cat` (`zoo generate ... |
/// head`): Rust ignores SIGPIPE, so `println!` would panic on the broken pipe instead.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    end_quietly_on_closed_pipe();
    keep_freed_memory();
    let cli = Cli::parse();
    let device = match pick_device(&cli.device) {
        Ok(device) => device,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let data_dir = DataDir::resolve(cli.data_dir.as_deref());
    // What a child `zoo` (a comparison's runs) is started with.
    let mut global_args = vec!["--device".into(), cli.device.0.clone().into()];
    if let Some(dir) = &cli.data_dir {
        global_args.extend(["--data-dir".into(), dir.clone().into_os_string()]);
    }
    match run(cli.command, device, data_dir, global_args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `global_args`: the global options as given, for child processes.
fn run(
    command: Command,
    device: burn::tensor::Device,
    data_dir: DataDir,
    global_args: Vec<std::ffi::OsString>,
) -> Result<(), ZooError> {
    match command {
        Command::Compare {
            file,
            out,
            report_only,
        } => {
            let launcher = Launcher::current(global_args)?;
            let options = zoo_train::compare::CompareOptions {
                out_dir: out,
                report_only,
            };
            let report = zoo_train::compare::compare(&file, &options, &launcher)?;
            println!(
                "compared in {}: {} trained now, {} finished before; report {}",
                report.out_dir.display(),
                report.trained.len(),
                report.skipped.len(),
                report.report.display()
            );
        }
        Command::Train {
            recipe,
            run_dir,
            resume,
            stop_after_steps,
            devices,
        } => {
            let options = TrainOptions {
                run_dir,
                resume,
                data_dir,
                device,
                devices,
                resolve_device: zoo::device::device_named,
                stop_after_steps,
            };
            let report = zoo_train::dispatch::train(&recipe, &options)?;
            let what = match report.steps {
                0 => "counted".to_string(),
                steps => format!("trained {steps} steps"),
            };
            println!(
                "{what} in {:.1}s; final validation loss {}; run directory {}",
                report.seconds,
                report.val_loss.map_or("n/a".into(), |l| format!("{l:.4}")),
                report.run_dir.display()
            );
            if let Some(sample) = report.sample {
                println!("--- sample ---\n{sample}\n--------------");
            }
        }
        Command::Eval {
            run_dir,
            split,
            checkpoint,
            decoding,
        } => {
            let evaluation = zoo_train::dispatch::evaluate(
                &run_dir,
                &split,
                checkpoint,
                decoding.options(),
                &data_dir,
                &device,
            )?;
            match evaluation {
                Evaluation::EncoderDecoder(report) => {
                    for (source, output, reference) in &report.examples {
                        println!(
                            "source:    {source}\noutput:    {output}\nreference: {reference}\n"
                        );
                    }
                    println!("{}: {}", run_dir.display(), report.summary());
                }
                Evaluation::Labels(report) => println!(
                    "{}: split {} | loss {:.4} | accuracy {:.2}%{} | {} predictions",
                    run_dir.display(),
                    report.split,
                    report.loss,
                    report.accuracy,
                    report
                        .f1
                        .map_or(String::new(), |f1| format!(" | F1 {f1:.2}")),
                    report.predictions
                ),
                Evaluation::LanguageModel(report) => println!(
                    "{}: split {} | step {} | loss {:.4} | perplexity {:.3} | {} tokens",
                    run_dir.display(),
                    report.split,
                    report.steps,
                    report.loss,
                    report.perplexity,
                    report.tokens
                ),
            }
        }
        Command::Generate {
            run_dir,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            checkpoint,
            draft,
            draft_tokens,
            draft_checkpoint,
            beam,
            length_penalty,
            stats,
        } => {
            let run = zoo_train::tasks::lm::load(&run_dir, checkpoint, &device)?;
            let sampling = SamplingConfig {
                temperature,
                top_k,
                top_p,
                seed,
            };
            let draft = match &draft {
                Some(dir) => Some(zoo_train::tasks::lm::load(dir, draft_checkpoint, &device)?),
                None => None,
            };
            let decoding = match (&draft, beam) {
                (Some(draft), _) => Decoding::Speculative {
                    draft,
                    tokens: draft_tokens,
                    sampling,
                },
                (None, Some(width)) => Decoding::Beam {
                    width,
                    length_penalty,
                },
                (None, None) => Decoding::Sample(sampling),
            };
            let generated = decode::generate(&run, &prompt, max_tokens, &decoding)?;
            println!("{}", generated.text);
            if stats {
                eprintln!("{}", generated.stats_line());
            }
        }
        Command::Attention {
            run_dir,
            input,
            layer,
            head,
            out,
            json,
            checkpoint,
        } => {
            let maps = attention_maps(&run_dir, &input, checkpoint, &device)?;
            if json {
                let maps = maps.only(layer, head)?;
                println!(
                    "{}",
                    serde_json::to_string(&maps).expect("numbers serialise")
                );
            } else {
                for path in maps.draw(&out, layer, head)? {
                    println!("{}", path.display());
                }
            }
        }
        Command::Score {
            run_dir,
            input,
            file,
            json,
            color,
            checkpoint,
        } => {
            let text = input_text(input, file.as_deref())?;
            let run = zoo_train::tasks::lm::load(&run_dir, checkpoint, &device)?;
            let report = zoo_train::tasks::lm::score::score(&run, &text)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialise")
                );
            } else if color {
                print!("{}", report.coloured());
            } else {
                print!("{}", report.table());
            }
        }
        Command::Predict {
            run_dir,
            input,
            context,
            file,
        } => {
            let from_file = file.is_some();
            let text = input_text(input, file.as_deref())?;
            let inputs: Vec<PredictInput> = if from_file {
                text.lines()
                    .filter(|line| !line.trim().is_empty())
                    .map(|line| match line.split_once('\t') {
                        Some((question, context)) if !context.is_empty() => PredictInput {
                            text: question.to_string(),
                            context: Some(context.to_string()),
                        },
                        _ => PredictInput {
                            text: line.to_string(),
                            context: context.clone(),
                        },
                    })
                    .collect()
            } else {
                vec![PredictInput { text, context }]
            };
            let run = zoo_train::dispatch::Predictor::load(&run_dir, &device)?;
            for input in &inputs {
                println!("{}", run.predict(input)?);
            }
        }
        Command::Translate {
            run_dir,
            input,
            file,
            output,
            temperature,
            seed,
            checkpoint,
            decoding,
        } => {
            let sentences = input_lines(input, file.as_deref())?;
            let run = zoo_train::dispatch::seq2seq_run(&run_dir, checkpoint, &device)?;
            let spec = decoding.options().apply(&run.recipe.decoding)?;
            let sampling = temperature.map(|temperature| SamplingConfig {
                temperature,
                seed,
                ..SamplingConfig::default()
            });
            let outputs =
                zoo_train::tasks::seq2seq::decode::translate(&run, &sentences, &spec, sampling)?;
            let text: String = outputs.iter().map(|o| format!("{o}\n")).collect();
            match output {
                Some(path) => std::fs::write(&path, text).map_err(|e| {
                    ZooError::Usage(format!("cannot write {}: {e}", path.display()))
                })?,
                None => print!("{text}"),
            }
        }
        Command::Import {
            hf_dir,
            out,
            dataset,
        } => {
            let report =
                zoo_train::huggingface::import(&hf_dir, &out, dataset.as_deref(), &device)?;
            println!(
                "imported {} ({}, {} parameters) as a {} run{}; run directory {}",
                report.source.display(),
                report.class,
                report.parameters,
                report.task,
                if report.labels.is_empty() {
                    String::new()
                } else {
                    format!(" with labels {}", report.labels.join(", "))
                },
                report.run_dir.display()
            );
        }
        Command::Export {
            run_dir,
            out,
            checkpoint,
        } => {
            let report = zoo_train::huggingface::export(&run_dir, checkpoint, &out, &device)?;
            println!(
                "exported {} as {} to {}",
                run_dir.display(),
                report.class,
                report.out.display()
            );
        }
        Command::Embed {
            run_dir,
            input,
            file,
            pooling,
            normalize,
            json,
        } => {
            let texts = input_lines(input, file.as_deref())?;
            let run = zoo_train::dispatch::encoder_run(&run_dir, &device)?;
            let pooling = match pooling {
                PoolingArg::Mean => Pooling::Mean,
                PoolingArg::Cls => Pooling::Cls,
            };
            let vectors = embed(&run, &texts, pooling, normalize)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&vectors).expect("numbers serialise")
                );
            } else {
                for vector in vectors {
                    let line: Vec<String> = vector.iter().map(|v| format!("{v:.6}")).collect();
                    println!("{}", line.join(" "));
                }
            }
        }
        Command::Info {
            model,
            vocab_size,
            batch_size,
        } => println!(
            "{}",
            zoo_train::info::describe(&model, vocab_size, batch_size, &data_dir)?
        ),
        Command::Bench {
            family: BenchFamily::Gpt(args),
        } => bench_gpt(args, &device)?,
        Command::Bench {
            family: BenchFamily::Rnn(args),
        } => bench_rnn(args, &device)?,
        Command::Bench {
            family: BenchFamily::Bert(args),
        } => bench_bert(args, &device)?,
        Command::Bench {
            family: BenchFamily::Seq2seq(args),
        } => bench_seq2seq(args, &device)?,
        Command::Bench {
            family: BenchFamily::Generate(args),
        } => bench_generate(args, &device)?,
        Command::Bench {
            family: BenchFamily::Scaling(args),
        } => {
            let table = if args.report_only {
                zoo_train::bench::scaling_report_again(&args.out)?
            } else {
                let launcher = Launcher::current(global_args)?;
                let table = zoo_train::bench::scaling(
                    &args.archs,
                    &args.seq_lens,
                    args.batch_size,
                    args.steps,
                    &args.out,
                    &launcher,
                )?;
                format!(
                    "\n{table}\nwritten to {}: scaling.md, scaling.json, scaling-forward-time.svg, scaling-train-time.svg, scaling-train-memory.svg",
                    args.out.display()
                )
            };
            println!("{table}");
        }
        Command::Bench {
            family: BenchFamily::ScalingPoint(args),
        } => {
            let point = zoo_train::bench::scaling_point(
                &args.arch,
                args.seq_len,
                args.batch,
                args.steps,
                &device,
            )
            .map_err(ZooError::Usage)?;
            println!(
                "{}",
                serde_json::to_string(&point).expect("points serialise")
            );
        }
        Command::Devices => {
            for line in zoo::device::describe_devices() {
                println!("{line}");
            }
        }
        Command::List => {
            for arch in ARCHITECTURES {
                println!(
                    "{:<14} {} ({}): {}",
                    arch.name,
                    arch.family,
                    arch.task_names(),
                    if arch.presets.is_empty() {
                        "no presets".to_string()
                    } else {
                        arch.presets.join(", ")
                    }
                );
            }
            println!(
                "datasets: {}",
                DatasetRegistry::builtin().names().join(", ")
            );
        }
    }
    Ok(())
}

/// The texts of `--input TEXT` (one) or `--file PATH` (one per line).
fn input_lines(
    input: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Vec<String>, ZooError> {
    let from_file = file.is_some();
    let text = input_text(input, file)?;
    Ok(if from_file {
        text.lines().map(str::to_string).collect()
    } else {
        vec![text]
    })
}

/// The text of `--input TEXT`, or the contents of `--file PATH`.
fn input_text(input: Option<String>, file: Option<&std::path::Path>) -> Result<String, ZooError> {
    match (input, file) {
        (Some(text), None) => Ok(text),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ZooError::Usage(format!("cannot read {}: {e}", path.display()))),
        _ => Err(ZooError::Usage("give --input TEXT or --file PATH".into())),
    }
}

/// The preset `name` of one family, picked out of the model table's answer by `family`.
fn family_preset<C>(
    name: &str,
    family: &str,
    pick: fn(ModelConfig) -> Option<C>,
) -> Result<C, ZooError> {
    zoo_train::models::preset(name)
        .ok()
        .and_then(pick)
        .ok_or_else(|| {
            let presets = ARCHITECTURES
                .iter()
                .find(|arch| arch.family == family)
                .map_or(String::new(), |arch| arch.presets.join(", "));
            ZooError::Usage(format!(
                "unknown preset '{name}'; {family} presets: {presets}"
            ))
        })
}

fn bench_rnn(args: RnnBench, device: &burn::tensor::Device) -> Result<(), ZooError> {
    let mut config = family_preset(&args.preset, "recurrent", |c| match c {
        ModelConfig::Rnn(c) => Some(c),
        _ => None,
    })?;
    config.vocab_size = args.vocab_size;
    config.tie_weights = args.tied;
    if config.tie_weights {
        config.d_embed = 0;
    }
    if args.steps == 0 || args.batch_size == 0 || args.bptt == 0 {
        return Err(ZooError::Usage(
            "--steps, --batch-size and --bptt must be at least 1".into(),
        ));
    }
    let report = zoo_train::bench::bench_rnn(
        &config,
        args.batch_size,
        args.bptt,
        args.steps,
        args.warmup,
        device,
    )
    .map_err(ZooError::Usage)?;
    println!(
        "zoo-rnn preset={} cell={:?} layers={} hidden={} bptt={} batch={} vocab={} tied={} {}",
        args.preset,
        config.cell,
        config.n_layer,
        config.d_hidden,
        args.bptt,
        args.batch_size,
        config.vocab_size,
        config.tie_weights,
        report.summary()
    );
    Ok(())
}

fn bench_bert(args: BertBench, device: &burn::tensor::Device) -> Result<(), ZooError> {
    let mut config = family_preset(&args.preset, "BERT", |c| match c {
        ModelConfig::Bert(c) => Some(c),
        _ => None,
    })?;
    config.vocab_size = args.vocab_size;
    if args.steps == 0 || args.batch_size == 0 || !(1..=config.max_len).contains(&args.seq_len) {
        return Err(ZooError::Usage(format!(
            "--steps and --batch-size must be at least 1, --seq-len in 1..={}",
            config.max_len
        )));
    }
    let (report, inference) = zoo_train::bench::bench_bert(
        &config,
        args.batch_size,
        args.seq_len,
        args.steps,
        args.warmup,
        device,
    )
    .map_err(ZooError::Usage)?;
    println!(
        "zoo-bert preset={} layers={} heads={} width={} seq_len={} batch={} vocab={} dropout={} {} inference_seq_per_s={inference:.1}",
        args.preset,
        config.n_layer,
        config.n_head,
        config.d_model,
        args.seq_len,
        args.batch_size,
        config.vocab_size,
        config.dropout,
        report.summary()
    );
    Ok(())
}

fn bench_generate(args: GenerateBench, device: &burn::tensor::Device) -> Result<(), ZooError> {
    let mut config = family_preset(&args.preset, "GPT", |c| match c {
        ModelConfig::Gpt(c) => Some(c),
        _ => None,
    })?;
    config.vocab_size = args.vocab_size.unwrap_or(if config.vocab_size == 0 {
        65
    } else {
        config.vocab_size
    });
    config.dropout = 0.0;
    if args.batch_size == 0 || args.prompt_len == 0 || args.new_tokens < 2 || args.repeats == 0 {
        return Err(ZooError::Usage(
            "--batch-size, --prompt-len and --repeats must be at least 1, --new-tokens at least 2"
                .into(),
        ));
    }
    let bench = zoo_train::bench::bench_generate(
        &config,
        args.batch_size,
        args.prompt_len,
        args.new_tokens,
        args.top_k,
        args.repeats,
        device,
    )
    .map_err(ZooError::Usage)?;
    println!(
        "zoo-generate preset={} params={} batch={} prompt_len={} new_tokens={} top_k={} prefill_ms={:.1} token_ms={:.2} tokens_per_s={:.1} weights_mb={:.0} bandwidth_gb_s={:.1} bound_tokens_per_s={:.1}",
        args.preset,
        bench.params,
        args.batch_size,
        args.prompt_len,
        args.new_tokens,
        args.top_k,
        bench.prefill_ms,
        bench.token_ms,
        bench.tokens_per_s,
        bench.weight_bytes as f64 / 1e6,
        bench.bandwidth / 1e9,
        bench.bound_tokens_per_s(args.batch_size)
    );
    Ok(())
}

fn bench_seq2seq(args: Seq2SeqBench, device: &burn::tensor::Device) -> Result<(), ZooError> {
    let mut config = family_preset(&args.preset, "transformer encoder-decoder", |c| match c {
        ModelConfig::Transformer(c) => Some(c),
        _ => None,
    })?;
    config.src_vocab_size = args.vocab_size;
    config.tgt_vocab_size = args.vocab_size;
    if let Some(dropout) = args.dropout {
        config.dropout = dropout;
    }
    let longest = args.src_len.max(args.tgt_len + 1);
    if args.steps == 0 || args.batch_size == 0 || args.beam == 0 || args.src_len == 0 {
        return Err(ZooError::Usage(
            "--steps, --batch-size, --beam and --src-len must be at least 1".into(),
        ));
    }
    if longest > config.max_len || args.tgt_len == 0 {
        return Err(ZooError::Usage(format!(
            "--src-len and --tgt-len + 1 must be in 1..={} (the preset's max_len)",
            config.max_len
        )));
    }
    config.validate().map_err(ZooError::Usage)?;
    let bench = zoo_train::bench::bench_seq2seq(
        &config,
        args.batch_size,
        args.src_len,
        args.tgt_len,
        args.steps,
        args.warmup,
        args.beam,
        device,
    )
    .map_err(ZooError::Usage)?;
    println!(
        "zoo-seq2seq preset={} layers={}+{} heads={} width={} src_len={} tgt_len={} batch={} vocab={} dropout={} {} greedy_sent_per_s={:.0} beam{}_sent_per_s={:.0}",
        args.preset,
        config.n_encoder_layers,
        config.n_decoder_layers,
        config.n_head,
        config.d_model,
        args.src_len,
        args.tgt_len,
        args.batch_size,
        args.vocab_size,
        config.dropout,
        bench.train.summary(),
        bench.greedy_per_s,
        args.beam,
        bench.beam_per_s
    );
    Ok(())
}

fn bench_gpt(args: GptBench, device: &burn::tensor::Device) -> Result<(), ZooError> {
    let mut config = family_preset(&args.preset, "GPT", |c| match c {
        ModelConfig::Gpt(c) => Some(c),
        _ => None,
    })?;
    config.dropout = args.dropout;
    if let Some(block) = args.block_size {
        config.block_size = block;
    }
    config.n_layer = args.n_layer.unwrap_or(config.n_layer);
    config.n_head = args.n_head.unwrap_or(config.n_head);
    config.n_embd = args.n_embd.unwrap_or(config.n_embd);
    config.vocab_size = args.vocab_size.unwrap_or(if config.vocab_size == 0 {
        65
    } else {
        config.vocab_size
    });
    config.validate().map_err(ZooError::Usage)?;
    if args.steps == 0 || args.batch_size == 0 {
        return Err(ZooError::Usage(
            "--steps and --batch-size must be at least 1".into(),
        ));
    }
    let report =
        zoo_train::bench::bench_gpt(&config, args.batch_size, args.steps, args.warmup, device)
            .map_err(ZooError::Usage)?;
    println!(
        "zoo-gpt preset={} layers={} heads={} width={} block={} batch={} vocab={} dropout={} {}",
        args.preset,
        config.n_layer,
        config.n_head,
        config.n_embd,
        config.block_size,
        args.batch_size,
        config.vocab_size,
        config.dropout,
        report.summary()
    );
    Ok(())
}
