"""The only backend-specific code: compiling a function that reads a model's variables.

keras-hub does the same in `keras_hub/src/models/text_to_image.py`: `jax.jit` with the
variables passed explicitly (JAX is stateless), `tf.function` on TensorFlow, and
`torch.no_grad` eager execution on PyTorch.
"""

import os

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


def conv2d(inputs, kernel, strides, padding, dilation_rate, groups=1):
    """`keras.ops.conv` of a channels-last (NHWC) feature map and an HWIO kernel.

    On torch, Keras turns the NHWC input into a contiguous NCHW tensor and then back into
    channels-last memory for oneDNN: two copies of the feature map per convolution, and
    more in the backward pass. A permuted view of a contiguous NHWC tensor already is an
    NCHW tensor in channels-last memory, so here it goes to `torch.nn.functional.conv2d`
    as it is (stride-1 "same" convolutions with odd kernels, and "valid" ones). Other
    backends, and other cases, use `keras.ops.conv`.
    """
    strides, dilation_rate = tuple(strides), tuple(dilation_rate)
    if keras.backend.backend() == "torch" and dilation_rate == (1, 1) and groups == 1:
        kh, kw = kernel.shape[0], kernel.shape[1]
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same" and strides == (1, 1) and kh % 2 == 1 and kw % 2 == 1:
            pad = (kh // 2, kw // 2)
        else:
            pad = None
        if pad is not None:
            import torch

            x = keras.ops.convert_to_tensor(inputs).permute(0, 3, 1, 2)
            # A contiguous OIHW kernel (small): torch's half-precision CPU convolution
            # needs it ("slow_conv2d: grad_weight must be contiguous"), and oneDNN picks
            # channels-last memory from the input alone.
            w = keras.ops.convert_to_tensor(kernel).permute(3, 2, 0, 1).contiguous()
            out = torch.nn.functional.conv2d(x, w, stride=strides, padding=pad)
            return out.permute(0, 2, 3, 1)
    return keras.ops.conv(
        inputs,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format="channels_last",
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


def variable_to_numpy(variable):
    """A Keras variable's value as a numpy array, also under a `tf.distribute` strategy
    (where it is a per-replica value without `__array__`; the copies are equal after a
    step, so the first replica's is read)."""
    value = variable.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(value, tf.distribute.DistributedValues):
            value = value.values[0]
    return keras.ops.convert_to_numpy(value)


def tf_apply_in_replica_context(optimizer, grads, trainable_variables=None):
    """`SkipNonFiniteOptimizer.apply` on TensorFlow, as `LossScaleOptimizer._tf_apply`.

    Under a tf.distribute strategy without merge-call-free support the finite check and
    its `cond` must run in a cross-replica context: the gradients are all-reduced, so
    every replica agrees, and the first replica's answer decides for all.
    """
    import tensorflow as tf

    if tf.distribute.in_cross_replica_context():
        raise ValueError("apply() must be called in a replica context.")
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        optimizer._common_apply(grads, trainable_variables)
        return

    def handle_cross_replica(distribution, grads, trainable_variables):
        finite_per_replica = distribution.extended.call_for_each_replica(
            optimizer.check_finite, args=(grads,)
        )
        finite = distribution.experimental_local_results(finite_per_replica)[0]

        def apply_fn():
            distribution.extended.call_for_each_replica(
                optimizer._apply_finite, args=(grads, trainable_variables)
            )

        keras.ops.cond(finite, apply_fn, optimizer._count_non_finite)

    tf.distribute.get_replica_context().merge_call(
        handle_cross_replica, args=(grads, trainable_variables)
    )


def tf_fused_adam_update(optimizer, distribution, grads_and_vars, learning_rate):
    """Keras' Adam update on TensorFlow as one `ResourceApplyAdam` kernel per variable.

    Replaces `TFOptimizer._distributed_tf_update_step` for `keras.optimizers.Adam`
    (without `amsgrad`): the same update (`m += (g - m) * (1 - beta_1)`,
    `v += (g**2 - v) * (1 - beta_2)`,
    `var -= lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)`), but
    one graph node per variable instead of ~20, with the step's scalars computed once per
    device. That is what makes the first train step of a many-variable model slow on
    TensorFlow (tracing, then grappler, scale with the nodes): the first step of the
    digits32 bench unet (462 weights) took 18 s instead of 30 s. Each variable is still
    updated through `distribution.extended.update`, so tf.distribute strategies work as
    before.
    """
    import tensorflow as tf

    scalars = {}

    def step_scalars(device, dtype, lr):
        key = (device, dtype)
        if key not in scalars:
            step = tf.cast(optimizer.iterations + 1, dtype)
            beta_1 = tf.constant(optimizer.beta_1, dtype)
            beta_2 = tf.constant(optimizer.beta_2, dtype)
            scalars[key] = dict(
                beta1_power=tf.pow(beta_1, step),
                beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(lr, dtype),
                beta1=beta_1,
                beta2=beta_2,
                epsilon=tf.constant(optimizer.epsilon, dtype),
            )
        return scalars[key]

    def update(var, grad, lr):
        index = optimizer._get_variable_index(var)
        m = optimizer._momentums[index].value
        v = optimizer._velocities[index].value
        grad = tf.cast(tf.convert_to_tensor(grad), var.dtype)  # IndexedSlices: dense
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=m.handle,
            v=v.handle,
            grad=grad,
            **step_scalars(var.device, var.dtype, lr),
        )

    for grad, var in grads_and_vars:
        distribution.extended.update(var, update, args=(grad, learning_rate), group=False)


def first_replica_batch(epoch_iterator, strategy):
    """The first batch of Keras' TensorFlow epoch iterator, as one replica's tensors.

    Keras (3.15) builds a model under a strategy from `strategy.reduce("MEAN", batch)`
    over the whole nest, which `MultiWorkerMirroredStrategy` refuses for a dict of
    per-replica tensors ("Attempt to convert a value ({'images': PerReplica...").
    The shapes are all the build needs, and one replica's tensors have them.
    """
    import tensorflow as tf

    for _, _, iterator in epoch_iterator:
        batch = next(iterator)
        break

    def one_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return keras.tree.map_structure(one_replica, batch)


def multi_worker_step_logs(model, logs):
    """A TensorFlow train/test step's logs, shaped for `MultiWorkerMirroredStrategy`.

    Keras (3.15) reduces the logs of a multi-worker step with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar loss and metrics
    every model returns ("Invalid reduction dimension 0 for input with 0 dimensions").
    Given a leading axis of one per replica, that reduction is the mean over the
    replicas: a scalar again, as on one device. Other strategies and backends: unchanged.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None or keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    multi_worker = (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )
    if not multi_worker:
        return logs
    return keras.tree.map_structure(
        lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v, logs
    )


COMPILATION_CACHE_VARIABLE = "IMAGEN_KERAS_COMPILATION_CACHE"


def enable_compilation_cache(path=None):
    """JAX: keep compiled XLA programs on disk, so that the next process skips compiling.

    Building and training a model on JAX compiles many XLA programs (one initializer
    per weight shape, the train step, each sampling loop); a process that builds the
    same model again (a resumed run, `imagen --model ...`, the next stage) then loads
    them from JAX's persistent compilation cache instead. Small programs are cached too
    (by default JAX keeps only those that took over a second to compile).

    `path` defaults to the `IMAGEN_KERAS_COMPILATION_CACHE` environment variable, else
    `$XDG_CACHE_HOME/imagen_keras/jax` (`~/.cache/imagen_keras/jax`); an empty
    variable turns the cache off. A cache directory the user already gave JAX
    (`jax_compilation_cache_dir`) is kept. The training and sampling commands call
    this first. Returns the directory in use, or None (off, or not the JAX backend:
    TensorFlow and torch have no such cache).
    """
    if keras.backend.backend() != "jax":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if path is None:
        path = os.environ.get(COMPILATION_CACHE_VARIABLE)
    if path is None:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        path = os.path.join(cache_home, "imagen_keras", "jax")
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)


YNN_FUSIONS_OFF = "--xla_cpu_experimental_ynn_fusion_type="


def set_cpu_xla_flags():
    """JAX: turn XLA's YNNPACK fusions off for CPU programs, unless the user chose.

    With jaxlib 0.10, XLA's CPU compiler hands matmuls and the element-wise ops around
    them to YNNPACK; on this project's unets that kept one of two cores idle part of
    the time: with `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=` the train step
    of the 64 and 128 px benchmark configs took 0.76-0.77x the time and sampling 0.68-0.73x
    (2-core CPU, `bench/results/20261206-2114_*`; level at 32 px). XLA reads
    `XLA_FLAGS` once, when JAX starts its CPU backend, so this appends the flag only if
    that has not happened yet, the user's `XLA_FLAGS` do not mention YNNPACK fusions,
    and jaxlib is 0.10 or newer (older XLA may not know the flag and would stop the
    process). The training and sampling commands call it first. Returns whether it
    changed `XLA_FLAGS`; False on other backends.
    """
    if keras.backend.backend() != "jax":
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return False
    import jaxlib

    version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2] if p.isdigit())
    if version < (0, 10):
        return False
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # a JAX that cannot tell: leave XLA_FLAGS alone
        return False
    if started:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FUSIONS_OFF}".strip()
    return True


def gfile():
    """TensorFlow's `tf.io.gfile`, which reads and writes URLs (gs://, s3://, ...)."""
    try:
        import tensorflow as tf
    except ImportError as err:  # pragma: no cover - TF is a dependency of keras-hub
        raise ImportError(
            "Reading or writing a URL (gs://, s3://, ...) needs TensorFlow's tf.io.gfile; "
            "`pip install tensorflow`."
        ) from err
    return tf.io.gfile
