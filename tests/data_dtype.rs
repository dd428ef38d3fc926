//! `--data-dtype f16|bf16`: the data set kept at half size on the device, converted exactly while a batch is
//! gathered. Training on it must equal, bit for bit, training on f32 data rounded to that format.

mod common;

use common::gpu_backend;
use rand::{RngExt, SeedableRng};
use tiedae::activation::Activation;
use tiedae::backend::{Backend, CpuBackend, HalfFormat, IdxRegion, Region};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{DataOptions, DataSet, DataType, Network, Placement, TrainConfig};

const ROWS: usize = 157;
const COLS: usize = 9;

fn data() -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    (0..ROWS * COLS)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect()
}

fn train(values: &[f32], dtype: DataType) -> (Vec<f32>, usize) {
    let spec = ModelSpec::new(
        vec![COLS, 5, 2],
        Activation::Tanh,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    let optimizer = Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap();
    let mut net = Network::new(
        CpuBackend::<f32>::new(),
        &spec,
        &spec.glorot_init(2),
        16,
        Some(optimizer),
    )
    .unwrap();
    let before = net.backend.allocated_bytes();
    net.set_data(
        DataSet::Train,
        values,
        ROWS,
        DataOptions::new(dtype, Placement::Device),
    )
    .unwrap();
    let data_bytes = net.backend.allocated_bytes() - before;
    let cfg = TrainConfig {
        batch_size: 16,
        epochs: 3,
        optimizer,
        shuffle: true,
        seed: 8,
        constraints: Default::default(),
    };
    net.fit(&cfg, |_| Ok(())).unwrap();
    (net.read_params().unwrap(), data_bytes)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn half_data_trains_exactly_like_f32_data_rounded_to_it() {
    let values = data();
    let (full, full_bytes) = train(&values, DataType::F32);
    for (dtype, format) in [
        (DataType::F16, HalfFormat::F16),
        (DataType::Bf16, HalfFormat::Bf16),
    ] {
        let rounded: Vec<f32> = values
            .iter()
            .map(|&x| format.decode(format.encode(x).unwrap()))
            .collect();
        assert!(
            rounded.iter().zip(&values).any(|(a, b)| a != b),
            "{dtype:?}: rounding changed nothing"
        );
        let (half, half_bytes) = train(&values, dtype);
        let (reference, _) = train(&rounded, DataType::F32);
        assert_eq!(
            bits(&half),
            bits(&reference),
            "{dtype:?}: not the f32 run on rounded data"
        );
        assert_ne!(
            bits(&half),
            bits(&full),
            "{dtype:?}: rounding had no effect on training"
        );
        // Data, order and per-step loss slots: only the data itself shrinks, to half.
        assert_eq!(
            full_bytes - half_bytes,
            ROWS * COLS * 2,
            "{dtype:?}: data bytes"
        );
    }
}

#[test]
fn f16_rejects_values_out_of_its_range() {
    let spec = ModelSpec::new(
        vec![2, 1],
        Activation::Linear,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    let mut net = Network::new(
        CpuBackend::<f32>::new(),
        &spec,
        &spec.glorot_init(0),
        4,
        None,
    )
    .unwrap();
    let err = net
        .set_data(
            DataSet::Train,
            &[1.0, 2.0, 3.0, 70000.0],
            2,
            DataOptions::new(DataType::F16, Placement::Device),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--data-dtype") && err.contains("row 2, column 2"),
        "{err}"
    );
    // bf16 has f32's range.
    net.set_data(
        DataSet::Train,
        &[1.0, 2.0, 3.0, 70000.0],
        2,
        DataOptions::new(DataType::Bf16, Placement::Device),
    )
    .unwrap();
}

#[test]
fn cli_trains_with_half_data() {
    let path =
        std::env::temp_dir().join(format!("tiedae-dtype-{}.safetensors", std::process::id()));
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .args([
            "train",
            "--data",
            data.to_str().unwrap(),
            "--ignore-columns",
            "digit",
            "--layers",
            "8",
        ])
        .args([
            "--epochs",
            "2",
            "--data-dtype",
            "bf16",
            "--device",
            "cpu",
            "--out",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = tiedae::io::load_model(&path).unwrap();
    assert_eq!(
        model.checkpoint.unwrap().settings.data_dtype,
        DataType::Bf16
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn gather_rows_half_matches_cpu() {
    let Some(mut gpu) = gpu_backend("gather_rows_half_matches_cpu") else {
        return;
    };
    let mut cpu = CpuBackend::<f32>::new();
    let values = data();
    let order: Vec<u32> = (0..ROWS as u32).rev().step_by(3).collect();
    for format in [HalfFormat::F16, HalfFormat::Bf16] {
        let encoded: Vec<u16> = values.iter().map(|&x| format.encode(x).unwrap()).collect();
        let mut outs = Vec::new();
        for backend in [&mut cpu as &mut dyn Backend<Scalar = f32>, &mut gpu] {
            let data = backend.alloc_half(encoded.len()).unwrap();
            backend.upload_half(data, &encoded).unwrap();
            let idx = backend.alloc_indices(order.len()).unwrap();
            backend.upload_indices(idx, 0, &order).unwrap();
            let n = order.len() * COLS;
            let out = Region::whole(backend.alloc(n + 2).unwrap(), n + 2).sub(1, n);
            let idx = IdxRegion {
                buf: idx,
                offset: 0,
                len: order.len(),
            };
            backend
                .gather_rows_half(data, format, COLS, idx, out)
                .unwrap();
            let mut host = vec![0.0f32; n];
            backend.download(out, &mut host).unwrap();
            outs.push(host);
        }
        // The conversion is exact on both sides: the same bits.
        assert_eq!(bits(&outs[0]), bits(&outs[1]), "{format:?}");
    }
}
