"""Recipes and config classes: every shipped recipe parses and builds; bad YAML gives one
clear line naming the key."""

import os

import pytest
import yaml

from imagen_keras import ElucidatedImagen, Imagen
from imagen_keras.recipes import (
    ConfigError,
    ElucidatedImagenConfig,
    ImagenConfig,
    RecipeConfig,
    available_recipes,
    find_recipe,
    load_recipe,
)
from imagen_keras.recipes.config import apply_overrides, recipes_folder

TOP_LEVEL = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")

MINIMAL = {
    "model": {
        "unets": [{"dim": 8, "dim_mults": [1, 2], "max_text_len": 4}],
        "image_sizes": [8],
        "text_embed_dim": 16,
    },
    "data": {"source": "demo"},
    "train": {"steps": 4, "batch_size": 2},
}


def recipe(**changes):
    config = yaml.safe_load(yaml.safe_dump(MINIMAL))
    return apply_overrides(config, [f"{k}={v}" for k, v in changes.items()])


def test_the_shipped_recipes_are_the_top_level_folder():
    assert {"demo", "base", "sr256", "elucidated", "unconditional"} <= set(available_recipes())
    assert sorted(os.listdir(TOP_LEVEL)) == sorted(os.listdir(recipes_folder()))
    assert os.path.samefile(find_recipe("demo"), find_recipe("recipes/demo.yaml"))


@pytest.mark.parametrize("name", ["demo", "base", "sr256", "elucidated", "unconditional"])
def test_every_recipe_parses_and_builds_its_model(name):
    config = load_recipe(name)
    path = find_recipe(name)
    with open(path, encoding="utf-8") as f:
        header = f.readline()
    assert header.startswith(f"# {name}.yaml:"), header  # says what it is and how to run it
    assert config.output_dir == os.path.join("runs", name)
    # The model is created without its text encoder (no network): the width is known.
    model = config.model.create()
    assert isinstance(model, ElucidatedImagen if name == "elucidated" else Imagen)
    assert model.num_unets == len(config.model.image_sizes)
    assert list(model.image_sizes) == config.model.image_sizes
    if name in ("demo", "unconditional"):  # small enough to build on every backend
        model.build()
        assert model.count_params() > 10_000


def test_config_classes_create_what_the_fields_say():
    config = ImagenConfig(
        unets=[{"dim": 8, "dim_mults": [1, 2]}], image_sizes=8, text_embed_dim=16, timesteps=7
    )
    imagen = config.create()
    assert list(imagen.timesteps) == [7]
    assert imagen.unets[0].dim == 8
    elucidated = ElucidatedImagenConfig(
        unets=[{"dim": 8, "dim_mults": [1, 2]}], image_sizes=[8], text_embed_dim=16, rho=5.0
    ).create()
    assert tuple(elucidated.rho) == (5.0,)
    assert config.to_dict()["type"] == "imagen" and config.to_dict()["timesteps"] == 7


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model.unets.0.dimm": 8}, "Unknown key `model.unets[0].dimm`"),
        ({"model.timestep": 10}, "Unknown key `model.timestep`"),
        ({"train.stepz": 10}, "Unknown key `train.stepz`"),
        ({"surprise.key": 1}, "Unknown key `recipe.surprise`"),
        ({"train.steps": "many"}, "`train.steps` must be a positive int"),
        ({"train.steps": 0}, "`train.steps` must be a positive int"),
        ({"model.cond_drop_prob": "high"}, "`model.cond_drop_prob` must be a number"),
        ({"model.unets.0.layer_attns": "sometimes"}, "`model.unets[0].layer_attns` must be a bool"),
        ({"model.image_sizes": "[8, 16]"}, "`model.image_sizes` must give one size per unet"),
        ({"model.type": "latent"}, "`model.type` must be one of"),
        ({"data.source": "web"}, "`data.source` must be one of"),
        ({"data.foldr": "x"}, "Unknown key `data.foldr`"),
        ({"train.unet": 2}, "`train.unet` must be a stage number from 1 to 1"),
        ({"sample.prompts": "a cat"}, "`sample.prompts` must be a list of strings"),
        ({"model.unets.0.dim": -4}, "`model.unets[0]`"),
        ({"model.loss_type": "l3"}, "`model`: `loss_type` must be one of"),
        ({"train.precision": "fp8"}, "`train.precision` must be one of"),
        ({"train.tensorboard": "often"}, "`train.tensorboard` must be a bool"),
        ({"train.distribution": "ddp"}, "`train.distribution` must be one of"),
        ({"train.devices": "gpu0"}, "`train.devices` must be a list of device names"),
        ({"train.model_parallel": 0}, "`train.model_parallel` must be a positive int"),
        (
            {"train.model_parallel": 2},
            '`train.model_parallel` is only used with train.distribution="model_parallel"',
        ),
    ],
)
def test_bad_values_give_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as info:
        config = RecipeConfig(recipe(**changes))
        config.model.create()
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_missing_sections_and_keys_are_named():
    for section in ("model", "data", "train"):
        config = recipe()
        del config[section]
        with pytest.raises(ConfigError, match=f"Missing key `recipe.{section}`"):
            RecipeConfig(config)
    config = recipe()
    del config["train"]["batch_size"]
    with pytest.raises(ConfigError, match="Missing key `train.batch_size`"):
        RecipeConfig(config)
    config = recipe()
    config["data"] = {"source": "folder"}
    with pytest.raises(ConfigError, match="Missing key `data.folder`"):
        RecipeConfig(config)


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        load_recipe(broken)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_recipe(empty)
    with pytest.raises(ConfigError, match="No recipe file 'nope.yaml'.*demo"):
        load_recipe("nope.yaml")


def test_overrides_set_nested_keys_and_list_items():
    config = recipe(**{"train.steps": 9, "model.unets.0.dim": 16, "sample.cond_scale": 2.5})
    parsed = RecipeConfig(config)
    assert parsed.train["steps"] == 9 and parsed.sample["cond_scale"] == 2.5
    assert parsed.model.unets[0].config["dim"] == 16
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides(recipe(), ["train.steps"])


def test_tiny_text_encoder_section():
    config = recipe()
    del config["model"]["text_embed_dim"]
    config["text_encoder"] = {"tiny": {"hidden_dim": 16}}
    parsed = RecipeConfig(config)
    assert parsed.text_encoder["tiny"]["hidden_dim"] == 16
    config["model"]["text_encoder_name"] = "t5-v1_1-base"
    with pytest.raises(ConfigError, match="not both"):
        RecipeConfig(config)
    config = recipe()
    config["text_encoder"] = {"tiny": {"hidden_dim": 0}}
    del config["model"]["text_embed_dim"]
    with pytest.raises(ConfigError, match="`text_encoder.tiny.hidden_dim` must be a positive int"):
        RecipeConfig(config)
