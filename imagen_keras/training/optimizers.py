"""The per-stage optimizer of imagen-pytorch's `ImagenTrainer`, from Keras' own parts.

`ImagenAdam` is `keras.optimizers.Adam` with the trainer's defaults (lr 1e-4,
betas (0.9, 0.99), eps 1e-8) and Keras' `use_ema` on, whose EMA follows ema-pytorch's
warm-up (see `imagen_keras.training.ema`) instead of Keras' constant momentum.
`imagen_optimizer` assembles the whole recipe: Adam, global-norm clipping,
`WarmupCosineDecay`, EMA, gradient accumulation and `SkipNonFiniteOptimizer`.

Differences from torch's Adam worth knowing: Keras' Adam adds `epsilon` to
`sqrt(v)` before the bias correction of the step size ("epsilon hat" of the Adam
paper) where torch adds it after, a difference of a factor `sqrt(1 - beta2**t)` on an
`epsilon` of 1e-8; global-norm clipping divides by the norm where torch divides by
`norm + 1e-6`.
"""

import numbers

import keras
from keras import ops

from imagen_keras.backend import tf_fused_adam_update
from imagen_keras.training.ema import ema_decay
from imagen_keras.training.non_finite import SkipNonFiniteOptimizer
from imagen_keras.training.schedules import WarmupCosineDecay

