//! Reusing the crate's modules in your own Burn model.
//!
//! A small network of our own: a CNN backbone from `cifar-models`, then an
//! extra head with a PReLU activation. It trains a few steps on random data
//! on flex, saves its weights, reloads them and checks the logits match.
//!
//! Run: `cargo run --release --example embed`

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use cifar_burn::models::{Activation, ActivationConfig, Cnn, CnnConfig, Init, StageConfig};

/// Our own module: a `Cnn` backbone (10 outputs used as features) and a head.
#[derive(Module, Debug)]
struct MyNet {
    backbone: Cnn,
    hidden: burn::nn::Linear,
    activation: Activation,
    output: burn::nn::Linear,
}

impl MyNet {
    fn new(device: &Device) -> Self {
        let backbone = CnnConfig::new(vec![StageConfig::new(vec![8]), StageConfig::new(vec![16])])
            .with_classes(32)
            .with_activation(ActivationConfig::elu())
            .init(device);
        Self {
            backbone,
            hidden: Init::He.linear(32, 16, device),
            activation: ActivationConfig::prelu().init(16, device),
            output: Init::Xavier.linear(16, 10, device),
        }
    }

    /// `[N, 3, 32, 32]` -> `[N, 10]`
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.backbone.forward(images);
        self.output
            .forward(self.activation.forward(self.hidden.forward(features)))
    }
}

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut net = MyNet::new(&device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let images = Tensor::<4>::random(
        [16, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..16i64).map(|i| i % 10).collect::<Vec<_>>(), [16]),
        &device,
    );
    for step in 1..=5 {
        let loss = loss_fn.forward(net.forward(images.clone()), labels.clone());
        println!("step {step}: loss {:.4}", loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-3, net, grads);
    }

    let dir = std::env::temp_dir().join("cifar-burn-embed-example");
    std::fs::create_dir_all(&dir).expect("temp folder");
    let path = dir.join("mynet.bpk");
    let eval = net.valid();
    let before = eval
        .forward(images.clone().inner())
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("floats");
    eval.clone().save_file(&path).expect("save");
    let reloaded = MyNet::new(&Device::flex()).load_file(&path).valid();
    let after = reloaded
        .forward(images.inner())
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("floats");
    let max_diff = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "saved to {}, reloaded: max logit difference {max_diff:e}",
        path.display()
    );
    assert!(max_diff < 1e-5, "reloaded weights differ");
}
