#!/usr/bin/env python
"""CPU benchmark of imagen-keras on the configs of `bench_reference.py` (imagen-pytorch).

Run with the project venv, once per backend (the backend is `KERAS_BACKEND` or
`--backend`):

    KERAS_BACKEND=jax python bench/bench_imagen.py --out bench/results/jax.json
    KERAS_BACKEND=tensorflow python bench/bench_imagen.py --jit false --out bench/results/tf.json
    KERAS_BACKEND=torch python bench/bench_imagen.py --out bench/results/torch.json

and the reference in its own venv (`source /tmp/imagen-pytorch-ref/env.sh`):

    python /work/shared/reference/bench_reference.py --only tiny64 cascade64to128 \
        --out bench/results/reference.json

then `python bench/bench_imagen.py --summarize bench/results/*.json` prints one markdown
table. On the shared 2-core CPU, with the reduced step counts in bench/README.md, one
config takes 2-7 minutes per backend; the reference defaults take several times longer.

The configs are `bench_reference.py`'s, unchanged: same unet kwargs, image sizes, batch 4,
16 text tokens of width 128 with 12/11/10/9 valid, Adam(1e-4, betas (0.9, 0.99), eps 1e-8),
`timesteps=1000` for training and a second `Imagen` sharing the unets with 32 (tiny64) or
16 per stage (cascade64to128) sampling steps, cond_scale 3. tiny64 trains unet 1 at 64 px;
cascade64to128 trains only unet 2 (the 64->128 super-resolution stage) and samples both.

Measured, per config: build time (unets + Imagen + weights), the first `train_on_batch`
(trace/compile + one step), steady-state `train_on_batch` (mean, std and median of
`--steps` steps after `--warmup` steps, the first included), the first `sample` call
(trace/compile + the loop) and a second call, parameter counts and peak RSS. Each config
runs in its own subprocess so peak RSS and compile caches are per config.
"""

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

CONFIGS = ("tiny64", "cascade64to128")

# --- bench_reference.py's configs, verbatim -------------------------------------------
BASE_UNET_KW = dict(dim=32, cond_dim=128, dim_mults=(1, 2, 4), num_resnet_blocks=2,
                    layer_attns=(False, True, True), layer_cross_attns=(False, True, True))
SR_UNET_KW = dict(dim=32, dim_mults=(1, 2, 4), num_resnet_blocks=(2, 2, 2),
                  layer_attns=(False, False, True), layer_cross_attns=(False, False, True))
IMAGEN_KW = dict(cond_drop_prob=0.1, text_embed_dim=128)
BATCH, TEXT_LEN, TEXT_DIM, VALID_TOKENS = 4, 16, 128, 12
# Reference defaults: (warmup, steps, sampling steps per unet).
DEFAULTS = dict(tiny64=(3, 6, 32), cascade64to128=(1, 3, 16))


class Timer:
    def __enter__(self):
        self.w0, self.c0, self.s0 = time.perf_counter(), time.process_time(), os.times().system
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0  # user + system
        self.sys = os.times().system - self.s0  # kernel time: page faults, madvise, ...


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_inputs(image_size):
    """Text like the reference's make_text (values differ: numpy, not torch, RNG)."""
    rng = np.random.default_rng(1234)
    embeds = rng.standard_normal((BATCH, TEXT_LEN, TEXT_DIM)).astype("float32")
    masks = np.zeros((BATCH, TEXT_LEN), dtype=bool)
    for i in range(BATCH):  # valid lengths 12, 11, 10, 9
        masks[i, : VALID_TOKENS - i] = True
    embeds = np.where(masks[..., None], embeds, 0.0).astype("float32")
    images = np.random.default_rng(7).random((BATCH, image_size, image_size, 3), "float32")
    return images, embeds, masks


def parse_jit(value):
    value = value.lower()
    if value in ("auto",):
        return "auto"
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"--jit must be auto, true or false. Received: {value!r}")


