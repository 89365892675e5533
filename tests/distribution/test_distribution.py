"""distribution_scope, num_replicas, is_chief and ReplicaSeedGenerator in one process."""

import json

import keras
import numpy as np
import pytest

from imagen_keras.distribution import (
    ReplicaSeedGenerator,
    distribution_scope,
    initialize_processes,
    is_chief,
    num_replicas,
    unet_layout_map,
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


@pytest.mark.parametrize(
    "strategy, model_parallel, match",
    [
        ("data_parallel", 2, "only used with strategy='model_parallel'"),
        ("model_parallel", 0, "model_parallel=0"),
        ("model_parallel", True, "model_parallel=True"),
    ],
)
def test_bad_model_parallel_is_refused(strategy, model_parallel, match):
    with pytest.raises(ValueError, match=match):
        distribution_scope(strategy, model_parallel=model_parallel)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.ModelParallel only")
def test_model_parallel_must_divide_the_devices():
    count = len(keras.distribution.list_devices())
    with pytest.raises(ValueError, match=f"divide the number of devices \\({count}\\)"):
        distribution_scope("model_parallel", model_parallel=count + 1)


class _FakeVariable:
    def __init__(self, path, shape):
        self.path, self.shape, self._layout = path, shape, None


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.ModelParallel only")
def test_unet_layout_map_splits_the_wide_weights_when_the_axis_divides():
    from imagen_keras.distribution import _DivisibleModelParallel

    # A mesh is only names here: the layouts are read, nothing is placed on the devices.
    mesh = keras.distribution.DeviceMesh(
        (1, 2), ("batch", "model"), devices=np.array(["cpu:0", "cpu:1"])
    )
    engine = _DivisibleModelParallel(layout_map=unet_layout_map(mesh), batch_dim_name="batch")
    cases = {
        ("imagen/unet/down_1/attn/attn_0/to_q/kernel", (16, 512)): (None, "model"),
        ("unet/mid_block1/cross_attn/to_kv/kernel", (16, 1024)): (None, "model"),
        ("unet/attn_pool/attn_1/to_kv/kernel", (16, 1024)): (None, "model"),
        ("unet/mid_attn/attn_0/to_kv/kernel", (32, 128)): (None, None),  # one shared head
        ("unet/up_0/attn/ff_0/proj_out/kernel", (64, 32)): ("model", None),
        ("unet/to_time_cond/kernel", (64, 64)): ("model", None),
        ("unet/down_0/resnet_block_0/block1/project/kernel", (3, 3, 16, 32)): (
            None,
            None,
            None,
            "model",
        ),
        ("unet/down_0/resnet_block_0/block2/project/kernel", (3, 3, 32, 32)): (
            None,
            None,
            "model",
            None,
        ),
        # An odd width stays whole instead of failing to shard.
        ("unet/up_1/init_block/block1/project/kernel", (3, 3, 32, 15)): (None,) * 4,
        ("unet/final_conv/kernel", (3, 3, 16, 3)): (None,) * 4,
        ("unet/down_0/resnet_block_0/block1/project/bias", (32,)): (None,),
    }
    for (path, shape), axes in cases.items():
        layout = engine.get_variable_layout(_FakeVariable(path, shape))
        assert tuple(layout.axes) == axes, path
    with pytest.raises(ValueError, match="no axis 'model'"):
        unet_layout_map(keras.distribution.DeviceMesh((1,), ("batch",), devices=["cpu:0"]))


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed only")
def test_multi_process_variables_must_come_together(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.delenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", raising=False)
    monkeypatch.delenv("KERAS_DISTRIBUTION_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="Missing: KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_"):
        initialize_processes()
    monkeypatch.delenv("KERAS_DISTRIBUTION_NUM_PROCESSES")
    assert initialize_processes() is False  # nothing configured: one process


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
