"""Config classes and YAML recipes: every section is checked before anything is built.

A recipe is a YAML file with the sections

- `model`: the cascade (`type: imagen | elucidated`, `unets`, `image_sizes`, and any
  other `Imagen` / `ElucidatedImagen` argument) -> `ImagenConfig` /
  `ElucidatedImagenConfig`, whose `create()` builds it (imagen-pytorch's names);
- `text_encoder` (optional): `tiny: {...}` builds an untrained tiny T5 from the
  training captions (offline demos), instead of `model.text_encoder_name`;
- `data`: `source: demo | folder | tfds` and that source's arguments;
- `train`: the stage, steps, batch size, optimizer, EMA, checkpoint and sample cadence,
  precision (`bf16`/`fp16` mixed precision) and TensorBoard logging;
- `sample` (optional): prompts and settings of the sample grids;
- `output_dir` (optional): where checkpoints and grids go (default `runs/<recipe>`).

Unknown keys are errors, values are type-checked against the argument's default, and
errors raised while building a part name the key path (`ConfigError`, one line).
"""

import copy
import inspect
import os

import yaml

MODEL_TYPES = ("imagen", "elucidated")
DATA_SOURCES = ("demo", "folder", "tfds")
SECTIONS = ("model", "text_encoder", "data", "train", "sample", "output_dir")
REQUIRED_SECTIONS = ("model", "data", "train")


class ConfigError(ValueError):
    """A recipe or config value that cannot be used; the message names its key path."""


def _kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if value is None:
        return "null"
    return type(value).__name__


def check_value(value, default, where):
    """Check `value` against the kind of `default`.

    A bool default takes bools, a number default ints or floats, a str default strs,
    each also as a list of them (the per-unet form); a `None` default takes anything;
    a list default takes a list or a single value.
    """
    expected = _kind(default)
    if expected in ("null", "list"):
        return value
    got = _kind(value)
    if got == expected:
        return value
    if got == "list" and value and all(_kind(v) == expected for v in value):
        return value
    raise ConfigError(
        f"`{where}` must be a {expected} (or a list of them, one per unet). "
        f"Received: {where}={value!r} ({got})"
    )


def check_keys(mapping, allowed, where, required=()):
    """Refuse a non-mapping, unknown keys and missing required keys of `mapping`."""
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"`{where}` must be a mapping (key: value lines). Received: {where}={mapping!r}"
        )
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise ConfigError(
            f"Unknown key `{where}.{unknown[0]}`. Allowed keys of `{where}`: "
            f"{', '.join(sorted(allowed))}"
        )
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ConfigError(f"Missing key `{where}.{missing[0]}`.")


def signature_defaults(fn, skip=()):
    """`{argument: default}` of `fn`'s keyword arguments (`None` for required ones)."""
    defaults = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        defaults[name] = None if p.default is inspect.Parameter.empty else p.default
    return defaults


def check_arguments(mapping, fn, where, skip=(), required=(), extra=None):
    """Check `mapping` as keyword arguments of `fn` (plus `extra` `{key: default}`)."""
    allowed = signature_defaults(fn, skip)
    allowed.update(extra or {})
    check_keys(mapping, allowed, where, required)
    for key, value in mapping.items():
        check_value(value, allowed[key], f"{where}.{key}")
    return dict(mapping)


