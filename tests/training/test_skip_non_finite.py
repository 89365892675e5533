"""A step with NaN/inf gradients never updates anything; it is counted, warned, then stopped."""

import keras
import numpy as np
import pytest

from imagen_keras.training import (
    NonFiniteStepMonitor,
    NonFiniteTrainingError,
    SkipNonFiniteOptimizer,
    ema_weights,
    imagen_optimizer,
)
from tests.training.conftest import RecordWeights, compile_model, dense_model, weights

BATCH = 4


def _read(variable):
    return int(keras.ops.convert_to_numpy(variable))


def _optimizer_state(optimizer):
    return [keras.ops.convert_to_numpy(v) for v in optimizer.variables]


def _fit(x, y, optimizer, callbacks=(), xla=False):
    model = compile_model(dense_model(), optimizer, xla=xla)
    recorder = RecordWeights()
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[recorder, *callbacks]
    )
    return model, recorder


def test_nan_batch_leaves_weights_untouched_and_is_counted(data):
    x, y = data
    x = x.copy()
    x[3 * BATCH + 1, 0] = np.nan  # one NaN value in batch 3
    optimizer = imagen_optimizer(lr=1e-2, ema_update_after_step=0, ema_update_every=1)
    with pytest.warns(RuntimeWarning, match="Skipped 1 training step"):
        model, recorder = _fit(x, y, optimizer, callbacks=[NonFiniteStepMonitor()], xla=True)
    before, at_nan = recorder.history[2], recorder.history[3]
    for w_before, w_nan in zip(before, at_nan):
        np.testing.assert_array_equal(w_nan, w_before)
    assert not np.array_equal(recorder.history[4][0], before[0])  # training went on
    assert all(np.isfinite(w).all() for w in weights(model))
    assert all(np.isfinite(v).all() for v in _optimizer_state(optimizer))  # moments, EMA
    assert _read(optimizer.skipped_steps) == 1
    assert _read(optimizer.consecutive_skipped_steps) == 0
    assert _read(optimizer.iterations) == len(x) // BATCH - 1  # updates that happened
    with ema_weights(model, optimizer):
        assert all(np.isfinite(w).all() for w in weights(model))


def test_skipped_step_does_not_advance_accumulation_or_ema(data):
    """With a NaN micro-batch inserted, training equals training without it."""
    x, y = data
    nan_x = np.concatenate([x[:8], np.full((BATCH, x.shape[1]), np.nan, "float32"), x[8:]])
    nan_y = np.concatenate([y[:8], y[:BATCH], y[8:]])

    def optimizer():
        return imagen_optimizer(
            lr=1e-2,
            gradient_accumulation_steps=2,
            warmup_steps=3,
            ema_update_after_step=1,
            ema_update_every=1,
            ema_beta=0.5,
        )

    clean_optimizer, nan_optimizer = optimizer(), optimizer()
    clean, _ = _fit(x, y, clean_optimizer)
    skipped, _ = _fit(nan_x, nan_y, nan_optimizer)
    assert _read(nan_optimizer.skipped_steps) == 1
    for got, expected in zip(weights(skipped), weights(clean)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    own = len(nan_optimizer._variables)  # compare the inner optimizers' whole state
    for got, expected in zip(
        _optimizer_state(nan_optimizer)[own:], _optimizer_state(clean_optimizer)[own:]
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_monitor_stops_after_too_many_consecutive_skips(data):
    x, y = data
    x = x.copy()
    x[2 * BATCH : 5 * BATCH] = np.inf  # batches 2, 3, 4
    optimizer = imagen_optimizer(lr=1e-2, max_consecutive_non_finite=2)
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive steps had NaN or inf"):
        with pytest.warns(RuntimeWarning):
            model, recorder = _fit(x, y, optimizer, callbacks=[NonFiniteStepMonitor()])
    assert _read(optimizer.skipped_steps) == 2
    assert _read(optimizer.iterations) == 2


def test_monitor_limit_overrides_the_optimizer(data):
    x, y = data
    x = x.copy()
    x[BATCH : 2 * BATCH] = np.nan
    optimizer = imagen_optimizer(lr=1e-2, max_consecutive_non_finite=5)
    with pytest.raises(NonFiniteTrainingError, match="max_consecutive_non_finite=1"):
        _fit(x, y, optimizer, callbacks=[NonFiniteStepMonitor(max_consecutive_non_finite=1)])


def test_wraps_any_keras_optimizer_and_eager_apply():
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = SkipNonFiniteOptimizer(keras.optimizers.SGD(0.5))
    optimizer.apply([keras.ops.convert_to_tensor([1.0, np.nan, 1.0])], [variable])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [1.0, 1.0, 1.0])
    optimizer.apply([keras.ops.ones(3)], [variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), [0.5, 0.5, 0.5])
    assert (_read(optimizer.skipped_steps), _read(optimizer.iterations)) == (1, 1)


def test_errors():
    with pytest.raises(ValueError, match="inner_optimizer="):
        SkipNonFiniteOptimizer("adam")
    with pytest.raises(ValueError, match="max_consecutive_non_finite=0"):
        SkipNonFiniteOptimizer(keras.optimizers.SGD(), max_consecutive_non_finite=0)
    with pytest.raises(ValueError, match="check_every=0"):
        NonFiniteStepMonitor(check_every=0)
    model = compile_model(dense_model(), keras.optimizers.SGD())
    with pytest.raises(ValueError, match="SkipNonFiniteOptimizer"):
        model.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0, callbacks=[NonFiniteStepMonitor()])
