//! `tiedae demo` (the 51→1 scenario of `tiedae::workflow::demo`, printed) and `tiedae info` (the GPUs found
//! and how this binary was built).

use anyhow::Result;
use tiedae::backend::{cuda, Backend, CpuBackend};
use tiedae::workflow::{self, demo, DeviceChoice};

pub fn demo(choice: DeviceChoice, seed: u64) -> Result<()> {
    let device = workflow::resolve_device(choice)?;
    println!("51 features → 1 linear unit, 16 random samples, SGD lr 0.01, batch 16, one epoch");
    let demo::Demo {
        device,
        loss,
        before,
        after,
    } = demo::run(device, seed)?;
    println!("device: {device}");
    println!("loss during the epoch: {loss:.6}");
    let show = |label: &str, (enc, dec): (f32, f32)| {
        println!("{label}: encoder kernel[0] = [{enc:+.8}]   decoder kernel[0][0] = {dec:+.8}");
    };
    show("before", before);
    show("after ", after);
    println!(
        "tied: the decoder's kernel is the encoder's, so both moved by {:+.3e} together.",
        after.0 - before.0
    );
    println!(
        "A DenseTied layer that copies transpose(kernel) in build() would still show {:+.8} for the decoder: frozen.",
        before.1
    );
    anyhow::ensure!(
        after.0 != before.0,
        "the kernel did not move: training did nothing"
    );
    anyhow::ensure!(
        (after.1 - after.0).abs() <= 1e-6 * after.0.abs().max(1.0),
        "the decoder's kernel ({}) is not the encoder's ({})",
        after.1,
        after.0
    );
    Ok(())
}

pub fn info() -> Result<()> {
    println!("tiedae {}", env!("CARGO_PKG_VERSION"));
    println!(
        "built with GPU kernels: {} (PTX {}, {})",
        if cuda::is_built_with_kernels() {
            "yes"
        } else {
            "no"
        },
        cuda::ptx_arch(),
        cuda::nvcc_version()
    );
    println!("cpu: {}", CpuBackend::<f32>::new().name());
    match cuda::list_devices() {
        Ok(devices) if devices.is_empty() => println!("cuda: no device"),
        Ok(devices) => {
            for d in devices {
                // What `--device cuda:N` would say, checked the same way (kernels, driver, architecture).
                let usable = match cuda::check_device(d.ordinal) {
                    Ok(_) => "usable".to_string(),
                    Err(e) => format!("not usable: {e}"),
                };
                println!(
                    "cuda:{} {} (compute {}.{}, {:.1} GiB, driver for CUDA {}): {usable}",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.total_memory_bytes as f64 / (1u64 << 30) as f64,
                    d.driver_version
                );
            }
        }
        Err(e) => println!("cuda: unavailable ({e})"),
    }
    Ok(())
}