def build(where, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, with a `ValueError`/`TypeError` turned into a
    `ConfigError` that names `where`."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"`{where}`: {message}") from err


# ---------------------------------------------------------------------- model


class UnetConfig:
    """One unet of a cascade: `Unet` arguments, a preset, or a `NullUnet`.

    Args:
        where: str, the key path used in error messages.
        **config: `Unet` arguments; or `preset: BaseUnet64 | SRUnet256 | SRUnet1024`
            with argument overrides; or `is_null: true` (a `NullUnet`).
    """

    def __init__(self, where="unet", **config):
        from imagen_keras import unet_presets
        from imagen_keras.unet import Unet

        self.where = where
        config = dict(config)
        if config.get("is_null"):
            check_keys(config, {"is_null": True}, where)
        elif "preset" in config:
            preset = config["preset"]
            names = sorted(unet_presets.PRESETS)
            if preset not in names:
                raise ConfigError(
                    f"`{where}.preset` must be one of {names}. Received: {where}.preset={preset!r}"
                )
            rest = {k: v for k, v in config.items() if k != "preset"}
            check_arguments(rest, Unet.__init__, where)
        else:
            check_arguments(config, Unet.__init__, where, required=("dim",))
        self.config = config

    def create(self):
        from imagen_keras import unet_presets
        from imagen_keras.unet import Unet

        config = dict(self.config)
        if config.pop("is_null", False):
            return unet_presets.NullUnet()
        if "preset" in config:
            preset = unet_presets.PRESETS[config.pop("preset")]
            return build(self.where, preset, **config)
        return build(self.where, Unet, **config)

    def to_dict(self):
        return copy.deepcopy(self.config)


class ImagenConfig:
    """imagen-pytorch's `ImagenConfig`: the arguments of an `Imagen`, checked.

    Args:
        unets: list of dicts (`UnetConfig` arguments), one per stage.
        image_sizes: int or list of int, one per unet.
        where: str, defaults to `"model"`: the key path in error messages.
        **kwargs: any other `Imagen` argument (`timesteps`, `cond_drop_prob`, ...).

    Example:
    ```python
    config = ImagenConfig(unets=[dict(dim=16, dim_mults=[1, 2])], image_sizes=[16],
                          text_embed_dim=32, timesteps=100)
    imagen = config.create()
    ```
    """

    model_type = "imagen"

    @classmethod
    def _model_class(cls):
        from imagen_keras.imagen import Imagen

        return Imagen

    def __init__(self, unets, image_sizes, where="model", **kwargs):
        self.where = where
        model_class = self._model_class()
        check_arguments(kwargs, model_class.__init__, where, skip=("unets", "image_sizes", "seed"))
        if not isinstance(unets, (list, tuple)) or not unets:
            raise ConfigError(
                f"`{where}.unets` must be a non-empty list of unet mappings. "
                f"Received: {where}.unets={unets!r}"
            )
        self.unets = [
            UnetConfig(f"{where}.unets[{i}]", **_mapping(u, f"{where}.unets[{i}]"))
            for i, u in enumerate(unets)
        ]
        sizes = [image_sizes] if _kind(image_sizes) == "number" else image_sizes
        if (
            not isinstance(sizes, (list, tuple))
            or not sizes
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
        ):
            raise ConfigError(
                f"`{where}.image_sizes` must be a positive int or a list of them. "
                f"Received: {where}.image_sizes={image_sizes!r}"
            )
        if len(sizes) != len(self.unets):
            raise ConfigError(
                f"`{where}.image_sizes` must give one size per unet ({len(self.unets)} unets). "
                f"Received: {where}.image_sizes={image_sizes!r}"
            )
        self.image_sizes = list(sizes)
        self.kwargs = dict(kwargs)

    @property
    def num_unets(self):
        return len(self.unets)

    def create(self, **overrides):
        """The cascade (`overrides` replace arguments, e.g. `text_encoder_name`)."""
        kwargs = dict(self.kwargs, **overrides)
        unets = [u.create() for u in self.unets]
        return build(self.where, self._model_class(), unets, image_sizes=self.image_sizes, **kwargs)

    def to_dict(self):
        return {
            "type": self.model_type,
            "unets": [u.to_dict() for u in self.unets],
            "image_sizes": list(self.image_sizes),
            **copy.deepcopy(self.kwargs),
        }


class ElucidatedImagenConfig(ImagenConfig):
    """imagen-pytorch's `ElucidatedImagenConfig`: the arguments of an
    `ElucidatedImagen` (EDM), checked. Same arguments as `ImagenConfig` plus EDM's
    (`num_sample_steps`, `sigma_min`, `sigma_max`, `S_churn`, ...)."""

    model_type = "elucidated"

    @classmethod
    def _model_class(cls):
        from imagen_keras.elucidated_imagen import ElucidatedImagen

        return ElucidatedImagen


def _mapping(value, where):
    if not isinstance(value, dict):
        raise ConfigError(f"`{where}` must be a mapping. Received: {where}={value!r}")
    return value


def model_config(section, where="model"):
    """`ImagenConfig` or `ElucidatedImagenConfig` from a recipe's `model` section."""
    section = dict(_mapping(section, where))
    model_type = section.pop("type", "imagen")
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"`{where}.type` must be one of {list(MODEL_TYPES)}. "
            f"Received: {where}.type={model_type!r}"
        )
    for key in ("unets", "image_sizes"):
        if key not in section:
            raise ConfigError(f"Missing key `{where}.{key}`.")
    cls = ImagenConfig if model_type == "imagen" else ElucidatedImagenConfig
    return cls(where=where, **section)


