"""A recipe trains on 2 virtual devices through its `train.distribution` key, with the
command a single-device user runs (JAX: 2 forced host devices; TensorFlow: 2 logical
CPUs, which must be made before TensorFlow starts, so a two-line driver does that and
then calls the command's `main`)."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

import imagen_keras
from imagen_keras.training import checkpoint_metadata
from tests.distribution import TWO_HOST_DEVICES_XLA_FLAGS
from tests.recipes.test_train_cli import write_recipe

BACKEND = keras.backend.backend()

pytestmark = pytest.mark.skipif(
    BACKEND not in ("jax", "tensorflow"),
    reason="Keras' torch backend has no multi-device engine (its error is tested in "
    "test_distribution.py)",
)

TF_DRIVER = (
    "import sys, tensorflow as tf\n"
    "cpu = tf.config.list_physical_devices('CPU')[0]\n"
    "two = [tf.config.LogicalDeviceConfiguration()] * 2\n"
    "tf.config.set_logical_device_configuration(cpu, two)\n"
    "from imagen_keras.recipes.train import exit_process, main\n"
    "exit_process(main(sys.argv[1:]))\n"
)


def test_recipe_trains_on_two_devices_from_its_distribution_key(tmp_path):
    # jit, the default: eager two-device steps hung twice in XLA's CPU all-reduce in
    # full-suite runs (see tests/distribution/__init__.py)
    recipe = write_recipe(
        tmp_path, steps=2, checkpoint_every=2, sample_every=None, jit_compile="auto"
    )
    folder = tmp_path / "run"
    arguments = ["--config", recipe, "--output", str(folder), "train.steps=2"]
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    package_root = str(pathlib.Path(imagen_keras.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if BACKEND == "jax":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TWO_HOST_DEVICES_XLA_FLAGS}"
        env["JAX_PLATFORMS"] = "cpu"
        command = [sys.executable, "-m", "imagen_keras.recipes.train", *arguments]
        command.append("train.distribution=data_parallel")
    else:
        command = [sys.executable, "-c", TF_DRIVER, *arguments]
        command += ["train.distribution=mirrored", 'train.devices=["/cpu:0", "/cpu:1"]']
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    name = "data_parallel" if BACKEND == "jax" else "mirrored"
    assert f"Distribution: {name} over 2 replicas" in out, out[-4000:]
    checkpoint = folder / "checkpoints" / "checkpoint.2.zip"
    assert checkpoint_metadata(str(checkpoint))["num_steps_taken"] == [2]
    assert (folder / "samples.png").exists()
