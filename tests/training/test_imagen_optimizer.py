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
