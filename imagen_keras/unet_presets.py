"""Unet presets from the Imagen paper's appendix, and the placeholder `NullUnet`.

Keyword arguments override the preset's defaults, as in imagen-pytorch.
"""

import keras

from imagen_keras.unet import Unet


def _preset(defaults, kwargs):
    return {**defaults, **kwargs}


@keras.saving.register_keras_serializable(package="imagen_keras")
class BaseUnet64(Unet):
    """The 64x64 base model: dim 512, dim_mults (1, 2, 3, 4), 3 resnet blocks per level,
    attention and cross attention on all but the first level (~1.6 B parameters)."""

    DEFAULTS = dict(
        dim=512,
        dim_mults=(1, 2, 3, 4),
        num_resnet_blocks=3,
        layer_attns=(False, True, True, True),
        layer_cross_attns=(False, True, True, True),
        attn_heads=8,
        ff_mult=2.0,
        memory_efficient=False,
    )

    def __init__(self, **kwargs):
        super().__init__(**_preset(self.DEFAULTS, kwargs))


@keras.saving.register_keras_serializable(package="imagen_keras")
class SRUnet256(Unet):
    """The 64->256 super-resolution Efficient U-Net: dim 128, dim_mults (1, 2, 4, 8),
    resnet blocks (2, 4, 8, 8), attention only at the last level, memory efficient."""

    DEFAULTS = dict(
        dim=128,
        dim_mults=(1, 2, 4, 8),
        num_resnet_blocks=(2, 4, 8, 8),
        layer_attns=(False, False, False, True),
        layer_cross_attns=(False, False, False, True),
        attn_heads=8,
        ff_mult=2.0,
        memory_efficient=True,
    )

    def __init__(self, **kwargs):
        super().__init__(**_preset(self.DEFAULTS, kwargs))


@keras.saving.register_keras_serializable(package="imagen_keras")
class SRUnet1024(Unet):
    """The 256->1024 super-resolution Efficient U-Net: as `SRUnet256` without
    self-attention (cross attention only at the last level)."""

    DEFAULTS = dict(
        dim=128,
        dim_mults=(1, 2, 4, 8),
        num_resnet_blocks=(2, 4, 8, 8),
        layer_attns=False,
        layer_cross_attns=(False, False, False, True),
        attn_heads=8,
        ff_mult=2.0,
        memory_efficient=True,
    )

    def __init__(self, **kwargs):
        super().__init__(**_preset(self.DEFAULTS, kwargs))


@keras.saving.register_keras_serializable(package="imagen_keras")
class NullUnet(keras.Model):
    """A placeholder stage that returns its input: lets a cascade train only later stages.

    It has one dummy weight (as the reference) and cannot be trained or sampled from; a
    cascade uses it only as unet #1 (`lowres_cond` is always False).
    """

    is_null = True

    def __init__(self, **kwargs):
        # Accept and ignore Unet arguments, as the reference does.
        base = {k: kwargs.pop(k) for k in ("name", "dtype", "trainable") if k in kwargs}
        super().__init__(**base)
        self.lowres_cond = False
        self.dummy = self.add_weight(shape=(1,), initializer="zeros", name="dummy_parameter")

    def cast_model_parameters(self, **kwargs):
        return self

    def build(self, input_shape):
        self.built = True

    def call(self, x, *args, **kwargs):
        return x

    def get_config(self):
        return super().get_config()


# The presets by name, as recipes and configs refer to them.
PRESETS = {"BaseUnet64": BaseUnet64, "SRUnet256": SRUnet256, "SRUnet1024": SRUnet1024}
