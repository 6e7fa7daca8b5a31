//! A model's trainable parameter tensors by name, with their gradients.
//!
//! Names are the module path as Burn's record stores it, without the
//! model's variant: `stages.0.convs.1.conv.weight`, `hidden.0.linear.bias`,
//! `output.weight`. Batch norm's running statistics are not parameters (no
//! gradient) and are left out.
//!
//! A block's batch norm is its field `norm`, beside the `conv` or `linear`
//! it normalizes: a weight whose block has one is marked
//! [`NamedParam::feeds_batch_norm`].

use std::collections::BTreeSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use cifar_models::Model;

/// One parameter tensor, flattened.
#[derive(Debug, Clone)]
pub struct NamedParam {
    /// The module path, such as `stages.0.convs.1.conv.weight`.
    pub name: String,
    /// Burn's id of the parameter (stable across optimizer steps).
    pub id: ParamId,
    /// The tensor's shape.
    pub dims: Vec<usize>,
    /// The values, flattened and detached.
    pub value: Tensor<1>,
    /// The gradient, flattened, when gradients were given.
    pub grad: Option<Tensor<1>>,
    /// A weight whose output goes through batch norm: scaling it leaves
    /// the network's output unchanged, so its norm carries no meaning and
    /// its update/weight ratio follows the learning rate and weight decay
    /// (see [`crate::monitor::RotationalEquilibrium`]).
    pub feeds_batch_norm: bool,
}

impl NamedParam {
    /// The layer part of the name (`stages.0.convs.1.conv`).
    pub fn layer(&self) -> &str {
        self.name.rsplit_once('.').map_or("", |(layer, _)| layer)
    }

    /// The last part of the name (`weight`, `bias`, `gamma`, ...).
    pub fn kind(&self) -> &str {
        self.name.rsplit_once('.').map_or(&self.name, |(_, k)| k)
    }

    /// Whether this is a weight matrix or kernel (not a bias or a norm parameter).
    pub fn is_weight(&self) -> bool {
        self.kind() == "weight" && self.dims.len() >= 2
    }
}

