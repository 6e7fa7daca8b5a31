//! The command line: `train fit | check | lr-find | report | eval | predict | data | init-stats | bench`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, bail};
use cifar_data::Preprocessing;
use cifar_kernels::MatmulPrecision;
use cifar_models::{ActivationConfig, Init, ModelConfig, StageConfig};
use cifar_train::backend::Adapter;
use cifar_train::config::{Backend, LrSchedule, OptimizerKind, TrainConfig};
use cifar_train::evaluate::Tta;
use cifar_train::search::runner::Prune;
use clap::{Args, Parser, Subcommand};

/// Train and inspect CIFAR-10 classifiers the way CS231n's "Training Neural
/// Networks I" teaches: activations, preprocessing, initialization, batch
/// norm, and babysitting the learning process.
#[derive(Debug, Parser)]
#[command(name = "train", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model; writes a run folder (see --out).
    Fit(Box<FitArgs>),
    /// The lecture's sanity checks on a configuration, each with a verdict.
    Check(Box<CheckArgs>),
    /// The learning-rate range test: loss against an exponentially growing rate.
    LrFind(Box<LrFindArgs>),
    /// Rebuild a run folder's report.html (and its charts).
    Report(ReportArgs),
    /// Random hyperparameter search in log space, coarse to fine.
    Search(Box<SearchArgs>),
    /// Accuracy, per-class accuracy and confusion matrix of a trained run.
    Eval(EvalArgs),
    /// Classify PNG or JPEG images with a trained run.
    Predict(PredictArgs),
    /// Where the data is, how many images per split and class, channel statistics.
    Data(DataArgs),
    /// The lecture's weight-initialization experiment: activation statistics layer by layer.
    InitStats(InitStatsArgs),
    /// Measure data loading, preprocessing, batching and training speed.
    Bench(BenchArgs),
}

/// A flag's help from its enum's table of names, so `--help`, parsing and
/// errors list the same names.
fn names_help<T: Copy + PartialEq>(names: &cifar_spelling::Names<T>, default: &str) -> String {
    names_help_with(names, default, "")
}

/// [`names_help`] with a note after the default.
fn names_help_with<T: Copy + PartialEq>(
    names: &cifar_spelling::Names<T>,
    default: &str,
    note: &str,
) -> String {
    format!("{} [default: {default}]{note}", names.expected())
}

/// Where the data comes from.
#[derive(Debug, Clone, Default, Args)]
pub struct DataSource {
    /// The cifar-10-batches-bin folder [default: $CIFAR10_DIR, ./data/cifar-10-batches-bin, then the download cache]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Download the official archive into the cache folder if no data is found.
    #[arg(long)]
    pub download: bool,
}

/// A learning rate, or `find` to run the learning-rate finder first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrArg {
    /// This rate.
    Value(f64),
    /// The finder's suggestion.
    Find,
}

impl FromStr for LrArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "find" {
            return Ok(LrArg::Find);
        }
        s.parse::<f64>().map(LrArg::Value).map_err(|_| {
            format!("'{s}' is not a learning rate: expected a number such as 0.01, or find")
        })
    }
}

