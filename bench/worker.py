#!/usr/bin/env python
"""One benchmark measurement in its own process: one implementation, config, batch, round.

Started by `run_bench.py` (not meant to be run by hand, though it can be):

    KERAS_BACKEND=jax .venv/bin/python bench/worker.py --impl keras --config tiny64 \
        --batch 4 --threads 2
    /tmp/imagen-pytorch-ref/venv/bin/python bench/worker.py --impl reference --config tiny64 \
        --batch 4 --threads 2

It sets the thread limits of every library it loads, builds the model through public APIs
only (`Imagen(...)`, `compile`, `train_on_batch`, `sample` for imagen-keras; the
reference's `Imagen.forward` + Adam, and `sample`), then measures:

* warm-up: the first train step (trace/compile included) and `--warmup-steps - 1` more;
* steady state: train steps until the median of the last 3 is within 5 % of the 3 before,
  or `--budget-s` / `--max-steps` is reached (at least `--min-steps`);
* sampling: a sampler sharing the trained unets with `timesteps=sample_steps`, cond_scale
  3; the first call is warm-up, then `--sample-reps` timed calls;

each with wall and process-CPU seconds, the machine's load (see `measure.LoadMonitor`),
the thread count and peak RSS. It prints one line `BENCH_RECORD {json}` on stdout, also
when it fails (with `error`).
"""

import argparse
import inspect
import json
import os
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
import measure  # noqa: E402

RECORD_PREFIX = "BENCH_RECORD "


# --- thread limits -----------------------------------------------------------------------


def limit_threads_torch(n, report):
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError as e:  # already started (keras imported torch and ran ops)
        report["torch_interop_error"] = str(e)
    report.update(
        torch_num_threads=torch.get_num_threads(),
        torch_num_interop_threads=torch.get_num_interop_threads(),
        torch_parallel_info=torch.__config__.parallel_info().splitlines()[:8],
    )


def limit_threads_tf(n, report):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError as e:  # the runtime was already initialised
        report["tf_threading_error"] = str(e)
    report.update(
        tf_intra_op=tf.config.threading.get_intra_op_parallelism_threads(),
        tf_inter_op=tf.config.threading.get_inter_op_parallelism_threads(),
    )


# --- imagen-keras ----------------------------------------------------------------------------


def keras_case(args, record):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    report = record["threads_reported"]
    if backend == "torch":
        limit_threads_torch(args.threads, report)
    if backend == "tensorflow":
        limit_threads_tf(args.threads, report)
    import keras
    import numpy as np

    import imagen_keras
    from imagen_keras import Imagen, Unet
    from imagen_keras.training import ImagenAdam

    record["impl"] = os.environ.get("BENCH_IMPL_LABEL") or f"keras/{backend}"
    versions = dict(
        keras=keras.__version__, imagen_keras=imagen_keras.__version__, numpy=np.__version__
    )
    if backend == "jax":
        import jax

        versions["jax"] = jax.__version__
        report.update(
            jax_devices=[str(d) for d in jax.devices()], xla_flags=os.environ.get("XLA_FLAGS")
        )
    elif backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    else:
        import torch

        versions["torch"] = torch.__version__
    record["versions"] = versions

    c = configs.CONFIGS[args.config]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1234)
    size, b = c["image_sizes"][-1], args.batch
    images = rng.random((b, size, size, c["channels"]), dtype="float32")
    masks = np.zeros((b, c["text_len"]), dtype=bool)
    for i, n in enumerate(configs.valid_lengths(b, c["text_len"])):
        masks[i, :n] = True
    embeds = rng.standard_normal((b, c["text_len"], c["text_dim"])).astype("float32")
    embeds = np.where(masks[..., None], embeds, 0.0).astype("float32")
    batch = {"images": images, "text_embeds": embeds, "text_masks": masks}

    def build():
        unets = [Unet(**kw) for kw in c["unets"]]
        imagen = Imagen(unets, **configs.imagen_kwargs(args.config))
        a = configs.ADAM
        imagen.compile(
            # imagen-keras' own Adam (what `compile()` gives by default), its EMA off
            # as the reference's side has none.
            optimizer=ImagenAdam(
                a["lr"], beta_1=a["beta_1"], beta_2=a["beta_2"], epsilon=a["eps"], use_ema=False
            ),
            unet_number=c["train_unet"],
            jit_compile=args.jit,
        )
        record["params"] = sum(u.count_params() for u in imagen.unets)
        record["jit_compile"] = str(imagen.jit_compile)
        return imagen

    def train_step(imagen):
        float(keras.ops.convert_to_numpy(imagen.train_on_batch(batch)))  # waits for the step

    def make_sampler(imagen, steps):
        kw = dict(configs.imagen_kwargs(args.config), timesteps=steps)
        return Imagen(list(imagen.unets), **kw)

    accepted = None

    def sample(sampler, seed):
        nonlocal accepted
        if accepted is None:  # pass only what this version's `sample` takes
            accepted = set(inspect.signature(sampler.sample).parameters)
        kw = {k: v for k, v in dict(verbose=0, seed=seed).items() if k in accepted}
        with warnings.catch_warnings():  # untrained stages: fine for timing
            warnings.simplefilter("ignore")
            out = sampler.sample(
                text_embeds=embeds, text_masks=masks, cond_scale=configs.COND_SCALE, **kw
            )
        keras.ops.convert_to_numpy(out)  # waits for the result

    run_phases(args, record, build, train_step, make_sampler, sample)


