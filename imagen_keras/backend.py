"""The only backend-specific code: compiling a function that reads a model's variables.

keras-hub does the same in `keras_hub/src/models/text_to_image.py`: `jax.jit` with the
variables passed explicitly (JAX is stateless), `tf.function` on TensorFlow, and
`torch.no_grad` eager execution on PyTorch.
"""

import keras


def compile_inference_function(model, fn):
    """Wrap `fn(*args)` (which calls `model`'s layers) so it runs compiled on this backend.

    Arguments must be tensors, arrays or `None`; Python values that change the trace
    belong in `fn`'s closure. Variables are read, never updated.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        variables = list(model.trainable_variables) + list(model.non_trainable_variables)

        @jax.jit
        def compiled(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        def run(*args):
            return compiled([v.value for v in variables], *args)

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if backend == "torch":
        import torch

        def run(*args):
            with torch.no_grad():
                return fn(*args)

        return run
    raise ValueError(
        f"imagen-keras supports the jax, tensorflow and torch backends. "
        f"Received: KERAS_BACKEND={backend!r}"
    )


def is_concrete(x):
    """True when `x` holds values now (eager), False inside a trace or for a KerasTensor."""
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    return True


def set_trainable(layer, value):
    """`layer.trainable = value`, applied to its sublayers and variables on every backend.

    On TensorFlow a layer is a `tf.Module`-style `AutoTrackable`, whose `__setattr__`
    skips an assignment that does not change the attribute. A layer deserialized with
    `trainable=False` creates its sublayers and variables trainable, so assigning `False`
    again would leave them all trainable. Calling the property setter directly does not
    take that shortcut.
    """
    keras.layers.Layer.trainable.fset(layer, bool(value))


def sync_training_state(model):
    """Write the state of an interrupted `fit` back into `model`'s variables.

    On JAX, `fit` keeps the training state outside the variables between callbacks;
    after a `KeyboardInterrupt` in the middle of an epoch the variables would hold the
    values of the last sync. Other backends update the variables in place.
    """
    if keras.backend.backend() == "jax" and getattr(model, "_jax_state", None) is not None:
        model.jax_state_sync()
