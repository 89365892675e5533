"""Build a Keras `Imagen` / `ElucidatedImagen` from an imagen-pytorch trainer checkpoint.

`ImagenTrainer.save` records the cascade's config (`imagen_type` and `imagen_params`,
the dict of the `ImagenConfig` / `ElucidatedImagenConfig` it was created from) when the
cascade was created from one of those config classes. The config is mapped argument by
argument (the names are the same here), with the reference config classes' own
defaults for anything it leaves out: `UnetConfig` has 16 attention heads of 32 (where
`Unet` has 8 of 64) and `ImagenConfig` a `cond_drop_prob` of 0.5 (where `Imagen` has
0.1). Then every unet gets its weights (online or EMA) and the cascade its per-unet
training step counts.
"""

import dataclasses
import inspect

import numpy as np

from imagen_keras.convert.checkpoint_io import (
    extract_unet_state_dict,
    is_trainer_checkpoint,
    read_checkpoint,
    to_numpy,
)
from imagen_keras.convert.unet import unet_kwargs_from_imagen_pytorch
from imagen_keras.convert.unet_weights import ConversionReport, load_imagen_pytorch_unet_weights
from imagen_keras.elucidated_imagen import EDM_HPARAMS, ElucidatedImagen

IMAGEN_TYPES = ("original", "elucidated")

# imagen-pytorch's DEFAULT_T5_NAME (its config classes' `text_encoder_name` default).
REFERENCE_T5_NAME = "google/t5-v1_1-base"

# `UnetConfig`'s fields with defaults (its `text_embed_dim` is the default T5's width);
# the cascade then sets `text_embed_dim` and `channels` of every unet.
UNET_CONFIG_DEFAULTS = dict(
    text_embed_dim=768, cond_dim=None, channels=3, attn_dim_head=32, attn_heads=16
)

CONFIG_DEFAULTS = {
    # `ImagenConfig`'s fields with defaults.
    "original": dict(
        video=False,
        timesteps=1000,
        noise_schedules="cosine",
        text_encoder_name=REFERENCE_T5_NAME,
        channels=3,
        loss_type="l2",
        cond_drop_prob=0.5,
    ),
    # `ElucidatedImagenConfig`'s fields with defaults.
    "elucidated": dict(
        video=False,
        text_encoder_name=REFERENCE_T5_NAME,
        channels=3,
        cond_drop_prob=0.5,
        # The EDM hyper-parameters' defaults are ElucidatedImagen's (the same values).
        **{
            name: inspect.signature(ElucidatedImagen).parameters[name].default
            for name in EDM_HPARAMS
        },
    ),
}

# The constructor arguments of imagen-pytorch 2.1.0's Imagen and ElucidatedImagen (but
# `unets`): a config may hold any of them as an extra.
_SHARED_ARGS = (
    "image_sizes",
    "text_encoder_name",
    "text_embed_dim",
    "channels",
    "cond_drop_prob",
    "random_crop_sizes",
    "lowres_noise_schedule",
    "lowres_sample_noise_level",
    "per_sample_random_aug_noise_level",
    "condition_on_text",
    "auto_normalize_img",
    "dynamic_thresholding",
    "dynamic_thresholding_percentile",
    "only_train_unet_number",
    "temporal_downsample_factor",
    "resize_cond_video_frames",
    "resize_mode",
)
REFERENCE_ARGS = {
    "original": _SHARED_ARGS
    + (
        "timesteps",
        "loss_type",
        "noise_schedules",
        "pred_objectives",
        "min_snr_loss_weight",
        "min_snr_gamma",
    ),
    "elucidated": _SHARED_ARGS
    + (
        "num_sample_steps",
        "sigma_min",
        "sigma_max",
        "sigma_data",
        "rho",
        "P_mean",
        "P_std",
        "S_churn",
        "S_tmin",
        "S_tmax",
        "S_noise",
    ),
}

# Video-only arguments: accepted at the value that does nothing for images.
_VIDEO_ONLY = {"temporal_downsample_factor": 1, "resize_cond_video_frames": True}


def _as_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def _is_null_unet_config(config):
    # A `NullUnetConfig` dumps to {"is_null": ...}; the reference builds a NullUnet for
    # any dict that fails `UnetConfig` (no `dim`) and fits `NullUnetConfig`.
    return "is_null" in config and "dim" not in config


