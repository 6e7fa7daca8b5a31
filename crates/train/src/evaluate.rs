//! Accuracy, per-class accuracy and the confusion matrix of a model on a
//! split, optionally with test-time augmentation.

use burn::prelude::*;
use cifar_data::{CifarBatcher, Features};
use cifar_models::Model;
use cifar_spelling::Names;
use serde::Serialize;
use std::sync::Arc;

/// Test-time augmentation: which views of each image the prediction
/// averages the logits of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tta {
    /// The image alone.
    #[default]
    None,
    /// The image and its mirror image (2 forward passes).
    Flip,
    /// As `flip`, averaged half and half with the same pair shifted one
    /// pixel up-left and one pixel down-right (reflected borders): 6 forward
    /// passes, airbench's "mirror-translate".
    FlipShift,
}

impl Tta {
    /// The names of the test-time augmentations.
    pub const NAMES: Names<Tta> = Names {
        what: "test-time augmentation",
        table: &[
            ("none", Tta::None),
            ("flip", Tta::Flip),
            ("flip-shift", Tta::FlipShift),
        ],
    };

    /// The logits of `model` for `images` under this augmentation.
    ///
    /// # Shapes
    ///
    /// - `images`: `[N, C, H, W]`
    /// - output: `[N, classes]`
    pub fn logits(self, model: &Model, images: Tensor<4>) -> Tensor<2> {
        let mirrored = |x: Tensor<4>| {
            let flipped = x.clone().flip([3]);
            (model.forward(x) + model.forward(flipped)).mul_scalar(0.5)
        };
        match self {
            Tta::None => model.forward(images),
            Tta::Flip => mirrored(images),
            Tta::FlipShift => {
                let [n, c, h, w] = images.dims();
                if h < 2 || w < 2 {
                    return mirrored(images);
                }
                let padded = reflect_pad_1(images.clone());
                let up_left = padded.clone().slice([0..n, 0..c, 0..h, 0..w]);
                let down_right = padded.slice([0..n, 0..c, 2..h + 2, 2..w + 2]);
                let shifted = (mirrored(up_left) + mirrored(down_right)).mul_scalar(0.5);
                (mirrored(images) + shifted).mul_scalar(0.5)
            }
        }
    }
}

cifar_spelling::named_text!(Tta);

/// `x` padded by one pixel on each side with its reflection (the border
/// pixel itself not repeated, as PyTorch's `reflect` mode).
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]` with `H, W >= 2`
/// - output: `[N, C, H + 2, W + 2]`
fn reflect_pad_1(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let x = Tensor::cat(
        vec![
            x.clone().slice([0..n, 0..c, 0..h, 1..2]),
            x.clone(),
            x.slice([0..n, 0..c, 0..h, w - 2..w - 1]),
        ],
        3,
    );
    Tensor::cat(
        vec![
            x.clone().slice([0..n, 0..c, 1..2, 0..w + 2]),
            x.clone(),
            x.slice([0..n, 0..c, h - 2..h - 1, 0..w + 2]),
        ],
        2,
    )
}

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

/// Evaluates `model` (in eval mode, on a plain device) on `features`,
/// `batch_size` at a time, predicting with `tta`.
pub fn evaluate(
    model: &Model,
    features: &Arc<Features>,
    batch_size: usize,
    device: &Device,
    tta: Tta,
) -> Evaluation {
    evaluate_indices(
        model,
        features,
        &(0..features.len()).collect::<Vec<_>>(),
        batch_size,
        device,
        tta,
    )
}

/// Evaluates `model` on the examples of `indices`.
pub fn evaluate_indices(
    model: &Model,
    features: &Arc<Features>,
    indices: &[usize],
    batch_size: usize,
    device: &Device,
    tta: Tta,
) -> Evaluation {
    let batcher = CifarBatcher::new(features.clone());
    let mut confusion = vec![vec![0u64; 10]; 10];
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(device);
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = batcher.batch(chunk.to_vec(), device);
        let logits = tta.logits(model, batch.images);
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

#[cfg(test)]
mod tests {
    use super::*;
    use cifar_models::{MlpConfig, ModelConfig};

    #[test]
    fn reflect_padding_matches_pytorch() {
        // torch.nn.functional.pad(torch.arange(6.).view(1, 1, 2, 3), (1, 1, 1, 1), 'reflect')
        let device = Device::flex();
        let x = Tensor::<4>::from_floats([[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]], &device);
        let padded = reflect_pad_1(x).into_data().try_to_vec::<f32>().unwrap();
        #[rustfmt::skip]
        let expected = [
            4., 3., 4., 5., 4.,
            1., 0., 1., 2., 1.,
            4., 3., 4., 5., 4.,
            1., 0., 1., 2., 1.,
        ];
        assert_eq!(padded, expected);
    }

    #[test]
    fn tta_averages_the_logits_of_the_views() {
        let device = Device::flex();
        device.seed(2);
        let model = ModelConfig::Mlp(MlpConfig::new().with_hidden_sizes(vec![8])).init(&device);
        let x = Tensor::<4>::random([3, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let plain = model.forward(x.clone());
        let mirrored = model.forward(x.clone().flip([3]));
        Tta::None
            .logits(&model, x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&plain.clone().into_data(), Default::default());
        let flip = Tta::Flip.logits(&model, x.clone());
        flip.clone()
            .into_data()
            .assert_approx_eq::<f32>(&((plain + mirrored) / 2.0).into_data(), Default::default());
        // A mirrored input gives the same flip-averaged logits.
        Tta::Flip
            .logits(&model, x.clone().flip([3]))
            .into_data()
            .assert_approx_eq::<f32>(&flip.into_data(), Default::default());
        assert_eq!(Tta::FlipShift.logits(&model, x).dims(), [3, 10]);
        assert_eq!("flip-shift".parse::<Tta>().unwrap(), Tta::FlipShift);
        assert!("mirror".parse::<Tta>().unwrap_err().contains("flip-shift"));
    }
}
