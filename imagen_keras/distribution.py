"""Data-parallel training through the active backend's own engine.

TensorFlow trains on several devices with `tf.distribute` (MirroredStrategy on one
machine, MultiWorkerMirroredStrategy over TF_CONFIG workers, TPUStrategy on a TPU), JAX
with `keras.distribution.DataParallel` (one SPMD program over every local device, or
every device of every process after `keras.distribution.initialize`). The torch backend
has no data-parallel engine in Keras: it trains on one device, and asking it for more
raises an error instead of silently using one.

This module (with `imagen_keras/backend.py`) is where backend-specific code lives.
"""

import contextlib
import json
import os

import keras

STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "data_parallel", "model_parallel")
TF_STRATEGIES = ("mirrored", "multi_worker", "tpu")
JAX_STRATEGIES = ("data_parallel", "model_parallel")
MODEL_AXIS = "model"
BATCH_AXIS = "batch"
# The environment variables `keras.distribution.initialize()` reads.
JAX_PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)

_TORCH_MESSAGE = (
    "Keras' torch backend has no multi-device training engine, so imagen-keras trains on "
    "one device there. For several GPUs, several machines or TPUs use "
    "KERAS_BACKEND=jax (strategy='data_parallel') or KERAS_BACKEND=tensorflow "
    "(strategy='mirrored', 'multi_worker' or 'tpu'); to train on one GPU with torch pass "
    "strategy=None (and e.g. CUDA_VISIBLE_DEVICES=0)."
)


class DistributionScope:
    """What `distribution_scope` returns: a context manager over one strategy.

    Build, compile and `fit` the model inside it. `strategy` is the backend's engine (a
    `tf.distribute.Strategy`, a `keras.distribution.Distribution`, or `None` for one
    device) and `num_replicas` the number of replicas a global batch is split over.
    """

    def __init__(self, name, strategy, num_replicas):
        self.name = name
        self.strategy = strategy
        self.num_replicas = num_replicas
        self._stack = None

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if self.strategy is not None:
            self._stack.enter_context(self.strategy.scope())
        return self

    def __exit__(self, *exc_info):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc_info)

    def __repr__(self):
        return f"DistributionScope(name={self.name!r}, num_replicas={self.num_replicas})"


