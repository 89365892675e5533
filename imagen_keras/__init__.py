"""imagen-keras: Imagen (cascaded text-to-image diffusion) in Keras 3."""

from imagen_keras.elucidated_imagen import ElucidatedImagen
from imagen_keras.imagen import Imagen
from imagen_keras.saving import load_model
from imagen_keras.unet import Unet
from imagen_keras.unet_presets import BaseUnet64, NullUnet, SRUnet256, SRUnet1024

__version__ = "0.1.0"

__all__ = [
    "BaseUnet64",
    "ElucidatedImagen",
    "Imagen",
    "NullUnet",
    "SRUnet256",
    "SRUnet1024",
    "Unet",
    "__version__",
    "load_model",
]
