//! Our CUDA GEMM (kernels/gemm.cu, through the `Backend` trait) against cuBLAS SGEMM (cudarc's cublas, used
//! by this benchmark only), at 1024³, 4096³ and the shapes a training step of the `tiedae bench` workloads
//! runs, in every transposition those use; then one training epoch per workload on the GPU. Every one of our
//! GEMM plans runs at every shape (`ours-64`: `gemm`, `ours-128`: `gemm_large`, `ours-splitk`: `gemm` over
//! slices of K + `gemm_split_reduce`) besides `ours-auto` (what training uses), so one run shows whether the
//! automatic pick (`GemmKernel::plan`) chooses well.
//! `cargo bench --bench gpu_gemm`. Without a usable GPU it prints SKIPPED and exits successfully, unless
//! `TIEDAE_REQUIRE_GPU=1` (as `scripts/gpu-check.sh` sets it, like the GPU tests): then it fails.
//!
//! Timing: criterion's `iter_custom`, with the stream synchronized before the clock is read, so queued work
//! is always counted. Row-major C = op(A)·op(B) is computed by cuBLAS (column-major) as Cᵀ = op(B)ᵀ·op(A)ᵀ:
//! the stored row-major matrices are already the column-major transposes, so only the operands swap.

use criterion::{BenchmarkId, Criterion, Throughput};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm as _, GemmConfig};
use std::time::{Duration, Instant};
use tiedae::backend::cuda::{CudaBackend, GemmKernel};
use tiedae::backend::{Backend, Gemm, Region, Trans};
use tiedae::bench::{synthetic_data, Workload};
use tiedae::train::{DataOptions, DataSet, Network};

/// (m, n, k, op(A), op(B)) of every GEMM in a training step of `w`, as the step runs them
/// ([`Workload::step_gemms`]: the tied gradient dW = [h; dz_dec]ᵀ·[dz_enc; g] at depth 2·batch among them).
fn step_shapes(w: &Workload) -> Vec<(usize, usize, usize, Trans, Trans)> {
    w.step_gemms()
        .expect("the step's products")
        .into_iter()
        .map(|g| (g.m, g.n, g.k, g.trans_a, g.trans_b))
        .collect()
}

fn gemm_shapes() -> Vec<(usize, usize, usize, Trans, Trans)> {
    let mut v = vec![
        (1024, 1024, 1024, Trans::N, Trans::N),
        (4096, 4096, 4096, Trans::N, Trans::N),
    ];
    for w in Workload::builtin().iter().filter(|w| w.name != "seed") {
        for s in step_shapes(w) {
            if !v.contains(&s) {
                v.push(s);
            }
        }
    }
    v
}

fn label(m: usize, n: usize, k: usize, ta: Trans, tb: Trans) -> String {
    format!("{m}x{n}x{k}:{ta:?}{tb:?}")
}

fn op(t: Trans) -> cublasOperation_t {
    match t {
        Trans::N => cublasOperation_t::CUBLAS_OP_N,
        Trans::T => cublasOperation_t::CUBLAS_OP_T,
    }
}