def train_steps(imagen, unet_number, batch, warmup, steps, jit):
    import keras

    opt = keras.optimizers.Adam(1e-4, beta_1=0.9, beta_2=0.99, epsilon=1e-8)
    imagen.compile(optimizer=opt, unet_number=unet_number, jit_compile=jit)
    walls, cpus, syss, losses = [], [], [], []
    first = None
    for i in range(warmup + steps):
        with Timer() as t:
            loss = float(imagen.train_on_batch(batch))  # float() waits for the step
        losses.append(round(loss, 4))
        if i == 0:
            first = t
        if i >= warmup:
            walls.append(t.wall)
            cpus.append(t.cpu)
            syss.append(t.sys)
    return dict(
        train_jit_compile=imagen.jit_compile,
        train_first_step_s=round(first.wall, 3),
        train_first_step_cpu_s=round(first.cpu, 3),
        train_step_s_mean=statistics.mean(walls),
        train_step_s_std=statistics.stdev(walls) if len(walls) > 1 else 0.0,
        train_step_s_median=statistics.median(walls),
        train_step_cpu_s_median=statistics.median(cpus),
        train_step_sys_s_median=statistics.median(syss),
        train_step_s_all=[round(w, 3) for w in walls],
        train_warmup_steps=warmup,
        train_measured_steps=steps,
        train_losses=losses,
    )


def time_sampling(model, embeds, masks, **kwargs):
    from keras import ops

    res = {}
    for name, seed in (("first", 0), ("second", 1)):
        with warnings.catch_warnings():  # untrained stages sample noise; fine for timing
            warnings.simplefilter("ignore")
            with Timer() as t:
                out = model.sample(text_embeds=embeds, text_masks=masks, cond_scale=3.0,
                                     seed=seed, verbose=0, **kwargs)
                outs = out if isinstance(out, list) else [out]
                arrays = [ops.convert_to_numpy(o) for o in outs]  # waits for the result
        res[f"sample_{name}_s"] = round(t.wall, 3)
        res[f"sample_{name}_cpu_s"] = round(t.cpu, 3)
        res[f"sample_{name}_sys_s"] = round(t.sys, 3)
    res["sample_out_shapes"] = [list(a.shape) for a in arrays]
    res["sample_out_range"] = [float(arrays[-1].min()), float(arrays[-1].max())]
    return res


def bench_config(name, args, emit=lambda res: None):
    import keras

    from imagen_keras import ElucidatedImagen, Imagen, Unet

    keras.utils.set_random_seed(0)
    warmup, steps, sample_steps = DEFAULTS[name]
    warmup = args.warmup if args.warmup is not None else warmup
    steps = args.steps if args.steps is not None else steps
    sample_steps = args.sample_steps if args.sample_steps is not None else sample_steps
    cascade = name == "cascade64to128"
    sizes = (64, 128) if cascade else (64,)
    kwargs = [BASE_UNET_KW, SR_UNET_KW] if cascade else [BASE_UNET_KW]

    with Timer() as t_build:
        unets = [Unet(**kw) for kw in kwargs]
        imagen = Imagen(unets, image_sizes=sizes, timesteps=1000, **IMAGEN_KW)
        imagen.build()
    params = [u.count_params() for u in imagen.unets]
    res = dict(
        config=name, unet_kwargs=kwargs,
        imagen_kwargs=dict(image_sizes=sizes, timesteps=1000, **IMAGEN_KW), batch=BATCH,
        build_s=round(t_build.wall, 3), params=sum(params),
        **{f"params_unet{i + 1}": p for i, p in enumerate(params)},
    )
    emit(res)
    images, embeds, masks = make_inputs(sizes[-1])
    batch = {"images": images, "text_embeds": embeds, "text_masks": masks}
    unet_number = len(sizes)  # tiny64: unet 1; cascade: unet 2 only, as the reference
    r = train_steps(imagen, unet_number, batch, warmup, steps, args.jit)
    prefix = "train_unet2_" if cascade else "train_"
    res.update({k.replace("train_", prefix, 1): v for k, v in r.items()})
    emit(res)

    # Like the reference: a second model with few sampling steps sharing the trained unets.
    sample_kwargs = dict(return_all_unet_outputs=cascade)
    if args.sampler == "heun":  # EDM: 2 unet calls per step (1 on the last)
        sampler = ElucidatedImagen(
            imagen.unets, image_sizes=sizes, num_sample_steps=sample_steps, **IMAGEN_KW)
    else:
        sampler = Imagen(imagen.unets, image_sizes=sizes, timesteps=sample_steps, **IMAGEN_KW)
        sample_kwargs["sampler"] = args.sampler
    res.update(sample_steps_per_unet=sample_steps, cond_scale=3.0, sampler=args.sampler)
    res.update(time_sampling(sampler, embeds, masks, **sample_kwargs))
    res["sample_second_s_per_step"] = round(
        res["sample_second_s"] / (sample_steps * len(sizes)), 4)
    return res