def _unet_kwargs(config, index, notes):
    if not isinstance(config, dict):
        raise ValueError(
            f"`unets[{index}]` of the config must be a dict of UnetConfig or NullUnetConfig "
            f"fields. Received: {config!r}"
        )
    if _is_null_unet_config(config):
        return None
    for required in ("dim", "dim_mults"):
        if required not in config:
            raise ValueError(
                f"`unets[{index}]` of the config lacks `{required}`, which UnetConfig "
                f"requires. Received: {config!r}"
            )
    filled = {k: v for k, v in UNET_CONFIG_DEFAULTS.items() if k not in config}
    if filled:
        notes.append(f"unet {index + 1}: UnetConfig defaults {filled}")
    try:
        return unet_kwargs_from_imagen_pytorch({**UNET_CONFIG_DEFAULTS, **config})
    except ValueError as e:
        raise ValueError(f"`unets[{index}]` of the config: {e}") from e


def imagen_kwargs_from_imagen_pytorch(imagen_params, imagen_type="original"):
    """Keras constructor arguments from an imagen-pytorch cascade config.

    Args:
        imagen_params: dict of `ImagenConfig` (or `ElucidatedImagenConfig`) fields, as
            a trainer checkpoint's `imagen_params` holds them: `unets` (a list of
            `UnetConfig` / `NullUnetConfig` dicts), `image_sizes` and any other
            argument of the reference `Imagen` / `ElucidatedImagen`.
        imagen_type: "original" (`Imagen`) or "elucidated" (`ElucidatedImagen`).

    Returns:
        `(kwargs, notes)`: `kwargs` holds the cascade's arguments with `unets` a list of
        `Unet` keyword-argument dicts (`None` for a `NullUnet`); `notes` lists the
        reference config-class defaults that were filled in.

    Raises:
        ValueError: for video cascades, arguments imagen-pytorch's class does not take,
            a missing `unets` / `image_sizes`, or a unet config this package cannot
            build.
    """
    if imagen_type not in IMAGEN_TYPES:
        raise ValueError(
            f"`imagen_type` must be one of {IMAGEN_TYPES}. Received: imagen_type={imagen_type!r}"
        )
    if not isinstance(imagen_params, dict):
        raise ValueError(
            "The cascade config must be a dict of ImagenConfig / ElucidatedImagenConfig "
            f"fields. Received: {type(imagen_params).__name__}"
        )
    for required in ("unets", "image_sizes"):
        if required not in imagen_params:
            raise ValueError(
                f"The cascade config lacks `{required}`. Received the fields "
                f"{sorted(imagen_params)}"
            )
    defaults = CONFIG_DEFAULTS[imagen_type]
    notes = []
    filled = {k: v for k, v in defaults.items() if k not in imagen_params}
    if filled:
        config_class = "ImagenConfig" if imagen_type == "original" else "ElucidatedImagenConfig"
        notes.append(f"{config_class} defaults {filled}")
    params = {**defaults, **imagen_params}
    if params.pop("video"):
        raise ValueError(
            "This is a video cascade (video=True, Unet3D unets); imagen-keras converts "
            "image cascades only."
        )
    for name, inert in _VIDEO_ONLY.items():
        if name in params and params.pop(name) != inert:
            raise ValueError(
                f"`{name}` is a video-only argument; imagen-keras converts image cascades "
                f"only. Received: {name}={imagen_params[name]!r}"
            )
    unets = params.pop("unets")
    if not isinstance(unets, (list, tuple)) or not unets:
        raise ValueError(f"The config's `unets` must be a non-empty list. Received: {unets!r}")
    unknown = sorted(set(params) - set(REFERENCE_ARGS[imagen_type]))
    if unknown:
        other = IMAGEN_TYPES[1 - IMAGEN_TYPES.index(imagen_type)]
        hint = (
            f" (arguments of the {other} cascade: pass imagen_type={other!r}?)"
            if not set(unknown) - set(REFERENCE_ARGS[other])
            else ""
        )
        raise ValueError(
            f"The config has arguments that imagen-pytorch's "
            f"{'Imagen' if imagen_type == 'original' else 'ElucidatedImagen'} does not "
            f"take: {unknown}{hint}."
        )
    sizes = params["image_sizes"]
    if isinstance(sizes, (list, tuple)) and len(sizes) != len(unets):
        raise ValueError(
            f"The config has {len(unets)} unets but {len(sizes)} image sizes. "
            f"Received: image_sizes={sizes!r}"
        )
    kwargs = {k: _as_tuples(v) for k, v in params.items()}
    kwargs["unets"] = [_unet_kwargs(u, i, notes) for i, u in enumerate(unets)]
    return kwargs, notes


