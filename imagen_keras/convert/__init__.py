"""Conversion of imagen-pytorch checkpoints to imagen-keras models.

Torch is optional: torch files are read with `torch.load(weights_only=True)` when torch
is installed; `.safetensors` and `.npz` files need only numpy.
"""

from imagen_keras.convert.checkpoint_io import extract_unet_state_dict, read_checkpoint
from imagen_keras.convert.imagen import (
    CascadeConversionReport,
    imagen_from_imagen_pytorch,
    imagen_kwargs_from_imagen_pytorch,
)
from imagen_keras.convert.unet import unet_from_imagen_pytorch, unet_kwargs_from_imagen_pytorch
from imagen_keras.convert.unet_weights import (
    ConversionReport,
    load_imagen_pytorch_unet_weights,
    unet_weight_entries,
)

__all__ = [
    "CascadeConversionReport",
    "ConversionReport",
    "extract_unet_state_dict",
    "imagen_from_imagen_pytorch",
    "imagen_kwargs_from_imagen_pytorch",
    "load_imagen_pytorch_unet_weights",
    "read_checkpoint",
    "unet_from_imagen_pytorch",
    "unet_kwargs_from_imagen_pytorch",
    "unet_weight_entries",
]