def child(args):
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
        if args.flush_denormal:
            torch.set_flush_denormal(True)
    with Timer() as t:
        import imagen_keras
    env = dict(backend=backend, keras=keras.__version__, imagen_keras=imagen_keras.__version__,
               import_s=round(t.wall, 2), loadavg_start=os.getloadavg(), jit_arg=args.jit)
    if backend == "torch":
        import torch

        env.update(torch=torch.__version__, threads=torch.get_num_threads(),
                   flush_denormal=args.flush_denormal)
    elif backend == "jax":
        import jax

        env.update(jax=jax.__version__)
    else:
        import tensorflow as tf

        env.update(tensorflow=tf.__version__)
    def emit(res):  # a partial record after each phase survives a --timeout
        print(json.dumps(dict(res, **env, partial=True)), flush=True)

    with Timer() as total:
        res = bench_config(args.child, args, emit)
    res.update(env)
    res.update(wall_s_total=round(total.wall, 2), cpu_s_total=round(total.cpu, 2),
               cpu_over_wall=round(total.cpu / max(total.wall, 1e-9), 2),
               loadavg_end=os.getloadavg(), peak_rss_mb=round(peak_rss_mb(), 1))
    print(json.dumps(res), flush=True)


# --- report ---------------------------------------------------------------------------

def _fmt(value, scale=1.0, digits=2):
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _label(rec):
    if "backend" not in rec:
        return f"imagen-pytorch {rec.get('imagen_pytorch', '')} (torch {rec.get('torch', '')})"
    jit = rec.get("train_jit_compile", rec.get("train_unet2_jit_compile"))
    sampler = rec.get("sampler", "ancestral")
    return f"keras/{rec['backend']} (jit_compile={jit}, {sampler})"


