//! Turning `--backend` into a Burn `Device`, with a clear error when it is not available.

use anyhow::{Result, bail};
use burn::prelude::*;

use crate::config::Backend;

/// The device of `backend`, checked by running one small operation on it.
pub fn device(backend: Backend) -> Result<Device> {
    let device = match backend {
        Backend::Flex => Device::flex(),
        #[allow(deprecated)]
        Backend::Ndarray => Device::ndarray(),
        Backend::Wgpu => wgpu_device()?,
    };
    Ok(device)
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    // wgpu panics when it finds no adapter; turn that into an error.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
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
                .unwrap_or("no reason given");
            bail!(
                "--backend wgpu: no usable GPU adapter ({}). Install a Vulkan driver (on Debian: \
                 mesa-vulkan-drivers libvulkan1), or train on the CPU with --backend flex",
                reason.lines().next().unwrap_or(reason)
            )
        }
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device> {
    bail!(
        "--backend wgpu: this binary was built without the wgpu feature; rebuild with default \
         features, or use --backend flex"
    )
}
