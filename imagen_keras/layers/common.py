"""Small helpers shared by the layers: initialisers, dense/conv factories, l2norm."""

import keras
from keras import ops

from imagen_keras.backend import conv2d as conv2d_op


def torch_kernel_initializer():
    """The default weight init of `torch.nn.Linear`/`Conv2d` (kaiming uniform, a=sqrt(5)).

    It draws from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which keeps training dynamics close to
    imagen-pytorch's (Keras' glorot default is wider for small layers).
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def dense(units, *, use_bias=True, name=None, dtype=None, kernel_initializer=None):
    """A `keras.layers.Dense` initialised like `torch.nn.Linear`."""
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer or torch_kernel_initializer(),
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="imagen_keras")
class Conv2D(keras.layers.Conv2D):
    """A channels-last `keras.layers.Conv2D` whose convolution is `backend.conv2d`
    (on torch: without the two layout copies of the feature map that Keras makes)."""

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        return conv2d_op(
            inputs, kernel, self.strides, self.padding, self.dilation_rate, self.groups
        )


def conv2d(filters, kernel_size, *, strides=1, use_bias=True, name=None, dtype=None):
    """A channels-last `keras.layers.Conv2D` initialised like `torch.nn.Conv2d`.

    Stride-1 convolutions with odd kernels use "same" padding, which equals torch's
    `padding=k // 2`. Strided convolutions are padded explicitly by their callers so that
    every backend pads exactly as the reference does.
    """
    return Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=use_bias,
        kernel_initializer=torch_kernel_initializer(),
        name=name,
        dtype=dtype,
    )


def l2norm(x, axis=-1, eps=1e-12):
    """`torch.nn.functional.normalize`: x / max(||x||, eps), computed in float32.

    In float16 the sum of squares overflows past 256 and `eps` rounds to 0 (NaN
    gradients); torch's autocast runs `normalize` in float32 too.
    """
    x32 = ops.cast(x, "float32")
    norm = ops.sqrt(ops.sum(ops.square(x32), axis=axis, keepdims=True))
    return ops.cast(x32 / ops.maximum(norm, eps), x.dtype)


def cast_tuple(value, length, name):
    """A value or per-level sequence as a tuple of `length`, with a clear error."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        if len(value) != length:
            raise ValueError(
                f"`{name}` must have one entry per level of `dim_mults` ({length}). "
                f"Received: {name}={value}"
            )
        return value
    return (value,) * length
