//! Numerical checks: gradients against central differences (as CS231n's
//! `gradient_check` does), batch norm in training and eval mode, PReLU
//! learning its slope, and the same logits on every CPU backend.

use burn::module::Module;
use burn::nn::BatchNormConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use cifar_models::{ActivationConfig, CnnConfig, MlpConfig, ModelConfig};

/// Inputs away from 0, where ELU and PReLU have a kink.
fn inputs(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n * d)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
            u.signum() * (0.1 + 1.4 * u.abs())
        })
        .collect()
}

/// Compares d(sum(w * f(x)))/dx from autodiff with central differences;
/// returns the relative error ||a - n|| / max(||a||, ||n||).
fn gradient_check(f: &dyn Fn(Tensor<2>) -> Tensor<2>, n: usize, d: usize, out: usize) -> f64 {
    let device = Device::flex().autodiff();
    let x0 = inputs(n, d, 1);
    let w = Tensor::<2>::from_data(TensorData::new(inputs(n, out, 2), [n, out]), &device);
    let loss = |x: Vec<f32>, grad: bool| {
        let mut t = Tensor::<2>::from_data(TensorData::new(x, [n, d]), &device);
        if grad {
            t = t.require_grad();
        }
        ((f(t.clone()) * w.clone()).sum(), t)
    };
    let (l, x) = loss(x0.clone(), true);
    let grads = l.backward();
    let analytic = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let h = 1e-2f32;
    let mut num = vec![0f64; x0.len()];
    for i in 0..x0.len() {
        let mut plus = x0.clone();
        plus[i] += h;
        let mut minus = x0.clone();
        minus[i] -= h;
        let lp = loss(plus, false).0.into_scalar::<f32>() as f64;
        let lm = loss(minus, false).0.into_scalar::<f32>() as f64;
        num[i] = (lp - lm) / (2.0 * h as f64);
    }
    let diff: f64 = analytic
        .iter()
        .zip(&num)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let na = analytic
        .iter()
        .map(|a| (*a as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let nn = num.iter().map(|a| a.powi(2)).sum::<f64>().sqrt();
    diff / na.max(nn)
}

#[test]
fn gradients_match_central_differences() {
    let device = Device::flex().autodiff();
    let maxout = ActivationConfig::Maxout { pieces: 3 }.init(4, &device);
    let err = gradient_check(&|x| maxout.forward(x), 4, 12, 4);
    assert!(err < 1e-2, "maxout relative error {err}");

    let prelu = ActivationConfig::prelu().init(6, &device);
    let err = gradient_check(&|x| prelu.forward(x), 4, 6, 6);
    assert!(err < 1e-2, "prelu relative error {err}");

    let elu = ActivationConfig::elu().init(6, &device);
    let err = gradient_check(&|x| elu.forward(x), 4, 6, 6);
    assert!(err < 1e-2, "elu relative error {err}");

    let bn = BatchNormConfig::new(5).init(&device);
    let err = gradient_check(&|x| bn.forward(x), 8, 5, 5);
    assert!(err < 1e-2, "batch norm relative error {err}");
}

#[test]
fn batch_norm_normalizes_in_training_and_uses_running_stats_in_eval() {
    let device = Device::flex().autodiff();
    let bn = BatchNormConfig::new(3).init(&device);
    let x = Tensor::<2>::random([64, 3], Distribution::Normal(5.0, 3.0), &device);
    let y = bn.forward(x.clone());
    let mean = y
        .clone()
        .mean_dim(0)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let var = y.var_bias(0).into_data().try_into_vec_as::<f32>().unwrap();
    for c in 0..3 {
        assert!(mean[c].abs() < 1e-4, "mean {c}: {}", mean[c]);
        assert!(
            (var[c].sqrt() - 1.0).abs() < 1e-3,
            "std {c}: {}",
            var[c].sqrt()
        );
    }
    // One training step moved the running statistics from (0, 1) by momentum 0.1
    // towards the batch's mean and (population) variance.
    let batch_mean = x
        .clone()
        .mean_dim(0)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let batch_var = x
        .clone()
        .var_bias(0)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let running_mean = bn
        .running_mean
        .value_sync()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let running_var = bn
        .running_var
        .value_sync()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    for c in 0..3 {
        assert!(
            (running_mean[c] - 0.1 * batch_mean[c]).abs() < 1e-4,
            "running mean {c}: {} vs {}",
            running_mean[c],
            0.1 * batch_mean[c]
        );
        assert!(
            (running_var[c] - (0.9 + 0.1 * batch_var[c])).abs() < 1e-3,
            "running var {c}: {} vs {}",
            running_var[c],
            0.9 + 0.1 * batch_var[c]
        );
    }
    // Eval mode normalizes with those running statistics, not the batch's.
    let eval = bn.valid();
    let plain = x.clone().inner();
    let y = eval
        .forward(plain.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let xs = plain.into_data().try_into_vec_as::<f32>().unwrap();
    for i in [0, 7, 100] {
        let c = i % 3;
        let expected = (xs[i] - running_mean[c]) / (running_var[c] + 1e-5).sqrt();
        assert!(
            (y[i] - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "{} vs {expected}",
            y[i]
        );
    }
}

#[test]
fn prelu_slope_learns() {
    let device = Device::flex().autodiff();
    let mlp = MlpConfig::new()
        .with_input_size(4)
        .with_hidden_sizes(vec![3])
        .with_activation(ActivationConfig::prelu())
        .init(&device);
    let before = match &mlp.hidden[0].activation {
        cifar_models::Activation::PRelu(p) => {
            p.alpha.val().into_data().try_into_vec_as::<f32>().unwrap()
        }
        _ => unreachable!(),
    };
    assert_eq!(before, vec![0.25; 3]);
    let x = Tensor::<2>::random([16, 4], Distribution::Normal(0.0, 1.0), &device);
    let loss = mlp.forward(x).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &mlp);
    let mut optim = SgdConfig::new().init();
    let mlp = optim.step(0.5, mlp, grads);
    let after = match &mlp.hidden[0].activation {
        cifar_models::Activation::PRelu(p) => {
            p.alpha.val().into_data().try_into_vec_as::<f32>().unwrap()
        }
        _ => unreachable!(),
    };
    assert!(
        after.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-6),
        "slope did not move: {after:?}"
    );
}

/// Logits of the same weights on another device: saved on flex, loaded there.
pub fn logits_on(
    config: &ModelConfig,
    weights: &std::path::Path,
    input: &[f32],
    device: &Device,
) -> Vec<f32> {
    let model = config.init(device).load_file(weights);
    let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), [2, 3, 32, 32]), device);
    model
        .forward(x)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

