//! CPU kernels: the GEMM in each transpose combination at the shapes a training step of the `tiedae bench`
//! workloads runs (and 1024³), the noise of a denoising batch, and one whole training epoch per workload
//! (and the digits one with swap noise). `cargo bench --bench cpu_kernels`.
//! The thread count is `MATMUL_NUM_THREADS` (1 when unset, as in the tests; `tiedae` itself defaults it to
//! every core), e.g. `MATMUL_NUM_THREADS=2 cargo bench --bench cpu_kernels`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tiedae::backend::noise::{key_words, threshold};
use tiedae::backend::{
    Backend, CpuBackend, Donors, Gemm, IdxRegion, NoiseParams, NoiseSource, Region, Trans,
};
use tiedae::bench::{synthetic_data, Workload};
use tiedae::train::{DataOptions, DataSet, Network, Noise};

/// (m, n, k) of every GEMM in a training step of `w`: the encoder's x·W, the decoder's g·Wᵀ, the dW products
/// and the input gradients (the same three shapes per layer, in different transpositions).
fn step_shapes(w: &Workload) -> Vec<(usize, usize, usize)> {
    let b = w.batch_size;
    w.widths
        .windows(2)
        .flat_map(|d| [(b, d[1], d[0]), (b, d[0], d[1]), (d[0], d[1], b)])
        .collect()
}

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_gemm");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    let mut shapes = vec![(1024, 1024, 1024)];
    for w in Workload::builtin() {
        for s in step_shapes(&w) {
            if !shapes.contains(&s) {
                shapes.push(s);
            }
        }
    }
    for &(m, n, k) in &shapes {
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
            be.upload(a, &synthetic_data(m, k, 1)).unwrap();
            be.upload(b, &synthetic_data(k, n, 2)).unwrap();
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

fn train_epoch(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_train_epoch");
    group.sample_size(10);
    for w in Workload::builtin() {
        let spec = w.spec().unwrap();
        let mut net = Network::new(
            CpuBackend::<f32>::new(),
            &spec,
            &spec.glorot_init(0),
            w.batch_size,
            Some(w.optimizer),
        )
        .unwrap();
        net.set_data(
            DataSet::Train,
            &synthetic_data(w.rows, w.widths[0], 7),
            w.rows,
            DataOptions::default(),
        )
        .unwrap();
        let order: Vec<u32> = (0..w.rows as u32).collect();
        group.throughput(Throughput::Elements(w.rows as u64));
        group.bench_function(&w.name, |bench| {
            bench.iter(|| net.train_epoch(&order, w.batch_size).unwrap())
        });
    }
    group.finish();
}

/// `corrupt_rows` on a batch of 256 rows of the digits' and mnist's widths: swap noise alone (one Philox block
/// a cell) and swap with Gaussian noise (two blocks and the Box–Muller polynomials).
fn corrupt_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_corrupt_rows");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(1));
    let (batch, rows) = (256usize, 2048usize);
    for cols in [64usize, 784] {
        let mut be = CpuBackend::<f32>::new();
        let data = Region::whole(be.alloc(rows * cols).unwrap(), rows * cols);
        be.upload(data, &synthetic_data(rows, cols, 3)).unwrap();
        let clean = Region::whole(be.alloc(batch * cols).unwrap(), batch * cols);
        let out = Region::whole(be.alloc(batch * cols).unwrap(), batch * cols);
        let fill = Region::whole(be.alloc(cols).unwrap(), cols);
        let idx = be.alloc_indices(batch).unwrap();
        let order: Vec<u32> = (0..batch as u32).map(|i| i * 7 % rows as u32).collect();
        be.upload_indices(idx, 0, &order).unwrap();
        let key = be.alloc_indices(3).unwrap();
        be.upload_indices(key, 0, &key_words(42, 1)).unwrap();
        let batch_idx = IdxRegion {
            buf: idx,
            offset: 0,
            len: batch,
        };
        for (name, sigma) in [("swap", 0.0), ("swap+gaussian", 0.1)] {
            let source = NoiseSource {
                donors: Donors::F32(data),
                donor_rows: rows,
                fill,
                key: IdxRegion {
                    buf: key,
                    offset: 0,
                    len: 3,
                },
                params: NoiseParams {
                    swap_below: threshold(0.15),
                    mask_below: 0,
                    sigma,
                },
            };
            group.throughput(Throughput::Elements((batch * cols) as u64));
            group.bench_function(BenchmarkId::new(name, format!("{batch}x{cols}")), |bench| {
                bench.iter(|| {
                    be.corrupt_rows(clean, cols, batch_idx, black_box(source), out)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// An epoch of the digits workload with swap noise 0.15, against `cpu_train_epoch/digits`.
fn denoising_epoch(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_train_epoch");
    group.sample_size(10);
    let w = Workload::builtin()
        .into_iter()
        .find(|w| w.name == "digits")
        .expect("the digits workload");
    let spec = w.spec().unwrap();
    let mut net = Network::new(
        CpuBackend::<f32>::new(),
        &spec,
        &spec.glorot_init(0),
        w.batch_size,
        Some(w.optimizer),
    )
    .unwrap();
    net.set_noise(Noise {
        swap: 0.15,
        ..Default::default()
    })
    .unwrap();
    let data = synthetic_data(w.rows, w.widths[0], 7);
    net.set_data(DataSet::Train, &data, w.rows, DataOptions::default())
        .unwrap();
    let order: Vec<u32> = (0..w.rows as u32).collect();
    group.throughput(Throughput::Elements(w.rows as u64));
    group.bench_function("digits+swap", |bench| {
        bench.iter(|| net.train_epoch(&order, w.batch_size).unwrap())
    });
    group.finish();
}

criterion_group!(benches, gemm, corrupt_rows, train_epoch, denoising_epoch);
criterion_main!(benches);