/// Every option of [`TrainConfig`], each overriding `--config`; shared by
/// `fit`, `check`, `lr-find` and `search`.
#[derive(Debug, Clone, Default, Args)]
pub struct TrainFlags {
    /// Where the data comes from.
    #[command(flatten)]
    pub source: DataSource,
    #[arg(long, value_name = "NAME", help = names_help(&Backend::NAMES, "flex"))]
    pub backend: Option<Backend>,
    /// With --backend wgpu, the GPU adapter: default, N (= discrete:N), discrete:N, integrated:N, virtual:N or cpu (not saved in the run: a resumed run may move) [default: default]
    #[arg(long, value_name = "ADAPTER")]
    pub device: Option<Adapter>,
    /// A preset: mlp (= two-layer, 3072-100-10), three-layer, small-cnn, cnn, vgg, resnet9, airbench (the fast-record network with patch whitening) [default: cnn]
    #[arg(long, value_name = "NAME")]
    pub model: Option<ModelConfig>,
    /// MLP hidden layer sizes, comma-separated (e.g. 100 or 512,512,512,512)
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    pub hidden: Option<Vec<usize>>,
    /// CNN stage widths, comma-separated: two 3x3 convs and a 2x2 max pool per stage (e.g. 32,64,128)
    #[arg(long, value_delimiter = ',', value_name = "WIDTHS")]
    pub channels: Option<Vec<usize>>,
    #[arg(long, value_name = "NAME", help = format!("{} [default: relu]", ActivationConfig::SPELLINGS))]
    pub activation: Option<ActivationConfig>,
    #[arg(long, value_name = "NAME", help = format!("{} [default: he]", Init::SPELLINGS))]
    pub init: Option<Init>,
    /// Batch norm between each affine/conv layer and its activation (`--batch-norm` alone means true)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub batch_norm: Option<bool>,
    /// Dropout probability
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// CNN: a frozen first convolution that whitens every K x K patch, its filters fitted on the training images (0: none) [default: 0; airbench: 2]
    #[arg(long, value_name = "K")]
    pub whiten: Option<usize>,
    /// CNN: batch norm learns its scale γ (false: γ stays 1 and only the shift learns, as in airbench) [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub norm_scale: Option<bool>,
    /// CNN: every convolution of the stages starts as the identity on its first min(in, out) channels (PyTorch's dirac_) [default: false; airbench: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub identity_init: Option<bool>,
    /// CNN: how far batch norm's running statistics move toward each batch's, in [0, 1] [default: 0.1; airbench: 0.4]
    #[arg(long, value_name = "M")]
    pub norm_momentum: Option<f64>,
    /// CNN: batch norm's epsilon, added to the variance [default: 1e-5; airbench: 1e-12]
    #[arg(long, value_name = "EPS")]
    pub norm_epsilon: Option<f64>,
    /// Label smoothing α: the cross-entropy target gives the true class 1 - α + α/10 and every other class α/10 [default: 0]
    #[arg(long, value_name = "ALPHA")]
    pub label_smoothing: Option<f64>,
    /// Batch norm's shifts β learn FACTOR times faster than the other weights, with the same decay per step (airbench's bias_scaler; sgd, momentum and nesterov only) [default: 1; fast recipe: 64]
    #[arg(long, value_name = "FACTOR")]
    pub norm_shift_lr_scale: Option<f64>,
    /// Every 5 steps, pull the weights back to a slow average of themselves, which reaches further back as the run ends (lookahead, airbench's schedule; `--lookahead` alone means true) [default: false; fast recipe: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub lookahead: Option<bool>,
    #[arg(long, value_name = "NAME", help = names_help_with(&MatmulPrecision::NAMES, "f32", ": the convolutions' matrix products on flex; bf16 rounds their inputs to bf16 and sums in f32, as PyTorch's CPU autocast, on the AMX tiles of Intel Xeon 4th generation and later (about 2x faster training of the airbench network)"))]
    pub matmul_precision: Option<MatmulPrecision>,
    #[arg(long, value_name = "NAME", help = names_help_with(&Tta::NAMES, "none", ": test-time augmentation of the validation and test predictions; flip averages the image and its mirror, flip-shift also their 1-pixel shifts"))]
    pub tta: Option<Tta>,
    #[arg(long, value_name = "METHOD", help = format!("{} [default: standardize]", Preprocessing::SPELLINGS))]
    pub preprocess: Option<Preprocessing>,
    /// Random crop (4-pixel padding) and horizontal flip of training images (`--augment` alone means true) [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub augment: Option<bool>,
    /// With --augment: pixels of zero padding before the random crop, that is the largest shift (0: no crop) [default: 4; airbench: 2]
    #[arg(long, value_name = "PIXELS")]
    pub crop_pad: Option<usize>,
    /// With --augment: none, random (each image at random every epoch) or alternate (each image in every other epoch, airbench's) [default: random]
    #[arg(long, value_name = "MODE", value_parser = ["none", "random", "alternate"])]
    pub flip: Option<String>,
    /// With --augment: what the crop sees beyond the image's border: zeros (the mean color, after centering) or reflect (the image mirrored, airbench's) [default: zeros; fast recipe: reflect]
    #[arg(long, value_name = "MODE", value_parser = ["zeros", "reflect"])]
    pub crop_pad_mode: Option<String>,
    #[arg(long, value_name = "NAME", help = names_help(&OptimizerKind::NAMES, "nesterov"))]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate, or `find` to run the learning-rate finder first (train fit) [default: 0.05]
    #[arg(long, value_name = "LR", allow_hyphen_values = true)]
    pub lr: Option<LrArg>,
    /// Momentum (momentum, nesterov), or Adam's beta1 [default: 0.9]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// L2 regularization strength [default: 5e-4]
    #[arg(long, value_name = "L2")]
    pub weight_decay: Option<f64>,
    #[arg(long, value_name = "NAME", help = names_help_with(&LrSchedule::NAMES, "cosine", ". step divides the rate by 10 at 50% and 75% of the run; triangle climbs from 0.2 x the rate to the rate at 23% of the run, then falls to 0.07 x at the end (airbench's one cycle; it is its own warmup) [fast recipe: triangle]"))]
    pub lr_schedule: Option<LrSchedule>,
    /// Epochs of linear learning-rate warmup, at most a fifth of --epochs; not used by --lr-schedule triangle [default: 1]
    #[arg(long, value_name = "EPOCHS")]
    pub warmup: Option<f64>,
    /// Passes over the training split [default: 10]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Examples per step [default: 128]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of initialization, shuffling, augmentation and dropout [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train on the first N training images only (e.g. 20 to check the model can overfit)
    #[arg(long, value_name = "N")]
    pub train_size: Option<usize>,
    /// Validation images held out from the end of the training batches [default: 1000]
    #[arg(long, value_name = "N")]
    pub val_size: Option<usize>,
    /// Start from this JSON config (a run's config.json works); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start from a named recipe: default, or fast (the airbench network and the speed record's training: batch 1024, Nesterov 0.85, triangle schedule, label smoothing, reflect-padded crops, alternating flips, lookahead, flip-shift TTA); flags override it
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub recipe: Option<String>,
}

