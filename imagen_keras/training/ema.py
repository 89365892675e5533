"""EMA of the weights: the reference's warm-up schedule, and sampling with the EMA weights.

The EMA weights live in the optimizer (Keras' `use_ema` machinery:
`optimizer._model_variables_moving_average`, saved with the optimizer);
`ImagenAdam` updates them with `ema_update`, and `ema_weights` swaps them into a
model for sampling or evaluation, then puts the online weights back.

What ema-pytorch 0.8.3 `EMA.update()` does (read from its source; imagen-pytorch's
`ImagenTrainer.update` calls it once after every optimizer step). With `k` the number
of earlier calls (0 for the first):
- `k == 0`: copy the online weights into the EMA (`initted` becomes True).
- `k % update_every != 0`: nothing.
- `k <= update_after_step`: copy the online weights into the EMA.
- otherwise `ema = decay * ema + (1 - decay) * online` with
  `decay = clip(1 - (1 + (k - update_after_step) / inv_gamma) ** -power, min_value, beta)`
  (`get_current_decay` reads the already incremented `step = k + 1` and subtracts
  `update_after_step + 1`). With `beta == 1` the EMA is frozen after the copies.
The EMA model starts as a deep copy of the model, so before the first update the EMA
equals the online weights; `ImagenAdam` does the same when it is built. ema-pytorch also
averages floating-point buffers; Keras' EMA covers the trainable variables only
(imagen's unets have no float buffers).
"""

import contextlib

from keras import ops


def ema_decay(
    step,
    beta=0.9999,
    update_after_step=100,
    update_every=10,
    inv_gamma=1.0,
    power=2.0 / 3.0,
    min_value=0.0,
):
    """Whether EMA update number `step` touches the EMA, and its decay (0 = copy).

    `step` counts optimizer updates before this one (0 for the first). The new EMA is
    `decay * ema + (1 - decay) * online` when `update` is True, else the old EMA.

    Args:
        step: int tensor or int. Number of earlier optimizer updates.
        beta: float. Largest decay. Defaults to `0.9999`.
        update_after_step: int. Until this step the EMA copies the online weights.
            Defaults to `100`.
        update_every: int. The EMA changes every `update_every` updates. Defaults to `10`.
        inv_gamma: float. Inverse multiplicative factor of the warm-up. Defaults to `1.0`.
        power: float. Exponent of the warm-up. Defaults to `2/3`.
        min_value: float. Smallest decay after `update_after_step`. Defaults to `0.0`.

    Returns:
        `(update, decay)`: a bool scalar tensor and a float32 scalar tensor.

    Example:
    ```python
    update, decay = ema_decay(110, update_after_step=100, update_every=10)
    # update True, decay = 1 - 11 ** (-2/3) ~ 0.798
    ```

    Reference:
    - [ema-pytorch 0.8.3](https://github.com/lucidrains/ema-pytorch), `EMA.update` and
      `EMA.get_current_decay` (after @crowsonkb's EMA warm-up).
    """
    step = ops.convert_to_tensor(step)
    update = ops.equal(ops.mod(step, update_every), 0)
    epoch = ops.cast(step, "float32") - float(update_after_step)
    if beta >= 1.0:  # ema-pytorch's `is_frozen`: only the copies happen
        warm = ops.ones_like(epoch)
    else:
        warm = 1.0 - ops.power(1.0 + ops.maximum(epoch, 0.0) / inv_gamma, -float(power))
        warm = ops.clip(warm, float(min_value), float(beta))
    decay = ops.where(epoch > 0.0, warm, ops.zeros_like(warm))
    return update, decay


def _unwrap(optimizer):
    """The optimizer that holds the EMA (through skip/loss-scale wrappers)."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def ema_pairs(layer, optimizer):
    """`(variable, ema_variable)` for each of `layer`'s weights that `optimizer` averages.

    Args:
        layer: a `keras.Layer` or `keras.Model` trained by `optimizer`.
        optimizer: a built `keras.optimizers.Optimizer` with `use_ema=True`, possibly
            wrapped (`SkipNonFiniteOptimizer`, `keras.optimizers.LossScaleOptimizer`).

    Returns:
        A list of `(keras.Variable, keras.Variable)` pairs.
    """
    inner = _unwrap(optimizer)
    if not getattr(inner, "use_ema", False):
        raise ValueError(
            "`optimizer` keeps no EMA weights (it was created with use_ema=False). "
            f"Received: optimizer={optimizer.name!r}"
        )
    if not inner.built:
        raise ValueError(
            "`optimizer` has not been built yet, so it holds no EMA weights: train a step "
            "first or call `optimizer.build(variables)`. "
            f"Received: optimizer={optimizer.name!r}"
        )
    averages = {
        id(var): avg
        for var, avg in zip(inner._trainable_variables, inner._model_variables_moving_average)
        if avg is not None
    }
    pairs = [(v, averages[id(v)]) for v in layer.weights if id(v) in averages]
    if not pairs:
        raise ValueError(
            f"`optimizer` {optimizer.name!r} does not train any weight of "
            f"`model_or_layer` {layer.name!r} (compiled for another stage?)."
        )
    return pairs


@contextlib.contextmanager
def ema_weights(model_or_layer, optimizer, enabled=True):
    """Inside the context, `model_or_layer` holds the EMA weights kept by `optimizer`.

    The online weights are copied aside and restored bit-exactly on exit (also after an
    exception), so this is safe in the middle of training, e.g. from a callback that
    samples every N steps. Weights the optimizer does not average (non-trainable ones)
    are left alone.

    Args:
        model_or_layer: the `keras.Layer`/`keras.Model` whose weights to swap (a unet,
            or a whole model).
        optimizer: the optimizer that trained it, built, with `use_ema=True`.
        enabled: bool. `False` makes the context a no-op (sample with the online
            weights, imagen-pytorch's `use_non_ema=True`). Defaults to `True`.

    Example:
    ```python
    optimizer = imagen_optimizer(ema_update_after_step=0, ema_update_every=1)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, epochs=1)
    with ema_weights(model, optimizer):
        ema_predictions = model.predict(x)
    ```
    """
    if not enabled:
        yield model_or_layer
        return
    pairs = ema_pairs(model_or_layer, optimizer)
    online = [ops.copy(ops.convert_to_tensor(var.value)) for var, _ in pairs]
    try:
        for var, avg in pairs:
            var.assign(ops.copy(avg.value))
        yield model_or_layer
    finally:
        for (var, _), value in zip(pairs, online):
            var.assign(value)


def copy_ema_to_weights(model_or_layer, optimizer):
    """Overwrite `model_or_layer`'s weights with the EMA weights (e.g. before export).

    The online weights are lost; use `ema_weights` to keep them.

    Args:
        model_or_layer: the `keras.Layer`/`keras.Model` trained by `optimizer`.
        optimizer: a built optimizer with `use_ema=True`.
    """
    for var, avg in ema_pairs(model_or_layer, optimizer):
        # A copy: sharing one buffer would break JAX's buffer donation in `fit`.
        var.assign(ops.copy(avg.value))
