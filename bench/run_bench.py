#!/usr/bin/env python
"""Interleaved benchmark driver: imagen-pytorch vs imagen-keras on three backends.

    .venv/bin/python bench/run_bench.py --threads 2                  # everything
    .venv/bin/python bench/run_bench.py --configs tiny64 --batches 4 --rounds 2 \
        --max-steps 6 --budget-s 30 --label "smoke run"             # a quick check
    .venv/bin/python bench/run_bench.py --summarize bench/results/RUN.jsonl

For each config and batch size it runs `--rounds` rounds; in each round every
implementation runs once, in its own fresh process (`worker.py`), one after the other:
reference, keras/tensorflow, keras/jax, keras/torch, reference, ... so slow drifts of the
machine hit all of them alike. Before each worker it waits (up to `--settle-s`) for the
1-minute load average to fall to `0.5 + threads` and records what it read.

Variants (`VARIANTS`): a setting a user can make, run as one more implementation in the
same rounds, e.g. `--impls reference tensorflow jax jax-no-ynn torch` adds JAX with XLA's
YNNPACK fusions off (`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`), reported as
its own row.

Threads (`--threads N`): the worker's environment gets OMP/MKL/OpenBLAS/TF thread
variables = N and, for N = 1, `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`; the worker then calls torch.set_num_threads /
set_num_interop_threads or tf.config.threading.set_{intra,inter}_op_parallelism_threads
with N, and, when N < nproc, pins itself to N CPUs (`--no-pin` to leave it free). Each
record holds what was set and what the library reports.

Output: every record is appended to `bench/results/<stamp>[_<label>].jsonl` as soon as it
arrives (a run that is interrupted keeps what it measured), then the markdown report
(`stats.report`) is written beside it as `.md`.

How long: each worker pays its own build and first step (trace/compile: 1-2 min on JAX
and TF for these models on a 2-core CPU) plus the measured steps. tiny64 batch 4, 2
rounds, 4 implementations, `--max-steps 6`: about 15-20 minutes on a 2-core machine.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import configs  # noqa: E402
import measure  # noqa: E402
import stats  # noqa: E402
from worker import RECORD_PREFIX  # noqa: E402

IMPLS = ("reference", "tensorflow", "jax", "torch")
# Settings a user can make, benched as implementations of their own (`--impls jax
# jax-no-ynn ...`): name -> (backend, environment added, row name in the report).
VARIANTS = {
    "jax-no-ynn": (
        "jax",
        {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="},
        "keras/jax, YNNPACK fusions off",
    ),
}
DEFAULT_REF_DIR = os.environ.get("IMAGEN_REF_DIR", "/tmp/imagen-pytorch-ref")


def thread_env(n):
    env = {
        k: str(n)
        for k in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS",
        )
    }
    if n == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def git_state(path):
    def git(*a):
        try:
            return subprocess.run(
                ["git", "-C", path, *a], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "imagen_keras")
    return dict(commit=git("rev-parse", "HEAD"), imagen_keras_dirty=bool(dirty))


def snapshot(commit):
    """Extract imagen_keras/ as of `commit` under /tmp; returns (path, full commit hash)."""
    full = subprocess.run(
        ["git", "-C", REPO, "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = os.path.join(tempfile.gettempdir(), f"imagen-keras-bench-{full[:12]}")
    if not os.path.isdir(os.path.join(path, "imagen_keras")):
        os.makedirs(path, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", REPO, "archive", full, "imagen_keras"], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(path)
    return path, full


def settle(threads, max_wait):
    """Wait until the 1-minute load average is at most 0.5 + threads (or max_wait s)."""
    t0 = time.perf_counter()
    limit = stats.LOAD_MARGIN + threads
    while True:
        load = measure.loadavg()
        waited = time.perf_counter() - t0
        if load is None or load[0] <= limit or waited >= max_wait:
            return (load[0] if load else None), round(waited, 1)
        time.sleep(5)


def worker_cmd(args, impl, config, batch, rnd):
    if impl == "reference":
        python = args.ref_python or os.path.join(DEFAULT_REF_DIR, "venv", "bin", "python")
        cmd = [python, os.path.join(HERE, "worker.py"), "--impl", "reference"]
    else:
        cmd = [
            sys.executable,
            os.path.join(HERE, "worker.py"),
            "--impl",
            "keras",
            "--jit",
            args.jit,
        ]
    cmd += [
        "--config",
        config,
        "--batch",
        str(batch),
        "--threads",
        str(args.threads),
        "--round",
        str(rnd),
        "--warmup-steps",
        str(args.warmup_steps),
        "--min-steps",
        str(args.min_steps),
        "--max-steps",
        str(args.max_steps),
        "--budget-s",
        str(args.budget_s),
        "--sample-reps",
        str(args.sample_reps),
    ]
    if args.sample_steps:
        cmd += ["--sample-steps", str(args.sample_steps)]
    nproc = os.cpu_count() or 1
    if args.pin and args.threads < nproc:
        cmd += ["--cpus", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: args.threads])]
    return cmd


def worker_env(args, impl):
    env = dict(os.environ)
    env.update(thread_env(args.threads))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if impl == "reference":
        ref_dir = DEFAULT_REF_DIR
        env.update(
            IMAGEN_REF_DIR=ref_dir,
            HF_HOME=os.path.join(ref_dir, "hf_home"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.pop("PYTHONPATH", None)
    else:
        backend, extra, label = VARIANTS.get(impl, (impl, {}, None))
        env["KERAS_BACKEND"] = backend
        for key, value in extra.items():  # appended to what the thread settings set
            env[key] = f"{env[key]} {value}" if env.get(key) else value
        if label:
            env["BENCH_IMPL_LABEL"] = label
        if args.keras_pythonpath:  # e.g. a snapshot of a committed imagen_keras
            env["PYTHONPATH"] = args.keras_pythonpath
    return env


def impl_name(impl):
    """The report's row name of a keras implementation or variant."""
    return VARIANTS[impl][2] if impl in VARIANTS else f"keras/{impl}"