@dataclasses.dataclass
class CascadeConversionReport:
    """What a cascade conversion did.

    Attributes:
        imagen_type: "original" or "elucidated".
        weights: "online" or "EMA".
        unets: one `ConversionReport` per unet.
        unexpected: checkpoint keys outside every converted unet (e.g. of a unet the
            config does not have).
        steps: the per-unet training steps set, or `None` if the checkpoint has none.
        notes: reference config-class defaults filled in, overrides applied.
    """

    imagen_type: str
    weights: str
    unets: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    steps: list = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def complete(self):
        """True when every unet's tensors mapped one to one and nothing was left over."""
        return not self.unexpected and all(r.complete for r in self.unets)

    def summary(self, limit=20):
        """A human-readable account, listing up to `limit` keys per problem."""
        kind = "Imagen" if self.imagen_type == "original" else "ElucidatedImagen"
        lines = [f"{kind} with {len(self.unets)} unets, {self.weights} weights."]
        lines += [f"Note: {note}" for note in self.notes]
        for number, report in enumerate(self.unets, 1):
            lines.append(f"Unet {number}: " + report.summary(limit).replace("\n", "\n  "))
        if self.unexpected:
            shown = "\n".join(f"    {k}" for k in self.unexpected[:limit])
            more = len(self.unexpected) - limit
            lines.append(
                f"  unexpected in the checkpoint (unused) ({len(self.unexpected)}):\n{shown}"
                + (f"\n    ... and {more} more" if more > 0 else "")
            )
        steps = "none recorded" if self.steps is None else self.steps
        lines.append(f"Training steps per unet: {steps}")
        return "\n".join(lines)


def _cascade_class(imagen_type):
    from imagen_keras.imagen import Imagen

    return Imagen if imagen_type == "original" else ElucidatedImagen


def _resolve_config(checkpoint, config, imagen_type, notes):
    """(imagen_type, imagen_params) from the arguments or the checkpoint."""
    if isinstance(config, dict) and "imagen_params" in config:  # a saved {type, params}
        imagen_type = imagen_type or config.get("imagen_type")
        config = config["imagen_params"]
    imagen_type = imagen_type or checkpoint.get("imagen_type")
    if config is not None:
        if checkpoint.get("imagen_params") is not None:
            notes.append("the checkpoint's own imagen_params were replaced by `config`")
        return imagen_type or "original", config
    config = checkpoint.get("imagen_params")
    if config is None:
        raise ValueError(
            "This checkpoint does not record its cascade config (`imagen_params`, saved "
            "only when the Imagen was created from ImagenConfig or ElucidatedImagenConfig): "
            "pass `config`, a dict of the ImagenConfig / ElucidatedImagenConfig fields it "
            "was created with (`unets` as a list of UnetConfig dicts, `image_sizes`, ...), "
            "and imagen_type='elucidated' for an ElucidatedImagen."
        )
    if imagen_type is None:
        raise ValueError(
            "The checkpoint has `imagen_params` but no `imagen_type`: pass "
            "imagen_type='original' or 'elucidated'."
        )
    return imagen_type, config


def _unet_state_dict(checkpoint, index, use_ema):
    try:
        return extract_unet_state_dict(checkpoint, index, use_ema=use_ema)
    except ValueError as e:
        if "has no unet" in str(e):
            return {}  # every key of this unet is then reported missing
        raise


def _load_null_unet(unet, state_dict):
    report = ConversionReport()
    key = "dummy_parameter"
    if key in state_dict and tuple(np.shape(state_dict[key])) == (1,):
        unet.dummy.assign(np.asarray(state_dict[key], "float32"))
        report.loaded.append(key)
        report.num_parameters = 1
    elif key in state_dict:
        report.shape_mismatches.append((key, tuple(np.shape(state_dict[key])), (1,)))
    else:
        report.missing.append(key)
    report.unexpected = [k for k in state_dict if k != key]
    return report


def _leftover_keys(checkpoint, num_unets, use_ema):
    """Keys of the chosen entry that belong to no converted unet."""
    if use_ema:
        # Per unet, ema-pytorch also stores its step count and a copy of the online model.
        ours = tuple(
            f"{i}.{rest}"
            for i in range(num_unets)
            for rest in ("ema_model.", "online_model.", "initted", "step")
        )
        return [f"ema.{k}" for k in checkpoint["ema"] if not k.startswith(ours)]
    ours = tuple(f"unets.{i}." for i in range(num_unets))
    return [f"model.{k}" for k in checkpoint["model"] if not k.startswith(ours)]


