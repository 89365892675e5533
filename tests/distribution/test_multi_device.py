"""One device vs 2 virtual CPU devices: the same global batch must give the same step.

TensorFlow runs `MirroredStrategy` over 2 logical CPUs, JAX `DataParallel` over 2 forced
host devices; both need the device split before the backend initialises, so the training
runs in a subprocess (`multi_device_worker.py`) with its own environment, once per module.
On TensorFlow the worker makes the noise a function of the global batch position (replica
r draws the rows one device draws for those examples), so the only difference left is
how the loss is scaled across replicas; on JAX the SPMD program draws for the global
batch, so the model's own draws are already identical.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

import imagen_keras
from tests.distribution import TWO_HOST_DEVICES_XLA_FLAGS

BACKEND = keras.backend.backend()
WORKER = pathlib.Path(__file__).with_name("multi_device_worker.py")
STEPS = 2  # multi_device_worker.STEPS

pytestmark = pytest.mark.skipif(
    BACKEND not in ("jax", "tensorflow"),
    reason="Keras' torch backend has no multi-device engine (its error is tested in "
    "test_distribution.py)",
)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TWO_HOST_DEVICES_XLA_FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    package_root = str(pathlib.Path(imagen_keras.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        pytest.fail(f"The worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def test_two_replicas_are_used(report):
    assert report["single"]["num_replicas"] == 1
    assert report["multi"]["num_replicas"] == report["multi"]["scope_replicas"] == 2


def test_same_global_batch_gives_the_weights_of_one_device(report):
    # A loss summed (not averaged) over 2 replicas moves the weights twice as far:
    # update_ratio 2, relative_error 1.
    assert report["same_init"] == 0.0
    assert report["update_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert report["relative_error"] < 1e-3


def test_logged_loss_is_the_global_batch_mean(report):
    assert report["multi"]["loss"] == pytest.approx(report["single"]["loss"], rel=1e-4)


def test_step_counter_counts_each_step_once_on_every_replica(report):
    assert report["single"]["steps"] == [[STEPS]]
    assert report["multi"]["steps"] == [[STEPS]] * len(report["multi"]["steps"])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused Adam update is TensorFlow's")
def test_fused_adam_under_mirrored_strategy_matches_one_device(report):
    adam = report["adam"]
    assert adam["same_init"] == 0.0
    assert adam["replicas_agree"]  # weights, m, v and EMA equal on both replicas
    assert adam["moved"] > 1e-3  # lr 1e-2 for 2 steps
    # Adam hides a loss scaled by the replica count; the update applied twice, or one
    # replica's m and v updated for both, would not be hidden. What is left is the
    # all-reduce's rounding, grown by 2 steps of a large learning rate (~1e-3 of the
    # update, as for Keras' own per-variable Adam).
    assert adam["weights_error"] < 1e-2 * adam["moved"]
    assert adam["slots_relative_error"] < 1e-2


@pytest.mark.skipif(BACKEND != "tensorflow", reason="JAX draws once for the global batch")
def test_replicas_draw_different_noise_from_one_seed_state(report):
    draws, states = report["multi"]["draws"], report["multi"]["seed_states"]
    for per_replica in draws:
        assert per_replica[0] != per_replica[1]
    assert draws[0] != draws[1]  # and the state advances between draws
    assert len(states) == 2 and states[0] == states[1]


@pytest.mark.skipif(BACKEND != "jax", reason="ModelParallel is JAX's (keras.distribution)")
def test_model_parallel_splits_the_unet_and_keeps_the_maths(report):
    parallel = report["model_parallel"]
    assert parallel["num_replicas"] == 1  # one copy of the weights, split over 2 devices
    assert parallel["same_init"] == 0.0
    assert parallel["relative_error"] < 1e-3
    assert parallel["steps"] == [[STEPS]]
    split = {
        path: (spec, shard, shape)
        for path, (spec, shard, shape) in parallel["sharding"].items()
        if "model" in spec
    }
    # Megatron pairs: attention (to_q out, to_out in), feed-forward, resnet convolutions.
    expected = {
        "attn_0/to_q/kernel": 1,
        "attn_0/to_out/kernel": 0,
        "ff_0/proj_in/kernel": 1,
        "ff_0/proj_out/kernel": 0,
        "block1/project/kernel": 3,
        "block2/project/kernel": 2,
        "time_mlp/kernel": 1,
    }
    for suffix, axis in expected.items():
        matches = [path for path in split if path.endswith(suffix)]
        assert matches, f"no split weight ends with {suffix}: {sorted(split)}"
        for path in matches:
            spec, shard, shape = split[path]
            assert spec[axis] == "model", (path, spec)
            assert shard[axis] * 2 == shape[axis], (path, shard, shape)
    # Small or indivisible weights stay whole: norms, biases, the 3-channel last conv.
    whole = parallel["sharding"]
    (final,) = [spec for path, (spec, _, _) in whole.items() if path.endswith("final_conv/kernel")]
    assert "model" not in final
    assert all("model" not in spec for path, (spec, _, _) in whole.items() if "norm" in path)
    assert len(split) >= 10
