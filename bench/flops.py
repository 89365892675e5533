#!/usr/bin/env python
"""FLOPs of one train step of each bench config, and this machine's float32 matmul peak.

    KERAS_BACKEND=jax .venv/bin/python bench/flops.py --threads 2 \
        --out bench/results/flops.json
    .venv/bin/python bench/run_bench.py --summarize RUN.jsonl --flops bench/results/flops.json

* **Train-step FLOPs** come from XLA's cost analysis of the keras/JAX train step (the
  whole jitted step: forward, backward, Adam update, noise sampling), lowered for the
  config and batch exactly as `worker.py` builds them. The maths is the same in every
  implementation (same unets, parameter counts and losses), so the count is used for all
  of them; it is a count of the model's arithmetic, not of what a backend executes.
* **Matmul peak**: the best of `--reps` float32 `(n, n) @ (n, n)` products with `--threads`
  threads, for numpy's BLAS and torch (both are in the project's venv), n = 1024 and 2048.
  Run it on a quiet machine; the report quotes the best.

The report (`stats.report(..., flops=...)`) then gives each implementation's achieved
GFLOP/s in the train step (FLOPs / median step time) and its share of the peak.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
import measure  # noqa: E402


def set_threads(n):
    for k in measure.THREAD_ENV_VARS:
        if k != "XLA_FLAGS":  # XLA's pool is not bounded by a number here
            os.environ[k] = str(n)


def matmul_peak(threads, reps=10, sizes=(1024, 2048)):
    """{library: best GFLOP/s} of float32 square matmuls with `threads` threads."""
    import numpy as np

    out = {}
    runners = {"numpy": lambda a, b: a @ b}
    try:
        import torch

        torch.set_num_threads(threads)
        runners["torch"] = lambda a, b: torch.mm(a, b)
    except ImportError:
        pass
    for name, mm in runners.items():
        best = 0.0
        for n in sizes:
            a = np.random.default_rng(0).standard_normal((n, n), dtype="float32")
            b = np.random.default_rng(1).standard_normal((n, n), dtype="float32")
            if name == "torch":
                a, b = torch.from_numpy(a), torch.from_numpy(b)
            mm(a, b)  # warm-up
            for _ in range(reps):
                t = time.perf_counter()
                mm(a, b)
                best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        out[name] = round(best, 1)
    return out


def train_step_flops(config, batch):
    """XLA's FLOP count of the keras/JAX train step of `config` at `batch`."""
    if os.environ.get("KERAS_BACKEND") != "jax":
        raise RuntimeError(
            "train_step_flops needs KERAS_BACKEND=jax (XLA's cost analysis). "
            f"Received: KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}"
        )
    import jax
    import keras
    import numpy as np

    from imagen_keras import Imagen, Unet

    c = configs.CONFIGS[config]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    size = c["image_sizes"][-1]
    masks = np.zeros((batch, c["text_len"]), dtype=bool)
    for i, n in enumerate(configs.valid_lengths(batch, c["text_len"])):
        masks[i, :n] = True
    data = {
        "images": rng.random((batch, size, size, c["channels"]), dtype="float32"),
        "text_embeds": rng.standard_normal((batch, c["text_len"], c["text_dim"])).astype("float32"),
        "text_masks": masks,
    }
    imagen = Imagen([Unet(**kw) for kw in c["unets"]], **configs.imagen_kwargs(config))
    a = configs.ADAM
    imagen.compile(
        optimizer=keras.optimizers.Adam(
            a["lr"], beta_1=a["beta_1"], beta_2=a["beta_2"], epsilon=a["eps"]
        ),
        unet_number=c["train_unet"],
    )
    imagen.train_on_batch(data)  # builds every variable the step uses
    state = imagen._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
        purge_model_variables=False,
    )
    data = jax.tree_util.tree_map(jax.numpy.asarray, data)
    cost = jax.jit(imagen.train_step).lower(state, (data, None, None)).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs", nargs="+", default=list(configs.CONFIGS), choices=sorted(configs.CONFIGS)
    )
    p.add_argument("--batches", nargs="+", type=int, default=list(configs.BATCH_SIZES))
    p.add_argument("--threads", type=int, default=2, help="threads of the matmul peak")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()
    set_threads(args.threads)  # before numpy / torch start their pools
    peak = matmul_peak(args.threads, reps=args.reps)
    print(f"# float32 matmul peak, {args.threads} threads: {peak} GFLOP/s", file=sys.stderr)
    out = dict(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=measure.machine_info(),
        threads=args.threads,
        matmul_peak_gflops=peak,
        loadavg=measure.loadavg(),
        train_step_flops={},
    )
    for config in args.configs:
        for batch in args.batches:
            try:
                flops = train_step_flops(config, batch)
            except Exception as e:  # e.g. out of memory at 128 px, batch 32: recorded
                out.setdefault("errors", {})[f"{config}/{batch}"] = f"{type(e).__name__}: {e}"
                print(f"# {config} b{batch}: {type(e).__name__}", file=sys.stderr)
                continue
            out["train_step_flops"][f"{config}/{batch}"] = flops
            print(f"# {config} b{batch}: {flops / 1e9:.1f} GFLOP per train step", file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"# wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
