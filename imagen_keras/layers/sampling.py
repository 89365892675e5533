"""Resolution changes of the Imagen Unet (channels-last): pixel (un)shuffle, cross-embed
convolutions, upsampling, and the upsample combiner."""

import keras
from keras import ops

from imagen_keras.layers.common import Conv2D, conv2d, torch_kernel_initializer
from imagen_keras.layers.resnet import Block


def pixel_unshuffle(x, factor=2):
    """(b, h*f, w*f, c) -> (b, h, w, c*f*f), channel order `c*f*f + i*f + j` as in torch."""
    shape = ops.shape(x)
    b, h, w, c = shape[0], shape[1] // factor, shape[2] // factor, x.shape[-1]
    x = ops.reshape(x, (b, h, factor, w, factor, c))
    x = ops.transpose(x, (0, 1, 3, 5, 2, 4))
    return ops.reshape(x, (b, h, w, c * factor * factor))


def pixel_shuffle(x, factor=2):
    """(b, h, w, c*f*f) -> (b, h*f, w*f, c), the inverse of `pixel_unshuffle` (torch order)."""
    shape = ops.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], x.shape[-1] // (factor * factor)
    x = ops.reshape(x, (b, h, w, c, factor, factor))
    x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
    return ops.reshape(x, (b, h * factor, w * factor, c))


def resize_image_to(images, size, mode="nearest"):
    """Resize square channels-last images to `size` x `size`, like torch `F.interpolate`.

    Integer nearest-neighbour factors are done by repeating or striding, which equals
    torch's `mode='nearest'` exactly on every backend; other cases use
    `keras.ops.image.resize` without antialiasing.
    """
    current = images.shape[1]
    if current == size:
        return images
    if mode == "nearest" and current is not None:
        if size % current == 0:
            k = size // current
            return ops.repeat(ops.repeat(images, k, axis=1), k, axis=2)
        if current % size == 0:
            k = current // size
            return images[:, ::k, ::k, :]
    return ops.image.resize(
        images, (size, size), interpolation=mode, antialias=False, data_format="channels_last"
    )


