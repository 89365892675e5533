"""imagen-keras: Imagen (cascaded text-to-image diffusion) in Keras 3."""

from imagen_keras.elucidated_imagen import ElucidatedImagen
from imagen_keras.imagen import Imagen
from imagen_keras.recipes.config import ElucidatedImagenConfig, ImagenConfig, UnetConfig
from imagen_keras.saving import load_model
from imagen_keras.training import ImagenTrainer, load_imagen_from_checkpoint
from imagen_keras.unet import Unet
from imagen_keras.unet_presets import BaseUnet64, NullUnet, SRUnet256, SRUnet1024

__version__ = "0.1.0"

__all__ = [
    "BaseUnet64",
    "ElucidatedImagen",
    "ElucidatedImagenConfig",
    "Imagen",
    "ImagenConfig",
    "ImagenTrainer",
    "NullUnet",
    "SRUnet256",
    "SRUnet1024",
    "Unet",
    "UnetConfig",
    "__version__",
    "load_imagen_from_checkpoint",
    "load_model",
]
