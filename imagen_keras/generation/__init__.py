"""Generation: the guided network, one compiled function per sampling stage, and the
host-side `generate` behind `Imagen.sample` / `ElucidatedImagen.sample`."""

from imagen_keras.generation.generate import generate, resolve_seeds
from imagen_keras.generation.guided import guided_call, guided_network, prepare_conditioning
from imagen_keras.generation.stage import (
    StageStructure,
    compiled_stage_function,
    stage_function,
)

__all__ = [
    "StageStructure",
    "compiled_stage_function",
    "generate",
    "guided_call",
    "guided_network",
    "prepare_conditioning",
    "resolve_seeds",
    "stage_function",
]
