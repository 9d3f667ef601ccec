//! Per-GPU utilisation and memory from NVML, exported with the other metrics.
//! `nvml-wrapper` loads `libnvidia-ml.so.1` at run time: where it is absent (no
//! NVIDIA driver) the log says so once and nothing else happens.

use metrics::{describe_gauge, gauge, Unit};
use std::time::Duration;

const UTILIZATION: &str = "kiln_gpu_utilization_ratio";
const MEMORY_USED: &str = "kiln_gpu_memory_used_bytes";
const MEMORY_TOTAL: &str = "kiln_gpu_memory_total_bytes";

/// Samples every GPU (or those in `allowed`, by NVML index) every `every`, on a
/// thread of its own (NVML calls block).
pub fn start(every: Duration, allowed: Option<Vec<u32>>) -> std::io::Result<()> {
    describe_gauge!(
        UTILIZATION,
        "Share of the last sample period in which the GPU was busy (NVML), 0 to 1."
    );
    describe_gauge!(MEMORY_USED, Unit::Bytes, "GPU memory in use (NVML).");
    describe_gauge!(MEMORY_TOTAL, Unit::Bytes, "GPU memory in all (NVML).");
    std::thread::Builder::new()
        .name("kiln-gpu-metrics".into())
        .spawn(move || {
            let nvml = match nvml_wrapper::Nvml::init() {
                Ok(n) => n,
                Err(e) => {
                    tracing::info!("no GPU metrics: NVML is not available ({e})");
                    return;
                }
            };
            let count = match nvml.device_count() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("no GPU metrics: NVML cannot count GPUs ({e})");
                    return;
                }
            };
            tracing::info!(
                "GPU metrics from NVML every {:.1}s: {count} GPU(s)",
                every.as_secs_f64()
            );
            // The devices and their labels are looked up once; each sample only
            // reads utilisation and memory.
            let devices: Vec<_> = (0..count)
                .filter(|i| allowed.as_ref().is_none_or(|a| a.contains(i)))
                .filter_map(|i| {
                    let dev = nvml.device_by_index(i).ok()?;
                    let labels = [
                        ("gpu", i.to_string()),
                        ("name", dev.name().unwrap_or_default()),
                    ];
                    Some((dev, labels))
                })
                .collect();
            loop {
                for (dev, labels) in &devices {
                    if let Ok(u) = dev.utilization_rates() {
                        gauge!(UTILIZATION, labels).set(f64::from(u.gpu) / 100.0);
                    }
                    if let Ok(m) = dev.memory_info() {
                        gauge!(MEMORY_USED, labels).set(m.used as f64);
                        gauge!(MEMORY_TOTAL, labels).set(m.total as f64);
                    }
                }
                std::thread::sleep(every);
            }
        })
        .map(|_| ())
}
