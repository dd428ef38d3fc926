#!/usr/bin/env python3
"""A/B of two variants of the CPU code INSIDE one `tiedae bench` process, for hosts whose speed drifts by more
than the effect under test (this project's shared 2-core machine moves ±5-15% between runs of the same binary).

  git apply bench/ab-in-process.patch     # a switch `sgemm::AB_NEW` that `tiedae bench` flips every epoch
  # ...make the code read it where the old and the new variant part ways, then
  cargo build --release
  python3 bench/ab_in_process.py [--workload mnist] [--seconds 120] [-- extra tiedae bench flags]
  git checkout src/                        # the patch is never committed

Epochs run in groups of four, old, new, new, old: each variant gets one epoch right after a switch and one
not, and each group gives one paired ratio (the old epochs' time over the new ones'), so drift within a
group cancels. Prints the ratio of the median epochs, of the best epochs and the median paired ratio with
its quartiles; above 1 means the new variant is faster. An A/A run (both variants the same code, mnist, 90 s,
22 groups) gave 1.000, 1.000 and 0.997 (quartiles 0.959-1.037): use runs of 20 groups or more.
"""
import argparse
import statistics
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/tiedae")
    ap.add_argument("--workload", default="mnist")
    ap.add_argument("--seconds", default="120")
    ap.add_argument("extra", nargs="*", help="more `tiedae bench` flags (after --)")
    args = ap.parse_args()
    cmd = [args.bin, "bench", "--device", "cpu", "--workload", args.workload, "--min-seconds", args.seconds,
           "--json", *args.extra]
    err = subprocess.run(cmd, capture_output=True, text=True).stderr
    epochs = [(int(f[1]), float(f[2])) for f in (l.split() for l in err.splitlines()) if f[:1] == ["ab"]]
    if not epochs:
        sys.exit("no `ab` lines: is bench/ab-in-process.patch applied and built?")
    new = [t for v, t in epochs if v == 1]
    old = [t for v, t in epochs if v == 0]
    groups = [epochs[i:i + 4] for i in range(0, len(epochs) - 3, 4)]
    paired = sorted((g[0][1] + g[3][1]) / (g[1][1] + g[2][1]) for g in groups)
    if not paired:
        sys.exit("fewer than 4 epochs: give it more --seconds")
    print(f"{args.workload}: {len(old)} old and {len(new)} new epochs; old/new time: median epochs "
          f"{statistics.median(old) / statistics.median(new):.3f}, best epochs {min(old) / min(new):.3f}, "
          f"paired {statistics.median(paired):.3f} over {len(paired)} groups (quartiles "
          f"{paired[len(paired) // 4]:.3f}-{paired[3 * len(paired) // 4]:.3f})")


if __name__ == "__main__":
    main()