def distribution_scope(strategy="auto", devices=None, model_parallel=None):
    """Select the data-parallel engine of the active Keras backend.

    The global batch (what `fit`'s `batch_size` or the dataset's batch says) is split
    over the replicas and the diffusion loss is averaged over the whole global batch, so
    the same global batch gives the same step on one device or many.

    Args:
        strategy: string or `None`. One of
            - `"auto"` (default): TensorFlow uses `"multi_worker"` when TF_CONFIG names
              several tasks, `"mirrored"` when several GPUs (or `devices`) are
              available, else one device; JAX uses `"data_parallel"` when it sees
              several devices (or `devices` is given), else one device; torch trains on
              one device and raises if several GPUs are visible.
            - `"mirrored"` (TensorFlow): `tf.distribute.MirroredStrategy(devices)`.
            - `"multi_worker"` (TensorFlow): `tf.distribute.MultiWorkerMirroredStrategy`
              over the workers in TF_CONFIG. Create it at the start of the program.
            - `"tpu"` (TensorFlow): `tf.distribute.TPUStrategy` on the TPU found by
              `TPUClusterResolver` (TPU_NAME or the local TPU VM).
            - `"data_parallel"` (JAX): `keras.distribution.DataParallel(devices=...)`. On
              several hosts, call `keras.distribution.initialize(...)` first (it runs
              `jax.distributed.initialize`), or set the `KERAS_DISTRIBUTION_*` variables
              it reads and this function calls it; the devices are then those of all
              hosts.
            - `"model_parallel"` (JAX): `keras.distribution.ModelParallel` over a
              `("batch", "model")` mesh whose `"model"` axis has `model_parallel`
              devices: the unets' large weights (attention and feed-forward projections,
              resnet convolutions, time MLPs) are split over that axis by
              `unet_layout_map`, and the batch over the other one.
            - `None`: no strategy, one device, on every backend.
        devices: list of device names or `None` (every device). TensorFlow names such as
            `["/gpu:0", "/gpu:1"]` for `"mirrored"`; `keras.distribution.list_devices()`
            names such as `["gpu:0", "gpu:1"]` for `"data_parallel"`. Not used by
            `"multi_worker"` and `"tpu"`, which take their devices from the cluster.
        model_parallel: int or `None`. For `"model_parallel"`: how many devices share
            one copy of the weights (the size of the mesh's `"model"` axis; it must
            divide the number of devices). `None` uses every device for the model axis.

    Returns:
        A `DistributionScope`: a context manager with `strategy` and `num_replicas`.

    Example:
    ```python
    from imagen_keras.distribution import distribution_scope, is_chief

    with distribution_scope("auto") as scope:
        imagen = Imagen(unet, image_sizes=64, text_embed_dim=768)
        imagen.compile(optimizer=keras.optimizers.Adam(1e-4))
        imagen.fit(dataset, epochs=10)  # dataset batched with the GLOBAL batch size
    if is_chief():
        imagen.save("imagen.keras")
    ```
    """
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {STRATEGIES} or None. Received: strategy={strategy!r}"
        )
    if devices is not None:
        if isinstance(devices, str) or not all(isinstance(d, str) for d in devices):
            raise ValueError(
                f"`devices` must be a list of device names or None. Received: devices={devices!r}"
            )
        devices = list(devices)
        if not devices:
            raise ValueError("`devices` must name at least one device. Received: devices=[]")
    if model_parallel is not None:
        if strategy != "model_parallel":
            raise ValueError(
                "`model_parallel` is only used with strategy='model_parallel'. "
                f"Received: strategy={strategy!r}, model_parallel={model_parallel!r}"
            )
        if isinstance(model_parallel, bool) or not isinstance(model_parallel, int):
            raise ValueError(
                "`model_parallel` must be a positive int or None. "
                f"Received: model_parallel={model_parallel!r}"
            )
        if model_parallel < 1:
            raise ValueError(
                "`model_parallel` must be a positive int or None. "
                f"Received: model_parallel={model_parallel!r}"
            )
    if strategy is None:
        return DistributionScope(None, None, 1)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_scope(strategy, devices)
    if backend == "jax":
        return _jax_scope(strategy, devices, model_parallel)
    if backend == "torch":
        return _torch_scope(strategy, devices)
    raise ValueError(
        "imagen-keras distributes training on the jax and tensorflow backends. "
        f"Received: KERAS_BACKEND={backend!r}"
    )


def _wrong_backend(strategy, backend, supported):
    return ValueError(
        f"strategy={strategy!r} is not available with KERAS_BACKEND={backend!r}; use one of "
        f"{('auto', *supported, None)}. Received: strategy={strategy!r}"
    )


def _tf_config_tasks():
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    return cluster, config.get("task", {})


def _tensorflow_scope(strategy, devices):
    import tensorflow as tf

    if strategy == "data_parallel":
        raise _wrong_backend(strategy, "tensorflow", TF_STRATEGIES)
    if strategy in ("multi_worker", "tpu") and devices is not None:
        raise ValueError(
            f"strategy={strategy!r} takes its devices from the cluster, not `devices`. "
            f"Received: devices={devices!r}"
        )
    if strategy == "auto":
        if is_multi_process():
            strategy = "multi_worker"
        elif devices is not None or len(tf.config.list_logical_devices("GPU")) > 1:
            strategy = "mirrored"
        else:
            return DistributionScope(None, None, 1)
    if strategy == "mirrored":
        engine = tf.distribute.MirroredStrategy(devices)
    elif strategy == "multi_worker":
        engine = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        engine = tf.distribute.TPUStrategy(resolver)
    return DistributionScope(strategy, engine, engine.num_replicas_in_sync)


