"""Build a Keras `Unet` from an imagen-pytorch unet file or state dict."""

from imagen_keras.convert.checkpoint_io import (
    as_state_dict,
    extract_unet_state_dict,
    is_trainer_checkpoint,
    is_unet_package,
    read_checkpoint,
)
from imagen_keras.convert.unet_weights import load_imagen_pytorch_unet_weights
from imagen_keras.unet import UNET_ARG_NAMES, Unet


def unet_kwargs_from_imagen_pytorch(config):
    """Keras `Unet` keyword arguments from an imagen-pytorch `Unet` config.

    The config is the reference's `Unet._locals` (the `config` of a `persist_to_file`
    package or of `to_config_and_state_dict()`), or any dict of its constructor
    arguments. All 45 reference arguments keep their names and meaning here; sequences
    become tuples.

    Raises:
        ValueError: if the config has arguments that imagen-pytorch's `Unet` does not.
    """
    if not isinstance(config, dict):
        raise ValueError(f"`config` must be a dict of Unet arguments. Received: {config!r}")
    unknown = sorted(set(config) - set(UNET_ARG_NAMES))
    if unknown:
        raise ValueError(
            f"`config` has arguments that imagen-pytorch's Unet does not take: {unknown}. "
            f"Known arguments: {list(UNET_ARG_NAMES)}"
        )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def unet_from_imagen_pytorch(
    source,
    config=None,
    *,
    unet_index=None,
    use_ema=False,
    allow_partial=False,
    return_report=False,
    **kwargs,
):
    """A Keras `Unet` with the weights of an imagen-pytorch unet.

    Args:
        source: a path (torch file read with `weights_only=True`, `.safetensors` or
            `.npz`) or an already loaded dict: a unet state dict, a `persist_to_file`
            package (`{"config", "state_dict"}`) or an `ImagenTrainer` checkpoint.
        config: dict of the reference `Unet`'s arguments, or `None` to take the
            package's `config`. Required for plain state dicts and trainer checkpoints
            (which do not record each unet's arguments).
        unet_index: int. Which unet of a trainer checkpoint; required for those only.
        use_ema: bool, defaults to `False`. For trainer checkpoints, take the EMA weights.
        allow_partial: bool, defaults to `False`. See `load_imagen_pytorch_unet_weights`.
        return_report: bool, defaults to `False`. Also return the `ConversionReport`.
        **kwargs: extra Keras `Unet` arguments (e.g. `name`, `dtype`, `seed`).

    Returns:
        The built `Unet`, or `(unet, report)` when `return_report=True`.

    Raises:
        ValueError: for a missing or unknown config, a missing `unet_index`, or a state
            dict that does not fit the config (see `load_imagen_pytorch_unet_weights`).

    Example:
    ```python
    unet = unet_from_imagen_pytorch("unet.pt")  # saved with Unet.persist_to_file
    unet = unet_from_imagen_pytorch(
        "checkpoint.pt", config=dict(dim=128, dim_mults=(1, 2, 4)), unet_index=0,
        use_ema=True,
    )
    ```
    """
    if not isinstance(source, dict):
        source = read_checkpoint(source)
    if is_trainer_checkpoint(source):
        if unet_index is None:
            raise ValueError(
                "`source` is an ImagenTrainer checkpoint: pass `unet_index` to pick a unet."
            )
        state_dict = extract_unet_state_dict(source, unet_index, use_ema=use_ema)
    else:
        if unet_index is not None or use_ema:
            raise ValueError(
                "`unet_index` and `use_ema` apply to ImagenTrainer checkpoints only; "
                f"`source` is a single unet. Received: unet_index={unet_index!r}, "
                f"use_ema={use_ema!r}"
            )
        if is_unet_package(source):
            if config is None:
                config = source["config"]
            source = source["state_dict"]
        state_dict = as_state_dict(source)
    if config is None:
        raise ValueError(
            "This checkpoint does not record the unet's arguments: pass `config`, the "
            "imagen-pytorch Unet keyword arguments it was created with."
        )
    unet = Unet(**unet_kwargs_from_imagen_pytorch(config), **kwargs)
    report = load_imagen_pytorch_unet_weights(unet, state_dict, allow_partial=allow_partial)
    return (unet, report) if return_report else unet
