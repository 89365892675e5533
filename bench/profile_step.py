#!/usr/bin/env python
"""Where one train step's time goes, on the current Keras backend (or in imagen-pytorch).

    KERAS_BACKEND=tensorflow .venv/bin/python bench/profile_step.py --config digits32 --batch 32
    KERAS_BACKEND=jax .venv/bin/python bench/profile_step.py --config digits32 --batch 32
    KERAS_BACKEND=torch .venv/bin/python bench/profile_step.py --config digits32 --batch 32
    /tmp/imagen-pytorch-ref/venv/bin/python bench/profile_step.py --reference ...

Builds the model as `worker.py` does, runs `--warmup` train steps, then profiles `--steps`
more with the backend's own profiler (`tf.profiler` / `jax.profiler`: XLA and TF ops from
the XSpace they write; `torch.profiler`: aten ops) and prints, per step: wall and CPU
seconds (CPU / wall = cores kept busy) and the ops that took the most time, summed over
their calls and grouped by kind (XLA's `fusion.12` and `fusion.40` are one `fusion` row).
Wrapper events that contain other events (executors, whole functions) are listed too, so
the rows overlap; read the leaf ops (convolutions, matmuls, fusions, element-wise ops).
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402


def _group(name):
    name = name.split(":")[-1] if ":" in name and not name.startswith("$") else name
    return re.sub(r"[._]\d+$", "", name)


def xspace_op_times(logdir):
    """{op kind: (seconds, calls)} from the XSpace files of a TF or JAX profile."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals, calls = collections.Counter(), collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for ev in line.events:
                    name = plane.event_metadata[ev.metadata_id].name
                    if name.startswith("$"):  # Python frames of the JAX tracer
                        continue
                    totals[_group(name)] += ev.duration_ps / 1e12
                    calls[_group(name)] += 1
    return {k: (totals[k], calls[k]) for k in totals}


def build(args):
    """(train_step, label) for the chosen implementation."""
    import numpy as np

    c = configs.CONFIGS[args.config]
    rng = np.random.default_rng(0)
    size, b = c["image_sizes"][-1], args.batch
    masks = np.zeros((b, c["text_len"]), dtype=bool)
    for i, n in enumerate(configs.valid_lengths(b, c["text_len"])):
        masks[i, :n] = True
    images = rng.random((b, size, size, c["channels"]), dtype="float32")
    embeds = rng.standard_normal((b, c["text_len"], c["text_dim"])).astype("float32")
    a = configs.ADAM
    if args.reference:
        import torch
        import worker

        worker.install_offline_t5_shim()
        from imagen_pytorch import Imagen as RefImagen
        from imagen_pytorch import Unet as RefUnet

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        imagen = RefImagen(
            unets=tuple(RefUnet(**kw) for kw in c["unets"]), **configs.imagen_kwargs(args.config)
        )
        unet = imagen.get_unet(c["train_unet"])
        opt = torch.optim.Adam(
            unet.parameters(), lr=a["lr"], betas=(a["beta_1"], a["beta_2"]), eps=a["eps"]
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        e, m = torch.from_numpy(embeds), torch.from_numpy(masks)

        def step():
            loss = imagen(x, text_embeds=e, text_masks=m, unet_number=c["train_unet"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.item())

        return step, "imagen-pytorch"

    import keras

    from imagen_keras import Imagen, Unet

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    keras.utils.set_random_seed(0)
    imagen = Imagen([Unet(**kw) for kw in c["unets"]], **configs.imagen_kwargs(args.config))
    imagen.compile(
        optimizer=keras.optimizers.Adam(
            a["lr"], beta_1=a["beta_1"], beta_2=a["beta_2"], epsilon=a["eps"]
        ),
        unet_number=c["train_unet"],
    )
    batch = {"images": images, "text_embeds": embeds, "text_masks": masks}

    def step():
        return float(keras.ops.convert_to_numpy(imagen.train_on_batch(batch)))

    return step, f"keras/{backend}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="digits32", choices=sorted(configs.CONFIGS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--reference", action="store_true", help="profile imagen-pytorch")
    args = p.parse_args()

    step, label = build(args)
    for _ in range(args.warmup):
        step()
    timings = []

    def timed_steps():
        for _ in range(args.steps):
            t, c = time.perf_counter(), time.process_time()
            step()
            timings.append((time.perf_counter() - t, time.process_time() - c))

    if label in ("imagen-pytorch", "keras/torch"):
        import torch

        with torch.profiler.profile() as prof:
            timed_steps()
        ops = {
            e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()
        }  # self time: aten rows do not overlap
    else:
        logdir = tempfile.mkdtemp(prefix="imagen_profile_")
        if label == "keras/jax":
            import jax

            with jax.profiler.trace(logdir):
                timed_steps()
        else:
            import tensorflow as tf

            tf.profiler.experimental.start(logdir)
            timed_steps()
            tf.profiler.experimental.stop()
        ops = xspace_op_times(logdir)

    wall = sum(t for t, _ in timings) / len(timings)
    cpu = sum(c for _, c in timings) / len(timings)
    print(
        f"# {label}, {args.config} batch {args.batch}: {wall:.3f} s/step wall, "
        f"{cpu:.3f} CPU s/step (CPU/wall {cpu / wall:.2f}), {args.steps} profiled steps"
    )
    print(f"{'s/step':>8} {'calls/step':>10}  op")
    for name, (secs, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{secs / args.steps:8.3f} {n / args.steps:10.0f}  {name[:100]}")


if __name__ == "__main__":
    main()