def _jax_scope(strategy, devices, model_parallel):
    if strategy in TF_STRATEGIES:
        raise _wrong_backend(strategy, "jax", JAX_STRATEGIES)
    initialize_processes()
    available = keras.distribution.list_devices()
    if strategy == "auto" and devices is None and len(available) < 2:
        return DistributionScope(None, None, 1)
    devices = devices or available
    if strategy == "model_parallel":
        engine = _model_parallel(devices, model_parallel or len(devices))
        return DistributionScope(strategy, engine, _batch_replicas(engine))
    engine = keras.distribution.DataParallel(devices=devices)
    return DistributionScope("data_parallel", engine, _batch_replicas(engine))


def initialize_processes():
    """JAX: join the other processes of a multi-process run, once, if one is configured.

    Calls `keras.distribution.initialize()` (which runs `jax.distributed.initialize`) when
    the environment sets `KERAS_DISTRIBUTION_JOB_ADDRESSES` and
    `KERAS_DISTRIBUTION_NUM_PROCESSES` (and `KERAS_DISTRIBUTION_PROCESS_ID`) and JAX is
    not initialised yet; `distribution_scope` calls it. It must run before the program's
    first JAX computation. Returns True when this process is part of a multi-process run.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    if jax.distributed.is_initialized():
        return True
    if not os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        return False
    missing = [name for name in JAX_PROCESS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            "A multi-process JAX run needs all of "
            f"{', '.join(JAX_PROCESS_VARIABLES)}. Missing: {', '.join(missing)}"
        )
    keras.distribution.initialize()
    return True


def unet_layout_map(device_mesh, model_axis=MODEL_AXIS):
    """Which unet weights split over the `model_axis` of `device_mesh` (JAX ModelParallel).

    Megatron-style: a layer that widens splits its output features, the layer that
    narrows back splits its input features, so each device holds 1/N of
    - attention: `to_q` and cross-attention `to_kv` (heads, output axis), `to_out`
      (input axis);
    - feed-forward: `proj_in` (output axis), `proj_out` (input axis);
    - resnet blocks: the first 3x3 convolution (output channels), the second (input
      channels), the time MLP (output axis);
    - the perceiver resampler's attention and the time / pooled-text conditioning MLPs.
    Everything else (norms, biases, embeddings, the small single-head key/value of
    self-attention, the first and last convolutions) is replicated, and so is any axis
    the model axis does not divide (see `distribution_scope("model_parallel")`, which
    applies this map). Optimizer slots and EMA copies follow their weights. XLA inserts
    the collectives, so the maths is that of one device.

    Args:
        device_mesh: `keras.distribution.DeviceMesh` with an axis named `model_axis`.
        model_axis: str. The mesh axis the weights split over.

    Returns:
        A `keras.distribution.LayoutMap`.
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            f"`device_mesh` has no axis {model_axis!r}. "
            f"Received: device_mesh.axis_names={list(device_mesh.axis_names)!r}"
        )
    m = model_axis
    layout_map = keras.distribution.LayoutMap(device_mesh)
    # Dense kernels are (inputs, outputs); convolution kernels (kh, kw, inputs, outputs).
    for pattern, layout in {
        r".*/(to_q|proj_in|time_mlp|to_time_hiddens|text_non_attn_in)/kernel": (None, m),
        r".*(cross_attn|attn_pool/attn_\d+)/to_kv/kernel": (None, m),
        r".*/(to_out|proj_out|to_time_cond|text_non_attn_out)/kernel": (m, None),
        r".*/block1/project/kernel": (None, None, None, m),
        r".*/block2/project/kernel": (None, None, m, None),
    }.items():
        layout_map[pattern] = layout
    return layout_map


