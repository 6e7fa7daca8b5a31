//! Output shapes of every preset and every activation, on flex.

use burn::prelude::*;
use cifar_models::{ActivationConfig, CnnConfig, Init, MlpConfig, ModelConfig, StageConfig};

const ACTIVATIONS: [&str; 10] = [
    "sigmoid",
    "tanh",
    "relu",
    "leaky-relu",
    "prelu",
    "prelu-shared",
    "elu",
    "maxout",
    "gelu",
    "silu",
];

fn images(n: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [n, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    )
}

#[test]
fn every_preset_gives_logits_per_class() {
    let device = Device::flex();
    for name in [
        "mlp",
        "three-layer",
        "small-cnn",
        "vgg",
        "resnet9",
        "airbench",
    ] {
        let model = ModelConfig::preset(name).unwrap().init(&device);
        let logits = model.forward(images(2, &device));
        assert_eq!(logits.dims(), [2, 10], "{name}");
        let (_, observed) = model.forward_observed(images(2, &device));
        assert!(!observed.is_empty(), "{name} observed no layer");
    }
}

#[test]
fn every_activation_in_mlp_and_cnn() {
    let device = Device::flex();
    for name in ACTIVATIONS {
        let activation: ActivationConfig = name.parse().unwrap();
        let mlp = MlpConfig::new()
            .with_hidden_sizes(vec![16, 8])
            .with_activation(activation)
            .with_batch_norm(true)
            .init(&device);
        assert_eq!(
            mlp.forward(images(3, &device)).dims(),
            [3, 10],
            "mlp {name}"
        );
        // [N, D] input works as well as images.
        let flat = Tensor::<2>::zeros([3, 3072], &device);
        assert_eq!(mlp.forward(flat).dims(), [3, 10]);
        let (_, observed) = mlp.forward_observed(images(3, &device));
        assert_eq!(observed[0].post.dims(), [3, 16], "mlp {name}");
        // Maxout's pre-activation layer is `pieces` times wider.
        let pre_width = 16 * activation.width_multiplier();
        assert_eq!(observed[0].pre.dims(), [3, pre_width], "mlp {name}");

        let cnn = CnnConfig::new(vec![
            StageConfig::new(vec![4]),
            StageConfig::new(vec![8]).with_residual(true),
        ])
        .with_activation(activation)
        .with_head_hidden(vec![12])
        .init(&device);
        assert_eq!(
            cnn.forward(images(2, &device)).dims(),
            [2, 10],
            "cnn {name}"
        );
    }
}

#[test]
fn maxout_multiplies_the_layer_parameters() {
    let device = Device::flex();
    let params = |a: ActivationConfig| {
        use burn::module::Module;
        MlpConfig::new()
            .with_input_size(10)
            .with_hidden_sizes(vec![5])
            .with_activation(a)
            .init(&device)
            .hidden[0]
            .linear
            .num_params()
    };
    assert_eq!(params(ActivationConfig::Relu), 10 * 5 + 5);
    assert_eq!(
        params(ActivationConfig::Maxout { pieces: 3 }),
        3 * (10 * 5 + 5)
    );
}

#[test]
fn configs_round_trip_through_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = CnnConfig::resnet9()
        .with_activation(ActivationConfig::elu())
        .with_init(Init::SMALL);
    let path = dir.path().join("cnn.json");
    config.save(&path).unwrap();
    let loaded = CnnConfig::load(&path).unwrap();
    assert_eq!(loaded.to_string(), config.to_string());
    let model = ModelConfig::Mlp(MlpConfig::new().with_hidden_sizes(vec![7, 7]));
    let json = serde_json::to_string(&model).unwrap();
    let back: ModelConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

#[test]
fn parameters_save_and_load() {
    use burn::module::Module;
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::preset("three-layer").unwrap();
    let model = config.init(&device);
    let x = images(2, &device);
    let before = model
        .forward(x.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let path = dir.path().join("model.bpk");
    model.save_file(&path).unwrap();
    let loaded = config.init(&device).load_file(&path);
    let after = loaded
        .forward(x)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_eq!(before, after);
}