EMA_SCHEDULES = ("imagen", "keras")


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="imagen_keras")
class ImagenAdam(keras.optimizers.Adam):
    """Adam with imagen-pytorch's defaults and ema-pytorch's EMA warm-up.

    The EMA weights are Keras' own (`use_ema`, kept in the optimizer's variables and
    saved with it); only their update rule changes with `ema_schedule="imagen"`. At
    update `k` (counting optimizer updates, not micro-batches, and not skipped steps):
    nothing unless `k % ema_update_every == 0`; a copy of the weights while
    `k <= ema_update_after_step`; then `ema = decay * ema + (1 - decay) * weights`
    with `decay = clip(1 - (1 + (k - ema_update_after_step) / ema_inv_gamma)
    ** -ema_power, ema_min_value, ema_momentum)`. The EMA starts as a copy of the
    weights when the optimizer is built. `ema_schedule="keras"` keeps Keras' rule
    (constant `ema_momentum`, every step).

    The update is Keras' Adam; on TensorFlow each weight's update is one fused
    `ResourceApplyAdam` kernel (the same formula) instead of ~20 graph nodes (the first
    train step of a unet with 462 weights: 18 s instead of 30 s). The EMA is one
    `keep * ema + take * weights` per weight, exact in its copies.

    Two choices differ from `keras.optimizers.Adam`: a learning-rate schedule is
    evaluated at the number of updates (`iterations`), so gradient accumulation does not
    stretch warmup or decay; and `finalize_variable_values` (called by `fit` at its end)
    leaves the weights alone instead of overwriting them with the EMA, so a later `fit`
    resumes from the online weights as in imagen-pytorch. Sample with the EMA weights
    through `ema_weights(model, optimizer)`.

    Args:
        learning_rate: float or `LearningRateSchedule`. Defaults to `1e-4`.
        beta_1: float. Defaults to `0.9`.
        beta_2: float. Defaults to `0.99`.
        epsilon: float. Defaults to `1e-8`.
        use_ema: bool. Keep EMA weights. Defaults to `True`.
        ema_momentum: float. The largest EMA decay (ema-pytorch's `beta`), or Keras'
            constant momentum with `ema_schedule="keras"`. Defaults to `0.9999`.
        ema_schedule: `"imagen"` (ema-pytorch's warm-up) or `"keras"`.
            Defaults to `"imagen"`.
        ema_update_after_step: int. Defaults to `100`.
        ema_update_every: int. Defaults to `10`.
        ema_inv_gamma: float. Defaults to `1.0`.
        ema_power: float. Defaults to `2/3`.
        ema_min_value: float. Defaults to `0.0`.
        **kwargs: other `keras.optimizers.Adam` arguments (`global_clipnorm`,
            `gradient_accumulation_steps`, `weight_decay`, `amsgrad`, `name`, ...).

    Example:
    ```python
    optimizer = ImagenAdam(ema_update_after_step=10, ema_update_every=1)
    model.compile(optimizer=optimizer, loss="mse")
    ```

    Reference:
    - [Kingma & Ba, "Adam", 2015](https://arxiv.org/abs/1412.6980).
    - [ema-pytorch 0.8.3](https://github.com/lucidrains/ema-pytorch) `EMA`.
    """

    def __init__(
        self,
        learning_rate=1e-4,
        beta_1=0.9,
        beta_2=0.99,
        epsilon=1e-8,
        use_ema=True,
        ema_momentum=0.9999,
        ema_schedule="imagen",
        ema_update_after_step=100,
        ema_update_every=10,
        ema_inv_gamma=1.0,
        ema_power=2.0 / 3.0,
        ema_min_value=0.0,
        **kwargs,
    ):
        if ema_schedule not in EMA_SCHEDULES:
            raise ValueError(
                f"`ema_schedule` must be one of {EMA_SCHEDULES}. "
                f"Received: ema_schedule={ema_schedule!r}"
            )
        _check_int(ema_update_after_step, "ema_update_after_step", 0)
        _check_int(ema_update_every, "ema_update_every", 1)
        _check_positive(ema_inv_gamma, "ema_inv_gamma")
        _check_positive(ema_power, "ema_power")
        if (
            isinstance(ema_min_value, bool)
            or not isinstance(ema_min_value, numbers.Real)
            or not 0.0 <= ema_min_value <= ema_momentum
        ):
            raise ValueError(
                f"`ema_min_value` must be in [0, ema_momentum={ema_momentum}]. "
                f"Received: ema_min_value={ema_min_value!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            **kwargs,
        )
        self.ema_schedule = ema_schedule
        self.ema_update_after_step = ema_update_after_step
        self.ema_update_every = ema_update_every
        self.ema_inv_gamma = ema_inv_gamma
        self.ema_power = ema_power
        self.ema_min_value = ema_min_value

    def build(self, var_list):
        super().build(var_list)
        if self.use_ema:
            # ema-pytorch's EMA model starts as a copy of the model.
            for var, average in zip(var_list, self._model_variables_moving_average):
                if average is not None:  # a copy: JAX's fit donates each buffer once
                    average.assign(ops.copy(var.value))

    def _get_current_learning_rate(self):
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        # TensorFlow only (Keras' TF optimizer calls it for the per-variable updates):
        # the same update as one fused kernel per variable.
        if self.amsgrad:
            return super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
        return tf_fused_adam_update(self, distribution, grads_and_vars, learning_rate)

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        if self.ema_schedule == "keras":
            super()._update_model_variables_moving_average(trainable_variables)
            return
        # Called on every apply; `iterations` is the number of earlier updates.
        update, decay = ema_decay(
            self.iterations,
            beta=self.ema_momentum,
            update_after_step=self.ema_update_after_step,
            update_every=self.ema_update_every,
            inv_gamma=self.ema_inv_gamma,
            power=self.ema_power,
            min_value=self.ema_min_value,
        )
        if self.gradient_accumulation_steps:
            # Only the micro-batch that completes an update moves the EMA.
            is_update_step = ops.equal(
                ops.mod(self._iterations + 1, self.gradient_accumulation_steps), 0
            )
            update = ops.logical_and(update, is_update_step)
        # One expression for the three cases, exact in the two copies:
        # unchanged (1 * ema + 0 * w), copy (0 * ema + 1 * w), move (decay, 1 - decay).
        # No `cond`: on TensorFlow one costs more graph building than it saves.
        keep = ops.where(update, decay, 1.0)
        take = ops.where(update, 1.0 - decay, 0.0)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            dtype = average.dtype
            average.assign(
                ops.cast(keep, dtype) * average.value
                + ops.cast(take, dtype) * ops.cast(var.value, dtype)
            )

    def finalize_variable_values(self, var_list):
        # Keras would overwrite the weights with the EMA at the end of every `fit`;
        # imagen keeps training the online weights and samples with `ema_weights`.
        return

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ema_schedule": self.ema_schedule,
                "ema_update_after_step": self.ema_update_after_step,
                "ema_update_every": self.ema_update_every,
                "ema_inv_gamma": self.ema_inv_gamma,
                "ema_power": self.ema_power,
                "ema_min_value": self.ema_min_value,
            }
        )
        return config