def _model_parallel(devices, model_size):
    import numpy as np

    if len(devices) % model_size:
        raise ValueError(
            f"`model_parallel` must divide the number of devices ({len(devices)}). "
            f"Received: model_parallel={model_size!r}"
        )
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_size, model_size),
        (BATCH_AXIS, MODEL_AXIS),
        devices=np.asarray(devices),
    )
    return _DivisibleModelParallel(layout_map=unet_layout_map(mesh), batch_dim_name=BATCH_AXIS)


class _DivisibleModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that replicates a weight axis its mesh axis does not divide.

    One layout map then serves every unet size: a 3-channel output or an odd width
    stays whole instead of failing with a sharding error.
    """

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        mesh = self.device_mesh
        axes = list(layout.axes)
        if len(axes) != len(variable.shape):
            return keras.distribution.TensorLayout([None] * len(variable.shape), mesh)
        sizes = dict(zip(mesh.axis_names, mesh.shape))
        fitted = [
            axis if axis is None or variable.shape[i] % sizes[axis] == 0 else None
            for i, axis in enumerate(axes)
        ]
        if fitted == axes:
            return layout
        return keras.distribution.TensorLayout(fitted, mesh)


def _torch_scope(strategy, devices):
    import torch

    if strategy != "auto" or (devices is not None and len(devices) > 1):
        raise ValueError(f"{_TORCH_MESSAGE} Received: strategy={strategy!r}, devices={devices!r}")
    if devices is None and torch.cuda.device_count() > 1:
        raise ValueError(
            f"{torch.cuda.device_count()} GPUs are visible. {_TORCH_MESSAGE} "
            f"Received: strategy={strategy!r}"
        )
    return DistributionScope(None, None, 1)


def _batch_replicas(distribution):
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


def num_replicas():
    """How many replicas the current global batch is split over (1 on one device).

    TensorFlow: the current `tf.distribute` strategy's `num_replicas_in_sync`; JAX: the
    size of the batch axis of the current `keras.distribution` mesh; torch: 1.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return int(tf.distribute.get_strategy().num_replicas_in_sync)
    if backend == "jax":
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else _batch_replicas(distribution)
    return 1


def is_multi_process():
    """True when this process is one of several of one training run: TF_CONFIG names
    several tasks (TensorFlow) or `KERAS_DISTRIBUTION_NUM_PROCESSES` is above 1 (JAX)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        cluster, _ = _tf_config_tasks()
        return sum(len(tasks) for tasks in cluster.values()) > 1
    if backend == "jax":
        return int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or 1) > 1
    return False


def is_chief():
    """True in the one process that writes checkpoints, sample grids and logs.

    TensorFlow: the "chief" task of TF_CONFIG, or worker 0 when there is no chief (True
    without TF_CONFIG); JAX: process 0 of `jax.distributed`; torch: always (one process).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        cluster, task = _tf_config_tasks()
        if not task:
            return True
        kind, index = task.get("type"), int(task.get("index", 0))
        return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    if backend == "jax":
        import jax

        return jax.process_index() == 0
    return True


@keras.saving.register_keras_serializable(package="imagen_keras")
class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` whose draws differ between tf.distribute replicas.

    Under a `tf.distribute` strategy every replica runs the training step with its own
    copy of the generator's state; a plain `SeedGenerator` then gives every replica the
    same timesteps, noise and condition dropout for its different examples. This one
    advances the state identically on every replica (so the copies stay equal and a
    saved state resumes the same stream) and folds the replica id into the seed each
    draw uses. With one replica, and on JAX (whose SPMD program draws for the global
    batch at once) and torch, its draws are those of `keras.random.SeedGenerator`.

    Args:
        seed: int or `None`, as for `keras.random.SeedGenerator`.
        **kwargs: passed to `keras.random.SeedGenerator` (e.g. `name`).

    Example:
    ```python
    gen = ReplicaSeedGenerator(seed=1)
    noise = keras.random.normal((2, 8, 8, 3), seed=gen)
    ```
    """

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        return tf.random.experimental.stateless_fold_in(seed, context.replica_id_in_sync_group)
