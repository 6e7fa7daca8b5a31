//! Property tests: any text as a setting, any damage to a config file or a
//! checkpoint: a value or an error with a message, never a panic.
//!
//! 10,000 cases per property by default; `PROPTEST_CASES=N` changes it.

use burn::prelude::*;
use cifar_data::Preprocessing;
use cifar_models::{ActivationConfig, HeadPooling, Init, MlpConfig, ModelConfig};
use cifar_train::backend::Adapter;
use cifar_train::config::{Backend, LrSchedule, OptimizerKind, TrainConfig};
use cifar_train::rundir::{RunDir, TrainState};
use cifar_train::search::runner::{Prune, parse_stages};
use cifar_train::search::space::Param;
use cifar_train::trainer::Trainer;
use proptest::prelude::*;
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Text that parses prints back to text that parses to the same value.
fn round_trips<T>(text: &str) -> Result<(), TestCaseError>
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
    T::Err: std::fmt::Display,
{
    match text.parse::<T>() {
        Ok(value) => {
            let again = value.to_string().parse::<T>();
            prop_assert!(
                again.as_ref().is_ok_and(|v| *v == value),
                "{text:?} -> {value}"
            );
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// Text near the settings' spellings: names, numbers and separators.
fn setting_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "(relu|leaky-relu|elu|maxout|prelu|gaussian|pca|pca-whiten|zca|he|small|flex|cpu|gpu|discrete|asha|lr|hidden|dropout)(:[-0-9.e]{0,8}){0,3}",
        "[a-z-]{1,12}=(log|uniform|int|int-log|choice):[-0-9.e,a-z]{0,20}(:[-0-9.e]{0,8})?",
        "[0-9x,]{0,12}",
    ]
}

/// Any JSON value, of a size a config file could hold.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6..1e6f64).prop_map(Value::from),
        prop_oneof![Just(0.0), Just(-1.0), Just(1.0), Just(1e300)].prop_map(Value::from),
        setting_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_-]{1,10}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path to a value inside `v`, as JSON-pointer strings.
fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| paths(x, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| paths(x, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn small_model(config: &TrainConfig) -> bool {
    match &config.model {
        ModelConfig::Mlp(m) => m.hidden_sizes.iter().all(|&h| h <= 64) && m.hidden_sizes.len() <= 4,
        ModelConfig::Cnn(c) => {
            c.stages.len() <= 4
                && c.stages
                    .iter()
                    .all(|s| s.widths.iter().all(|&w| w <= 16) && s.widths.len() <= 3)
                && c.head_hidden.iter().all(|&h| h <= 64)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_text_as_a_setting(text in setting_text()) {
        round_trips::<Backend>(&text)?;
        round_trips::<OptimizerKind>(&text)?;
        round_trips::<LrSchedule>(&text)?;
        round_trips::<Prune>(&text)?;
        round_trips::<Adapter>(&text)?;
        round_trips::<ActivationConfig>(&text)?;
        round_trips::<Init>(&text)?;
        round_trips::<HeadPooling>(&text)?;
        round_trips::<Preprocessing>(&text)?;
        round_trips::<Param>(&text)?;
        let _ = text.parse::<ModelConfig>();
        let _ = parse_stages(&text);
    }

    #[test]
    fn any_value_anywhere_in_a_config_file(
        cnn in any::<bool>(),
        pick in any::<prop::sample::Index>(),
        value in json_value(),
    ) {
        let base = TrainConfig {
            model: ModelConfig::preset(if cnn { "small-cnn" } else { "mlp" }).unwrap(),
            ..TrainConfig::default()
        };
        let mut written = serde_json::to_value(&base).unwrap();
        let mut all = Vec::new();
        paths(&written, String::new(), &mut all);
        let path = pick.get(&all).clone();
        if path.is_empty() {
            written = value;
        } else {
            *written.pointer_mut(&path).unwrap() = value;
        }
        // Through the text, as a file is read.
        match serde_json::from_str::<TrainConfig>(&written.to_string()) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(config) => match config.validate() {
                Err(e) => prop_assert!(!e.is_empty()),
                // A config that validates builds without a panic.
                Ok(()) if small_model(&config) => {
                    let _ = config.model.init(&Device::flex());
                }
                Ok(()) => {}
            },
        }
    }
}

/// A run folder with a checkpoint of a tiny MLP.
fn checkpointed_run(dir: &std::path::Path) -> (RunDir, TrainConfig) {
    let config = TrainConfig {
        model: ModelConfig::Mlp(MlpConfig::new().with_hidden_sizes(vec![4])),
        ..TrainConfig::default()
    };
    let run = RunDir::create(dir).unwrap();
    run.save_config(&config).unwrap();
    let trainer = Trainer::new(&config, &Device::flex());
    let state: TrainState = serde_json::from_value(serde_json::json!({
        "epoch": 1, "batch": 0, "iteration": 10, "initial_loss": 2.3,
        "best_val_accuracy": 0.2, "seconds": 1.0, "epoch_loss_sum": 0.0
    }))
    .unwrap();
    run.save_checkpoint(&trainer, &state).unwrap();
    (run, config)
}

#[test]
fn a_damaged_checkpoint_loads_or_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, config) = checkpointed_run(tmp.path());
    let device = Device::flex();
    let files = ["model.bpk", "optimizer.bpk", "state.json"];
    let valid: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(tmp.path().join("checkpoint").join(f)).unwrap())
        .collect();
    let runner_config = ProptestConfig::with_cases(cases());
    let mut runner = proptest::test_runner::TestRunner::new(runner_config);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(
            &(
                0..3usize,
                0.0..=1.0f64,
                proptest::collection::vec((0.0..=1.0f64, any::<u8>()), 0..4),
            ),
            |(file, cut, flips)| {
                let mut bytes = valid[file].clone();
                bytes.truncate((bytes.len() as f64 * cut) as usize);
                let n = bytes.len();
                for (at, bit) in &flips {
                    if n > 0 {
                        bytes[((n - 1) as f64 * at) as usize] ^= 1 << (bit % 8);
                    }
                }
                let path = tmp.path().join("checkpoint").join(files[file]);
                std::fs::write(&path, &bytes).unwrap();
                let trainer = Trainer::new(&config, &device);
                if let Err(e) = run.load_checkpoint(trainer) {
                    let message = format!("{e:#}");
                    prop_assert!(!message.is_empty());
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                std::fs::write(&path, &valid[file]).unwrap();
                Ok(())
            },
        )
        .unwrap();
    // Most damage is caught (a flipped bit in a weight still loads).
    let refused = refused.into_inner();
    assert!(
        refused * 2 > cases() as usize,
        "only {refused} damaged checkpoints refused"
    );
}