def imagen_from_imagen_pytorch(
    source,
    config=None,
    *,
    imagen_type=None,
    use_ema=False,
    allow_partial=False,
    return_report=False,
    **overrides,
):
    """A Keras `Imagen` or `ElucidatedImagen` with an imagen-pytorch cascade's weights.

    Args:
        source: an `ImagenTrainer.save` checkpoint: a path (a torch file, read with
            `weights_only=True`, or a flat `.npz` / `.safetensors` checkpoint, see
            `read_checkpoint`) or the loaded dict.
        config: `None` (default) to take the checkpoint's `imagen_params`, or a dict of
            `ImagenConfig` / `ElucidatedImagenConfig` fields (`unets` as a list of
            `UnetConfig` dicts, `image_sizes`, ...; or `{"imagen_type": ...,
            "imagen_params": ...}`) for checkpoints saved without one.
        imagen_type: "original", "elucidated" or `None` (default): the checkpoint's,
            else "original".
        use_ema: bool, defaults to `False`. Take the EMA weights (`ema` entry) instead
            of the online ones (`model` entry).
        allow_partial: bool, defaults to `False`. Return the cascade even if some
            tensors are missing, unused or misshapen (they keep their initial values
            and are listed in the report) instead of raising.
        return_report: bool, defaults to `False`. Also return the
            `CascadeConversionReport`.
        **overrides: arguments of the Keras class that replace the config's (e.g.
            `seed`, `timesteps` or `num_sample_steps` for faster sampling).

    Returns:
        The cascade, or `(cascade, report)` when `return_report=True`. Its
        `unet_train_steps` hold the checkpoint's `steps`.

    Raises:
        ValueError: for a checkpoint that is not a trainer checkpoint or has no config
            (and none is passed), an unsupported config (video cascades), or a
            checkpoint that does not fit the config (unless `allow_partial`).

    Example:
    ```python
    imagen = imagen_from_imagen_pytorch("checkpoint.pt", use_ema=True)
    images = imagen.sample(text_embeds=text_embeds, cond_scale=5.0)
    ```
    """
    if not isinstance(source, dict):
        source = read_checkpoint(source)
    if not is_trainer_checkpoint(source):
        raise ValueError(
            "Expected an ImagenTrainer checkpoint (a dict with a 'model' entry, as "
            f"`trainer.save` writes). Received a dict with keys {sorted(source)[:10]}"
        )
    if use_ema and not isinstance(source.get("ema"), dict):
        raise ValueError(
            "The checkpoint has no EMA weights (no 'ema' entry; was the trainer created "
            "with use_ema=False?). Use use_ema=False for the online weights."
        )
    notes = []
    imagen_type, params = _resolve_config(source, config, imagen_type, notes)
    kwargs, config_notes = imagen_kwargs_from_imagen_pytorch(params, imagen_type)
    notes += config_notes
    cls = _cascade_class(imagen_type)
    if "unets" in overrides:
        raise ValueError("`unets` cannot be overridden; they come from the config.")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "unets", "kwargs"}
    unknown = sorted(set(overrides) - accepted - {"name", "dtype"})
    if unknown:
        raise ValueError(f"Unknown overrides {unknown}; {cls.__name__} takes {sorted(accepted)}.")
    if overrides:
        notes.append(f"overrides {overrides}")
    if imagen_type == "elucidated" and len(kwargs["unets"]) > 1:
        notes.append(
            "super-resolution unets are conditioned on log_snr(lowres_sample_noise_level) "
            "when sampling, as in training; imagen-pytorch's ElucidatedImagen feeds them the "
            "raw level there, so samples differ slightly from the reference's"
        )

    from imagen_keras.unet import Unet
    from imagen_keras.unet_presets import NullUnet

    unet_kwargs = kwargs.pop("unets")
    unets = [NullUnet() if k is None else Unet(**k) for k in unet_kwargs]
    imagen = cls(unets, **{**kwargs, **overrides})
    imagen.build()

    report = CascadeConversionReport(
        imagen_type=imagen_type, weights="EMA" if use_ema else "online", notes=notes
    )
    for index, unet in enumerate(imagen.unets):
        state_dict = _unet_state_dict(source, index, use_ema)
        if getattr(unet, "is_null", False):
            report.unets.append(_load_null_unet(unet, state_dict))
        else:
            report.unets.append(
                load_imagen_pytorch_unet_weights(unet, state_dict, allow_partial=True)
            )
    report.unexpected = _leftover_keys(source, len(unets), use_ema)

    steps = source.get("steps")
    if steps is not None:
        steps = to_numpy(steps).astype("int64").reshape(-1)
        if len(steps) != len(unets):
            report.notes.append(
                f"the checkpoint's steps {steps.tolist()} do not match the {len(unets)} "
                "unets; unet_train_steps left at 0"
            )
        else:
            imagen.unet_train_steps.assign(steps.astype("int32"))
            report.steps = steps.tolist()

    if not report.complete and not allow_partial:
        raise ValueError(
            "The imagen-pytorch checkpoint does not match its cascade config (pass "
            "allow_partial=True to keep the matching tensors).\n" + report.summary()
        )
    return (imagen, report) if return_report else imagen
