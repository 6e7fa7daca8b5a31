//! Accuracy, per-class accuracy and the confusion matrix of a model on a split.

use burn::prelude::*;
use cifar_data::{CifarBatcher, Features};
use cifar_models::Model;
use serde::Serialize;
use std::sync::Arc;

/// How a model did on a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Examples evaluated.
    pub examples: usize,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// Accuracy of each true class.
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                if total == 0 {
                    0.0
                } else {
                    row[c] as f64 / total as f64
                }
            })
            .collect()
    }
}

/// Evaluates `model` (in eval mode, on a plain device) on `features`, `batch_size` at a time.
pub fn evaluate(
    model: &Model,
    features: &Arc<Features>,
    batch_size: usize,
    device: &Device,
) -> Evaluation {
    evaluate_indices(
        model,
        features,
        &(0..features.len()).collect::<Vec<_>>(),
        batch_size,
        device,
    )
}

/// Evaluates `model` on the examples of `indices`.
pub fn evaluate_indices(
    model: &Model,
    features: &Arc<Features>,
    indices: &[usize],
    batch_size: usize,
    device: &Device,
) -> Evaluation {
    let batcher = CifarBatcher::new(features.clone());
    let mut confusion = vec![vec![0u64; 10]; 10];
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(device);
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk.to_vec(), device);
        let logits = model.forward(batch.images);
        let loss = loss_fn.forward(logits.clone(), batch.targets.clone());
        loss_sum += loss.into_scalar::<f32>() as f64 * chunk.len() as f64;
        let predicted = logits
            .argmax(1)
            .into_data()
            .try_into_vec_as::<i64>()
            .expect("ints");
        for (&i, &p) in chunk.iter().zip(&predicted) {
            let truth = features.labels[i] as usize;
            confusion[truth][p as usize] += 1;
            correct += usize::from(truth == p as usize);
        }
    }
    let n = indices.len().max(1) as f64;
    Evaluation {
        examples: indices.len(),
        accuracy: correct as f64 / n,
        loss: loss_sum / n,
        confusion,
    }
}
