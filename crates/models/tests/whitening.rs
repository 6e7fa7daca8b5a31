//! The patch-whitening layer inside a CNN: where its output goes, that its
//! filters are set, frozen, and saved with the model.

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use cifar_models::{Cnn, CnnConfig, StageConfig};

fn images(n: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [n, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// A small whitened CNN with airbench's block order, its filters set to
/// random values (the real ones come from `cifar_data::PatchWhitening`).
fn whitened(device: &Device) -> (CnnConfig, Cnn) {
    let config = CnnConfig::new(vec![
        StageConfig::new(vec![8, 8]).with_early_pool(true),
        StageConfig::new(vec![16, 16]).with_early_pool(true),
    ])
    .with_whiten(2)
    .with_norm_scale(false)
    .with_identity_init(true);
    let filters = Tensor::<4>::random(
        [24, 3, 2, 2],
        burn::tensor::Distribution::Normal(0.0, 0.5),
        device,
    );
    let bias = Tensor::<1>::random([24], burn::tensor::Distribution::Default, device);
    let model = config.init(device).with_whitening(filters, bias);
    (config, model)
}

#[test]
fn the_whitening_layer_feeds_the_stages_31x31_maps_of_24_channels() {
    let device = Device::flex();
    device.seed(1);
    let (_, model) = whitened(&device);
    let whiten = model.whiten.as_ref().expect("a whitening layer");
    assert_eq!(whiten.forward(images(2, &device)).dims(), [2, 24, 31, 31]);
    assert_eq!(model.stages[0].convs[0].conv.weight.dims(), [8, 24, 3, 3]);
    assert_eq!(model.forward(images(2, &device)).dims(), [2, 10]);
    // The airbench preset: 31 -> 15 -> 7 -> 3, global max pool, 10 logits.
    let airbench = CnnConfig::airbench().init(&device);
    assert_eq!(airbench.forward(images(1, &device)).dims(), [1, 10]);
}

#[test]
fn whitening_filters_and_norm_scales_stay_fixed_in_training() {
    let device = Device::flex().autodiff();
    device.seed(2);
    let (_, model) = whitened(&device);
    let filters = model.whiten.as_ref().unwrap().weight.val().into_data();
    let gamma = model.stages[0].convs[0]
        .norm
        .as_ref()
        .unwrap()
        .gamma
        .val()
        .into_data();
    let beta = model.stages[0].convs[0]
        .norm
        .as_ref()
        .unwrap()
        .beta
        .val()
        .into_data();
    let mut optimizer = SgdConfig::new()
        .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(0.1)))
        .init();
    let mut model = model.train();
    for _ in 0..2 {
        let loss = model.forward(images(4, &device)).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(0.1, model, grads);
    }
    let whiten = model.whiten.as_ref().unwrap();
    whiten.weight.val().into_data().assert_eq(&filters, true);
    let norm = model.stages[0].convs[0].norm.as_ref().unwrap();
    norm.gamma.val().into_data().assert_eq(&gamma, true);
    // The shift still learns.
    assert_ne!(norm.beta.val().into_data(), beta);
    // And stays frozen through validation mode.
    model
        .valid()
        .whiten
        .unwrap()
        .weight
        .val()
        .into_data()
        .assert_eq(&filters, true);
}

#[test]
fn a_saved_and_reloaded_whitened_model_gives_identical_logits() {
    let device = Device::flex();
    device.seed(3);
    let (config, model) = whitened(&device);
    let x = images(2, &device);
    let before = model.forward(x.clone()).into_data();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bpk");
    model.save_file(&path).unwrap();
    // A fresh network has zero filters until the saved ones are loaded.
    let loaded = config.init(&device).load_file(&path);
    loaded.forward(x).into_data().assert_eq(&before, true);
    assert!(!loaded.whiten.unwrap().weight.is_require_grad());
}

#[test]
fn identity_initialized_convolutions_pass_their_input_through() {
    let device = Device::flex();
    let config = cifar_models::ConvBlockConfig::new(4, 4)
        .with_batch_norm(false)
        .with_identity(true);
    let block = config.init(&device);
    let x = Tensor::<4>::random([1, 4, 5, 5], burn::tensor::Distribution::Default, &device);
    // ReLU of a positive input is the input.
    block
        .forward(x.clone())
        .into_data()
        .assert_approx_eq::<f32>(&x.into_data(), Default::default());
}

#[test]
fn the_airbench_preset_starts_every_convolution_as_a_partial_identity() {
    // airbench94's Conv: PyTorch's default initialization, then dirac_ on
    // the first `in_channels` filters (all of them when there are fewer).
    let device = Device::flex();
    device.seed(2);
    let net = CnnConfig::airbench().init(&device);
    for (stage, cin, cout) in [(0, 24, 64), (1, 64, 256), (2, 256, 256)] {
        for (conv, cin) in [(0, cin), (1, cout)] {
            let block = &net.stages[stage].convs[conv];
            let w = block.conv.weight.val();
            let [co, ci, kh, kw] = w.dims();
            assert_eq!((co, ci, kh, kw), (cout, cin, 3, 3));
            let v = w.into_data().try_to_vec::<f32>().unwrap();
            let at = |o: usize, i: usize, y: usize, x: usize| v[((o * ci + i) * 3 + y) * 3 + x];
            for o in 0..cin.min(cout) {
                for i in 0..ci {
                    for (y, x) in (0..3).flat_map(|y| (0..3).map(move |x| (y, x))) {
                        let identity = f32::from(i == o && y == 1 && x == 1);
                        assert_eq!(at(o, i, y, x), identity, "stage {stage} conv {conv}");
                    }
                }
            }
            // The other filters: U(-a, a) with a = 1/sqrt(fan_in).
            let bound = 1.0 / ((ci * 9) as f32).sqrt();
            let rest = &v[cin.min(cout) * ci * 9..];
            assert!(
                rest.iter().all(|w| w.abs() <= bound),
                "stage {stage} conv {conv}"
            );
            if !rest.is_empty() {
                let max = rest.iter().fold(0f32, |m, w| m.max(w.abs()));
                assert!(
                    max > 0.9 * bound,
                    "stage {stage} conv {conv}: {max} vs {bound}"
                );
            }
            let norm = block.norm.as_ref().expect("batch norm");
            assert_eq!(norm.momentum, 0.4);
            assert_eq!(norm.epsilon, 1e-12);
        }
    }
    // The output layer: U(-1/16, 1/16) for 256 inputs, at full scale.
    let out = net
        .output
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let max = out.iter().fold(0f32, |m, w| m.max(w.abs()));
    assert!(max <= 1.0 / 16.0 && max > 0.9 / 16.0, "{max}");
}
