//! Backend selection: `--device flex|ndarray|wgpu|vulkan|metal|cuda`, among those compiled in.

use burn::tensor::Device;
use std::str::FromStr;

/// A backend name from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChoice(pub String);

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(DeviceChoice(s.trim().to_ascii_lowercase()))
    }
}

/// Backends this binary was built with.
pub fn compiled_backends() -> Vec<&'static str> {
    [
        ("flex", cfg!(feature = "flex")),
        ("ndarray", cfg!(feature = "ndarray")),
        ("wgpu", cfg!(feature = "wgpu")),
        ("vulkan", cfg!(feature = "vulkan")),
        ("metal", cfg!(feature = "metal")),
        ("cuda", cfg!(feature = "cuda")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// The device for `choice`, or a message naming the backends that are compiled in.
pub fn pick_device(choice: &DeviceChoice) -> Result<Device, String> {
    let device = match choice.0.as_str() {
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        // Burn 0.22 deprecates ndarray in favour of flex; the zoo keeps it while Burn ships it.
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "metal")]
        "metal" => Device::metal(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0usize),
        other => {
            let known = ["flex", "ndarray", "wgpu", "vulkan", "metal", "cuda"];
            let compiled = compiled_backends().join(", ");
            return Err(if known.contains(&other) {
                format!(
                    "device '{other}' is not compiled into this zoo binary; compiled in: {compiled} \
                     (rebuild with `--features {other}` to add it)"
                )
            } else {
                format!("unknown device '{other}'; compiled in: {compiled}")
            });
        }
    };
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backend_is_compiled_in_and_others_are_refused_by_name() {
        assert!(compiled_backends().contains(&"flex"));
        assert!(pick_device(&"flex".parse().unwrap()).is_ok());
        let err = pick_device(&"tpu".parse().unwrap()).unwrap_err();
        assert!(
            err.contains("unknown device 'tpu'") && err.contains("flex"),
            "{err}"
        );
    }
}
