"""Train a tiny cascade on one device and on 2 virtual CPU devices; print a JSON report.

Run by `test_multi_device.py` in a subprocess with its own environment: the CPU must be
split into 2 devices before the backend initialises its devices (JAX reads XLA_FLAGS
`--xla_force_host_platform_device_count=2` at import; TensorFlow splits the CPU into
logical devices below). Usage: `KERAS_BACKEND=jax|tensorflow python multi_device_worker.py`.
"""

import json
import os
import sys
import warnings
import zlib

warnings.filterwarnings("ignore")
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from imagen_keras import Imagen, Unet  # noqa: E402
from imagen_keras.distribution import distribution_scope, num_replicas  # noqa: E402
from imagen_keras.training import imagen_optimizer  # noqa: E402

GLOBAL_BATCH = 32
STEPS = 2
REAL_UNIFORM = keras.random.uniform
MULTI = {"tensorflow": ("mirrored", ["/cpu:0", "/cpu:1"]), "jax": ("data_parallel", None)}


def replica():
    """(replica id, replicas) of the running replica; (0, 1) outside tf.distribute."""
    if BACKEND == "tensorflow":
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.replica_id_in_sync_group, context.num_replicas_in_sync
    return 0, 1


def fixed_draw(kind):
    """A `keras.random` function whose values depend only on the GLOBAL shape: replica r
    of R gets rows [r*n, (r+1)*n) of what one device gets, so every layout draws the
    same noise for the same example."""

    def draw(shape, *args, seed=None, **kwargs):
        index, count = replica()
        shape = tuple(int(s) for s in shape)
        full = (shape[0] * count, *shape[1:])
        rng = np.random.default_rng(zlib.crc32(repr((kind, full)).encode()))
        values = rng.uniform(size=full) if kind == "uniform" else rng.normal(size=full)
        values = ops.convert_to_tensor(values.reshape((count, *shape)).astype("float32"))
        return ops.take(values, index, axis=0)

    return draw


def make_model(optimizer=None):
    keras.utils.set_random_seed(0)
    unet = Unet(
        dim=8,
        dim_mults=(1, 2),
        layer_attns=(False, True),  # attention weights to split under model_parallel
        layer_cross_attns=False,
        cond_on_text=False,
        attn_pool_text=False,
        use_global_context_attn=False,
    )
    model = Imagen(unet, image_sizes=16, condition_on_text=False, timesteps=10, seed=1)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.5))
    model.build()
    return model


def per_replica(variable):
    """Every replica's copy of a variable (one entry off tf.distribute)."""
    value = getattr(variable, "value", variable)
    if BACKEND == "tensorflow" and hasattr(value, "values"):
        return [np.asarray(v.numpy()).tolist() for v in value.values]
    return [np.asarray(ops.convert_to_numpy(value)).tolist()]


def sharding_report(model):
    """Path -> (sharding spec, shape of this process' first shard) of every weight."""
    report = {}
    for variable in model.unets[0].weights:
        sharding = variable.value.sharding
        spec = [axis for axis in getattr(sharding, "spec", ())]
        shard = variable.value.addressable_shards[0].data.shape
        report[variable.path] = [spec, list(shard), list(variable.shape)]
    return report


def imagen_adam():
    """The default stage optimizer (TensorFlow: its fused Adam update), EMA every step."""
    return imagen_optimizer(lr=1e-2, ema_update_after_step=0, ema_update_every=1, ema_beta=0.5)


def train(strategy, devices, images, optimizer=None, **kwargs):
    with distribution_scope(strategy, devices=devices, **kwargs) as scope:
        model = make_model(optimizer() if optimizer else None)
        before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
        history = model.fit(
            {"images": images}, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0
        )
        after = [ops.convert_to_numpy(v) for v in model.trainable_variables]
        report = {
            "num_replicas": num_replicas(),
            "scope_replicas": scope.num_replicas,
            "loss": history.history["loss"],
            "steps": per_replica(model.unet_train_steps),
        }
        if BACKEND == "tensorflow" and scope.strategy is not None:
            # What each replica really draws from the model's generator, twice, and the
            # generator's state on each replica after.
            def draw():
                return REAL_UNIFORM((4,), seed=model.seed_generator)

            runs = [scope.strategy.run(tf.function(draw)) for _ in range(2)]
            local = scope.strategy.experimental_local_results
            report["draws"] = [[v.numpy().tolist() for v in local(run)] for run in runs]
        if optimizer is not None:
            adam = model.optimizer.inner_optimizer
            slots = [*adam._momentums, *adam._velocities, *adam._model_variables_moving_average]
            report["slots"] = [np.asarray(ops.convert_to_numpy(v)).tolist() for v in slots]
            report["replicas_agree"] = all(
                np.array_equal(copies[0], copy)
                for v in [*model.trainable_variables, *slots]
                for copies in [per_replica(v)]
                for copy in copies
            )
        if strategy == "model_parallel":
            report["sharding"] = sharding_report(model)
        report["seed_states"] = per_replica(model.seed_generator.state)
    return before, after, report


def main():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(GLOBAL_BATCH * STEPS, 16, 16, 3)).astype("float32")
    if BACKEND == "tensorflow":
        keras.random.uniform, keras.random.normal = fixed_draw("uniform"), fixed_draw("normal")
    w0, single_w, single = train(None, None, images)
    strategy, devices = MULTI[BACKEND]
    m0, multi_w, multi = train(strategy, devices, images)
    flat = lambda ws: np.concatenate([w.ravel() for w in ws])  # noqa: E731
    update = flat(single_w) - flat(w0)

    def compare(start, end):
        return {
            "same_init": float(np.abs(flat(start) - flat(w0)).max()),
            "update_ratio": float(np.linalg.norm(flat(end) - flat(start)) / np.linalg.norm(update)),
            "relative_error": float(
                np.linalg.norm(flat(end) - flat(single_w)) / np.linalg.norm(update)
            ),
        }

    result = {"single": single, "multi": multi, **compare(m0, multi_w)}
    if BACKEND == "tensorflow":
        # Adam as `imagen_optimizer` builds it (TensorFlow updates each variable with
        # one fused kernel under the strategy): the same step as on one device.
        a0, adam_w, adam = train(None, None, images, optimizer=imagen_adam)
        b0, adam_multi_w, adam_multi = train(strategy, devices, images, optimizer=imagen_adam)
        result["adam"] = {
            "replicas_agree": adam_multi["replicas_agree"],
            "same_init": float(np.abs(flat(b0) - flat(a0)).max()),
            "moved": float(np.abs(flat(adam_w) - flat(a0)).max()),
            "weights_error": float(np.abs(flat(adam_multi_w) - flat(adam_w)).max()),
            # Each slot (m, v, EMA of each weight): largest error / largest value.
            "slots_relative_error": max(
                float(np.abs(np.asarray(x) - np.asarray(y)).max() / np.abs(np.asarray(x)).max())
                for x, y in zip(adam["slots"], adam_multi["slots"])
                if np.abs(np.asarray(x)).max() > 0
            ),
        }
    if BACKEND == "jax":
        # The weights split over a 1 x 2 ("batch", "model") mesh: one copy, two halves.
        p0, parallel_w, parallel = train("model_parallel", None, images, model_parallel=2)
        result["model_parallel"] = {**parallel, **compare(p0, parallel_w)}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
