"""Training with Keras' own machinery: optimizer recipe, EMA weights, non-finite step guard,
checkpoints, callbacks and imagen-pytorch's `ImagenTrainer`."""

from imagen_keras.training.callbacks import (
    CheckpointCallback,
    ProgressLogger,
    SampleGrid,
    make_grid,
    total_steps,
)
from imagen_keras.training.checkpoint import (
    checkpoint_metadata,
    load_checkpoint,
    load_imagen_from_checkpoint,
    save_checkpoint,
)
from imagen_keras.training.checkpoint_manager import CheckpointManager
from imagen_keras.training.ema import copy_ema_to_weights, ema_decay, ema_pairs, ema_weights
from imagen_keras.training.non_finite import (
    NonFiniteStepMonitor,
    NonFiniteTrainingError,
    SkipNonFiniteOptimizer,
)
from imagen_keras.training.optimizers import ImagenAdam, imagen_optimizer
from imagen_keras.training.precision import precision_policy, set_precision
from imagen_keras.training.schedules import WarmupCosineDecay
from imagen_keras.training.stages import StageOptimizers
from imagen_keras.training.trainer import ImagenTrainer

__all__ = [
    "CheckpointCallback",
    "CheckpointManager",
    "ImagenAdam",
    "ImagenTrainer",
    "NonFiniteStepMonitor",
    "NonFiniteTrainingError",
    "ProgressLogger",
    "SampleGrid",
    "SkipNonFiniteOptimizer",
    "StageOptimizers",
    "WarmupCosineDecay",
    "checkpoint_metadata",
    "copy_ema_to_weights",
    "ema_decay",
    "ema_pairs",
    "ema_weights",
    "imagen_optimizer",
    "load_checkpoint",
    "load_imagen_from_checkpoint",
    "make_grid",
    "precision_policy",
    "save_checkpoint",
    "set_precision",
    "total_steps",
]
