"""Config classes, YAML recipes and the command-line tools.

- `python -m imagen_keras.recipes.train --config demo.yaml`: train from a recipe.
- `python -m imagen_keras.recipes.sample --model runs/demo "a red digit seven"`.
- `imagen ...`: the same as one console command (`imagen --help`).
"""

from imagen_keras.recipes.config import (
    ConfigError,
    ElucidatedImagenConfig,
    ImagenConfig,
    RecipeConfig,
    UnetConfig,
    available_recipes,
    find_recipe,
    load_recipe,
)

__all__ = [
    "ConfigError",
    "ElucidatedImagenConfig",
    "ImagenConfig",
    "RecipeConfig",
    "UnetConfig",
    "available_recipes",
    "find_recipe",
    "load_recipe",
]