@keras.saving.register_keras_serializable(package="imagen_keras")
class ICNRInitializer(keras.initializers.Initializer):
    """Kaiming-uniform kernel shared by each group of `factor**2` output channels.

    With pixel shuffle this makes the initial upsampling a nearest-neighbour one, which
    avoids checkerboard artifacts (Aitken et al. 2017, "Checkerboard artifact free
    sub-pixel convolution").
    """

    def __init__(self, factor=2, seed=None):
        self.factor, self.seed = factor, seed
        # kaiming_uniform (gain sqrt 2): U(-sqrt(6 / fan_in), sqrt(6 / fan_in)).
        self._base = keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_in", distribution="uniform", seed=seed
        )

    def __call__(self, shape, dtype=None):
        *spatial, fan_in_channels, out = shape
        groups = self.factor**2
        base = self._base((*spatial, fan_in_channels, out // groups), dtype=dtype)
        return ops.repeat(base, groups, axis=-1)

    def get_config(self):
        return {"factor": self.factor, "seed": self.seed}


@keras.saving.register_keras_serializable(package="imagen_keras")
class CrossEmbedLayer(keras.layers.Layer):
    """Parallel convolutions of several kernel sizes, concatenated over channels.

    Reference: Wang et al., "CrossFormer" (2021). Channels are split dim/2, dim/4, ...,
    rest, from the smallest kernel up, exactly as imagen-pytorch.

    Args:
        dim_out: int. Output channels.
        kernel_sizes: tuple of ints. Each must have the parity of `stride`.
        stride: int, defaults to 2.
    """

    def __init__(self, dim_out, kernel_sizes, stride=2, **kwargs):
        super().__init__(**kwargs)
        kernel_sizes = tuple(sorted(kernel_sizes))
        if not all(k % 2 == stride % 2 for k in kernel_sizes):
            raise ValueError(
                "Every kernel size of a CrossEmbedLayer must have the parity of its stride "
                f"({stride}). Received: kernel_sizes={kernel_sizes}"
            )
        self.dim_out, self.kernel_sizes, self.stride = dim_out, kernel_sizes, stride
        scales = [int(dim_out / (2**i)) for i in range(1, len(kernel_sizes))]
        scales.append(dim_out - sum(scales))
        self.convs = [
            Conv2D(
                s,
                k,
                strides=stride,
                padding="valid",
                kernel_initializer=torch_kernel_initializer(),
                dtype=self.dtype_policy,
                name=f"conv_{k}",
            )
            for k, s in zip(kernel_sizes, scales)
        ]

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        outs = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            p = (k - self.stride) // 2
            outs.append(conv(ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))))
        return ops.concatenate(outs, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"dim_out": self.dim_out, "kernel_sizes": self.kernel_sizes, "stride": self.stride}
        )
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class Downsample(keras.layers.Layer):
    """Pixel-unshuffle 2x2 then a 1x1 conv ("SP-conv", Sunkara & Luo 2022, arXiv:2208.03641).

    Args:
        dim_out: int. Output channels.
    """

    def __init__(self, dim_out, **kwargs):
        super().__init__(**kwargs)
        self.dim_out = dim_out
        self.conv = conv2d(dim_out, 1, dtype=self.dtype_policy, name="conv")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        return self.conv(pixel_unshuffle(x, 2))

    def get_config(self):
        config = super().get_config()
        config.update({"dim_out": self.dim_out})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class ParallelConv(keras.layers.Layer):
    """Sum of a 3x3 and a 1x1 conv; the last down level's "downsample" (no resolution change).

    Args:
        dim_out: int. Output channels.
    """

    def __init__(self, dim_out, **kwargs):
        super().__init__(**kwargs)
        self.dim_out = dim_out
        self.conv3 = conv2d(dim_out, 3, dtype=self.dtype_policy, name="conv3")
        self.conv1 = conv2d(dim_out, 1, dtype=self.dtype_policy, name="conv1")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        return self.conv3(x) + self.conv1(x)

    def get_config(self):
        config = super().get_config()
        config.update({"dim_out": self.dim_out})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class PixelShuffleUpsample(keras.layers.Layer):
    """1x1 conv to 4x channels, SiLU, pixel shuffle 2x (ICNR-initialised).

    Args:
        dim_out: int. Output channels.
    """

    def __init__(self, dim_out, **kwargs):
        super().__init__(**kwargs)
        self.dim_out = dim_out
        self.conv = Conv2D(
            dim_out * 4,
            1,
            kernel_initializer=ICNRInitializer(2),
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        return pixel_shuffle(ops.silu(self.conv(x)), 2)

    def get_config(self):
        config = super().get_config()
        config.update({"dim_out": self.dim_out})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class Upsample(keras.layers.Layer):
    """Nearest-neighbour 2x upsampling then a 3x3 conv.

    Args:
        dim_out: int. Output channels.
    """

    def __init__(self, dim_out, **kwargs):
        super().__init__(**kwargs)
        self.dim_out = dim_out
        self.conv = conv2d(dim_out, 3, dtype=self.dtype_policy, name="conv")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        return self.conv(ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2))

    def get_config(self):
        config = super().get_config()
        config.update({"dim_out": self.dim_out})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class UpsampleCombiner(keras.layers.Layer):
    """Resize every up level's feature map to the output size, `Block` each, concatenate.

    Used in "Unet squared" experiments of imagen-pytorch (`combine_upsample_fmaps`).

    Args:
        dim_outs: tuple of ints. Output channels of the `Block` applied to each map.
    """

    def __init__(self, dim_outs=(), **kwargs):
        super().__init__(**kwargs)
        self.dim_outs = tuple(dim_outs)
        self.blocks = [
            Block(d, dtype=self.dtype_policy, name=f"fmap_block_{i}")
            for i, d in enumerate(self.dim_outs)
        ]

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x, fmaps):
        size = x.shape[1]
        outs = [block(resize_image_to(f, size)) for f, block in zip(fmaps, self.blocks)]
        return ops.concatenate([x, *outs], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"dim_outs": self.dim_outs})
        return config
