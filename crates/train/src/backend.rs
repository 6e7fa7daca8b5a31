//! Turning `--backend` (and `--device`) into a Burn `Device`, with a clear
//! error when it is not available.

use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use cifar_kernels::MatmulPrecision;

use crate::config::Backend;

/// Which GPU adapter wgpu trains on (`--device`): wgpu numbers the
/// adapters of each kind separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adapter {
    /// The best one wgpu finds (a high-power GPU first).
    #[default]
    Default,
    /// The `N`th discrete GPU (`discrete:N`, or `N` alone).
    Discrete(usize),
    /// The `N`th integrated GPU (`integrated:N`).
    Integrated(usize),
    /// The `N`th virtual GPU (`virtual:N`).
    Virtual(usize),
    /// A CPU adapter, such as Mesa's software Vulkan driver (`cpu`).
    Cpu,
}

impl FromStr for Adapter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let index = |n: &str| {
            n.parse::<usize>()
                .map_err(|_| format!("--device '{s}': '{n}' is not an adapter number such as 0"))
        };
        match s.split_once(':') {
            None if s == "default" => Ok(Adapter::Default),
            None if s == "cpu" => Ok(Adapter::Cpu),
            None if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
                Ok(Adapter::Discrete(index(s)?))
            }
            Some(("discrete", n)) => Ok(Adapter::Discrete(index(n)?)),
            Some(("integrated", n)) => Ok(Adapter::Integrated(index(n)?)),
            Some(("virtual", n)) => Ok(Adapter::Virtual(index(n)?)),
            _ => Err(format!(
                "unknown --device '{s}': expected default, N (= discrete:N), discrete:N, \
                 integrated:N, virtual:N or cpu"
            )),
        }
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Adapter::Default => f.write_str("default"),
            Adapter::Discrete(n) => write!(f, "discrete:{n}"),
            Adapter::Integrated(n) => write!(f, "integrated:{n}"),
            Adapter::Virtual(n) => write!(f, "virtual:{n}"),
            Adapter::Cpu => f.write_str("cpu"),
        }
    }
}

/// The device of `backend` on `adapter` (as [`device_on`]), with the
/// convolutions' matrix products at `precision` for the rest of the process
/// (flex only: bf16 needs AMX, and the other backends compute in f32).
pub fn device_with(
    backend: Backend,
    adapter: Adapter,
    precision: MatmulPrecision,
) -> Result<Device> {
    if precision != MatmulPrecision::F32 && backend != Backend::Flex {
        bail!(
            "--matmul-precision {precision} runs the flex backend's convolutions: use --backend \
             flex, or --matmul-precision f32 with --backend {backend}"
        );
    }
    cifar_kernels::set_matmul_precision(precision)
        .map_err(|e| anyhow!("--matmul-precision {precision}: {e}; use --matmul-precision f32"))?;
    device_on(backend, adapter)
}

/// The device of `backend`, checked by running one small operation on it.
pub fn device(backend: Backend) -> Result<Device> {
    device_on(backend, Adapter::Default)
}

/// The device of `backend` on `adapter` (wgpu only: the CPU backends have one device).
pub fn device_on(backend: Backend, adapter: Adapter) -> Result<Device> {
    if backend != Backend::Wgpu && adapter != Adapter::Default {
        bail!(
            "--device {adapter} picks a GPU adapter: it needs --backend wgpu (the {backend} backend has one device)"
        );
    }
    let device = match backend {
        Backend::Flex => Device::flex(),
        #[allow(deprecated)]
        Backend::Ndarray => Device::ndarray(),
        Backend::Wgpu => wgpu_device(adapter)?,
    };
    Ok(device)
}

#[cfg(feature = "wgpu")]
fn wgpu_device(adapter: Adapter) -> Result<Device> {
    use burn::tensor::DeviceKind;
    let kind = match adapter {
        Adapter::Default => DeviceKind::DefaultDevice,
        Adapter::Discrete(n) => DeviceKind::DiscreteGpu(n),
        Adapter::Integrated(n) => DeviceKind::IntegratedGpu(n),
        Adapter::Virtual(n) => DeviceKind::VirtualGpu(n),
        Adapter::Cpu => DeviceKind::Cpu,
    };
    // wgpu panics when it finds no adapter; turn that into an error.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(kind);
        let sum = Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        (device, sum)
    });
    std::panic::set_hook(previous);
    match probe {
        Ok((device, 4.0)) => Ok(device),
        Ok((_, sum)) => {
            bail!("--backend wgpu: the GPU computed 1+1+1+1 = {sum}; use --backend flex")
        }
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .filter(|r| !r.contains("unwrap()"))
                .unwrap_or("wgpu found no such adapter");
            bail!(
                "--backend wgpu --device {adapter}: no usable GPU adapter ({}). Install a Vulkan \
                 driver (on Debian: mesa-vulkan-drivers libvulkan1), pick another --device, or \
                 train on the CPU with --backend flex",
                reason.lines().next().unwrap_or(reason)
            )
        }
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_adapter: Adapter) -> Result<Device> {
    bail!(
        "--backend wgpu: this binary was built without the wgpu feature; rebuild with default \
         features, or use --backend flex"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_parse_and_print_the_same_text() {
        for (text, adapter) in [
            ("default", Adapter::Default),
            ("cpu", Adapter::Cpu),
            ("discrete:1", Adapter::Discrete(1)),
            ("integrated:0", Adapter::Integrated(0)),
            ("virtual:2", Adapter::Virtual(2)),
        ] {
            assert_eq!(text.parse::<Adapter>().unwrap(), adapter);
            assert_eq!(adapter.to_string(), text);
        }
        assert_eq!("3".parse::<Adapter>().unwrap(), Adapter::Discrete(3));
        for bad in ["gpu", "discrete:x", "", "tpu:0"] {
            let err = bad.parse::<Adapter>().unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn a_cpu_backend_refuses_an_adapter() {
        let err = device_on(Backend::Flex, Adapter::Discrete(0)).unwrap_err();
        assert!(format!("{err}").contains("--backend wgpu"), "{err}");
    }
}
