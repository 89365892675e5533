"""EMA with ema-pytorch's warm-up inside Keras' `use_ema`, and sampling with EMA weights."""

import keras
import numpy as np
import pytest

from imagen_keras.training import ImagenAdam, ema_decay, ema_weights, imagen_optimizer
from tests.training.conftest import RecordWeights, compile_model, dense_model, weights


class _ReferenceEMA:
    """ema-pytorch 0.8.3 `EMA.update` / `get_current_decay`, on numpy arrays."""

    def __init__(self, beta, update_after_step, update_every, inv_gamma, power, min_value):
        self.beta, self.after, self.every = beta, update_after_step, update_every
        self.inv_gamma, self.power, self.min_value = inv_gamma, power, min_value
        self.step, self.initted, self.ema = 0, False, None

    def current_decay(self):
        epoch = max(self.step - self.after - 1, 0.0)
        value = 1 - (1 + epoch / self.inv_gamma) ** -self.power
        return 0.0 if epoch <= 0 else min(max(value, self.min_value), self.beta)

    def update(self, online):
        """Returns what happened: 'copy', ('lerp', decay) or None."""
        step = self.step
        self.step += 1
        if not self.initted:
            self.ema, self.initted = [w.copy() for w in online], True
            return "copy"
        if step % self.every == 0 and step <= self.after:
            self.ema = [w.copy() for w in online]
            return "copy"
        if step % self.every == 0:
            if self.beta == 1.0:  # is_frozen
                return ("lerp", 1.0)
            decay = self.current_decay()
            self.ema = [e + (1 - decay) * (w - e) for e, w in zip(self.ema, online)]
            return ("lerp", decay)
        return None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(
            beta=0.9999,
            update_after_step=100,
            update_every=10,
            inv_gamma=1.0,
            power=2 / 3,
            min_value=0.0,
        ),
        dict(
            beta=0.5, update_after_step=7, update_every=3, inv_gamma=2.0, power=1.0, min_value=0.3
        ),
        dict(
            beta=1.0, update_after_step=2, update_every=1, inv_gamma=1.0, power=0.75, min_value=0.0
        ),
    ],
)
def test_decay_sequence_matches_ema_pytorch(kwargs):
    reference = _ReferenceEMA(**kwargs)
    for k in range(400):
        action = reference.update([np.zeros(1)])
        update, decay = (keras.ops.convert_to_numpy(t) for t in ema_decay(k, **kwargs))
        if action is None:
            assert not update, k
            continue
        assert update, k
        expected = 0.0 if action == "copy" else action[1]
        np.testing.assert_allclose(float(decay), expected, rtol=1e-6, err_msg=f"step {k}")


def test_decay_closed_form_values():
    # 1 - (1 + k - 100) ** (-2/3) at k = 110, 200, and the clamp at beta far out.
    for k, expected in [(110, 1 - 11 ** (-2 / 3)), (200, 1 - 101 ** (-2 / 3)), (10**9, 0.9999)]:
        update, decay = ema_decay(k)
        assert bool(keras.ops.convert_to_numpy(update))
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(decay)), expected, rtol=1e-6)
    assert not bool(keras.ops.convert_to_numpy(ema_decay(105)[0]))


def _fit_recording(data, optimizer, batch_size=4, callbacks=()):
    x, y = data
    model = compile_model(dense_model(), optimizer)
    recorder = RecordWeights()
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, *callbacks],
    )
    return model, recorder


def test_fit_ema_weights_match_a_numpy_simulation(data):
    kwargs = dict(
        beta=0.6, update_after_step=3, update_every=2, inv_gamma=1.0, power=1.0, min_value=0.1
    )
    optimizer = imagen_optimizer(
        lr=1e-2,
        ema_beta=kwargs["beta"],
        ema_update_after_step=kwargs["update_after_step"],
        ema_update_every=kwargs["update_every"],
        ema_inv_gamma=kwargs["inv_gamma"],
        ema_power=kwargs["power"],
        ema_min_value=kwargs["min_value"],
    )
    model, recorder = _fit_recording(data, optimizer)  # 8 updates
    reference = _ReferenceEMA(**kwargs)
    actions = [reference.update(online) for online in recorder.history]
    assert ("lerp", 0.6) in actions and ("lerp", 0.5) in actions  # the clamp and the warm-up
    with ema_weights(model, optimizer):
        ema = weights(model)
    for got, expected in zip(ema, reference.ema):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The online weights stay in the model after `fit` (Keras would overwrite them).
    for got, expected in zip(weights(model), recorder.history[-1]):
        np.testing.assert_array_equal(got, expected)
    assert not np.allclose(ema[0], recorder.history[-1][0])


