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