/// `train fit`.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// Model, data and optimizer.
    #[command(flatten)]
    pub flags: TrainFlags,
    /// The run folder [default: runs/<date>-<time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint (flags such as --epochs still apply)
    #[arg(long)]
    pub resume: bool,
    /// Stop after epoch N of --epochs with a checkpoint (continue with --resume; the schedule spans all epochs)
    #[arg(long, value_name = "N")]
    pub until_epoch: Option<usize>,
    /// Also write a checkpoint (as Ctrl-C does) every MINUTES in the middle of an epoch, so a kill loses at most that much work; 0 for epoch ends only
    #[arg(long, value_name = "MINUTES", default_value_t = 10.0)]
    pub checkpoint_every: f64,
    /// Record per-layer statistics to layers.csv every K steps (0: off) [default: about 20 times per epoch]
    #[arg(long, value_name = "K")]
    pub monitor_every: Option<usize>,
    /// Print one JSON line with the results on standard output at the end
    #[arg(long)]
    pub json: bool,
}

/// `train check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Model, data and optimizer to check.
    #[command(flatten)]
    pub flags: TrainFlags,
    /// Also write the verdicts to DIR/check.json, for that run's report.html
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Step budget of the overfitting check
    #[arg(long, default_value_t = 300, value_name = "STEPS")]
    pub overfit_steps: usize,
    /// Print the verdicts as JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `train lr-find`.
