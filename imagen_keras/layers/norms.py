"""Normalisation layers of imagen-pytorch, channels-last."""

import keras
from keras import ops

from imagen_keras.layers.common import l2norm


@keras.saving.register_keras_serializable(package="imagen_keras")
class LayerNorm(keras.layers.Layer):
    """Gain-only layer norm over the last axis (imagen-pytorch's `LayerNorm`/`ChanLayerNorm`).

    Uses the biased variance, no bias term, and epsilon 1e-5 in float32 or 1e-3 in lower
    precision, as the reference does. In channels-last layout the reference's
    `ChanLayerNorm` (normalising over channels) is this same layer.

    Args:
        stable: bool, defaults to `False`. Divide by the (gradient-stopped) max over the
            normalised axis first, as the reference's `stable=True`.
    """

    def __init__(self, stable=False, **kwargs):
        super().__init__(**kwargs)
        self.stable = stable

    def build(self, input_shape):
        self.g = self.add_weight(
            shape=(input_shape[-1],), initializer="ones", name="g", trainable=True
        )
        self.built = True

    def call(self, x):
        if self.stable:
            x = x / ops.stop_gradient(ops.max(x, axis=-1, keepdims=True))
        eps = 1e-5 if keras.backend.standardize_dtype(x.dtype) == "float32" else 1e-3
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * ops.rsqrt(var + eps) * ops.cast(self.g, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"stable": self.stable})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class ChanRMSNorm(keras.layers.Layer):
    """RMS norm over channels: `l2normalize(x) * sqrt(C) * gamma` (imagen-pytorch `ChanRMSNorm`)."""

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), initializer="ones", name="gamma", trainable=True
        )
        self.built = True

    def call(self, x):
        scale = float(x.shape[-1]) ** 0.5
        return l2norm(x, axis=-1) * scale * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
