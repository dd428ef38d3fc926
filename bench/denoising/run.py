"""Denoising autoencoders on a real table: does swap noise pay, on breast cancer (569 rows x 30 features)?

    /work/venv/bin/python bench/denoising/run.py [--tiedae target/release/tiedae] [--seeds 1,2,3,4,5]

Prints the raw numbers (results.txt beside this file is one run's output). Needs numpy, pandas and
scikit-learn. Everything tiedae does here goes through its command line, on the CPU.

(a) Reconstruction of corrupted rows. The rows are split 75/25 (stratified, fixed), standardized with the
    training part's statistics. A plain autoencoder and a swap-noise one (--noise swap:0.15) are trained on
    the training part; then each part's rows get swap noise 0.15 (a cell takes the same column's value of
    another random row of the whole table) and `tiedae reconstruct` rebuilds them: the MSE against the CLEAN
    rows, in standardized units, averaged over 5 corruption draws. The clean rows' MSE (`eval`) beside it.
(b) The Porto Seguro recipe's features. Autoencoders trained on all rows without the label (train + test
    together, unsupervised), `encode --all-layers` (30 + 15 = 45 features); 5-fold stratified CV accuracy of
    a standardized logistic regression on them, next to the raw 30 features and PCA (fitted on all rows,
    like the autoencoders) at 15 (the code's width) and 30 (all there is: 45 > the 30 features PCA has).

The network is 30 -> 30 -> 15 (`--layers 30,15`), relu hidden, linear code and output, Adam 1e-3, batch 32,
300 epochs; each seed trains both autoencoders from the same initial weights.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LAYERS = "30,15"
EPOCHS = 300
SWAP = 0.15
DRAWS = 5


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def write(path, x, ids, label=None):
    df = pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])])
    df.insert(0, "id", ids)
    if label is not None:
        df.insert(1, "label", label)
    df.to_csv(path, index=False, float_format="%.9g")


def swap_noise(x, donors, p, rng):
    """Each cell, with probability p, takes the same column's value of a random row of `donors`."""
    hit = rng.random(x.shape) < p
    rows = rng.integers(0, donors.shape[0], size=x.shape)
    cols = np.broadcast_to(np.arange(x.shape[1]), x.shape)
    return np.where(hit, donors[rows, cols], x)


def train(tiedae, data, out, seed, noise, ignore):
    cmd = [tiedae, "train", "--data", data, "--out", out, "--ignore-columns", ignore,
           "--layers", LAYERS, "--epochs", str(EPOCHS), "--batch-size", "32", "--seed", str(seed),
           "--device", "cpu"]
    if noise:
        cmd += ["--noise", noise]
    return run(cmd).strip().splitlines()[-1]


def reconstruction(tiedae, tmp, seeds):
    x_all, y_all = load_breast_cancer(return_X_y=True)
    ids = np.arange(len(x_all))
    i_train, i_test = train_test_split(ids, test_size=0.25, stratify=y_all, random_state=0)
    scaler = StandardScaler().fit(x_all[i_train])
    z = scaler.transform(x_all)
    parts = {"train": i_train, "held-out": i_test}
    train_csv = os.path.join(tmp, "a_train.csv")
    write(train_csv, z[i_train], i_train)
    print(f"(a) {len(i_train)} training rows, {len(i_test)} held-out rows; swap {SWAP} on the inputs, "
          f"{DRAWS} draws each; MSE against the clean rows, standardized units")
    print("seed  model  part      clean_mse  corrupted_input_mse  reconstruction_of_corrupted_mse")
    rows = []
    for seed in seeds:
        for name, noise in [("plain", None), ("dae", f"swap:{SWAP}")]:
            model = os.path.join(tmp, f"a_{name}_{seed}.safetensors")
            train(tiedae, train_csv, model, seed, noise, "id")
            for part, idx in parts.items():
                clean_csv = os.path.join(tmp, f"a_{part}.csv")
                write(clean_csv, z[idx], idx)
                clean_mse = float(run([tiedae, "eval", "--model", model, "--data", clean_csv,
                                       "--device", "cpu", "--json"]).split('"mse":')[1].split(",")[0])
                rng = np.random.default_rng(1000 + seed)
                inp, rec = [], []
                for d in range(DRAWS):
                    noisy = swap_noise(z[idx], z, SWAP, rng)
                    noisy_csv = os.path.join(tmp, f"a_noisy_{part}.csv")
                    write(noisy_csv, noisy, idx)
                    recon_csv = os.path.join(tmp, "a_recon.csv")
                    run([tiedae, "reconstruct", "--model", model, "--data", noisy_csv, "--out", recon_csv,
                         "--device", "cpu"])
                    r = pd.read_csv(recon_csv).drop(columns=["id"]).to_numpy()
                    inp.append(np.mean((noisy - z[idx]) ** 2))
                    rec.append(np.mean((r - z[idx]) ** 2))
                rows.append((seed, name, part, clean_mse, np.mean(inp), np.mean(rec)))
                print(f"{seed:<5} {name:<6} {part:<9} {clean_mse:<10.4f} {np.mean(inp):<20.4f} "
                      f"{np.mean(rec):.4f}")
    df = pd.DataFrame(rows, columns=["seed", "model", "part", "clean", "input", "recon"])
    print("\n(a) mean ± sd over seeds")
    summary = df.groupby(["part", "model"])[["clean", "input", "recon"]].agg(["mean", "std"])
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))


