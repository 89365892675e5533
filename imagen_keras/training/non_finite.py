"""A non-finite step never updates the weights: skip it, count it, stop after too many.

`SkipNonFiniteOptimizer` wraps any Keras optimizer the way
`keras.optimizers.LossScaleOptimizer` does, without the loss scaling: when a gradient
holds a NaN or an inf, the inner optimizer is not called at all, so the weights, the
optimizer's moments, its EMA weights, its gradient accumulators and its `iterations`
stay exactly as they were. The wrapper counts such steps in two non-trainable
variables, `skipped_steps` and `consecutive_skipped_steps` (saved with the optimizer),
and `NonFiniteStepMonitor` turns them into a warning or a stop.
"""

import numbers
import warnings

import keras
from keras import ops

from imagen_keras.backend import tf_apply_in_replica_context


def _check_max_consecutive(value):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
    ):
        raise ValueError(
            "`max_consecutive_non_finite` must be a positive int or None. "
            f"Received: max_consecutive_non_finite={value!r}"
        )


@keras.saving.register_keras_serializable(package="imagen_keras")
class SkipNonFiniteOptimizer(keras.optimizers.Optimizer):
    """Skips (and counts) every update whose gradients are not all finite.

    On JAX the skip is an `ops.cond` over two pure functions of the optimizer state
    (the inner optimizer's `stateless_apply`, or the unchanged state); on TensorFlow
    and PyTorch an `ops.cond` over the stateful `apply`, exactly as
    `keras.optimizers.LossScaleOptimizer` does. `iterations` is the inner optimizer's:
    it counts the updates that happened, so learning-rate schedules and the EMA
    warm-up ignore skipped steps.

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` to wrap.
        max_consecutive_non_finite: int or None. How many consecutive skipped steps
            `NonFiniteStepMonitor` tolerates before it stops training (None: never).
            Stored here so that a saved model keeps it. Defaults to `5`.
        name: str or None. Defaults to `None`.

    Example:
    ```python
    optimizer = SkipNonFiniteOptimizer(keras.optimizers.Adam(1e-3))
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, callbacks=[NonFiniteStepMonitor()])
    int(optimizer.skipped_steps.numpy())  # batches whose gradients held NaN/inf
    ```
    """

    def __init__(self, inner_optimizer, max_consecutive_non_finite=5, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                "SkipNonFiniteOptimizer takes no optimizer arguments; set them on "
                f"`inner_optimizer`. Received: {sorted(kwargs)}"
            )
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                "`inner_optimizer` must be a `keras.optimizers.Optimizer`. "
                f"Received: inner_optimizer={inner_optimizer!r}"
            )
        _check_max_consecutive(max_consecutive_non_finite)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.max_consecutive_non_finite = max_consecutive_non_finite

    def build(self, var_list):
        self.skipped_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", name="skipped_steps"
        )
        self.consecutive_skipped_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", name="consecutive_skipped_steps"
        )
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def check_finite(self, grads):
        finite = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
        return ops.all(ops.stack(finite))

    def _count_finite(self):
        self.consecutive_skipped_steps.assign(0)

    def _count_non_finite(self):
        self.skipped_steps.assign_add(1)
        self.consecutive_skipped_steps.assign_add(1)

    # ---------------------------------------------------------------- JAX (stateless)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        if not self.built:
            raise ValueError(
                f"To call `stateless_apply`, {self.__class__.__name__} must be built: "
                "call `optimizer.build(trainable_variables)` first."
            )
        # A LossScaleOptimizer around this one passes the variables themselves, read
        # inside its StatelessScope: take their values.
        values = [v.value if isinstance(v, keras.Variable) else v for v in optimizer_variables]
        own, inner = values[: len(self._variables)], values[len(self._variables) :]

        def own_after(count):
            with keras.StatelessScope(state_mapping=list(zip(self._variables, own))) as scope:
                count()
            return [scope.get_current_value(v) for v in self._variables]

        def finite_fn():
            new_trainable, new_inner = self.inner_optimizer.stateless_apply(
                inner, grads, trainable_variables
            )
            return list(new_trainable), own_after(self._count_finite) + list(new_inner)

        def non_finite_fn():
            return list(trainable_variables), own_after(self._count_non_finite) + inner

        return ops.cond(self.check_finite(grads), finite_fn, non_finite_fn)

    # --------------------------------------------------- TensorFlow, PyTorch (stateful)

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
        if keras.backend.backend() == "jax":
            # A `lax.cond` cannot assign variables: run the stateless path, then assign.
            variables = list(trainable_variables or self._trainable_variables)
            new_trainable, new_optimizer = self.stateless_apply(
                [v.value for v in self.variables], grads, [v.value for v in variables]
            )
            for variable, value in zip(variables, new_trainable):
                variable.assign(value)
            for variable, value in zip(self.variables, new_optimizer):
                variable.assign(value)
        elif keras.backend.backend() == "tensorflow":
            self._tf_apply(grads, trainable_variables)
        else:
            self._common_apply(grads, trainable_variables)

    def _apply_finite(self, grads, trainable_variables):
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
        self._count_finite()

    def _common_apply(self, grads, trainable_variables=None):
        ops.cond(
            self.check_finite(grads),
            lambda: self._apply_finite(grads, trainable_variables),
            self._count_non_finite,
        )

    def _tf_apply(self, grads, trainable_variables=None):
        tf_apply_in_replica_context(self, grads, trainable_variables)

    # ------------------------------------------------------------- delegation

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "max_consecutive_non_finite": self.max_consecutive_non_finite,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)


