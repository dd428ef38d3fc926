//! The tied invariant, checked from the outside: after training, the model file holds ONE kernel per layer
//! and no decoder kernel, and what `eval` and `encode` compute is exactly the encoder `x·W + b` and the decoder
//! `h·Wᵀ + c` evaluated by hand from that file's W.

use std::path::Path;
use std::process::Command;
use tiedae::data::load_csv;
use tiedae::io;

fn tiedae(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn eval_and_encode_are_the_tied_formulas_of_the_saved_weights() {
    let dir = std::env::temp_dir().join(format!("tiedae-tied-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let model_path = dir.join("m.safetensors");
    let codes_path = dir.join("codes.csv");
    let (data_s, model_s, codes_s) = (
        data.to_str().unwrap(),
        model_path.to_str().unwrap(),
        codes_path.to_str().unwrap(),
    );
    tiedae(&[
        "train",
        "--data",
        data_s,
        "--ignore-columns",
        "digit",
        "--normalize",
        "standard",
        "--layers",
        "12,3",
        "--activation",
        "tanh",
        "--code-activation",
        "sigmoid",
        "--output-activation",
        "linear",
        "--epochs",
        "2",
        "--out",
        model_s,
        "--device",
        "cpu",
    ]);
    // The file: one kernel per tied layer, and nothing that could be a decoder kernel.
    let bytes = std::fs::read(&model_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    // The checkpoint part: Adam's m and v, each shaped like the flat parameter vector (one kernel slot).
    let p = (64 * 12 + 12 + 64) + (12 * 3 + 3 + 12);
    for k in 0..2 {
        assert_eq!(
            st.tensor(&format!("optimizer.state.{k}")).unwrap().shape(),
            [p]
        );
    }
    names.retain(|n| !n.starts_with("optimizer.state."));
    assert_eq!(
        names,
        [
            "decoder.0.bias",
            "decoder.1.bias",
            "encoder.0.bias",
            "encoder.0.kernel",
            "encoder.1.bias",
            "encoder.1.kernel",
            "normalization.scale",
            "normalization.shift"
        ]
    );
    let model = io::load_model(&model_path).unwrap();
    assert_eq!(model.params.len(), p);

    // By hand, in f64, from the file alone.
    let mut set = load_csv(&data, &model.ignore).unwrap();
    model.normalization.apply(&mut set);
    let spec = &model.spec;
    let slots = spec.slots();
    let p = &model.params;
    let mut sq = 0.0f64;
    let mut codes = Vec::new();
    for r in 0..set.rows {
        let mut h: Vec<f64> = set.values[r * 64..(r + 1) * 64]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let mut hs = vec![h.clone()];
        for (i, s) in slots.iter().enumerate() {
            let (din, dout) = (spec.widths[i], spec.widths[i + 1]);
            h = (0..dout)
                .map(|j| {
                    let z = (0..din)
                        .map(|a| h[a] * p[s.kernel.start + a * dout + j] as f64)
                        .sum::<f64>()
                        + p[s.enc_bias.start + j] as f64;
                    act(spec.encoder_activation(i).as_str(), z)
                })
                .collect();
            hs.push(h.clone());
        }
        codes.extend(h.iter().copied());
        let mut g = h;
        for (i, s) in slots.iter().enumerate().rev() {
            let (din, dout) = (spec.widths[i], spec.widths[i + 1]);
            // g·Wᵀ: element a of the output is Σ_j g[j]·W[a][j] — the same W, read by the other index.
            g = (0..din)
                .map(|a| {
                    let z = (0..dout)
                        .map(|j| g[j] * p[s.kernel.start + a * dout + j] as f64)
                        .sum::<f64>()
                        + p[s.dec_bias.start + a] as f64;
                    act(spec.decoder_activation(i).as_str(), z)
                })
                .collect();
        }
        sq += g
            .iter()
            .zip(&hs[0])
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>();
    }
    let by_hand = sq / (set.rows * 64) as f64;
    let out = tiedae(&[
        "eval", "--model", model_s, "--data", data_s, "--json", "--device", "cpu",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mse = v["mse"].as_f64().unwrap();
    assert!(
        (mse - by_hand).abs() <= 1e-5 * by_hand,
        "eval {mse} vs by hand {by_hand}"
    );

    tiedae(&[
        "encode", "--model", model_s, "--data", data_s, "--out", codes_s, "--device", "cpu",
    ]);
    let text = std::fs::read_to_string(&codes_path).unwrap();
    for (r, line) in text.lines().skip(1).enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], set.ignored_values[r], "label column kept");
        for j in 0..3 {
            let got: f64 = cells[1 + j].parse().unwrap();
            assert!(
                (got - codes[r * 3 + j]).abs() <= 1e-5,
                "row {r} code {j}: {got} vs {}",
                codes[r * 3 + j]
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn act(name: &str, z: f64) -> f64 {
    match name {
        "linear" => z,
        "relu" => z.max(0.0),
        "tanh" => z.tanh(),
        "sigmoid" => 1.0 / (1.0 + (-z).exp()),
        other => panic!("{other}"),
    }
}