def features(tiedae, tmp, seeds):
    x_all, y_all = load_breast_cancer(return_X_y=True)
    ids = np.arange(len(x_all))
    all_csv = os.path.join(tmp, "b_all.csv")
    # Raw units in the file: tiedae standardizes (--normalize standard); the label stays an ignored column.
    write(all_csv, x_all, ids, label=y_all)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)

    def accuracy(x):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        s = cross_val_score(clf, x, y_all, cv=cv, scoring="accuracy")
        return s.mean(), s.std()

    z = StandardScaler().fit_transform(x_all)
    print(f"\n(b) 5-fold stratified CV accuracy of a standardized logistic regression, {len(x_all)} rows "
          f"(the autoencoders and PCA see every row, without the label)")
    print("features                     width  seed  accuracy  fold_sd")
    base = [("raw", x_all), ("PCA-15", PCA(15).fit_transform(z)), ("PCA-30", PCA(30).fit_transform(z))]
    for name, x in base:
        m, s = accuracy(x)
        print(f"{name:<28} {x.shape[1]:<6} {'-':<5} {m:.4f}    {s:.4f}")
    rows = []
    for seed in seeds:
        for name, noise in [("plain AE all layers", None), (f"swap-{SWAP} DAE all layers", f"swap:{SWAP}")]:
            model = os.path.join(tmp, f"b_{seed}_{noise is None}.safetensors")
            cmd = [tiedae, "train", "--data", all_csv, "--out", model, "--ignore-columns", "id,label",
                   "--normalize", "standard", "--layers", LAYERS, "--epochs", str(EPOCHS), "--batch-size",
                   "32", "--seed", str(seed), "--device", "cpu"]
            if noise:
                cmd += ["--noise", noise]
            run(cmd)
            feats_csv = os.path.join(tmp, "b_feats.csv")
            run([tiedae, "encode", "--model", model, "--data", all_csv, "--out", feats_csv, "--all-layers",
                 "--device", "cpu"])
            f = pd.read_csv(feats_csv)
            assert (f["label"].to_numpy() == y_all).all()
            x = f.drop(columns=["id", "label"]).to_numpy()
            m, s = accuracy(x)
            rows.append((name, m))
            print(f"{name:<28} {x.shape[1]:<6} {seed:<5} {m:.4f}    {s:.4f}")
    df = pd.DataFrame(rows, columns=["features", "accuracy"])
    print("\n(b) mean ± sd over seeds")
    print(df.groupby("features")["accuracy"].agg(["mean", "std", "min", "max"])
          .to_string(float_format=lambda v: f"{v:.4f}"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiedae", default="target/release/tiedae")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True)
    print(f"tiedae: {run([a.tiedae, '--version']).strip()} (git {commit.stdout.strip() or '?'}); "
          f"numpy {np.__version__}, scikit-learn {__import__('sklearn').__version__}; seeds {seeds}")
    with tempfile.TemporaryDirectory() as tmp:
        reconstruction(a.tiedae, tmp, seeds)
        features(a.tiedae, tmp, seeds)


if __name__ == "__main__":
    main()
