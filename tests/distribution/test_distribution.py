"""distribution_scope, num_replicas, is_chief and ReplicaSeedGenerator in one process."""

import json

import keras
import numpy as np
import pytest

from imagen_keras.distribution import (
    ReplicaSeedGenerator,
    distribution_scope,
    is_chief,
    num_replicas,
)

BACKEND = keras.backend.backend()
OTHER_BACKENDS_STRATEGY = {"tensorflow": "data_parallel", "jax": "mirrored", "torch": "mirrored"}


def test_no_strategy_is_one_device_on_every_backend():
    with distribution_scope(None) as scope:
        assert scope.strategy is None
        assert scope.num_replicas == 1
        assert num_replicas() == 1
    assert is_chief()


def test_auto_on_one_device_uses_no_strategy():
    if BACKEND == "jax" and len(keras.distribution.list_devices()) > 1:
        pytest.skip("several JAX devices are visible")
    scope = distribution_scope("auto")
    assert scope.strategy is None and scope.num_replicas == 1


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy='ddp'"):
        distribution_scope("ddp")


@pytest.mark.parametrize("devices", ["cpu:0", [], [0, 1]])
def test_bad_devices_are_refused(devices):
    with pytest.raises(ValueError, match="devices="):
        distribution_scope("auto", devices=devices)


def test_a_strategy_of_another_backend_is_refused():
    strategy = OTHER_BACKENDS_STRATEGY[BACKEND]
    with pytest.raises(ValueError, match=f"strategy='{strategy}'"):
        distribution_scope(strategy)


@pytest.mark.skipif(BACKEND != "torch", reason="torch only")
@pytest.mark.parametrize(
    "strategy, devices",
    [("data_parallel", None), ("multi_worker", None), ("auto", ["cuda:0", "cuda:1"])],
)
def test_torch_refuses_several_devices_clearly(strategy, devices):
    with pytest.raises(ValueError, match="torch backend has no multi-device") as error:
        distribution_scope(strategy, devices=devices)
    assert "KERAS_BACKEND=jax" in str(error.value) and "strategy=None" in str(error.value)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute only")
def test_mirrored_scope_enters_the_strategy():
    import tensorflow as tf

    with distribution_scope("mirrored", devices=["/cpu:0"]) as scope:
        assert isinstance(scope.strategy, tf.distribute.MirroredStrategy)
        assert tf.distribute.get_strategy() is scope.strategy
        assert num_replicas() == 1
    assert not tf.distribute.has_strategy()


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution only")
def test_data_parallel_scope_sets_the_distribution():
    with distribution_scope("data_parallel") as scope:
        assert keras.distribution.distribution() is scope.strategy
        assert num_replicas() == len(keras.distribution.list_devices())
    assert keras.distribution.distribution() is None


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TF_CONFIG is read on TensorFlow only")
@pytest.mark.parametrize(
    "task, has_chief, chief",
    [
        ({"type": "worker", "index": 0}, False, True),
        ({"type": "worker", "index": 1}, False, False),
        ({"type": "worker", "index": 0}, True, False),
        ({"type": "chief", "index": 0}, True, True),
        ({"type": "evaluator", "index": 0}, True, False),
    ],
)
def test_is_chief_follows_tf_config(monkeypatch, task, has_chief, chief):
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    if has_chief:
        cluster["chief"] = ["localhost:3"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert is_chief() is chief


def test_replica_seed_generator_draws_like_keras_on_one_device():
    # One replica (every single-device run) keeps Keras' stream: same draws, same state.
    ours, keras_own = ReplicaSeedGenerator(seed=7), keras.random.SeedGenerator(seed=7)
    for _ in range(2):
        a = keras.random.normal((3, 4), seed=ours)
        b = keras.random.normal((3, 4), seed=keras_own)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ours.state), keras.ops.convert_to_numpy(keras_own.state)
    )
