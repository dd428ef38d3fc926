#!/usr/bin/env python3
"""The three `tiedae bench` workloads in Keras (TensorFlow backend, CPU), for the speed comparison.

Same model, same data sizes, same timing rule as `tiedae bench`: the workloads of bench/workloads.json (the
one table `tiedae bench` builds in too: seed 51→1, digits 64→32→8, mnist 784→256→64), on uniform [0, 1)
data, MSE loss, `model.fit(x, x, batch_size, shuffle=True)` as a user would write it.
The first epoch is the warm-up (it traces the train function); then epochs are timed, one clock reading per
epoch (Keras callbacks), until at least --min-seconds have passed and at least --min-epochs were timed.
The MEDIAN epoch counts. Prints one JSON line per workload, in the shape of `tiedae bench --json`:
  {"workload": ..., "device": "keras-cpu", "samples_per_s": ..., "step_us": ..., "gflops": ..., ...}

The model is TIED correctly: the decoder layer owns no kernel; at every call it reads the encoder layer's
kernel VARIABLE transposed, so the one variable gets the gradient of both uses. (The well-known recipe
that evaluates `K.transpose(kernel)` in build() freezes a copy instead; that is what tiedae's README is
about.) The script checks this: the model must have exactly L kernels + 2L biases trainable.

  pip install tensorflow-cpu numpy
  python3 bench/keras_reference.py [--workload all|seed|digits|mnist] [--jit-compile]
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

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


class DenseTied(keras.layers.Layer):
    """y = f(x·Wᵀ + c) with W the kernel VARIABLE of `tied_to`, read at call time (never copied)."""

    def __init__(self, tied_to, units, activation, **kwargs):
        super().__init__(**kwargs)
        # Bypass Keras's attribute tracking: the encoder layer is not a sub-layer of this one, so its kernel
        # is counted (and updated) once.
        object.__setattr__(self, "_tied_to", tied_to)
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        return self.activation(keras.ops.matmul(x, keras.ops.transpose(self._tied_to.kernel)) + self.bias)


def build_model(layers, activation):
    inp = keras.Input(shape=(layers[0],))
    h = inp
    dense = []
    depth = len(layers) - 1
    for i in range(depth):
        act = "linear" if i + 1 == depth else activation
        d = keras.layers.Dense(layers[i + 1], activation=act, name=f"encoder_{i}")
        h = d(h)
        dense.append(d)
    for i in reversed(range(depth)):
        act = "linear" if i == 0 else activation
        h = DenseTied(dense[i], layers[i], act, name=f"decoder_{i}")(h)
    model = keras.Model(inp, h)
    kernels = [v for v in model.trainable_variables if len(v.shape) == 2]
    assert len(kernels) == depth, f"expected {depth} tied kernels, found {len(kernels)}"
    assert len(model.trainable_variables) == 3 * depth, "expected one kernel and two biases per tied layer"
    return model


class EpochTimer(keras.callbacks.Callback):
    def __init__(self, min_seconds, min_epochs):
        super().__init__()
        self.min_seconds, self.min_epochs = min_seconds, min_epochs
        self.times, self.losses, self.started = [], [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        dt = time.perf_counter() - self.t0
        if epoch == 0:  # the warm-up epoch
            self.started = time.perf_counter()
            return
        self.times.append(dt)
        self.losses.append(float((logs or {}).get("loss", float("nan"))))
        if len(self.times) >= self.min_epochs and time.perf_counter() - self.started >= self.min_seconds:
            self.model.stop_training = True


def run(name, cfg, args):
    keras.utils.set_random_seed(42)
    rng = np.random.default_rng(7)
    x = rng.random((cfg["rows"], cfg["layers"][0]), dtype=np.float32)
    model = build_model(cfg["layers"], cfg["activation"])
    opt = keras.optimizers.SGD(cfg["lr"]) if cfg["optimizer"] == "sgd" else keras.optimizers.Adam(cfg["lr"])
    model.compile(optimizer=opt, loss="mse", jit_compile=args.jit_compile)
    timer = EpochTimer(args.min_seconds, args.min_epochs)
    model.fit(x, x, batch_size=cfg["batch"], epochs=100_000, shuffle=True, verbose=0, callbacks=[timer])
    med = statistics.median(timer.times)
    steps = -(-cfg["rows"] // cfg["batch"])
    sps = cfg["rows"] / med
    return {
        "workload": name,
        "device": "keras-cpu-xla" if args.jit_compile else "keras-cpu",
        "device_name": f"keras {keras.__version__} / tensorflow {tf.__version__} (jit_compile={model.jit_compile})",
        "layers": cfg["layers"],
        "batch_size": cfg["batch"],
        "rows": cfg["rows"],
        "samples_per_s": sps,
        "step_us": med / steps * 1e6,
        "epoch_s": med,
        "gflops": flops_per_sample(cfg["layers"]) * sps / 1e9,
        "flops_per_sample": flops_per_sample(cfg["layers"]),
        "epochs_timed": len(timer.times),
        "final_loss": timer.losses[-1],
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="all", choices=["all", *WORKLOADS])
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--min-epochs", type=int, default=3)
    ap.add_argument("--jit-compile", action="store_true", help="XLA (Keras's default on a CPU is off)")
    args = ap.parse_args()
    tf.config.set_visible_devices([], "GPU")
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    for name in names:
        print(json.dumps(run(name, WORKLOADS[name], args)), flush=True)


if __name__ == "__main__":
    main()
