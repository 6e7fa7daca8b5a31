//! `train eval`, `train predict` and `train data`: looking at a trained run and at the data.

use std::sync::Arc;

use anyhow::{Context, Result};
use burn::prelude::*;
use cifar_data::{CLASSES, IMAGE_BYTES, Preprocessing, SplitConfig};
use cifar_train::{charts, dataset};
use serde_json::json;

use super::load_run;
use crate::cli::{DataArgs, EvalArgs, PredictArgs};

/// `train eval`.
pub fn eval_command(args: &EvalArgs) -> Result<()> {
    let (run, config, device, model) = load_run(&args.run, args.backend)?;
    let fitted = run.load_preprocessing()?;
    // The data the run trained on, unless --data says otherwise.
    let recorded = run.data_dir();
    let source = args.source.data.as_deref().or(recorded.as_deref());
    let (dir, data) = dataset::load(source, args.source.download)?;
    if !args.json {
        println!("data: {}", dir.display());
    }
    let splits = config.split.split(&data)?;
    let set = match args.split.as_str() {
        "train" => &splits.train,
        "val" => &splits.val,
        _ => splits
            .test
            .as_ref()
            .context("--split test: this data folder has no test_batch.bin; use --split val")?,
    };
    let features = Arc::new(fitted.transform(set));
    let tta = args.tta.unwrap_or(config.tta);
    let eval = cifar_train::evaluate::evaluate(&model, &features, 500, &device, tta);
    let png = run.file(&format!("confusion-{}.png", args.split));
    charts::confusion_chart(
        &png,
        &eval.confusion,
        &CLASSES,
        &format!(
            "Confusion matrix, {} split ({} images, accuracy {:.3})",
            args.split, eval.examples, eval.accuracy
        ),
    )?;
    if args.json {
        println!(
            "{}",
            json!({
                "split": args.split, "examples": eval.examples, "accuracy": eval.accuracy,
                "loss": eval.loss, "per_class": eval.per_class(), "confusion": eval.confusion,
                "confusion_png": png.display().to_string(),
            })
        );
        return Ok(());
    }
    println!(
        "{} split: {} images, accuracy {:.4}, loss {:.4}",
        args.split, eval.examples, eval.accuracy, eval.loss
    );
    println!("\nper-class accuracy:");
    for (name, acc) in CLASSES.iter().zip(eval.per_class()) {
        println!("  {name:<10} {acc:.3}");
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted):");
    print!("{:>10}", "");
    for name in CLASSES {
        print!(" {:>5}", &name[..5.min(name.len())]);
    }
    println!();
    for (name, row) in CLASSES.iter().zip(&eval.confusion) {
        print!("{name:>10}");
        for count in row {
            print!(" {count:>5}");
        }
        println!();
    }
    println!("\nheat map: {}", png.display());
    Ok(())
}

/// `train predict`.
pub fn predict_command(args: &PredictArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=10).contains(&args.top),
        "--top must be between 1 and 10, got {}",
        args.top
    );
    let (run, _config, device, model) = load_run(&args.run, args.backend)?;
    let fitted = run.load_preprocessing()?;
    let mut pixels = Vec::with_capacity(args.images.len() * IMAGE_BYTES);
    for path in &args.images {
        pixels.extend(cifar_train::images::read_32x32_rgb(path)?);
    }
    let values = fitted.transform_pixels(&pixels);
    let [c, h, w] = fitted.output_shape().dims();
    let input = Tensor::<4>::from_data(
        TensorData::new(values, [args.images.len(), c, h, w]),
        &device,
    );
    let probs = burn::tensor::activation::softmax(model.forward(input), 1)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("floats");
    let mut results = Vec::new();
    for (path, p) in args.images.iter().zip(probs.chunks(10)) {
        let mut ranked: Vec<(usize, f32)> = p.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(args.top);
        if !args.json {
            let text: Vec<String> = ranked
                .iter()
                .map(|(k, p)| format!("{} {:.1}%", CLASSES[*k], p * 100.0))
                .collect();
            println!("{}: {}", path.display(), text.join(", "));
        }
        results.push(json!({
            "image": path.display().to_string(),
            "top": ranked.iter().map(|(k, p)| json!({"class": CLASSES[*k], "probability": p})).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(())
}

/// `train data`.
pub fn data_command(args: &DataArgs) -> Result<()> {
    let (dir, data) = dataset::load(args.source.data.as_deref(), args.source.download)?;
    let splits = SplitConfig::new()
        .with_val_size(args.val_size)
        .split(&data)?;
    let fitted = Preprocessing::Standardize.fit(&splits.train)?;
    let std: Vec<f64> = fitted.scale.iter().map(|s| 1.0 / *s as f64).collect();
    let mut report = json!({
        "folder": dir.display().to_string(),
        "classes": data.classes,
        "splits": {
            "train": {"images": splits.train.len(), "per_class": splits.train.class_counts()},
            "val": {"images": splits.val.len(), "per_class": splits.val.class_counts()},
        },
        "train_channel_mean": fitted.mean,
        "train_channel_std": std,
    });
    if let Some(test) = &splits.test {
        report["splits"]["test"] = json!({"images": test.len(), "per_class": test.class_counts()});
    }
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("folder: {}", dir.display());
    println!(
        "{:<10} {:>7}  per class ({})",
        "split",
        "images",
        data.classes.join(", ")
    );
    let show = |name: &str, set: &cifar_data::ImageSet| {
        let counts: Vec<String> = set.class_counts().iter().map(|c| c.to_string()).collect();
        println!("{name:<10} {:>7}  {}", set.len(), counts.join(" "));
    };
    show("train", &splits.train);
    show("val", &splits.val);
    match &splits.test {
        Some(test) => show("test", test),
        None => println!("test       (no test_batch.bin)"),
    }
    println!(
        "training-split channel mean (R, G, B, 0-1 scale): {:.4} {:.4} {:.4}",
        fitted.mean[0], fitted.mean[1], fitted.mean[2]
    );
    println!(
        "training-split channel std:                      {:.4} {:.4} {:.4}",
        std[0], std[1], std[2]
    );
    Ok(())
}