def table(records):
    """Markdown table of ours and the reference (records from either script).

    The reference samples eagerly once: its one call is listed as the first call, and its
    per-step figure comes from it. CPU seconds (`time.process_time`) are less sensitive to
    other load on a shared machine than wall seconds.
    """
    head = ("| config | implementation | params | build s | 1st train step s "
            "| train step s: median (mean ± std) | train step CPU s | sample 1st call s "
            "| sample 2nd call s | sample s/step (CPU s/step) | peak RSS MB |")
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for rec in sorted(records, key=lambda r: (r["config"], "backend" in r, r.get("backend", ""))):
        if "params" not in rec:
            lines.append(f"| {rec['config']} | {_label(rec)} | error: {rec['error']} |")
            continue
        p = "train_unet2_" if rec["config"] == "cascade64to128" else "train_"
        step = _fmt(rec.get(p + "step_s_median"))
        if rec.get(p + "step_s_mean") is not None:
            step += f" ({_fmt(rec[p + 'step_s_mean'])} ± {_fmt(rec[p + 'step_s_std'])})"
        n_unets = 2 if rec["config"] == "cascade64to128" else 1
        steps = (rec.get("sample_steps_per_unet") or rec.get("sample_steps") or 1) * n_unets
        if "sample_second_s" in rec:  # ours: the compiled second call
            wall, cpu = rec["sample_second_s"], rec["sample_second_cpu_s"]
        else:
            wall, cpu = rec.get("sample_s"), rec.get("sample_cpu_s")
        per_step = "-" if wall is None else f"{wall / steps:.2f} ({cpu / steps:.2f})"
        note = f" ({rec['error']}: partial)" if "error" in rec else ""
        first_sample = rec.get("sample_first_s", rec.get("sample_s"))
        lines.append(
            f"| {rec['config']} | {_label(rec)}{note} | {rec['params']:,} "
            f"| {_fmt(rec.get('build_s'))} "
            f"| {_fmt(rec.get(p + 'first_step_s'))} | {step} "
            f"| {_fmt(rec.get(p + 'step_cpu_s_median'))} | {_fmt(first_sample)} "
            f"| {_fmt(rec.get('sample_second_s'))} | {per_step} "
            f"| {rec.get('peak_rss_mb', '-')} |"
        )
    return "\n".join(lines)


def load_records(paths):
    records = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        records.extend(data["results"] if isinstance(data, dict) else data)
    return records


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="*", default=list(CONFIGS), choices=CONFIGS,
                   help="configs to run (default: both)")
    p.add_argument("--steps", type=int, default=None,
                   help="measured train steps (default: the reference's, 6 / 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="train steps before measuring, the compile step included "
                        "(default: the reference's, 3 / 1)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="sampling steps per unet (default: the reference's, 32 / 16)")
    p.add_argument("--sampler", default="ancestral", choices=("ancestral", "ddim", "heun"),
                   help="sampler to time: Imagen's ancestral or DDIM, or ElucidatedImagen's "
                        "Heun (all sharing the trained unets)")
    p.add_argument("--jit", type=parse_jit, default="auto",
                   help="jit_compile for Imagen.compile: auto, true or false")
    p.add_argument("--backend", default=None, choices=("jax", "tensorflow", "torch"),
                   help="sets KERAS_BACKEND (default: the environment's)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch only: torch.set_flush_denormal(True), as XLA and TF do on CPU")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per config; on expiry keep the phases finished so far")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    p.add_argument("--summarize", nargs="*", default=None, metavar="JSON",
                   help="print one markdown table of result files (ours and reference) "
                        "and exit; globs allowed")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    if args.summarize is not None:
        paths = [q for pat in args.summarize for q in sorted(glob.glob(pat))]
        print(table(load_records(paths)))
        return
    if args.child:
        return child(args)

    results, t0 = [], time.perf_counter()
    passthrough = [a for a in sys.argv[1:] if a not in CONFIGS and a != "--config"]
    for name in args.config:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name] + passthrough
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ,
                                  timeout=args.timeout)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:  # the child is killed; keep its partial record
            decode = lambda b: b.decode() if isinstance(b, bytes) else (b or "")
            stdout, stderr, rc = decode(e.stdout), decode(e.stderr), f"timeout {args.timeout} s"
        line = next((x for x in reversed(stdout.splitlines()) if x.startswith("{")), None)
        backend = os.environ.get("KERAS_BACKEND")
        rec = json.loads(line) if line else dict(config=name, backend=backend)
        if rc != 0 or line is None or rec.get("partial"):
            rec.update(error=f"rc={rc}", stderr_tail=stderr[-3000:])
            print(stderr[-3000:], file=sys.stderr)
        results.append(rec)
    print(table(results))
    summary = dict(results=results, total_wall_s=round(time.perf_counter() - t0, 1),
                   argv=sys.argv[1:], date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   machine=dict(nproc=os.cpu_count(), uname=os.uname().release))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"# wrote {args.out} (total {summary['total_wall_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
