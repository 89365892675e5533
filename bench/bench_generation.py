"""Sampling time of the tiny64 config before and after a change of the generation code.

Runs the same public calls (`Imagen.sample` at cond_scale 3, then at new scales) against
two source trees, each in its own process, interleaved (A B A B ...), and writes one JSON
line per run: the first call (compile + run), the steady per-step time, and the time to
the first image for a cond_scale not used before (which recompiled the whole loop before
issue #10). Wall and process CPU seconds and the load average are recorded beside each
figure; the summary gives medians and min-max and draws no conclusion that overlapping
ranges do not support.

    git worktree add /tmp/imagen-before 293bb96
    python bench/bench_generation.py --before /tmp/imagen-before --after . \
        --backend jax --rounds 2 --steps 8 --out bench/results/generation_tiny64.jsonl
"""

import argparse
import json
import os
import subprocess
import sys
import time

CONFIG = dict(
    dim=32,
    cond_dim=128,
    dim_mults=(1, 2, 4),
    num_resnet_blocks=2,
    layer_attns=(False, True, True),
    layer_cross_attns=(False, True, True),
)
BATCH, TEXT_LEN, TEXT_DIM = 4, 16, 128


def worker(steps, repeats):
    """One process: time the sampling calls; print one JSON line."""
    import keras
    import numpy as np

    from imagen_keras import Imagen, Unet

    keras.utils.set_random_seed(0)
    imagen = Imagen(
        Unet(**CONFIG),
        image_sizes=64,
        timesteps=steps,
        cond_drop_prob=0.1,
        text_embed_dim=TEXT_DIM,
    )
    imagen.build()
    imagen.unet_train_steps.assign([1])
    rng = np.random.default_rng(1234)
    embeds = rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)).astype("float32")

    def timed(cond_scale, seed):
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        out = imagen.sample(text_embeds=embeds, cond_scale=cond_scale, seed=seed, verbose=0)
        keras.ops.convert_to_numpy(out)
        return dict(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu, load1=load)

    record = dict(backend=keras.backend.backend(), steps=steps, batch=BATCH)
    record["first_call"] = timed(3.0, 0)
    record["steady"] = [timed(3.0, i + 1) for i in range(repeats)]
    record["new_cond_scale"] = [timed(scale, 0) for scale in (5.0, 7.5)]
    record["steady_s_per_step"] = sorted(r["wall_s"] / steps for r in record["steady"])
    print("RESULT " + json.dumps(record))


def run_one(source, label, backend, steps, repeats):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.path.abspath(source))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", "--steps", str(steps), "--repeats", str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        cwd=os.path.abspath(source),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    record = json.loads(lines[-1][len("RESULT ") :])
    record.update(label=label, source=os.path.abspath(source), date=time.strftime("%F %T"))
    return record


def summarize(records):
    lines = ["| code | first call s | steady s/step (min-max) | new cond_scale s (min-max) |"]
    lines.append("|---|---|---|---|")
    for label in ("before", "after"):
        rows = [r for r in records if r["label"] == label]
        if not rows:
            continue
        first = sorted(r["first_call"]["wall_s"] for r in rows)
        per_step = sorted(x for r in rows for x in r["steady_s_per_step"])
        new = sorted(x["wall_s"] for r in rows for x in r["new_cond_scale"])
        lines.append(
            f"| {label} | {first[len(first) // 2]:.1f} ({first[0]:.1f}-{first[-1]:.1f}) | "
            f"{per_step[len(per_step) // 2]:.3f} ({per_step[0]:.3f}-{per_step[-1]:.3f}) | "
            f"{new[len(new) // 2]:.2f} ({new[0]:.2f}-{new[-1]:.2f}) |"
        )
    loads = [x["load1"] for r in records for x in [r["first_call"], *r["steady"]]]
    lines.append(
        f"\nload average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on "
        f"{os.cpu_count()} CPUs" + ("  **WARNING: machine not quiet**" if max(loads) > 1.5 else "")
    )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--before")
    parser.add_argument("--after", default=".")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.repeats)
    sources = [("before", args.before)] if args.before else []
    sources.append(("after", args.after))
    records = []
    for _ in range(args.rounds):
        for label, source in sources:
            record = run_one(source, label, args.backend, args.steps, args.repeats)
            records.append(record)
            print(json.dumps(record), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
    print(summarize(records))


if __name__ == "__main__":
    main()
