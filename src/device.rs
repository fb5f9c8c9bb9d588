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

/// The backend used when none is named: flex when it is compiled in, else the first that is.
pub const DEFAULT_BACKEND: &str = if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "vulkan") {
    "vulkan"
} else if cfg!(feature = "metal") {
    "metal"
} else {
    "ndarray"
};

/// What each compiled-in backend can run on, one line per backend (and per wgpu adapter).
pub fn describe_devices() -> Vec<String> {
    compiled_backends()
        .into_iter()
        .flat_map(|backend| match backend {
            "flex" | "ndarray" => vec![format!("{backend}: the CPU")],
            #[cfg(feature = "wgpu")]
            "wgpu" => {
                let adapters = wgpu_adapters();
                if adapters.is_empty() {
                    vec![
                        "wgpu: no adapter found (on a machine without a GPU, Mesa's lavapipe runs \
                         Vulkan on the CPU: apt-get install mesa-vulkan-drivers)"
                            .to_string(),
                    ]
                } else {
                    adapters.into_iter().map(|a| format!("wgpu: {a}")).collect()
                }
            }
            other => vec![format!("{other}: compiled in (its devices are not listed)")],
        })
        .collect()
}

/// The adapters wgpu finds, as `name (type, backend, driver)`.
#[cfg(feature = "wgpu")]
fn wgpu_adapters() -> Vec<String> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            format!(
                "{} ({:?}, {:?}, driver {} {})",
                info.name, info.device_type, info.backend, info.driver, info.driver_info
            )
        })
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
