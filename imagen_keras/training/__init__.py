"""Training with Keras' own machinery: optimizer recipe, EMA weights, non-finite step guard."""

from imagen_keras.training.ema import copy_ema_to_weights, ema_decay, ema_pairs, ema_weights
from imagen_keras.training.non_finite import (
    NonFiniteStepMonitor,
    NonFiniteTrainingError,
    SkipNonFiniteOptimizer,
)
from imagen_keras.training.optimizers import ImagenAdam, imagen_optimizer
from imagen_keras.training.schedules import WarmupCosineDecay
from imagen_keras.training.stages import StageOptimizers

__all__ = [
    "ImagenAdam",
    "NonFiniteStepMonitor",
    "NonFiniteTrainingError",
    "SkipNonFiniteOptimizer",
    "StageOptimizers",
    "WarmupCosineDecay",
    "copy_ema_to_weights",
    "ema_decay",
    "ema_pairs",
    "ema_weights",
    "imagen_optimizer",
]