def imagen_optimizer(
    lr=1e-4,
    eps=1e-8,
    beta1=0.9,
    beta2=0.99,
    max_grad_norm=None,
    warmup_steps=None,
    cosine_decay_max_steps=None,
    use_ema=True,
    ema_beta=0.9999,
    ema_update_after_step=100,
    ema_update_every=10,
    ema_inv_gamma=1.0,
    ema_power=2.0 / 3.0,
    ema_min_value=0.0,
    ema_schedule="imagen",
    gradient_accumulation_steps=None,
    skip_non_finite=True,
    max_consecutive_non_finite=5,
    **adam_kwargs,
):
    """One stage's optimizer as imagen-pytorch's `ImagenTrainer` builds it, for `compile`.

    Argument names follow `ImagenTrainer` (`lr`, `eps`, `beta1`, `beta2`,
    `max_grad_norm`, `warmup_steps`, `cosine_decay_max_steps`, `use_ema`, and the
    `ema_*` arguments of ema-pytorch's `EMA`). `ImagenTrainer(max_batch_size=m)` with
    batch size `b` maps to `fit(batch_size=m)` with
    `gradient_accumulation_steps=b // m`: Keras averages the micro-batch gradients, which
    equals the gradient of the whole batch when the loss is a per-example mean.

    Args:
        lr: float. Peak learning rate. Defaults to `1e-4`.
        eps: float. Adam epsilon. Defaults to `1e-8`.
        beta1: float. Defaults to `0.9`.
        beta2: float. Defaults to `0.99`.
        max_grad_norm: float or None. Clip the gradients to this global norm.
            Defaults to `None`.
        warmup_steps: int or None. Linear warmup updates. Defaults to `None`.
        cosine_decay_max_steps: int or None. Cosine decay to 0 at this update.
            Defaults to `None`.
        use_ema: bool. Keep EMA weights in the optimizer. Defaults to `True`.
        ema_beta: float. Largest EMA decay. Defaults to `0.9999`.
        ema_update_after_step: int. Defaults to `100`.
        ema_update_every: int. Defaults to `10`.
        ema_inv_gamma: float. Defaults to `1.0`.
        ema_power: float. Defaults to `2/3`.
        ema_min_value: float. Defaults to `0.0`.
        ema_schedule: `"imagen"` (ema-pytorch warm-up) or `"keras"` (constant
            momentum `ema_beta`). Defaults to `"imagen"`.
        gradient_accumulation_steps: int or None. Micro-batches per update (None or 1:
            none). Defaults to `None`.
        skip_non_finite: bool. Wrap in `SkipNonFiniteOptimizer` so that a step with NaN
            or inf gradients never updates anything. Defaults to `True`.
        max_consecutive_non_finite: int or None. Consecutive skipped steps after which
            `NonFiniteStepMonitor` stops training. Defaults to `5`.
        **adam_kwargs: more `keras.optimizers.Adam` arguments (`weight_decay`,
            `amsgrad`, `name`, ...).

    Returns:
        An `ImagenAdam`, wrapped in a `SkipNonFiniteOptimizer` when `skip_non_finite`.

    Example:
    ```python
    model.compile(optimizer=imagen_optimizer(lr=1e-4, warmup_steps=1000), loss="mse")
    model.fit(x, y, callbacks=[NonFiniteStepMonitor()])
    with ema_weights(model, model.optimizer):
        predictions = model.predict(x)
    ```

    Reference:
    - [imagen-pytorch 2.1.0](https://github.com/lucidrains/imagen-pytorch) `ImagenTrainer`.
    """
    if gradient_accumulation_steps is not None:
        _check_int(gradient_accumulation_steps, "gradient_accumulation_steps", 1)
        if gradient_accumulation_steps == 1:
            gradient_accumulation_steps = None
    if max_grad_norm is not None:
        _check_positive(max_grad_norm, "max_grad_norm")
    if warmup_steps is None and cosine_decay_max_steps is None:
        _check_positive(lr, "lr")
        learning_rate = float(lr)
    else:
        learning_rate = WarmupCosineDecay(lr, warmup_steps, cosine_decay_max_steps)
    optimizer = ImagenAdam(
        learning_rate=learning_rate,
        beta_1=beta1,
        beta_2=beta2,
        epsilon=eps,
        global_clipnorm=max_grad_norm,
        use_ema=use_ema,
        ema_momentum=ema_beta,
        ema_schedule=ema_schedule,
        ema_update_after_step=ema_update_after_step,
        ema_update_every=ema_update_every,
        ema_inv_gamma=ema_inv_gamma,
        ema_power=ema_power,
        ema_min_value=ema_min_value,
        gradient_accumulation_steps=gradient_accumulation_steps,
        **adam_kwargs,
    )
    if not skip_non_finite:
        return optimizer
    return SkipNonFiniteOptimizer(optimizer, max_consecutive_non_finite=max_consecutive_non_finite)
