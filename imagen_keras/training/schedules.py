"""Learning-rate schedule of imagen-pytorch's `ImagenTrainer`: linear warmup, cosine decay.

The reference steps a `pytorch_warmup.LinearWarmup(warmup_period=W)` and a
`torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T)` (eta_min 0) once per optimizer
update. Replaying its `dampening()` bookkeeping gives the learning rate of update `n`
(0 for the first update):

    lr(n) = lr * min(1, (n + 1) / W) * (1 + cos(pi * min(n, T) / T)) / 2

with the warmup factor 1 when `warmup_steps` is None and the cosine factor 1 when
`cosine_decay_max_steps` is None (the reference then steps a constant `LambdaLR`).

One decision differs from the reference: `CosineAnnealingLR` is periodic, so past `T` its
learning rate climbs back towards `lr`; here it stays at 0, as `keras.optimizers.
schedules.CosineDecay` does (set `cosine_decay_max_steps` to the length of the run).
"""

import math
import numbers

import keras
from keras import ops


def _check_steps(value, name):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
    ):
        raise ValueError(f"`{name}` must be a positive int or None. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="imagen_keras")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup then cosine decay to 0, as imagen-pytorch's `ImagenTrainer`.

    `lr(n) = learning_rate * min(1, (n + 1) / warmup_steps)
    * (1 + cos(pi * min(n, cosine_decay_max_steps) / cosine_decay_max_steps)) / 2`,
    where `n` is the number of optimizer updates already taken (`ImagenAdam` passes
    its update count, so gradient accumulation does not stretch the schedule).
    Either factor is 1 when its argument is None. Past `cosine_decay_max_steps` the
    rate stays at 0 (the reference's `CosineAnnealingLR` would rise again).

    Args:
        learning_rate: float. The peak learning rate. Defaults to `1e-4`.
        warmup_steps: int or None. Updates of linear warmup (the first update uses
            `learning_rate / warmup_steps`). Defaults to `None` (no warmup).
        cosine_decay_max_steps: int or None. Update at which the cosine reaches 0.
            Defaults to `None` (no decay).
        name: str or None. Defaults to `None`.

    Example:
    ```python
    schedule = WarmupCosineDecay(1e-4, warmup_steps=10, cosine_decay_max_steps=100)
    float(schedule(0))  # 1e-5
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    ```

    Reference:
    - [Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017](
        https://arxiv.org/abs/1608.03983) (cosine annealing).
    - [Goyal et al., "Accurate, Large Minibatch SGD", 2017](
        https://arxiv.org/abs/1706.02677) (linear warmup).
    """

    def __init__(
        self, learning_rate=1e-4, warmup_steps=None, cosine_decay_max_steps=None, name=None
    ):
        super().__init__()
        if (
            isinstance(learning_rate, bool)
            or not isinstance(learning_rate, numbers.Real)
            or not math.isfinite(learning_rate)
            or learning_rate <= 0
        ):
            raise ValueError(
                "`learning_rate` must be a positive float. "
                f"Received: learning_rate={learning_rate!r}"
            )
        _check_steps(warmup_steps, "warmup_steps")
        _check_steps(cosine_decay_max_steps, "cosine_decay_max_steps")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = warmup_steps
        self.cosine_decay_max_steps = cosine_decay_max_steps
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps is not None:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        if self.cosine_decay_max_steps is not None:
            total = float(self.cosine_decay_max_steps)
            progress = ops.minimum(step, total) / total
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return lr

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "cosine_decay_max_steps": self.cosine_decay_max_steps,
            "name": self.name,
        }