/// Every trainable parameter of `model`, in module order, each with its
/// gradient from `grads` when given. Parameters without a gradient in
/// `grads` (batch norm's running statistics) and, on an autodiff device,
/// frozen ones (a whitening layer) are left out.
pub fn parameters(model: &Model, grads: Option<&GradientsParams>) -> Vec<NamedParam> {
    let mut visitor = Collector {
        path: Vec::new(),
        modules: BTreeSet::new(),
        grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    let Collector {
        modules, mut out, ..
    } = visitor;
    for param in out.iter_mut().filter(|p| p.is_weight()) {
        // `stages.0.convs.1.conv.weight` feeds `stages.0.convs.1.norm`.
        let block = param
            .layer()
            .rsplit_once('.')
            .map_or("", |(block, _)| block);
        param.feeds_batch_norm = modules.contains(&format!("{block}.norm"));
    }
    out
}

/// Sum of squares of a tensor, read back as f64.
pub fn squared_norm(t: &Tensor<1>) -> f64 {
    t.clone().square().sum().into_scalar::<f32>() as f64
}

struct Collector<'a> {
    path: Vec<String>,
    /// Every module that holds a tensor (`stages.0.convs.1.norm`); Burn
    /// also enters an `Option` field that is `None`.
    modules: BTreeSet<String>,
    grads: Option<&'a GradientsParams>,
    out: Vec<NamedParam>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // The model's own variant (`Mlp`, `Cnn`) adds nothing to the name.
        if container_type != "Enum:Model" {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type != "Enum:Model" {
            self.path.pop();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some((_, module)) = self.path.split_last() {
            self.modules.insert(module.join("."));
        }
        // Batch norm's running statistics are buffers, not trained parameters.
        if self.path.last().is_some_and(|n| n.starts_with("running_")) {
            return;
        }
        // Nor are frozen ones (a whitening layer, a fixed batch-norm scale),
        // which a model on an autodiff device marks as asking no gradient.
        if param.device().is_autodiff() && !param.is_require_grad() {
            return;
        }
        let grad = match self.grads {
            Some(grads) => match grads.get::<D>(param.id) {
                Some(g) => Some(flatten(g)),
                None => return,
            },
            None => None,
        };
        let value = param.val().detach();
        self.out.push(NamedParam {
            name: self.path.join("."),
            id: param.id,
            dims: value.dims().to_vec(),
            value: flatten(value),
            grad,
            feeds_batch_norm: false,
        });
    }
}

fn flatten<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.dims().iter().product::<usize>();
    t.reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cifar_models::{CnnConfig, MlpConfig, ModelConfig};

    #[test]
    fn frozen_parameters_are_left_out() {
        let device = Device::flex().autodiff();
        let model = ModelConfig::Cnn(
            CnnConfig::new(vec![cifar_models::StageConfig::new(vec![4])])
                .with_whiten(2)
                .with_norm_scale(false),
        )
        .init(&device);
        let names: Vec<String> = parameters(&model, None)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("whiten")), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("gamma")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("norm.beta")), "{names:?}");
        assert!(
            names.contains(&"stages.0.convs.0.conv.weight".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn weights_that_feed_batch_norm_are_marked() {
        let device = Device::flex().autodiff();
        let fed = |model: &Model| -> Vec<String> {
            parameters(model, None)
                .into_iter()
                .filter(|p| p.feeds_batch_norm)
                .map(|p| p.name)
                .collect()
        };
        // Every convolution of the recipe's network feeds a batch norm (the
        // first through its early max pool, which scaling commutes with);
        // the output layer and the frozen whitening layer do not.
        let recipe = ModelConfig::Cnn(
            CnnConfig::new(vec![
                cifar_models::StageConfig::new(vec![4, 4]).with_early_pool(true),
            ])
            .with_whiten(2)
            .with_norm_scale(false),
        )
        .init(&device);
        assert_eq!(
            fed(&recipe),
            [
                "stages.0.convs.0.conv.weight",
                "stages.0.convs.1.conv.weight"
            ]
        );
        let mlp = |batch_norm| {
            ModelConfig::Mlp(
                MlpConfig::new()
                    .with_hidden_sizes(vec![4, 4])
                    .with_input_size(6)
                    .with_batch_norm(batch_norm),
            )
            .init(&device)
        };
        assert_eq!(
            fed(&mlp(true)),
            ["hidden.0.linear.weight", "hidden.1.linear.weight"]
        );
        assert!(fed(&mlp(false)).is_empty());
        // Biases and norm parameters are never marked, even inside a block with batch norm.
        assert!(
            parameters(&mlp(true), None)
                .iter()
                .filter(|p| !p.is_weight())
                .all(|p| !p.feeds_batch_norm)
        );
    }

    #[test]
    fn names_follow_the_module_tree() {
        let device = Device::flex().autodiff();
        let mlp = ModelConfig::Mlp(
            MlpConfig::new()
                .with_hidden_sizes(vec![4])
                .with_input_size(6),
        )
        .init(&device);
        let names: Vec<String> = parameters(&mlp, None).into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "hidden.0.linear.weight",
                "hidden.0.linear.bias",
                "output.weight",
                "output.bias"
            ]
        );
        let cnn = ModelConfig::Cnn(CnnConfig::vgg_with_widths([2, 2, 2])).init(&device);
        let params = parameters(&cnn, None);
        assert!(
            params
                .iter()
                .any(|p| p.name == "stages.0.convs.0.conv.weight")
        );
        assert!(
            params
                .iter()
                .any(|p| p.name == "stages.0.convs.0.norm.gamma")
        );
        assert!(
            !params.iter().any(|p| p.name.contains("running")),
            "running statistics are not parameters"
        );
        let conv = params
            .iter()
            .find(|p| p.name == "stages.0.convs.0.conv.weight")
            .unwrap();
        assert_eq!(conv.dims, [2, 3, 3, 3]);
        assert!(conv.is_weight());
        assert_eq!(conv.layer(), "stages.0.convs.0.conv");
    }

    #[test]
    fn observed_layers_are_named_as_their_parameters() {
        // The monitor's activation rows and its update/weight ratios name
        // the same layer the same way: activations `L`, weight `L.conv.weight`
        // (or `L.linear.weight`).
        let device = Device::flex().autodiff();
        let cnn = ModelConfig::Cnn(
            CnnConfig::new(vec![
                cifar_models::StageConfig::new(vec![2, 2]),
                cifar_models::StageConfig::new(vec![2]).with_residual(true),
            ])
            .with_head_hidden(vec![3]),
        )
        .init(&device);
        let mlp = ModelConfig::Mlp(
            MlpConfig::new()
                .with_hidden_sizes(vec![4, 4])
                .with_input_size(3 * 8 * 8),
        )
        .init(&device);
        for (model, expected) in [
            (
                cnn,
                &[
                    "stages.0.convs.0",
                    "stages.0.convs.1",
                    "stages.1.convs.0",
                    "stages.1.residual.0",
                    "stages.1.residual.1",
                    "hidden.0",
                ][..],
            ),
            (mlp, &["hidden.0", "hidden.1"][..]),
        ] {
            let images = Tensor::<4>::zeros([2, 3, 8, 8], &device);
            let (_, observed) = model.forward_observed(images);
            let names: Vec<&str> = observed.iter().map(|o| o.name.as_str()).collect();
            assert_eq!(names, expected);
            let weights: Vec<String> = parameters(&model, None)
                .into_iter()
                .filter(|p| p.is_weight())
                .map(|p| p.name)
                .collect();
            for name in names {
                assert!(
                    weights.iter().any(|w| *w == format!("{name}.conv.weight")
                        || *w == format!("{name}.linear.weight")),
                    "{name} has no weight among {weights:?}"
                );
            }
        }
    }
}
