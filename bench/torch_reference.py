#!/usr/bin/env python3
"""The three `tiedae bench` workloads in PyTorch, for the speed comparison (GPU when there is one, else CPU).

Same models, data sizes and timing rule as `tiedae bench` and bench/keras_reference.py: the workloads of
bench/workloads.json (seed 51→1, digits 64→32→8, mnist 784→256→64), on uniform [0, 1) data, MSE loss. The data set lives on the device (uploaded once, as tiedae does); each
epoch draws a permutation there and gathers each batch by index. Per-step losses stay on the device and
are read once per epoch, which also waits for the device before the clock is read. One warm-up epoch, then
epochs are timed until at least --min-seconds have passed and at least --min-epochs were timed; the MEDIAN
epoch counts. One JSON line per workload and variant, in the shape of `tiedae bench --json`:
  {"workload": ..., "device": "torch-cuda-graph", "samples_per_s": ..., "step_us": ..., "gflops": ..., ...}

Variants (--variants, comma-separated; default: every one that applies to the device):
  eager    plain PyTorch (device "torch-cpu" / "torch-cuda")
  graph    CUDA only: the whole step (forward, backward, optimizer; Adam with capturable=True) captured
           once in a CUDA graph and replayed per step, the batch gathered into its static input buffer
           ("torch-cuda-graph"); a last, smaller batch runs eagerly
  compile  torch.compile of the model ("torch-cpu-compile" / "torch-cuda-compile")

The model is TIED: one kernel Parameter W (in × out) per layer; the encoder computes x·W + b, the decoder
g·Wᵀ + c, so autograd sums both uses into W's one gradient.

  pip install torch numpy
  python3 bench/torch_reference.py [--workload all|seed|digits|mnist] [--device auto|cpu|cuda]
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch._dynamo  # torch.compile's own (reset between runs)

# name -> {layers, activation, optimizer, lr, batch, rows}: the table `tiedae bench` builds in.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "workloads.json")) as f:
    WORKLOADS = {w["name"]: w for w in json.load(f)["workloads"]}


def flops_per_sample(layers):
    """3 × (encoder + decoder GEMMs of the forward pass), as `tiedae bench` counts."""
    return 12.0 * sum(a * b for a, b in zip(layers, layers[1:]))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class TiedAutoencoder(torch.nn.Module):
    def __init__(self, layers, activation):
        super().__init__()
        self.depth = len(layers) - 1
        self.kernels = torch.nn.ParameterList()
        self.enc_bias = torch.nn.ParameterList()
        self.dec_bias = torch.nn.ParameterList()
        for i in range(self.depth):
            limit = math.sqrt(6.0 / (layers[i] + layers[i + 1]))  # Glorot uniform, as Keras
            self.kernels.append(torch.nn.Parameter(torch.empty(layers[i], layers[i + 1]).uniform_(-limit, limit)))
            self.enc_bias.append(torch.nn.Parameter(torch.zeros(layers[i + 1])))
            self.dec_bias.append(torch.nn.Parameter(torch.zeros(layers[i])))
        self.act = torch.tanh if activation == "tanh" else (lambda t: t)

    def forward(self, x):
        h = x
        for i in range(self.depth):
            h = h @ self.kernels[i] + self.enc_bias[i]
            if i + 1 < self.depth:  # linear code
                h = self.act(h)
        for i in reversed(range(self.depth)):
            h = h @ self.kernels[i].t() + self.dec_bias[i]  # the SAME kernel, transposed
            if i > 0:  # linear output
                h = self.act(h)
        return h


def make_optimizer(cfg, model, capturable=False):
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"], eps=1e-7, capturable=capturable)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(name, cfg, device, variant, args):
    torch.manual_seed(42)
    rows, batch, d0 = cfg["rows"], cfg["batch"], cfg["layers"][0]
    data = torch.rand(rows, d0, generator=torch.Generator().manual_seed(7)).to(device)
    model = TiedAutoencoder(cfg["layers"], cfg["activation"]).to(device)
    assert sum(1 for p in model.parameters() if p.dim() == 2) == model.depth, "one kernel per tied layer"
    steps = -(-rows // batch)
    losses = torch.zeros(steps, device=device)
    loss_fn = torch.nn.functional.mse_loss

    if variant == "graph":
        opt = make_optimizer(cfg, model, capturable=True)
        static_x = torch.empty(batch, d0, device=device)
        static_x.copy_(data[:batch])
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up before capture, on a side stream (as PyTorch's docs do)
                opt.zero_grad(set_to_none=True)
                loss_fn(model(static_x), static_x).backward()
                opt.step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = loss_fn(model(static_x), static_x)
            static_loss.backward()
            opt.step()

        def step(s, idx):
            if idx.numel() == batch:
                torch.index_select(data, 0, idx, out=static_x)
                graph.replay()
                losses[s].copy_(static_loss.detach())
            else:  # the last, smaller batch
                x = data[idx]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), x)
                loss.backward()
                opt.step()
                losses[s].copy_(loss.detach())
    else:
        opt = make_optimizer(cfg, model)
        # Static shapes: dynamo would otherwise carry symbolic sizes over from the workloads compiled before.
        if variant == "compile":
            torch._dynamo.reset()
            fwd = torch.compile(model, dynamic=False)
        else:
            fwd = model

        def step(s, idx):
            x = data[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(fwd(x), x)
            loss.backward()
            opt.step()
            losses[s].copy_(loss.detach())

    gen = torch.Generator(device=device).manual_seed(1)

    def epoch():
        perm = torch.randperm(rows, device=device, generator=gen)
        for s in range(steps):
            step(s, perm[s * batch : (s + 1) * batch])
        return losses.mean().item()  # reads back once: waits for the device

    epoch()  # warm-up (and compilation)
    times, loss = [], float("nan")
    started = time.perf_counter()
    while len(times) < args.min_epochs or time.perf_counter() - started < args.min_seconds:
        sync(device)
        t0 = time.perf_counter()
        loss = epoch()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    sps = rows / med
    label = f"torch-{device.type}" + ("" if variant == "eager" else f"-{variant}")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "workload": name,
        "device": label,
        "device_name": f"torch {torch.__version__}, {dev_name}",
        "layers": cfg["layers"],
        "batch_size": batch,
        "rows": rows,
        "samples_per_s": sps,
        "step_us": med / steps * 1e6,
        "epoch_s": med,
        "gflops": flops_per_sample(cfg["layers"]) * sps / 1e9,
        "flops_per_sample": flops_per_sample(cfg["layers"]),
        "epochs_timed": len(times),
        "final_loss": loss,
        "machine": cpu_model(),
        "cores": os.cpu_count(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="all", choices=["all", *WORKLOADS])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--variants", default=None, help="eager,graph,compile (default: all that apply)")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--min-epochs", type=int, default=3)
    args = ap.parse_args()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    default = ["eager", "graph", "compile"] if device.type == "cuda" else ["eager", "compile"]
    variants = args.variants.split(",") if args.variants else default
    if device.type != "cuda" and "graph" in variants:
        variants.remove("graph")
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    failed = []
    # Variant by variant, compile last: on a fresh machine its compilations take the longest, and a time limit
    # should cut them rather than the eager and graph rows.
    for variant in sorted(variants, key=lambda v: v == "compile"):
        for name in names:
            label = f"torch-{device.type}" + ("" if variant == "eager" else f"-{variant}")
            try:
                print(json.dumps(run(name, WORKLOADS[name], device, variant, args)), flush=True)
            except Exception as e:  # e.g. torch.compile without a working compiler: say so, go on
                print(json.dumps({"workload": name, "device": label, "error": str(e)[:300]}), flush=True)
                failed.append((name, variant))
    # A compile failure (no C compiler for Triton, say) is the machine's; eager or graph failing is ours.
    if any(v != "compile" for _, v in failed):
        sys.exit(1)


if __name__ == "__main__":
    main()