def test_keras_schedule_keeps_keras_rule(data):
    optimizer = ImagenAdam(learning_rate=1e-2, ema_momentum=0.8, ema_schedule="keras")
    model, recorder = _fit_recording(data, optimizer)
    expected = [w.copy() for w in recorder.history[0]]  # Keras copies at step 0
    for online in recorder.history[1:]:
        expected = [0.8 * e + 0.2 * w for e, w in zip(expected, online)]
    with ema_weights(model, optimizer):
        for got, want in zip(weights(model), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ema_starts_as_a_copy_of_the_weights():
    model = dense_model()
    optimizer = ImagenAdam()
    optimizer.build(model.trainable_variables)
    with ema_weights(model, optimizer):
        ema = weights(model)
    for got, expected in zip(ema, weights(model)):
        np.testing.assert_array_equal(got, expected)


class _SampleWithEMA(keras.callbacks.Callback):
    """Uses the EMA weights at one batch, mid-training, the way a sample-grid callback would."""

    def __init__(self, at_batch):
        super().__init__()
        self.at_batch = at_batch

    def on_train_batch_end(self, batch, logs=None):
        if batch != self.at_batch:
            return
        model, optimizer = self.model, self.model.optimizer
        online = weights(model)
        averages = [np.array(v) for _, v in _pairs(model, optimizer)]
        with ema_weights(model, optimizer):
            self.inside = weights(model)
            self.prediction = keras.ops.convert_to_numpy(model(np.ones((1, 3), "float32")))
        self.online, self.averages, self.after = online, averages, weights(model)


def _pairs(model, optimizer):
    from imagen_keras.training import ema_pairs

    return ema_pairs(model, optimizer)


def test_ema_weights_mid_training_restores_the_online_weights(data):
    def optimizer():
        return imagen_optimizer(lr=1e-2, ema_beta=0.9, ema_update_after_step=1, ema_update_every=1)

    sampler = _SampleWithEMA(at_batch=4)
    model, recorder = _fit_recording(data, optimizer(), callbacks=[sampler])
    for inside, average, online, after in zip(
        sampler.inside, sampler.averages, sampler.online, sampler.after
    ):
        np.testing.assert_array_equal(inside, average)
        assert not np.array_equal(inside, online)
        np.testing.assert_array_equal(after, online)  # bit-exact restore
    # Training was not disturbed: same weights as a run without the sampling callback.
    _, plain = _fit_recording(data, optimizer())
    for got, expected in zip(recorder.history[-1], plain.history[-1]):
        np.testing.assert_array_equal(got, expected)


def test_ema_weights_restores_after_an_exception_and_can_be_disabled():
    model = dense_model()
    optimizer = ImagenAdam(ema_update_after_step=0, ema_update_every=1)
    optimizer.build(model.trainable_variables)
    for average in optimizer._model_variables_moving_average:
        average.assign(keras.ops.zeros(average.shape))
    online = weights(model)
    with pytest.raises(RuntimeError, match="boom"):
        with ema_weights(model, optimizer):
            assert all(not w.any() for w in weights(model))
            raise RuntimeError("boom")
    for got, expected in zip(weights(model), online):
        np.testing.assert_array_equal(got, expected)
    with ema_weights(model, optimizer, enabled=False):
        for got, expected in zip(weights(model), online):
            np.testing.assert_array_equal(got, expected)


def test_ema_weights_errors():
    model, other = dense_model(), dense_model(seed=5)
    optimizer = ImagenAdam()
    with pytest.raises(ValueError, match="not been built"):
        with ema_weights(model, optimizer):
            pass
    optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="does not train any weight"):
        with ema_weights(other, optimizer):
            pass
    no_ema = ImagenAdam(use_ema=False)
    no_ema.build(model.trainable_variables)
    with pytest.raises(ValueError, match="use_ema=False"):
        with ema_weights(model, no_ema):
            pass
