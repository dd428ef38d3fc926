#!/usr/bin/env python3
"""Summarizes a bench/run-cpu.sh JSON-lines file as markdown: the median over rounds of every figure, the
ratios of each round, and whether the issue's CPU goals hold (by the median ratio over rounds).

  python3 bench/summarize.py bench/results/cpu-<machine>/<date>/<run>.jsonl > ....md
"""

import json
import statistics
import sys
from collections import defaultdict

GOALS = {"seed": 50.0, "digits": 5.0, "mnist": 3.0}
GEMM_GOAL = 0.60


def main(path):
    lines = [json.loads(line) for line in open(path) if line.startswith("{")]
    cpu = next((r["cpu"] for r in lines if "cpu" in r), None)
    isa_cap = next((r["isa_cap"] for r in lines if "isa_cap" in r), None)
    rows = [r for r in lines if "workload" in r]
    by = defaultdict(dict)  # (workload, device) -> round -> row
    for r in rows:
        by[(r["workload"], r["device"])][r.get("round", 1)] = r
    rounds = sorted({r.get("round", 1) for r in rows})
    first = rows[0] if rows else {}
    dates = sorted({r["date"] for r in rows if "date" in r})
    print(f"# CPU benchmark: tiedae vs Keras vs numpy\n")
    print(f"- machine: {first.get('machine', '?')}, {first.get('cores', '?')} cores")
    if cpu:
        print(f"- CPU: {cpu}")
    if isa_cap:
        print(f"- every side capped to {isa_cap} (tiedae `TIEDAE_CPU_ISA`, Keras's oneDNN `ONEDNN_MAX_CPU_ISA`, "
              f"OpenBLAS `OPENBLAS_CORETYPE=Haswell`): what a CPU without AVX-512, as most laptops, gets")
    print(f"- date: {', '.join(dates) or '?'} (UTC)")
    sides = "tiedae, Keras" + (", PyTorch" if any(d == "torch-cpu" for _, d in by) else "") + ", numpy, our GEMM"
    print(f"- rounds: {len(rounds)} ({sides}, interleaved); figures are medians over rounds")
    print("- command: `bench/run-cpu.sh` (`tiedae bench --device cpu --json`, `bench/keras_reference.py`, ...)")
    for (w, d), per in sorted(by.items()):
        if d == "keras-cpu":
            print(f"- Keras: {next(iter(per.values())).get('device_name', '?')}")
            break
    for (w, d), per in sorted(by.items()):
        if d == "keras-cpu-xla":
            print(f"- Keras with XLA (for reference; no goal): {next(iter(per.values())).get('device_name', '?')}")
            break
    for (w, d), per in sorted(by.items()):
        if d == "torch-cpu":
            print(f"- PyTorch (eager, for reference; no goal): {next(iter(per.values())).get('device_name', '?')}")
            break
    for (w, d), per in sorted(by.items()):
        if d == "numpy-cpu":
            r = next(iter(per.values()))
            print(
                f"- numpy {r.get('numpy')}: {r.get('blas')} {r.get('blas_version')} "
                f"({r.get('architecture')} kernel, {r.get('blas_threads')} threads)"
            )
            break
    print(f"- raw lines: `{path.split('/')[-1]}`\n")

    def med(workload, device, key):
        per = by.get((workload, device), {})
        vals = [r[key] for r in per.values() if key in r]
        return statistics.median(vals) if vals else None

    print("| workload | device | samples/s | µs/step | GFLOP/s |")
    print("|---|---|---:|---:|---:|")
    for w in GOALS:
        for ww, d in ((w, "cpu"), (f"{w}-gemms", "cpu"), (w, "keras-cpu"), (w, "keras-cpu-xla"), (w, "torch-cpu")):
            sps = med(ww, d, "samples_per_s")
            if sps is None:
                continue
            label = d + (" (its GEMMs alone)" if ww != w else "")
            print(f"| {w} | {label} | {sps:,.0f} | {med(ww, d, 'step_us'):,.1f} | {med(ww, d, 'gflops'):.2f} |")
    print()
    print("GFLOP/s of whole steps count 12·Σ d_i·d_{i+1} per sample (the first layer's input gradient included, "
          "which no one computes); the GEMMs-alone rows count the products actually run.\n")

    def ratio(num, den, key, r):
        a = by.get(num, {}).get(r)
        b = by.get(den, {}).get(r)
        return a[key] / b[key] if a and b else None

    print("| ratio | goal | " + " | ".join(f"round {r}" for r in rounds) + " | median | holds |")
    print("|---|---:|" + "---:|" * len(rounds) + "---:|---|")
    verdicts = []
    not_run = [w for w in GOALS if (w, "cpu") not in by and (w, "keras-cpu") not in by]
    for w, goal in GOALS.items():
        if w in not_run:  # a one-workload run (WORKLOAD=mnist bench/run-cpu.sh)
            continue
        vals = [ratio((w, "cpu"), (w, "keras-cpu"), "samples_per_s", r) for r in rounds]
        ok_vals = [v for v in vals if v is not None]
        m = statistics.median(ok_vals) if ok_vals else None
        holds = m is not None and m >= goal
        verdicts.append(holds)
        cells = " | ".join("–" if v is None else f"{v:.1f}×" for v in vals)
        print(f"| {w}: tiedae / Keras samples/s | ≥ {goal:g}× | {cells} | {'–' if m is None else f'{m:.1f}×'} | {'yes' if holds else 'NO'} |")
    vals = [ratio(("gemm-1024", "cpu"), ("gemm-1024", "numpy-cpu"), "gflops", r) for r in rounds]
    ok_vals = [v for v in vals if v is not None]
    m = statistics.median(ok_vals) if ok_vals else None
    holds = m is not None and m >= GEMM_GOAL
    verdicts.append(holds)
    cells = " | ".join("–" if v is None else f"{v:.0%}" for v in vals)
    print(f"| GEMM 1024³: tiedae / numpy GFLOP/s | ≥ {GEMM_GOAL:.0%} | {cells} | {'–' if m is None else f'{m:.0%}'} | {'yes' if holds else 'NO'} |")
    # Ratios without a goal, for reference: per workload, ours (or our ceiling) against another side.
    def reference_rows(label, num_device, den_device, digits, gemms_only=False):
        for w in GOALS:
            num = (f"{w}-gemms" if gemms_only else w, num_device)
            vals = [ratio(num, (w, den_device), "samples_per_s", r) for r in rounds]
            ok_vals = [v for v in vals if v is not None]
            if ok_vals:
                cells = " | ".join("–" if v is None else f"{v:.{digits}f}×" for v in vals)
                print(f"| {w}: {label} samples/s | (none) | {cells} | {statistics.median(ok_vals):.{digits}f}× | |")

    # The most any step on our GEMM could reach against Keras in the same round: its GEMMs alone.
    reference_rows("bound (step GEMMs alone) / Keras", "cpu", "keras-cpu", 1, gemms_only=True)
    reference_rows("tiedae / Keras with XLA", "cpu", "keras-cpu-xla", 1)
    reference_rows("tiedae / PyTorch eager", "cpu", "torch-cpu", 2)
    # Each side at its fastest round: a reading that one side's slow rounds cannot move (on a shared machine
    # Keras has run whole rounds at half its usual speed, which raises the median of the ratios).
    best = []
    for w in GOALS:
        ours = [r["samples_per_s"] for r in by.get((w, "cpu"), {}).values()]
        keras = [r["samples_per_s"] for r in by.get((w, "keras-cpu"), {}).values()]
        if ours and keras:
            best.append(f"{w} {max(ours) / max(keras):.{0 if w == 'seed' else 1}f}×")
    if best:
        print("\nEach side at its fastest round, tiedae / Keras samples/s (no goal): " + ", ".join(best) + ".")
    g_ours, g_np = med("gemm-1024", "cpu", "gflops"), med("gemm-1024", "numpy-cpu", "gflops")
    if g_ours and g_np:
        print(f"\nGEMM 1024³ (median GFLOP/s): tiedae {g_ours:.1f}, numpy {g_np:.1f}.")
    if not_run:
        print(f"\nNot run: {', '.join(not_run)}. The goals of what ran hold: {'yes' if all(verdicts) else 'no'}.")
    else:
        print(f"\nAll goals hold: {'yes' if all(verdicts) else 'no'}.")


if __name__ == "__main__":
    main(sys.argv[1])
