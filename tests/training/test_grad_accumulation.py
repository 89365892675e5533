"""`max_batch_size` as Keras gradient accumulation: k micro-batches = one big batch."""

import keras
import numpy as np

from imagen_keras.training import ema_weights, imagen_optimizer
from tests.training.conftest import compile_model, dense_model, weights


def _train(data, batch_size, accumulation):
    x, y = data
    optimizer = imagen_optimizer(
        lr=1e-2,
        warmup_steps=3,
        max_grad_norm=0.5,
        gradient_accumulation_steps=accumulation,
        ema_update_after_step=0,
        ema_update_every=1,
        ema_beta=0.5,
    )
    model = compile_model(dense_model(), optimizer)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    with ema_weights(model, optimizer):
        ema = weights(model)
    return weights(model), ema, int(keras.ops.convert_to_numpy(optimizer.iterations))


def test_accumulated_micro_batches_equal_one_big_batch(data):
    # ImagenTrainer(max_batch_size=4) on batches of 16 == fit(batch_size=4) accumulating 4.
    big, big_ema, big_updates = _train(data, batch_size=16, accumulation=None)
    small, small_ema, small_updates = _train(data, batch_size=4, accumulation=4)
    assert big_updates == small_updates == 2
    for got, expected in zip(small + small_ema, big + big_ema):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # A different batching would have given different weights: the check can fail.
    unaccumulated, _, _ = _train(data, batch_size=4, accumulation=None)
    assert not np.allclose(unaccumulated[0], big[0], atol=1e-4)