class NonFiniteTrainingError(RuntimeError):
    """Raised by `NonFiniteStepMonitor` when too many consecutive steps were skipped."""


def _find_skipping_optimizer(optimizer):
    while optimizer is not None:
        if isinstance(optimizer, SkipNonFiniteOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


class NonFiniteStepMonitor(keras.callbacks.Callback):
    """Warns about skipped non-finite steps and stops after too many in a row.

    Reads the counters of the model's `SkipNonFiniteOptimizer` every
    `check_every` batches. A new skipped step gives a `RuntimeWarning` with the
    counts; `max_consecutive_non_finite` consecutive skipped steps raise
    `NonFiniteTrainingError` (the weights are those of the last finite step).

    Args:
        max_consecutive_non_finite: int or None. Defaults to `None`, which takes the
            optimizer's own `max_consecutive_non_finite`.
        check_every: int. Read the counters every `check_every` batches (reading them
            waits for the device). Defaults to `1`.

    Example:
    ```python
    model.compile(optimizer=imagen_optimizer(), loss="mse")
    model.fit(x, y, callbacks=[NonFiniteStepMonitor(max_consecutive_non_finite=3)])
    ```
    """

    def __init__(self, max_consecutive_non_finite=None, check_every=1):
        super().__init__()
        _check_max_consecutive(max_consecutive_non_finite)
        if (
            isinstance(check_every, bool)
            or not isinstance(check_every, numbers.Integral)
            or (check_every < 1)
        ):
            raise ValueError(
                f"`check_every` must be a positive int. Received: check_every={check_every!r}"
            )
        self.max_consecutive_non_finite = max_consecutive_non_finite
        self.check_every = check_every
        self._reported = 0
        self._optimizer = None

    def on_train_begin(self, logs=None):
        self._optimizer = _find_skipping_optimizer(self.model.optimizer)
        if self._optimizer is None:
            raise ValueError(
                "NonFiniteStepMonitor needs a model compiled with a SkipNonFiniteOptimizer "
                "(e.g. `imagen_optimizer(skip_non_finite=True)`). "
                f"Received: optimizer={self.model.optimizer!r}"
            )
        self._reported = self._read(self._optimizer.skipped_steps) if self._optimizer.built else 0

    @staticmethod
    def _read(variable):
        return int(ops.convert_to_numpy(variable.value))

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.check_every:
            return
        self.check(self.model.optimizer)

    def check(self, optimizer=None):
        """Warn or raise according to the counters (also callable by hand)."""
        optimizer = _find_skipping_optimizer(optimizer) or self._optimizer
        if optimizer is None or not optimizer.built:
            return
        skipped = self._read(optimizer.skipped_steps)
        consecutive = self._read(optimizer.consecutive_skipped_steps)
        limit = self.max_consecutive_non_finite or optimizer.max_consecutive_non_finite
        if limit is not None and consecutive >= limit:
            if self.model is not None:
                self.model.stop_training = True
            raise NonFiniteTrainingError(
                f"Training stopped: {consecutive} consecutive steps had NaN or inf "
                f"gradients and were skipped ({skipped} skipped in total; the limit is "
                f"max_consecutive_non_finite={limit}). The weights are those of the last "
                "finite step. Check the data for NaN/inf values, lower the learning rate "
                "or clip the gradients (max_grad_norm)."
            )
        if skipped > self._reported:
            warnings.warn(
                f"Skipped {skipped - self._reported} training step(s) with NaN or inf "
                f"gradients ({skipped} in total, {consecutive} in a row now); the weights "
                "were not updated.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._reported = skipped