#[derive(Debug, Args)]
pub struct LrFindArgs {
    /// Model, data and optimizer.
    #[command(flatten)]
    pub flags: TrainFlags,
    /// First learning rate
    #[arg(long, default_value_t = 1e-7)]
    pub start: f64,
    /// Last learning rate
    #[arg(long, default_value_t = 10.0)]
    pub end: f64,
    /// Rates tried, one step each
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Where lr-find.csv and lr-find.png go [default: runs/lr-find-<date>-<time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the suggestions as JSON
    #[arg(long)]
    pub json: bool,
}

/// `train search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The base configuration every trial starts from.
    #[command(flatten)]
    pub flags: TrainFlags,
    /// The search folder (trials/NNN/ run folders, search.db, trials.csv, best.json, charts)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A searched option: NAME=log:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH, int-log:LOW:HIGH or choice:A,B,C (repeatable)
    #[arg(long, value_name = "SPEC")]
    pub space: Vec<String>,
    /// The space as a JSON array of SPEC strings
    #[arg(long, value_name = "FILE")]
    pub space_file: Option<PathBuf>,
    /// Trials, each of --epochs epochs (default 1 in a search) [default: 20]
    #[arg(long, value_name = "N")]
    pub trials: Option<usize>,
    /// Coarse to fine: EPOCHSxTRIALS,... such as 1x20,5x5 (overrides --trials and --epochs)
    #[arg(long, value_name = "STAGES")]
    pub stages: Option<String>,
    /// Trials at once, each a process with its share of the cores [default: 1, or one per --devices]
    #[arg(long, value_name = "J")]
    pub jobs: Option<usize>,
    /// With --backend wgpu, one trial at a time on each of these adapters (comma-separated, as --device; list one twice to run two trials on it)
    #[arg(long, value_delimiter = ',', value_name = "ADAPTERS")]
    pub devices: Option<Vec<Adapter>>,
    #[arg(long, value_name = "RULE", help = names_help_with(&Prune::NAMES, "none", ". median stops a trial below the median of earlier trials at the same epoch; asha is asynchronous successive halving over epochs (factor 3)"))]
    pub prune: Option<Prune>,
    /// Continue the search in --out (finished trials are kept, interrupted ones continue); while another `train search` works on it, join it as one more worker
    #[arg(long)]
    pub resume: bool,
    /// Only print the table, best configuration and warnings of the search in --out
    #[arg(long)]
    pub summary: bool,
    /// Print one JSON line with the results at the end
    #[arg(long)]
    pub json: bool,
}

/// `train report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run folder
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Draw loss.png with a logarithmic loss axis
    #[arg(long)]
    pub log_loss: bool,
}

/// `train eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run folder
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// val or test
    #[arg(long, default_value = "val", value_parser = ["val", "test", "train"])]
    pub split: String,
    /// Where the data comes from.
    #[command(flatten)]
    pub source: DataSource,
    #[arg(long, value_name = "NAME", help = names_help(&Backend::NAMES, "the run's"))]
    pub backend: Option<Backend>,
    #[arg(long, value_name = "NAME", help = names_help_with(&Tta::NAMES, "the run's", ": flip averages the image and its mirror, flip-shift also their 1-pixel shifts"))]
    pub tta: Option<Tta>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `train predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The run folder
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// PNG or JPEG images (resized to 32x32 if needed)
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// How many classes to show per image
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    #[arg(long, value_name = "NAME", help = names_help(&Backend::NAMES, "the run's"))]
    pub backend: Option<Backend>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `train data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Where the data comes from.
    #[command(flatten)]
    pub source: DataSource,
    /// Validation images held out from the end of the training batches
    #[arg(long, default_value_t = 1000)]
    pub val_size: usize,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `train init-stats`.
