"""Two processes on loopback train one recipe together, with the command a user runs.

JAX: two processes joined by `jax.distributed` (the `KERAS_DISTRIBUTION_*` variables that
`keras.distribution.initialize()` reads; one CPU device each, 2 devices in all), strategy
`auto`, which picks `data_parallel`. TensorFlow: two `MultiWorkerMirroredStrategy`
workers from `TF_CONFIG`, strategy `auto`, which picks `multi_worker`. Both processes
share the run folder; only the chief writes the checkpoint and the grid.

TensorFlow runs by default (about 55 s on 2 CPU cores: it caught the Keras
multi-worker bugs worked around in `imagen_keras/backend.py`); JAX is marked slow (its
two processes each compile the step: about 3 minutes), run it with `--run-slow`.
"""

import os
import pathlib
import socket
import subprocess
import sys

import keras
import pytest

import imagen_keras
from imagen_keras.training import checkpoint_metadata
from tests.recipes.test_train_cli import write_recipe

BACKEND = keras.backend.backend()

pytestmark = [
    *([pytest.mark.slow] if BACKEND == "jax" else []),
    pytest.mark.skipif(
        BACKEND not in ("jax", "tensorflow"),
        reason="Keras' torch backend has no multi-process engine",
    ),
]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def process_env(rank, ports):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    package_root = str(pathlib.Path(imagen_keras.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if BACKEND == "jax":
        env["JAX_PLATFORMS"] = "cpu"
        env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = f"localhost:{ports[0]}"
        env["KERAS_DISTRIBUTION_NUM_PROCESSES"] = "2"
        env["KERAS_DISTRIBUTION_PROCESS_ID"] = str(rank)
    else:
        workers = [f"localhost:{port}" for port in ports]
        env["TF_CONFIG"] = (
            f'{{"cluster": {{"worker": {workers!r}}}, '
            f'"task": {{"type": "worker", "index": {rank}}}}}'
        ).replace("'", '"')
    return env


def test_two_processes_train_one_recipe_and_one_checkpoint_results(tmp_path):
    recipe = write_recipe(tmp_path, steps=2, checkpoint_every=2, sample_every=None)
    folder = tmp_path / "run"
    ports = free_ports(2)
    command = [sys.executable, "-m", "imagen_keras.recipes.train", "--config", recipe]
    command += ["--output", str(folder), "train.steps=2", "train.distribution=auto"]
    workers = [
        subprocess.Popen(
            command,
            env=process_env(rank, ports),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=1200)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for rank, (worker, out) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, f"process {rank}:\n{out[-4000:]}"
        name = "data_parallel" if BACKEND == "jax" else "multi_worker"
        assert f"Distribution: {name} over 2 replicas" in out, out[-4000:]
    checkpoints = sorted(os.listdir(folder / "checkpoints"))
    assert checkpoints == ["checkpoint.2.zip"], checkpoints
    meta = checkpoint_metadata(str(folder / "checkpoints" / "checkpoint.2.zip"))
    assert meta["num_steps_taken"] == [2]
    assert (folder / "samples.png").exists()
    # Only the chief wrote: one config, one log, and no stray temporary files.
    leftovers = [n for n in os.listdir(folder) if n.startswith(".") or n.endswith(".tmp")]
    assert not leftovers, leftovers