fn bench_gemm(c: &mut Criterion) {
    let mut ours = CudaBackend::new(0).expect("CUDA backend");
    let stream = ours.context().new_stream().expect("a stream for cuBLAS");
    let blas = CudaBlas::new(stream.clone()).expect("cuBLAS handle");
    let mut group = c.benchmark_group("gpu_gemm");
    group.sample_size(20);
    for (m, n, k, ta, tb) in gemm_shapes() {
        let id = label(m, n, k, ta, tb);
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let host_a = synthetic_data(m, k, 1);
        let host_b = synthetic_data(k, n, 2);

        // cuBLAS: column-major Cᵀ (n×m) = op(B)ᵀ (n×k) · op(A)ᵀ (k×m) on the same row-major buffers.
        let da = stream.clone_htod(&host_a).unwrap();
        let db = stream.clone_htod(&host_b).unwrap();
        let mut dc = stream.alloc_zeros::<f32>(m * n).unwrap();
        let cfg = GemmConfig {
            transa: op(tb),
            transb: op(ta),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: if tb == Trans::N { n } else { k } as i32,
            ldb: if ta == Trans::N { k } else { m } as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        group.bench_function(BenchmarkId::new("cublas", &id), |bench| {
            bench.iter_custom(|iters| {
                stream.synchronize().unwrap();
                let t0 = Instant::now();
                for _ in 0..iters {
                    // SAFETY: the buffers hold m·k, k·n and m·n floats, which the leading dimensions above
                    // describe for these shapes and operations.
                    unsafe { blas.gemm(cfg, &db, &da, &mut dc) }.unwrap();
                }
                stream.synchronize().unwrap();
                t0.elapsed()
            })
        });
        let theirs = stream.clone_dtoh(&dc).unwrap();

        // Ours, through the Backend trait, every plan; each must agree with cuBLAS (same product, different
        // summation orders).
        let a = Region::whole(ours.alloc(m * k).unwrap(), m * k);
        let b = Region::whole(ours.alloc(k * n).unwrap(), k * n);
        let cr = Region::whole(ours.alloc(m * n).unwrap(), m * n);
        ours.upload(a, &host_a).unwrap();
        ours.upload(b, &host_b).unwrap();
        let g = Gemm {
            trans_a: ta,
            trans_b: tb,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
        };
        for (name, kernel) in [
            ("ours-64", GemmKernel::Tile64),
            ("ours-128", GemmKernel::Large),
            ("ours-splitk", GemmKernel::SplitK),
            ("ours-auto", GemmKernel::Auto),
        ] {
            ours.set_gemm_kernel(kernel);
            // NaN in C first: a plan that wrote nothing would otherwise pass on the previous plan's result.
            ours.fill(cr, f32::NAN).unwrap();
            group.bench_function(BenchmarkId::new(name, &id), |bench| {
                bench.iter_custom(|iters| {
                    ours.synchronize().unwrap();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        ours.gemm(g, a, b, cr).unwrap();
                    }
                    ours.synchronize().unwrap();
                    t0.elapsed()
                })
            });
            let mut mine = vec![0.0f32; m * n];
            ours.download(cr, &mut mine).unwrap();
            let worst = mine
                .iter()
                .zip(&theirs)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max);
            // f32::max skips NaN, so `worst` alone would pass a C left all NaN: check for them first.
            assert!(
                mine.iter().all(|x| x.is_finite()),
                "{id} {name}: non-finite values in our C"
            );
            assert!(
                worst < 1e-3,
                "{id} {name}: ours and cuBLAS differ by {worst}"
            );
        }
        ours.set_gemm_kernel(GemmKernel::Auto);
    }
    group.finish();
}

fn bench_train(c: &mut Criterion) {
    let mut group = c.benchmark_group("gpu_train_epoch");
    group.sample_size(10);
    for w in Workload::builtin() {
        // Kernel by kernel, then with the steps recorded as CUDA graphs and replayed.
        for graphs in [false, true] {
            let spec = w.spec().unwrap();
            let backend = CudaBackend::new(0).expect("CUDA backend");
            let mut net = Network::new(
                backend,
                &spec,
                &spec.glorot_init(0),
                w.batch_size,
                Some(w.optimizer),
            )
            .unwrap();
            assert_eq!(net.set_graphs(graphs), graphs);
            net.set_data(
                DataSet::Train,
                &synthetic_data(w.rows, w.widths[0], 7),
                w.rows,
                DataOptions::default(),
            )
            .unwrap();
            let order: Vec<u32> = (0..w.rows as u32).collect();
            // Warm-up: two epochs, since the first step of a run is never recorded (it grows the scratch
            // buffers), so the first epoch's first block of steps is recorded only in the second.
            for _ in 0..2 {
                net.train_epoch(&order, w.batch_size).unwrap();
            }
            assert!(
                net.graph_failures().is_empty(),
                "{:?}",
                net.graph_failures()
            );
            group.throughput(Throughput::Elements(w.rows as u64));
            let name = if graphs {
                format!("{}/graphs", w.name)
            } else {
                w.name.clone()
            };
            group.bench_function(&name, |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        // train_epoch downloads the per-step losses, which waits for the stream.
                        net.train_epoch(&order, w.batch_size).unwrap();
                        total += t0.elapsed();
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

fn main() {
    if let Err(e) = tiedae::workflow::check_cuda(0) {
        if std::env::var("TIEDAE_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1") {
            eprintln!("gpu_gemm: TIEDAE_REQUIRE_GPU=1 but there is no usable GPU: {e}");
            std::process::exit(1);
        }
        println!("gpu_gemm: SKIPPED ({e})");
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_gemm(&mut c);
    bench_train(&mut c);
    c.final_summary();
}
