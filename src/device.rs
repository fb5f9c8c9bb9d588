//! Backend selection: `--device flex|ndarray|wgpu|vulkan|metal|cuda`, among those compiled in,
//! with a device index where a backend has several (`--devices cuda:0,cuda:1`).

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

/// The device for `choice`: a backend among those compiled in, with a device index after a
/// colon where the backend has several (`cuda:1`, `wgpu:0`, the second and first discrete
/// GPUs); or a message naming the backends that are compiled in.
pub fn pick_device(choice: &DeviceChoice) -> Result<Device, String> {
    device_named(&choice.0)
}

/// The device `name` (`flex`, `cuda:1`, ...) stands for; see [`pick_device`].
pub fn device_named(name: &str) -> Result<Device, String> {
    let name = name.trim().to_ascii_lowercase();
    let (backend, index) = match name.split_once(':') {
        Some((backend, index)) => {
            let index = index
                .parse::<usize>()
                .map_err(|_| format!("device '{name}': '{index}' is not a device index"))?;
            (backend, Some(index))
        }
        None => (name.as_str(), None),
    };
    #[allow(unused_variables)]
    let gpu = || match index {
        Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
        None => burn::tensor::DeviceKind::DefaultDevice,
    };
    if matches!(backend, "flex" | "ndarray") && index.is_some_and(|i| i > 0) {
        return Err(format!(
            "device '{name}': {backend} has one device, the CPU; to split batches between handles of it, name it more than once (--devices {backend},{backend})"
        ));
    }
    let device = match backend {
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        // Burn 0.22 deprecates ndarray in favour of flex; the zoo keeps it while Burn ships it.
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(gpu()),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(gpu()),
        #[cfg(feature = "metal")]
        "metal" => Device::metal(gpu()),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(index.unwrap_or(0)),
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
        assert!(device_named("flex:0").is_ok());
        let err = device_named("flex:1").unwrap_err();
        assert!(
            err.contains("one device") && err.contains("flex,flex"),
            "{err}"
        );
        let err = device_named("cuda:x").unwrap_err();
        assert!(err.contains("'x' is not a device index"), "{err}");
    }
}