# ---------------------------------------------------------------------- other sections

TINY_TEXT_ENCODER = {
    "vocabulary_size": 256,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "num_layers": 2,
    "num_heads": 2,
    "seed": 0,
}

TRAIN_DEFAULTS = {
    "unet": 1,
    "steps": None,  # required
    "batch_size": None,  # required
    "max_batch_size": None,
    "lr": 1e-4,
    "eps": 1e-8,
    "beta1": 0.9,
    "beta2": 0.99,
    "max_grad_norm": None,
    "warmup_steps": None,
    "cosine_decay_max_steps": None,
    "use_ema": True,
    "ema_beta": 0.9999,
    "ema_update_after_step": 100,
    "ema_update_every": 10,
    "checkpoint_every": 1000,
    "keep_checkpoints": 3,
    "sample_every": None,
    "jit_compile": None,  # true | false | "auto" (the default)
    "precision": None,  # "bf16" | "fp16" (mixed precision) | "no"; None: float32
    "tensorboard": False,  # TensorBoard logs in <output_dir>/tensorboard
    # Data-parallel engine (imagen_keras.distribution.distribution_scope): null (one
    # device), "auto", "mirrored", "multi_worker", "tpu" (TensorFlow), "data_parallel",
    # "model_parallel" (JAX).
    "distribution": None,
    "devices": None,  # device names for "mirrored" / "data_parallel"; null: all
    "model_parallel": None,  # "model_parallel": devices per copy of the weights; null: all
    "seed": 0,
}

SAMPLE_DEFAULTS = {
    "prompts": None,  # list of str, or "demo" (the demo's colour x digit grid)
    "cond_scale": 3.0,
    "seed": 0,
    "columns": None,
    "cell_size": 64,
    "sampler": None,  # "ancestral" | "ddim" (Imagen)
    "ddim_steps": None,
}


