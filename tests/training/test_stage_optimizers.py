"""Per-stage optimizers that survive compiling another stage, as a cascade needs."""

import keras
import numpy as np
import pytest

from imagen_keras.training import StageOptimizers, ema_pairs, imagen_optimizer
from tests.training.conftest import weights


class TwoStages(keras.Model):
    """Two 'unets'; `compile(stage)` trains one, as `Cascade.compile(unet_number=...)`."""

    def __init__(self):
        super().__init__()
        self.unets = [keras.layers.Dense(2, name="unet1"), keras.layers.Dense(2, name="unet2")]
        for unet in self.unets:
            unet.build((None, 3))
        self.stage = 0
        self.stage_optimizers = StageOptimizers(
            2,
            factory=lambda: imagen_optimizer(lr=1e-2, ema_update_after_step=1, ema_update_every=1),
        )

    def call(self, x):
        return self.unets[self.stage](x)

    def compile(self, stage, optimizer=None):
        self.stage = stage
        for index, unet in enumerate(self.unets):
            unet.trainable = index == stage
        super().compile(
            optimizer=self.stage_optimizers.select(stage, optimizer),
            loss="mse",
            jit_compile=keras.backend.backend() == "jax",
        )


def _state(optimizer):
    return [keras.ops.convert_to_numpy(v) for v in optimizer.variables]


def test_stage_state_survives_training_another_stage(data):
    x, y = data
    model = TwoStages()
    model.compile(0)
    first = model.optimizer
    model.fit(x, y, batch_size=8, verbose=0)
    saved = _state(first)
    model.compile(1)
    assert model.optimizer is not first
    model.fit(x, y, batch_size=8, verbose=0)
    for got, expected in zip(_state(first), saved):  # stage 2 left stage 1's state alone
        np.testing.assert_array_equal(got, expected)
    model.compile(0)
    assert model.optimizer is first
    model.fit(x[:8], y[:8], batch_size=8, verbose=0)
    assert int(keras.ops.convert_to_numpy(first.iterations)) == 5  # 4 + 1: it resumed

    online = [weights(unet) for unet in model.unets]
    with model.stage_optimizers.ema_weights(model.unets):
        for unet, optimizer in zip(model.unets, model.stage_optimizers.optimizers):
            for got, (_, average) in zip(weights(unet), ema_pairs(unet, optimizer)):
                np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(average))
            assert not np.array_equal(weights(unet)[0], online[model.unets.index(unet)][0])
    with model.stage_optimizers.ema_weights(model.unets, enabled=False):
        assert all(np.array_equal(weights(u)[0], o[0]) for u, o in zip(model.unets, online))
    assert all(np.array_equal(weights(u)[0], o[0]) for u, o in zip(model.unets, online))


def test_untrained_stage_keeps_its_weights_and_errors():
    stages = StageOptimizers(2)
    unets = [keras.layers.Dense(2), keras.layers.Dense(2)]
    for unet in unets:
        unet.build((None, 3))
    before = [weights(u) for u in unets]
    with stages.ema_weights(unets):  # no stage trained yet
        assert all(np.array_equal(weights(u)[0], b[0]) for u, b in zip(unets, before))
    optimizer = stages.select(0)
    assert stages.select(0) is optimizer and stages.get(1) is None
    with pytest.raises(ValueError, match="already trains unet 1"):
        stages.select(1, optimizer)
    with pytest.raises(ValueError, match="one layer per stage"):
        with stages.ema_weights(unets[:1]):
            pass
    with pytest.raises(ValueError, match="num_stages=0"):
        StageOptimizers(0)
