//! CPU reference kernels: the GEMM in each transpose combination at the shapes a training step uses, and a
//! whole training step per workload. `cargo bench --bench cpu_kernels`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tiedae::activation::Activation;
use tiedae::backend::{Backend, CpuBackend, Gemm, Region, Trans};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::Network;

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_gemm");
    // (m, n, k): the forward GEMM of a 256-row batch through 784→256, a decoder GEMM, a dW GEMM, and 1024³.
    for &(m, n, k) in &[
        (256, 256, 784),
        (256, 784, 256),
        (784, 256, 256),
        (1024, 1024, 1024),
    ] {
        for (ta, tb) in [
            (Trans::N, Trans::N),
            (Trans::N, Trans::T),
            (Trans::T, Trans::N),
            (Trans::T, Trans::T),
        ] {
            let mut be = CpuBackend::<f32>::new();
            let a = Region::whole(be.alloc(m * k).unwrap(), m * k);
            let b = Region::whole(be.alloc(k * n).unwrap(), k * n);
            let cr = Region::whole(be.alloc(m * n).unwrap(), m * n);
            be.fill(a, 0.5).unwrap();
            be.fill(b, 0.25).unwrap();
            let g = Gemm {
                trans_a: ta,
                trans_b: tb,
                m,
                n,
                k,
                alpha: 1.0,
                beta: 0.0,
            };
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_function(
                BenchmarkId::new(format!("{ta:?}{tb:?}"), format!("{m}x{n}x{k}")),
                |bench| bench.iter(|| be.gemm(black_box(g), a, b, cr).unwrap()),
            );
        }
    }
    group.finish();
}

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_train_epoch");
    group.sample_size(10);
    for (name, widths, act, batch, rows) in [
        ("seed", vec![51, 1], Activation::Linear, 16, 4096),
        ("digits", vec![64, 32, 8], Activation::Tanh, 256, 8192),
        ("mnist", vec![784, 256, 64], Activation::Tanh, 256, 4096),
    ] {
        let spec =
            ModelSpec::new(widths.clone(), act, Activation::Linear, Activation::Linear).unwrap();
        let optimizer =
            Optimizer::from_flags(if name == "seed" { "sgd" } else { "adam" }, None, 0.0).unwrap();
        let data: Vec<f32> = (0..rows * widths[0])
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let mut net = Network::new(
            CpuBackend::<f32>::new(),
            &spec,
            &spec.glorot_init(0),
            batch,
            Some(optimizer),
        )
        .unwrap();
        net.set_data(&data, rows).unwrap();
        let order: Vec<u32> = (0..rows as u32).collect();
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(name, |bench| {
            bench.iter(|| net.train_epoch(&order, batch).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, gemm, train_step);
criterion_main!(benches);