def _positive_int(value, where, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{where}` must be a positive int. Received: {where}={value!r}")
    return value


def data_section(section, where="data"):
    """Check a `data` section: `source` and that source's arguments."""
    from imagen_keras.data import demo_dataset, image_folder_dataset, tfds_dataset

    section = dict(_mapping(section, where))
    source = section.pop("source", None)
    if source not in DATA_SOURCES:
        raise ConfigError(
            f"`{where}.source` must be one of {list(DATA_SOURCES)}. "
            f"Received: {where}.source={source!r}"
        )
    fn, required = {
        "demo": (demo_dataset, ()),
        "folder": (image_folder_dataset, ("folder",)),
        "tfds": (tfds_dataset, ("name",)),
    }[source]
    # The image size comes from the stage trained, the batching from `train`.
    skip = ("image_size", "batch_size", "drop_remainder", "shuffle")
    check_arguments(section, fn, where, skip=skip, required=required)
    return {"source": source, **section}


def train_section(section, num_unets, where="train"):
    section = dict(_mapping(section, where))
    check_keys(section, TRAIN_DEFAULTS, where, required=("steps", "batch_size"))
    for key, value in section.items():
        check_value(value, TRAIN_DEFAULTS[key], f"{where}.{key}")
    merged = dict(TRAIN_DEFAULTS, **section)
    for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints"):
        _positive_int(merged[key], f"{where}.{key}")
    for key in ("max_batch_size", "sample_every", "warmup_steps", "cosine_decay_max_steps"):
        _positive_int(merged[key], f"{where}.{key}", allow_none=True)
    if merged["jit_compile"] is None:
        merged["jit_compile"] = "auto"
    if merged["jit_compile"] not in (True, False, "auto"):
        raise ConfigError(
            f'`{where}.jit_compile` must be true, false or "auto". '
            f"Received: {where}.jit_compile={merged['jit_compile']!r}"
        )
    from imagen_keras.distribution import STRATEGIES
    from imagen_keras.training.precision import PRECISIONS, precision_policy

    if merged["distribution"] is not None and merged["distribution"] not in STRATEGIES:
        raise ConfigError(
            f"`{where}.distribution` must be one of {list(STRATEGIES)} or null. "
            f"Received: {where}.distribution={merged['distribution']!r}"
        )
    _positive_int(merged["model_parallel"], f"{where}.model_parallel", allow_none=True)
    if merged["model_parallel"] is not None and merged["distribution"] != "model_parallel":
        raise ConfigError(
            f'`{where}.model_parallel` is only used with {where}.distribution="model_parallel". '
            f"Received: {where}.model_parallel={merged['model_parallel']!r}, "
            f"{where}.distribution={merged['distribution']!r}"
        )
    devices = merged["devices"]
    if devices is not None and (
        not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices)
    ):
        raise ConfigError(
            f"`{where}.devices` must be a list of device names or null. "
            f"Received: {where}.devices={devices!r}"
        )

    try:
        precision_policy(merged["precision"])
    except ValueError:
        raise ConfigError(
            f"`{where}.precision` must be one of {list(PRECISIONS)} or null. "
            f"Received: {where}.precision={merged['precision']!r}"
        ) from None
    unet = merged["unet"]
    if isinstance(unet, bool) or not isinstance(unet, int) or not 1 <= unet <= num_unets:
        raise ConfigError(
            f"`{where}.unet` must be a stage number from 1 to {num_unets}. "
            f"Received: {where}.unet={unet!r}"
        )
    return merged


def sample_section(section, where="sample"):
    section = dict(_mapping(section or {}, where))
    check_keys(section, SAMPLE_DEFAULTS, where)
    prompts = section.get("prompts")
    if (
        prompts is not None
        and prompts != "demo"
        and (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        )
    ):
        raise ConfigError(
            f'`{where}.prompts` must be a list of strings or "demo". Received: '
            f"{where}.prompts={prompts!r}"
        )
    for key, value in section.items():
        if key != "prompts":
            check_value(value, SAMPLE_DEFAULTS[key], f"{where}.{key}")
    return dict(SAMPLE_DEFAULTS, **section)


def text_encoder_section(section, where="text_encoder"):
    if section is None:
        return None
    section = _mapping(section, where)
    check_keys(section, {"tiny": {}}, where, required=("tiny",))
    tiny = _mapping(section["tiny"] or {}, f"{where}.tiny")
    check_keys(tiny, TINY_TEXT_ENCODER, f"{where}.tiny")
    for key, value in tiny.items():
        if key == "seed":
            check_value(value, 0, f"{where}.tiny.seed")
        else:
            _positive_int(value, f"{where}.tiny.{key}")
    return {"tiny": dict(TINY_TEXT_ENCODER, **tiny)}


class RecipeConfig:
    """A whole recipe, checked: `model`, `text_encoder`, `data`, `train`, `sample`,
    `output_dir` (see the module docstring).

    Args:
        config: dict, the parsed YAML.
        name: str, defaults to `"recipe"`: names the default output folder.
    """

    def __init__(self, config, name="recipe"):
        self.name = name
        self.raw = copy.deepcopy(config)
        if not isinstance(config, dict):
            raise ConfigError(
                f"A recipe must be a mapping of sections {list(SECTIONS)}. Received: {config!r}"
            )
        check_keys(config, dict.fromkeys(SECTIONS), "recipe", required=REQUIRED_SECTIONS)
        self.model = model_config(config["model"])
        self.text_encoder = text_encoder_section(config.get("text_encoder"))
        if self.text_encoder is not None and "text_encoder_name" in self.model.kwargs:
            raise ConfigError("Give `text_encoder.tiny` or `model.text_encoder_name`, not both.")
        if self.text_encoder is not None and "text_embed_dim" in self.model.kwargs:
            raise ConfigError(
                "`model.text_embed_dim` comes from `text_encoder.tiny.hidden_dim`: remove it."
            )
        self.data = data_section(config["data"])
        self.train = train_section(config["train"], self.model.num_unets)
        self.sample = sample_section(config.get("sample"))
        output_dir = config.get("output_dir", os.path.join("runs", name))
        if not isinstance(output_dir, str) or not output_dir:
            raise ConfigError(
                f"`output_dir` must be a non-empty string. Received: output_dir={output_dir!r}"
            )
        self.output_dir = output_dir

    @property
    def condition_on_text(self):
        return self.model.kwargs.get("condition_on_text", True)

    def to_dict(self):
        """The recipe as given (plus the resolved `output_dir`), for YAML."""
        return dict(copy.deepcopy(self.raw), output_dir=self.output_dir)


# ---------------------------------------------------------------------- files


def recipes_folder():
    """The folder of the shipped recipes (`recipes/` in a checkout is the same files)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def available_recipes():
    """Names of the shipped recipes (`demo`, `base`, ...)."""
    return sorted(
        name[: -len(".yaml")] for name in os.listdir(recipes_folder()) if name.endswith(".yaml")
    )


def find_recipe(path_or_name):
    """The file for a path, or for the name of a shipped recipe (`demo`, `demo.yaml`)."""
    path = os.fspath(path_or_name)
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = os.path.join(recipes_folder(), f"{name}.yaml")
    if os.path.dirname(path) in ("", "recipes") and os.path.isfile(shipped):
        return shipped
    raise ConfigError(
        f"No recipe file {path!r}, and no shipped recipe of that name. "
        f"Shipped recipes: {', '.join(available_recipes())}"
    )


def parse_override(text):
    """`"train.steps=100"` -> `(["train", "steps"], 100)` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"An override must look like `section.key=value`. Received: {text!r}")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"An override must look like `section.key=value`. Received: {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"The value of override {text!r} is not valid YAML: {err}") from err
    return parts, parsed


def apply_overrides(config, overrides):
    """Set each `section.key=value` of `overrides` in `config` (a dict, changed)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = config
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"Override {text!r}: `{where}` is not a mapping.")
            node = node.setdefault(part, {})
        if isinstance(node, list) and parts[-1].isdigit():
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return config


def load_recipe(path_or_name, overrides=()):
    """Read, override and check a recipe file.

    Args:
        path_or_name: a YAML file, or the name of a shipped recipe (`"demo"`).
        overrides: list of `"section.key=value"` strings.

    Returns:
        `RecipeConfig`.

    Raises:
        ConfigError: one line naming the key, for bad YAML, unknown keys, wrong
            types, missing sections or values the model refuses.
    """
    path = find_recipe(path_or_name)
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as err:
            message = " ".join(str(err).split())
            raise ConfigError(f"{path} is not valid YAML: {message}") from err
    if config is None:
        raise ConfigError(
            f"{path} is empty: a recipe needs the sections {list(REQUIRED_SECTIONS)}."
        )
    if isinstance(config, dict):
        apply_overrides(config, overrides)
    name = os.path.splitext(os.path.basename(path))[0]
    return RecipeConfig(config, name=name)
