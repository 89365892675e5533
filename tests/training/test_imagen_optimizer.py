"""`imagen_optimizer`: the reference's defaults, argument checks, and `.keras` persistence."""

import keras
import numpy as np
import pytest

from imagen_keras.training import (
    ImagenAdam,
    SkipNonFiniteOptimizer,
    WarmupCosineDecay,
    imagen_optimizer,
)
from tests.training.conftest import compile_model, dense_model, weights


def test_defaults_are_imagen_trainer_defaults():
    optimizer = imagen_optimizer()
    assert isinstance(optimizer, SkipNonFiniteOptimizer)
    assert optimizer.max_consecutive_non_finite == 5
    adam = optimizer.inner_optimizer
    assert isinstance(adam, ImagenAdam)
    config = adam.get_config()
    assert config["learning_rate"] == pytest.approx(1e-4)
    assert (config["beta_1"], config["beta_2"], config["epsilon"]) == (0.9, 0.99, 1e-8)
    assert config["global_clipnorm"] is None and config["gradient_accumulation_steps"] is None
    assert config["use_ema"] and config["ema_momentum"] == 0.9999
    assert (config["ema_update_after_step"], config["ema_update_every"]) == (100, 10)
    assert (config["ema_inv_gamma"], config["ema_power"]) == (1.0, 2 / 3)
    assert config["ema_schedule"] == "imagen"


def test_arguments_map_to_keras():
    optimizer = imagen_optimizer(
        lr=3e-4,
        max_grad_norm=1.0,
        warmup_steps=10,
        cosine_decay_max_steps=100,
        gradient_accumulation_steps=1,
        skip_non_finite=False,
        amsgrad=True,
    )
    assert isinstance(optimizer, ImagenAdam)
    assert optimizer.global_clipnorm == 1.0 and optimizer.amsgrad
    assert optimizer.gradient_accumulation_steps is None  # 1 means no accumulation
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupCosineDecay)
    assert (schedule.learning_rate, schedule.warmup_steps) == (3e-4, 10)
    assert schedule.cosine_decay_max_steps == 100
    assert (
        imagen_optimizer(gradient_accumulation_steps=3).inner_optimizer.gradient_accumulation_steps
        == 3
    )


def _adam_steps(optimizer, steps=5):
    """Weights after `steps` updates of fixed gradients spanning 1e-10..1 in magnitude."""
    rng = np.random.default_rng(0)
    shapes = [(16, 8), (8,), (3, 3, 2, 4)]
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    for _ in range(steps):
        grads = [
            (rng.normal(size=s) * 10.0 ** rng.uniform(-10, 0, size=s)).astype("float32")
            for s in shapes
        ]
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return start, [keras.ops.convert_to_numpy(v) for v in variables]


def test_update_is_keras_adams():
    """`ImagenAdam`'s update (on TensorFlow one fused kernel per variable) is Keras'."""
    start, ours = _adam_steps(ImagenAdam(1e-2, use_ema=False))
    _, keras_adam = _adam_steps(keras.optimizers.Adam(1e-2, beta_2=0.99, epsilon=1e-8))
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, start)) > 1e-2
    for a, b in zip(ours, keras_adam):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's update")
def test_tensorflow_update_is_one_kernel_per_variable():
    """The graph of an update: one `ResourceApplyAdam` per variable, and far fewer nodes
    than Keras' Adam (graph size is what the first train step pays for)."""
    import tensorflow as tf

    def graph_ops(optimizer):
        variables = [keras.Variable(np.ones((4, 4), "float32")) for _ in range(20)]
        optimizer.build(variables)
        grads = [tf.ones((4, 4))] * len(variables)
        graph = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function()
        return [op.type for op in graph.graph.get_operations()]

    ours = graph_ops(ImagenAdam(use_ema=False))
    theirs = graph_ops(keras.optimizers.Adam())
    assert ours.count("ResourceApplyAdam") == 20
    assert len(ours) < len(theirs) / 3, (len(ours), len(theirs))


def test_keras_round_trip_resumes_exactly(tmp_path, data):
    """Optimizer state, EMA weights and skip counters survive `.keras`; training resumes."""
    x, y = data
    x_nan = x.copy()
    x_nan[5, 1] = np.nan
    optimizer = imagen_optimizer(
        lr=1e-2,
        warmup_steps=4,
        ema_update_after_step=1,
        ema_update_every=2,
        max_consecutive_non_finite=7,
    )
    model = compile_model(dense_model(), optimizer)
    model.fit(x_nan[:16], y[:16], batch_size=4, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, SkipNonFiniteOptimizer)
    assert loaded.optimizer.get_config() == optimizer.get_config()
    for got, expected in zip(loaded.optimizer.variables, optimizer.variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected)
        )
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.skipped_steps)) == 1
    # Both continue with the same batches and end with identical weights and EMA.
    for m in (model, loaded):
        m.fit(x[16:], y[16:], batch_size=4, shuffle=False, verbose=0)
    for got, expected in zip(weights(loaded), weights(model)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    for got, expected in zip(loaded.optimizer.variables, optimizer.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(expected),
            rtol=1e-6,
            atol=1e-7,
        )


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"ema_schedule": "karras"}, "ema_schedule='karras'"),
        ({"ema_update_every": 0}, "ema_update_every=0"),
        ({"ema_update_after_step": -1}, "ema_update_after_step=-1"),
        ({"ema_inv_gamma": 0.0}, "ema_inv_gamma=0.0"),
        ({"ema_power": -1.0}, "ema_power=-1.0"),
        ({"ema_min_value": 0.5, "ema_beta": 0.4}, "ema_min_value=0.5"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
        ({"max_grad_norm": 0.0}, "max_grad_norm=0.0"),
        ({"lr": -1e-4}, "lr=-0.0001"),
        ({"lr": -1e-4, "warmup_steps": 5}, "learning_rate=-0.0001"),
        ({"max_consecutive_non_finite": 0}, "max_consecutive_non_finite=0"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        imagen_optimizer(**kwargs)