#[derive(Debug, Args)]
pub struct InitStatsArgs {
    /// Hidden layers
    #[arg(long, default_value_t = 10)]
    pub layers: usize,
    /// Units per hidden layer
    #[arg(long, default_value_t = 500)]
    pub width: usize,
    /// The hidden layers' activation
    #[arg(long, default_value = "tanh")]
    pub activation: ActivationConfig,
    /// The weight initialization
    #[arg(long, default_value = "small")]
    pub init: Init,
    /// Batch norm before each activation: true or false
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub batch_norm: bool,
    /// Input examples
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// normal (standard normal, `width` features) or cifar (standardized CIFAR-10 images, 3072 features)
    #[arg(long, default_value = "normal", value_parser = ["normal", "cifar"])]
    pub input: String,
    /// Where the data comes from.
    #[command(flatten)]
    pub source: DataSource,
    /// Where to write the per-layer histograms
    #[arg(long, default_value = "init-stats.png", value_name = "PNG")]
    pub png: PathBuf,
    /// Seed of the weights and the input
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// flex (= cpu), ndarray, or wgpu (= gpu)
    #[arg(long, default_value = "flex", value_name = "NAME")]
    pub backend: Backend,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `train bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// data (loading, statistics, PCA, batching) or train (training steps on random data)
    #[arg(value_parser = ["data", "train"])]
    pub what: String,
    /// Where the data comes from.
    #[command(flatten)]
    pub source: DataSource,
    /// The model to time (train)
    #[arg(long, default_value = "mlp")]
    pub model: ModelConfig,
    /// flex (= cpu), ndarray, or wgpu (= gpu) (train)
    #[arg(long, default_value = "flex", value_name = "NAME")]
    pub backend: Backend,
    /// Examples per step (train)
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Timed steps (train)
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Run the layer monitor every K steps during the timed steps (train), to measure its cost
    #[arg(long, value_name = "K")]
    pub monitor_every: Option<usize>,
    #[arg(long, value_name = "NAME", default_value = "f32", hide_default_value = true, help = names_help_with(&MatmulPrecision::NAMES, "f32", ": the convolutions' matrix products (train), as in train fit"))]
    pub matmul_precision: MatmulPrecision,
    /// Print one JSON object ({"images_per_sec": ...}) instead of text (train)
    #[arg(long)]
    pub json: bool,
}

impl TrainFlags {
    /// Sets the option `name` (a `train fit` flag without its dashes) from
    /// `text`, as the flag would: the search's trials are the base flags
    /// with their drawn values set this way. `channels` takes one width W
    /// for three stages W, 2W, 4W; `hidden` a size for one hidden layer.
    pub fn set(&mut self, name: &str, text: &str) -> Result<()> {
        fn parse<T: FromStr>(name: &str, text: &str) -> Result<T>
        where
            T::Err: std::fmt::Display,
        {
            text.parse::<T>()
                .map_err(|e| anyhow::anyhow!("--{name} {text}: {e}"))
        }
        match name {
            "lr" => self.lr = Some(LrArg::Value(parse(name, text)?)),
            "weight-decay" => self.weight_decay = Some(parse(name, text)?),
            "dropout" => self.dropout = Some(parse(name, text)?),
            "label-smoothing" => self.label_smoothing = Some(parse(name, text)?),
            "norm-shift-lr-scale" => self.norm_shift_lr_scale = Some(parse(name, text)?),
            "lookahead" => self.lookahead = Some(parse(name, text)?),
            "momentum" => self.momentum = Some(parse(name, text)?),
            "batch-size" => self.batch_size = Some(parse(name, text)?),
            "warmup" => self.warmup = Some(parse(name, text)?),
            "epochs" => self.epochs = Some(parse(name, text)?),
            "hidden" => self.hidden = Some(vec![parse(name, text)?]),
            "channels" => {
                let w: usize = parse(name, text)?;
                self.channels = Some(vec![w, 2 * w, 4 * w]);
            }
            "activation" => self.activation = Some(parse(name, text)?),
            "init" => self.init = Some(parse(name, text)?),
            "optimizer" => self.optimizer = Some(parse(name, text)?),
            "preprocess" => self.preprocess = Some(parse(name, text)?),
            "lr-schedule" => self.lr_schedule = Some(parse(name, text)?),
            "batch-norm" => self.batch_norm = Some(parse(name, text)?),
            _ => bail!("--{name} cannot be searched"),
        }
        Ok(())
    }

    /// The run's config: `--config` (or the run's own when resuming), then the flags.
    pub fn to_config(&self, base: Option<TrainConfig>) -> Result<TrainConfig> {
        let mut c = match (&self.config, base) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?
            }
            (None, Some(base)) => base,
            (None, None) => TrainConfig::default(),
        };
        if let Some(name) = &self.recipe {
            c = TrainConfig::recipe(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--recipe {name}: expected one of {}",
                    TrainConfig::RECIPES.join(", ")
                )
            })?;
        }
        if let Some(b) = self.backend {
            c.backend = b;
        }
        if let Some(m) = &self.model {
            c.model = m.clone();
        }
        if let Some(hidden) = &self.hidden {
            match &mut c.model {
                ModelConfig::Mlp(m) => m.hidden_sizes = hidden.clone(),
                ModelConfig::Cnn(_) => {
                    bail!("--hidden sets MLP layer sizes; use --channels for a CNN, or --model mlp")
                }
            }
        }
        if let Some(widths) = &self.channels {
            match &mut c.model {
                ModelConfig::Cnn(m) => {
                    anyhow::ensure!(
                        widths.iter().all(|&w| w > 0),
                        "--channels must be positive widths, got {widths:?}"
                    );
                    // The preset's pooling order stays (airbench pools early).
                    let early = m.stages.first().is_some_and(|s| s.early_pool);
                    m.stages = widths
                        .iter()
                        .map(|&w| StageConfig::new(vec![w, w]).with_early_pool(early))
                        .collect();
                }
                ModelConfig::Mlp(_) => bail!(
                    "--channels sets CNN stage widths; use --hidden for an MLP, or --model cnn"
                ),
            }
        }
        if let Some(hidden) = &self.hidden {
            anyhow::ensure!(
                hidden.iter().all(|&h| h > 0),
                "--hidden must be positive sizes, got {hidden:?}"
            );
        }
        let cnn_settings = [
            ("--whiten", self.whiten.is_some()),
            ("--norm-scale", self.norm_scale.is_some()),
            ("--identity-init", self.identity_init.is_some()),
            ("--norm-momentum", self.norm_momentum.is_some()),
            ("--norm-epsilon", self.norm_epsilon.is_some()),
        ];
        match &mut c.model {
            ModelConfig::Cnn(m) => {
                if let Some(k) = self.whiten {
                    m.whiten = k;
                }
                if let Some(b) = self.norm_scale {
                    m.norm_scale = b;
                }
                if let Some(b) = self.identity_init {
                    m.identity_init = b;
                }
                if let Some(v) = self.norm_momentum {
                    anyhow::ensure!(
                        (0.0..=1.0).contains(&v),
                        "--norm-momentum must be in [0, 1], got {v}"
                    );
                    m.norm_momentum = v;
                }
                if let Some(v) = self.norm_epsilon {
                    anyhow::ensure!(
                        v.is_finite() && v > 0.0,
                        "--norm-epsilon must be a positive number, got {v}"
                    );
                    m.norm_epsilon = v;
                }
            }
            ModelConfig::Mlp(_) => {
                if let Some((flag, _)) = cnn_settings.iter().find(|(_, given)| *given) {
                    bail!(
                        "{flag} sets a CNN's layers; use --model cnn or airbench (an MLP's input is whitened by --preprocess zca or pca-whiten:K)"
                    );
                }
            }
        }
        if let Some(a) = self.label_smoothing {
            c.label_smoothing = a;
        }
        if let Some(f) = self.norm_shift_lr_scale {
            c.norm_shift_lr_scale = f;
        }
        if let Some(b) = self.lookahead {
            c.lookahead = b;
        }
        if let Some(p) = self.matmul_precision {
            c.matmul_precision = p;
        }
        if let Some(t) = self.tta {
            c.tta = t;
        }
        let layers = c.model.layer_settings();
        if let Some(a) = self.activation {
            *layers.activation = a;
        }
        if let Some(i) = self.init {
            *layers.init = i;
        }
        if let Some(b) = self.batch_norm {
            *layers.batch_norm = b;
        }
        if let Some(d) = self.dropout {
            *layers.dropout = d;
        }
        if let Some(p) = self.preprocess {
            c.preprocess = p;
        }
        if let Some(a) = self.augment {
            c.augment = a.then(cifar_data::Augmentation::new);
        }
        if self.crop_pad.is_some() || self.flip.is_some() || self.crop_pad_mode.is_some() {
            let Some(augment) = c.augment.as_mut() else {
                bail!(
                    "--crop-pad, --crop-pad-mode and --flip shape the augmentation, which --augment false turned off"
                );
            };
            if let Some(mode) = &self.crop_pad_mode {
                augment.reflect = mode == "reflect";
            }
            if let Some(pad) = self.crop_pad {
                augment.pad = pad;
            }
            if let Some(flip) = &self.flip {
                augment.flip = flip != "none";
                augment.alternate_flip = flip == "alternate";
            }
        }
        if let Some(o) = self.optimizer {
            c.optimizer = o;
        }
        if let Some(LrArg::Value(v)) = self.lr {
            c.lr = v;
        }
        if let Some(v) = self.momentum {
            c.momentum = v;
        }
        if let Some(v) = self.weight_decay {
            c.weight_decay = v;
        }
        if let Some(v) = self.lr_schedule {
            c.lr_schedule = v;
        }
        if let Some(v) = self.warmup {
            c.warmup = v;
        }
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.val_size {
            c.split.val_size = v;
        }
        if self.train_size.is_some() {
            c.split.train_size = self.train_size;
        }
        // An MLP takes whatever the preprocessing produces: 3072 values, or K after PCA.
        if let ModelConfig::Mlp(m) = &mut c.model {
            m.input_size = match c.preprocess {
                Preprocessing::Pca { components } | Preprocessing::PcaWhiten { components, .. } => {
                    components
                }
                _ => cifar_data::IMAGE_BYTES,
            };
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use proptest::prelude::*;

    use super::*;

    /// Every `train fit` option that takes a value.
    const VALUE_FLAGS: [&str; 38] = [
        "--backend",
        "--device",
        "--model",
        "--hidden",
        "--channels",
        "--activation",
        "--init",
        "--batch-norm",
        "--dropout",
        "--whiten",
        "--norm-scale",
        "--identity-init",
        "--norm-momentum",
        "--norm-epsilon",
        "--label-smoothing",
        "--norm-shift-lr-scale",
        "--lookahead",
        "--matmul-precision",
        "--tta",
        "--preprocess",
        "--augment",
        "--crop-pad",
        "--flip",
        "--crop-pad-mode",
        "--optimizer",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--lr-schedule",
        "--warmup",
        "--epochs",
        "--batch-size",
        "--seed",
        "--train-size",
        "--val-size",
        "--recipe",
        "--until-epoch",
        "--checkpoint-every",
    ];

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Any text for any flag: a config, or an error that names the flag.
        #[test]
        fn any_text_for_any_flag(
            flag in proptest::sample::select(&VALUE_FLAGS[..]),
            value in prop_oneof![".{0,16}", "-?[0-9.e]{1,8}", "[a-z:-]{1,12}(:[-0-9.e]{1,6})?", "[0-9,]{0,12}"],
        ) {
            let args = ["train", "fit", flag, value.as_str()];
            match Cli::try_parse_from(args) {
                Err(e) => prop_assert!(!e.to_string().is_empty()),
                Ok(Cli { command: Command::Fit(fit) }) => {
                    if let Err(e) = fit.flags.to_config(None) {
                        let message = format!("{e:#}");
                        let name = flag.trim_start_matches("--");
                        prop_assert!(message.contains(name) || message.contains("--"), "{flag} {value:?}: {message}");
                    }
                }
                Ok(_) => prop_assert!(false, "parsed as another command"),
            }
        }
    }
}
