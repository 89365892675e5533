"""Time embeddings."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="imagen_keras")
class LearnedSinusoidalPosEmb(keras.layers.Layer):
    """Learned random Fourier features of a scalar: `[x, sin(2 pi x w), cos(2 pi x w)]`.

    Following @crowsonkb's v-diffusion. Input `(batch,)`, output `(batch, dim + 1)`.
    The features are computed in float32 whatever the dtype policy (a log-SNR of 15 in
    bfloat16 is only known to 0.06, which scrambles the phases) and returned in the
    layer's compute dtype.

    Args:
        dim: int, even. Number of Fourier features.
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self._convert_input_args = False  # keep a float32 input float32 under mixed policies
        if dim % 2 != 0:
            raise ValueError(f"`dim` of LearnedSinusoidalPosEmb must be even. Received: dim={dim}")
        self.dim = dim

    def build(self, input_shape):
        self.weights_ = self.add_weight(
            shape=(self.dim // 2,),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="weights",
        )
        self.built = True

    def call(self, x):
        x = ops.cast(x, "float32")[:, None]
        freqs = x * ops.cast(self.weights_, "float32")[None, :] * (2.0 * math.pi)
        features = ops.concatenate([x, ops.sin(freqs), ops.cos(freqs)], axis=-1)
        return ops.cast(features, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim + 1)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim})
        return config
