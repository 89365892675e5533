"""Tiny deterministic models and data for the optimizer, EMA and non-finite-step tests."""

import keras
import numpy as np
import pytest

IN_DIM, OUT_DIM = 3, 2


def dense_model(seed=0):
    """A two-layer MLP whose initial weights depend on `seed` only."""
    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input((IN_DIM,)),
            keras.layers.Dense(4, activation="tanh", kernel_initializer=init(seed)),
            keras.layers.Dense(OUT_DIM, kernel_initializer=init(seed + 1)),
        ]
    )


def compile_model(model, optimizer, xla=False):
    """Compile for `fit`: always a compiled step on JAX (jax.jit) and TensorFlow
    (tf.function, with XLA if `xla`: slow to compile); eager on torch."""
    backend = keras.backend.backend()
    jit = backend == "jax" or (backend == "tensorflow" and xla)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit)
    return model


def weights(model):
    return [np.array(w) for w in model.get_weights()]


class RecordWeights(keras.callbacks.Callback):
    """The model's weights after every batch (on JAX `self.model` syncs the fit state)."""

    def __init__(self):
        super().__init__()
        self.history = []

    def on_train_begin(self, logs=None):
        self.initial = weights(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.history.append(weights(self.model))


@pytest.fixture(scope="module")
def data():
    """32 examples, fixed across backends."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, IN_DIM)).astype("float32")
    y = rng.normal(size=(32, OUT_DIM)).astype("float32")
    return x, y


# ------------------------------------------------------------------ tiny cascades
# For the checkpoint, trainer and callback tests: the smallest two-stage cascade.


def small_unet(**kwargs):
    """A dim-4 one-level Unet without attention: the fastest to build and compile."""
    from tests.conftest import tiny_unet

    config = dict(
        dim=4, dim_mults=(1,), layer_attns=(False,), layer_cross_attns=(False,), num_resnet_blocks=1
    )
    config.update(kwargs)
    return tiny_unet(**config)


def small_cascade(unets=None, **kwargs):
    """A two-stage `Imagen` (8 -> 16 px) of `small_unet`s with a fixed training seed."""
    import warnings

    from imagen_keras import Imagen
    from tests.conftest import SIZES, TEXT_DIM

    config = dict(image_sizes=SIZES, text_embed_dim=TEXT_DIM, timesteps=2, seed=3)
    config.update(kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The base dimension of the Unet")
        return Imagen(unets or [small_unet(), small_unet()], **config)


# A compiled step on JAX (its eager mode is slow); eager elsewhere, which is faster than
# tracing for the few steps these tests take.
COMPILE = dict(
    jit_compile=keras.backend.backend() == "jax", run_eagerly=keras.backend.backend() != "jax"
)


def fast_ema_optimizer(**kwargs):
    """An `imagen_optimizer` whose EMA moves at once (differs from the weights after 2 updates)."""
    from imagen_keras.training import imagen_optimizer

    config = dict(lr=1e-3, ema_update_after_step=0, ema_update_every=1)
    config.update(kwargs)
    return imagen_optimizer(**config)


def to_numpy(values):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in values]