def run_worker(args, impl, config, batch, rnd):
    load, waited = settle(args.threads, args.settle_s)
    cmd = worker_cmd(args, impl, config, batch, rnd)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=worker_env(args, impl),
            timeout=args.timeout,
            cwd=REPO,
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        stdout, stderr, rc = decode(e.stdout), decode(e.stderr), f"timeout {args.timeout} s"
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(RECORD_PREFIX)), None)
    name = "imagen-pytorch" if impl == "reference" else impl_name(impl)
    rec = (
        json.loads(line[len(RECORD_PREFIX) :])
        if line
        else dict(
            kind="measurement",
            impl=name,
            config=config,
            batch=batch,
            threads=args.threads,
            round=rnd,
            error=f"no record (rc={rc})",
        )
    )
    if rc != 0 and "error" not in rec:
        rec["error"] = f"rc={rc}"
    if "error" in rec:
        rec["stderr_tail"] = stderr[-2000:]
    rec.update(
        loadavg_launch=load, settle_wait_s=waited, process_wall_s=round(time.perf_counter() - t0, 2)
    )
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs", nargs="+", default=list(configs.CONFIGS), choices=sorted(configs.CONFIGS)
    )
    p.add_argument("--batches", nargs="+", type=int, default=list(configs.BATCH_SIZES))
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS + tuple(VARIANTS))
    p.add_argument("--threads", type=int, default=2, help="threads per worker (1 or 2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--min-steps", type=int, default=6)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument(
        "--budget-s",
        type=float,
        default=120.0,
        help="steady-state seconds per worker after which it stops",
    )
    p.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="sampling steps per unet (default: each config's)",
    )
    p.add_argument("--sample-reps", type=int, default=2)
    p.add_argument("--jit", default="auto", help="jit_compile of the keras workers")
    p.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin workers to --threads CPUs"
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=90.0,
        help="longest wait for a quiet machine before each worker",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    p.add_argument(
        "--ref-python",
        default=None,
        help="python of the imagen-pytorch venv (default: $IMAGEN_REF_DIR/venv/bin/python)",
    )
    p.add_argument(
        "--keras-pythonpath",
        default=None,
        help="PYTHONPATH of the keras workers (to bench another imagen_keras tree)",
    )
    p.add_argument(
        "--keras-commit",
        default=None,
        help="bench imagen_keras as of this commit (a `git archive` of it under "
        "/tmp), not the working tree, which others may be editing",
    )
    p.add_argument("--label", default="", help="words for the report header and file name")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument(
        "--summarize",
        default=None,
        metavar="JSONL",
        help="write the markdown report of an existing run and exit",
    )
    p.add_argument(
        "--flops",
        default=None,
        metavar="JSON",
        help="train-step FLOPs and matmul peak from bench/flops.py, for a GFLOP/s column",
    )
    args = p.parse_args()

    if args.summarize:
        write_report(args.summarize, args.flops)
        return

    stamp = time.strftime("%Y%m%d-%H%M")
    slug = "".join(ch if ch.isalnum() else "-" for ch in args.label.lower()).strip("-")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"{stamp}{'_' + slug if slug else ''}.jsonl")
    git = git_state(REPO)
    if args.keras_commit:
        args.keras_pythonpath, git["keras_commit"] = snapshot(args.keras_commit)
    elif args.keras_pythonpath:
        git["keras_pythonpath"] = args.keras_pythonpath
    else:
        git["keras_commit"] = git["commit"] + ("+modified" if git["imagen_keras_dirty"] else "")
    header = dict(
        kind="run",
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        label=args.label,
        argv=sys.argv[1:],
        machine=measure.machine_info(),
        loadavg=measure.loadavg(),
        git=git,
    )
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
    print(f"# writing {path}", file=sys.stderr)
    for config in args.configs:
        for batch in args.batches:
            for rnd in range(1, args.rounds + 1):
                for impl in args.impls:
                    rec = run_worker(args, impl, config, batch, rnd)
                    with open(path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    train = (rec.get("train") or {}).get("wall_s") or []
                    med = f"{sorted(train)[len(train) // 2]:.3f} s/step" if train else "-"
                    print(
                        f"# {config} b{batch} round {rnd} {rec['impl']}: train {med}"
                        f"{' ERROR ' + rec['error'][:200] if rec.get('error') else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
    write_report(path, args.flops)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_report(path, flops_path=None):
    records = read_jsonl(path)
    flops = None
    if flops_path:
        with open(flops_path) as f:
            flops = json.load(f)
    run = next((r for r in records if r.get("kind") == "run"), {})
    m = run.get("machine") or next((r["machine"] for r in records if r.get("machine")), {})
    versions = {}
    for r in records:
        for k, v in (r.get("versions") or {}).items():
            versions.setdefault(f"{r['impl']}: {k}", v)
    git = run.get("git") or {}
    header = dict(
        date=run.get("date"),
        machine=(
            f"{m.get('cpu_model')}, nproc {m.get('nproc')}, kernel {m.get('kernel')}, "
            f"python {m.get('python')}, load average at start {run.get('loadavg')}"
        ),
        versions=", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        command=(
            f"`bench/run_bench.py {' '.join(run.get('argv', []))}` (bench at commit "
            f"{git.get('commit', '?')[:10]}; imagen_keras "
            + (
                f"at commit {git['keras_commit'][:10]}"
                if git.get("keras_commit")
                else f"from PYTHONPATH {git.get('keras_pythonpath', run.get('keras_tree'))}"
            )
            + ")"
        ),
        label=run.get("label"),
    )
    out = os.path.splitext(path)[0] + ".md"
    with open(out, "w") as f:
        f.write(stats.report(records, header, flops=flops))
    print(f"# wrote {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
