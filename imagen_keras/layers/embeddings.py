"""Time embeddings."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="imagen_keras")
class LearnedSinusoidalPosEmb(keras.layers.Layer):
    """Learned random Fourier features of a scalar: `[x, sin(2 pi x w), cos(2 pi x w)]`.

    Following @crowsonkb's v-diffusion. Input `(batch,)`, output `(batch, dim + 1)`.

    Args:
        dim: int, even. Number of Fourier features.
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
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
        x = x[:, None]
        freqs = x * ops.cast(self.weights_, x.dtype)[None, :] * (2.0 * math.pi)
        return ops.concatenate([x, ops.sin(freqs), ops.cos(freqs)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim + 1)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim})
        return config