#[test]
#[allow(deprecated)]
fn flex_and_ndarray_agree() {
    let dir = tempfile::tempdir().unwrap();
    let input = inputs(2, 3072, 9);
    for config in [
        ModelConfig::Mlp(
            MlpConfig::new()
                .with_hidden_sizes(vec![64, 32])
                .with_batch_norm(true),
        ),
        ModelConfig::Cnn(CnnConfig::vgg()),
    ] {
        let path = dir.path().join("w.bpk");
        config.init(&Device::flex()).save_file(&path).unwrap();
        let a = logits_on(&config, &path, &input, &Device::flex());
        let b = logits_on(&config, &path, &input, &Device::ndarray());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "flex {x} vs ndarray {y}");
        }
    }
}

/// The logits and the input gradient of one training-mode step (batch
/// statistics), of the weights saved at `weights`, on `device` (autodiff).
fn training_step_on(
    config: &ModelConfig,
    weights: &std::path::Path,
    input: &[f32],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let model = config.init(device).load_file(weights).train();
    let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), [2, 3, 32, 32]), device)
        .require_grad();
    let logits = model.forward(x.clone());
    // A loss whose gradient differs per logit, so that every path back counts.
    let weights = Tensor::<2>::from_data(
        TensorData::new((0..20).map(|i| (i as f32 - 9.5) / 10.0).collect(), [2, 10]),
        device,
    );
    let grads = (logits.clone() * weights).sum().backward();
    let values = |t: Tensor<4>| t.into_data().try_into_vec_as::<f32>().unwrap();
    (
        logits.into_data().try_into_vec_as::<f32>().unwrap(),
        values(x.grad(&grads).unwrap()),
    )
}

/// A training step through the flex kernels (convolution, batch norm fused
/// with ReLU or GELU, pooling, linear) gives Burn's own values on ndarray: the
/// logits with batch statistics and the gradient that reaches the input
/// through every layer's backward pass.
#[test]
#[allow(deprecated)]
fn a_training_step_on_flex_equals_ndarray() {
    let dir = tempfile::tempdir().unwrap();
    let input = inputs(2, 3072, 5);
    for config in [
        ModelConfig::Cnn(CnnConfig::vgg()),
        ModelConfig::Cnn(CnnConfig::vgg_with_widths([32, 64, 128])),
        ModelConfig::Cnn(CnnConfig::small()),
        // GELU after every batch norm. (Without its whitening layer, which
        // is frozen and passes no gradient back to the images.)
        ModelConfig::Cnn(CnnConfig::airbench().with_whiten(0)),
    ] {
        let path = dir.path().join("w.bpk");
        config.init(&Device::flex()).save_file(&path).unwrap();
        let (flex, flex_dx) = training_step_on(&config, &path, &input, &Device::flex().autodiff());
        let (nd, nd_dx) = training_step_on(&config, &path, &input, &Device::ndarray().autodiff());
        let scale = nd_dx.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{config:?}: no input gradient");
        for (x, y) in flex.iter().zip(&nd) {
            assert!(
                (x - y).abs() < 1e-3 * (1.0 + y.abs()),
                "logits: flex {x} vs ndarray {y}"
            );
        }
        // The input gradient comes back through six batch norms of a batch
        // of two images, each dividing by a standard deviation that the two
        // backends sum in a different order: over random initializations
        // (the weights are drawn unseeded) it differed by up to 1.3e-3 of its
        // largest value; a misrouted value is off by the order of the value.
        for (x, y) in flex_dx.iter().zip(&nd_dx) {
            assert!(
                (x - y).abs() < 3e-3 * scale,
                "{config:?}: input gradient flex {x} vs ndarray {y} (largest {scale})"
            );
        }
    }
}