# --- imagen-pytorch (run in its own venv) ----------------------------------------------------

T5_D_MODEL = {
    "google/t5-v1_1-small": 512,
    "google/t5-v1_1-base": 768,
    "google/t5-v1_1-large": 1024,
    "google/t5-v1_1-xl": 2048,
    "google/t5-v1_1-xxl": 4096,
}


def install_offline_t5_shim():
    """imagen_pytorch reads the T5 *config* at import time; no weights are needed here."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    ref = os.environ.get("IMAGEN_REF_DIR", "/tmp/imagen-pytorch-ref")
    if os.path.isdir(os.path.join(ref, "hf_home")):
        os.environ.setdefault("HF_HOME", os.path.join(ref, "hf_home"))
    from transformers import T5Config

    orig = T5Config.from_pretrained.__func__

    def from_pretrained(cls, name, *a, **kw):
        try:
            return orig(cls, name, *a, **kw)
        except OSError:
            if name in T5_D_MODEL:
                return cls(d_model=T5_D_MODEL[name])
            raise

    T5Config.from_pretrained = classmethod(from_pretrained)


def reference_case(args, record):
    limit_threads_torch(args.threads, record["threads_reported"])
    import torch

    install_offline_t5_shim()
    import imagen_pytorch
    from imagen_pytorch import Imagen, Unet

    record["impl"] = "imagen-pytorch"
    record["versions"] = dict(torch=torch.__version__, imagen_pytorch=imagen_pytorch.__version__)
    c = configs.CONFIGS[args.config]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    size, b = c["image_sizes"][-1], args.batch
    images = torch.rand(b, c["channels"], size, size, generator=g)
    masks = torch.zeros(b, c["text_len"], dtype=torch.bool)
    for i, n in enumerate(configs.valid_lengths(b, c["text_len"])):
        masks[i, :n] = True
    embeds = torch.randn(b, c["text_len"], c["text_dim"], generator=g)
    embeds = embeds.masked_fill(~masks[..., None], 0.0)
    state = {}

    def build():
        unets = [Unet(**kw) for kw in c["unets"]]
        imagen = Imagen(unets=tuple(unets), **configs.imagen_kwargs(args.config))
        unet = imagen.get_unet(c["train_unet"])
        a = configs.ADAM
        state["opt"] = torch.optim.Adam(
            unet.parameters(), lr=a["lr"], betas=(a["beta_1"], a["beta_2"]), eps=a["eps"]
        )
        record["params"] = sum(p.numel() for u in imagen.unets for p in u.parameters())
        record["jit_compile"] = "eager"
        return imagen

    def train_step(imagen):
        loss = imagen(images, text_embeds=embeds, text_masks=masks, unet_number=c["train_unet"])
        loss.backward()
        state["opt"].step()
        state["opt"].zero_grad(set_to_none=True)
        float(loss.item())

    def make_sampler(imagen, steps):
        kw = dict(configs.imagen_kwargs(args.config), timesteps=steps)
        return Imagen(unets=tuple(imagen.unets), **kw)

    def sample(sampler, seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            sampler.sample(
                text_embeds=embeds, text_masks=masks, cond_scale=configs.COND_SCALE, use_tqdm=False
            )

    run_phases(args, record, build, train_step, make_sampler, sample)


# --- shared measurement ------------------------------------------------------------------


def run_phases(args, record, build, train_step, make_sampler, sample):
    c = configs.CONFIGS[args.config]
    with measure.Timer() as t:
        imagen = build()
    record["build"] = dict(wall_s=round(t.wall, 3), cpu_s=round(t.cpu, 3))
    # the process's peak RSS so far, after each phase: which phase sets the peak
    peaks = record["peak_rss_mb_after"] = {"build": measure.peak_rss_mb()}
    warm = []
    for _ in range(max(args.warmup_steps, 1)):
        with measure.Timer() as t:
            train_step(imagen)
        warm.append(dict(wall_s=round(t.wall, 3), cpu_s=round(t.cpu, 3)))
    record["train_warmup"] = warm
    peaks["warmup"] = measure.peak_rss_mb()
    record["threads_after_warmup"] = measure.thread_count()

    with measure.LoadMonitor() as mon:
        walls, cpus, reason = measure.steady_steps(
            lambda: train_step(imagen), args.min_steps, args.max_steps, args.budget_s
        )
    record["train"] = dict(
        wall_s=[round(w, 4) for w in walls],
        cpu_s=[round(x, 4) for x in cpus],
        stop=reason,
        load=mon.result,
    )
    peaks["train"] = measure.peak_rss_mb()

    steps = args.sample_steps or c["sample_steps"]
    n_calls = steps * len(c["image_sizes"])  # denoising steps over all stages
    record["sample_config"] = dict(
        steps_per_unet=steps,
        unets=len(c["image_sizes"]),
        cond_scale=configs.COND_SCALE,
        reps=args.sample_reps,
    )
    sampler = make_sampler(imagen, steps)
    with measure.Timer() as t:
        sample(sampler, 0)
    record["sample_warmup"] = dict(wall_s=round(t.wall, 3), cpu_s=round(t.cpu, 3))
    walls, cpus = [], []
    with measure.LoadMonitor() as mon:
        for rep in range(args.sample_reps):
            with measure.Timer() as t:
                sample(sampler, rep + 1)
            walls.append(t.wall / n_calls)
            cpus.append(t.cpu / n_calls)
    record["sample"] = dict(
        wall_s_per_step=[round(w, 4) for w in walls],
        cpu_s_per_step=[round(x, 4) for x in cpus],
        load=mon.result,
    )
    peaks["sample"] = measure.peak_rss_mb()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", required=True, choices=("keras", "reference"))
    p.add_argument("--config", required=True, choices=sorted(configs.CONFIGS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--min-steps", type=int, default=6)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--budget-s", type=float, default=120.0)
    p.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="sampling steps per unet (default: the config's)",
    )
    p.add_argument("--sample-reps", type=int, default=2)
    p.add_argument("--jit", default="auto", help="keras only: jit_compile for compile()")
    p.add_argument(
        "--cpus",
        default=None,
        help="comma-separated CPU ids to pin this process to (sched_setaffinity)",
    )
    args = p.parse_args()
    if args.jit in ("true", "false"):
        args.jit = args.jit == "true"

    if args.cpus:  # before any library starts its threads
        os.sched_setaffinity(0, {int(x) for x in args.cpus.split(",")})
    record = dict(
        kind="measurement",
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        config=args.config,
        batch=args.batch,
        threads=args.threads,
        round=args.round,
        machine=measure.machine_info(),
        threads_set=dict(
            {k: os.environ.get(k) for k in measure.THREAD_ENV_VARS},
            affinity=sorted(os.sched_getaffinity(0)),
        ),
        threads_reported={},
        argv=sys.argv[1:],
        impl="imagen-pytorch"
        if args.impl == "reference"
        else os.environ.get("BENCH_IMPL_LABEL")
        or "keras/" + os.environ.get("KERAS_BACKEND", "tensorflow"),
    )
    t0 = time.perf_counter()
    with measure.LoadMonitor() as whole:
        try:
            (keras_case if args.impl == "keras" else reference_case)(args, record)
        except Exception as e:  # the record says what failed; the driver keeps going
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc()[-3000:]
    record.update(
        total_wall_s=round(time.perf_counter() - t0, 2),
        peak_rss_mb=measure.peak_rss_mb(),
        load=whole.result,
    )
    print(RECORD_PREFIX + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
