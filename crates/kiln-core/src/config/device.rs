//! Where a model's instances run.

/// Where a model runs: `device = "cpu"` (the default), or `"cuda"` / `"cuda:N"`
/// (GPU N as CUDA numbers the GPUs this process sees; `cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| n < 1024)
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!("'{s}' is not a device (expected \"cpu\", \"cuda\" or \"cuda:N\")")
                }),
        }
    }
}

/// The distinct devices of `devices`, in order of first appearance, with how many
/// times each appears (one instance group per device).
pub fn group_devices(devices: &[Device]) -> Vec<(Device, usize)> {
    let mut groups: Vec<(Device, usize)> = Vec::new();
    for d in devices {
        match groups.iter_mut().find(|(g, _)| g == d) {
            Some((_, n)) => *n += 1,
            None => groups.push((*d, 1)),
        }
    }
    groups
}

/// The `device` label of a version whose instances run on `devices`: the distinct
/// devices joined by commas (`cpu`, `cuda:0`, `cuda:0,cpu`).
pub fn device_label(devices: &[Device]) -> String {
    let names: Vec<String> = group_devices(devices)
        .iter()
        .map(|(d, _)| d.to_string())
        .collect();
    names.join(",")
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!(Device::parse("cpu"), Ok(Device::Cpu));
        assert_eq!(Device::parse("CUDA"), Ok(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in [
            "",
            "tpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "cuda:99999",
            "cuda 1",
        ] {
            let e = Device::parse(bad).unwrap_err();
            assert!(e.contains("not a device"), "{bad}: {e}");
        }
        let d = [Device::Cuda(0), Device::Cuda(0), Device::Cpu];
        assert_eq!(group_devices(&d), [(Device::Cuda(0), 2), (Device::Cpu, 1)]);
        assert_eq!(device_label(&d), "cuda:0,cpu");
    }
}
