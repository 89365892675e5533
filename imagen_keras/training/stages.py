"""One optimizer per stage of a cascade, kept across `compile` calls.

imagen-pytorch keeps an Adam, a scheduler and an EMA per unet, so training unet 2 never
touches unet 1's optimizer state or EMA weights. `keras.Model.compile` replaces
`model.optimizer`; a cascade keeps each stage's optimizer in a `StageOptimizers` and
hands the right one to `compile`.
"""

import contextlib

import keras

from imagen_keras.training.ema import _unwrap, ema_weights
from imagen_keras.training.optimizers import imagen_optimizer


class StageOptimizers:
    """Holds one optimizer per stage (unet), out of sight of Keras' `.keras` saving.

    Keras' saving walks every list or dict attribute of a model and would save these
    optimizers twice (and fail to load them); this holder is neither. `.keras` files
    hold only `model.optimizer` (the stage compiled last); checkpoints that resume every
    stage must save the others themselves (`optimizers` lists them).

    Args:
        num_stages: int. Number of stages (unets).
        factory: callable returning a fresh optimizer for a stage compiled without one.
            Defaults to `imagen_optimizer` (imagen-pytorch's Adam + EMA recipe).

    Example:
    ```python
    stages = StageOptimizers(2)
    optimizer = stages.select(0)  # a new imagen_optimizer() for stage 1
    same = stages.select(0)  # the same optimizer: kept for the next compile of stage 1
    ```
    """

    def __init__(self, num_stages, factory=imagen_optimizer):
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(
                f"`num_stages` must be a positive int. Received: num_stages={num_stages!r}"
            )
        self.factory = factory
        self.optimizers = [None] * num_stages

    def __len__(self):
        return len(self.optimizers)

    def get(self, index):
        """The optimizer of stage `index` (0-based), or None if it never trained."""
        return self.optimizers[index]

    def steps(self):
        """Optimizer updates of each stage (`iterations`; 0 for a stage never compiled).

        An update is one optimizer step: micro-batches of gradient accumulation and
        steps skipped for NaN/inf gradients are not counted (imagen-pytorch's
        `ImagenTrainer.steps`).
        """
        return [
            0 if optimizer is None else int(keras.ops.convert_to_numpy(optimizer.iterations))
            for optimizer in self.optimizers
        ]

    def select(self, index, optimizer=None):
        """The optimizer for `compile`-ing stage `index` (0-based), stored for next time.

        Args:
            index: int. 0-based stage index.
            optimizer: None (reuse the stage's optimizer, or create one with `factory`),
                or anything `keras.optimizers.get` accepts (replaces the stage's
                optimizer, and with it its state and EMA weights).

        Returns:
            A `keras.optimizers.Optimizer`.
        """
        if optimizer is None:
            optimizer = self.optimizers[index] or self.factory()
        else:
            optimizer = keras.optimizers.get(optimizer)
            for other, used in enumerate(self.optimizers):
                if used is optimizer and other != index:
                    raise ValueError(
                        f"Each stage needs its own optimizer; this one already trains unet "
                        f"{other + 1}. Received: optimizer={optimizer.name!r} for unet "
                        f"{index + 1}"
                    )
        self.optimizers[index] = optimizer
        return optimizer

    @contextlib.contextmanager
    def ema_weights(self, layers, enabled=True):
        """Every stage whose optimizer keeps EMA weights uses them inside the context.

        Stages never trained, or trained without EMA, keep their weights.

        Args:
            layers: one layer per stage (the unets), in stage order.
            enabled: bool. `False` keeps the online weights everywhere (imagen-pytorch's
                `use_non_ema=True`). Defaults to `True`.
        """
        if len(layers) != len(self.optimizers):
            raise ValueError(
                f"`layers` must hold one layer per stage ({len(self.optimizers)}). "
                f"Received {len(layers)} layers."
            )
        with contextlib.ExitStack() as stack:
            for layer, optimizer in zip(layers, self.optimizers):
                inner = None if optimizer is None else _unwrap(optimizer)
                if enabled and inner is not None and inner.use_ema and inner.built:
                    stack.enter_context(ema_weights(layer, optimizer))
            yield
