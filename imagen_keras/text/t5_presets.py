"""Where a T5 encoder comes from: preset names, local folders, and failing fast offline.

imagen-pytorch names its encoders by Hugging Face id (`google/t5-v1_1-base`); keras-hub
ships the same checkpoints as Kaggle presets (`t5_1.1_base`). `resolve_t5_preset` maps
one to the other and, before keras-hub starts a download, checks that the files can be
had: a local folder must hold a preset, a remote preset must be in the local cache or
the network must answer within a few seconds. Offline (`HF_HUB_OFFLINE=1` or
`KAGGLE_OFFLINE=1`) an uncached preset is refused at once, instead of after keras-hub's
and huggingface_hub's retries (27 s and more), with a message that says how to provide
the weights.
"""

import json
import os
import socket
import threading

# imagen-pytorch (Hugging Face) names -> keras-hub 0.32 presets. `t5_*_multi` are the
# original T5 checkpoints (`t5-small`, ...), pretrained on the multi-task mixture.
HF_TO_KERAS_HUB = {
    "google/t5-v1_1-small": "t5_1.1_small",
    "google/t5-v1_1-base": "t5_1.1_base",
    "google/t5-v1_1-large": "t5_1.1_large",
    "google/t5-v1_1-xl": "t5_1.1_xl",
    "google/t5-v1_1-xxl": "t5_1.1_xxl",
    "t5-small": "t5_small_multi",
    "t5-base": "t5_base_multi",
    "t5-large": "t5_large_multi",
    "google/flan-t5-small": "flan_small_multi",
    "google/flan-t5-base": "flan_base_multi",
    "google/flan-t5-large": "flan_large_multi",
}
# The same without the organisation: "t5-v1_1-base" is this package's DEFAULT_T5_NAME.
ALIASES = dict(HF_TO_KERAS_HUB)
ALIASES.update({k.split("/", 1)[1]: v for k, v in HF_TO_KERAS_HUB.items() if "/" in k})

OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "KAGGLE_OFFLINE")
PROBE_TIMEOUT = 3.0
_PROBE_HOSTS = {"kaggle": ("www.kaggle.com", 443), "hf": ("huggingface.co", 443)}
_TRUTHY = ("1", "true", "yes", "on")


def keras_hub_t5_presets():
    """Names of the keras-hub T5 backbone presets, read offline from keras-hub's registry."""
    import keras_hub

    return dict(keras_hub.models.T5Backbone.presets)


def is_offline():
    """Whether `HF_HUB_OFFLINE` or `KAGGLE_OFFLINE` is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in OFFLINE_ENV_VARS)


def is_local_preset(path):
    """Whether `path` is a folder holding a keras-hub preset (its `config.json`)."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(
        os.path.join(path, "config.json")
    )


def _is_transformers_folder(path):
    """Whether a folder's config.json is a transformers config, not a keras-hub one."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "class_name" not in config


def _how_to_provide(name, preset):
    return (
        f"To use T5 encoder {name!r} without network access, provide the weights in one "
        "of these ways:\n"
        "  1. On a machine with network access, save the preset to a folder and pass "
        "that folder instead of the name:\n"
        "       import keras_hub\n"
        f"       keras_hub.models.T5Backbone.from_preset({preset!r}).save_to_preset('t5_dir')\n"
        f"       keras_hub.models.T5Tokenizer.from_preset({preset!r}).save_to_preset('t5_dir')"
        "\n"
        "  2. Copy a kagglehub cache that holds the preset and point KAGGLEHUB_CACHE at it.\n"
        "  3. Convert a Hugging Face T5 v1.1 checkpoint folder (config.json, "
        "model.safetensors, spiece.model) with `python -m imagen_keras.text.hf_t5 "
        "HF_DIR OUT_DIR`.\n"
        "  4. Allow downloads: unset HF_HUB_OFFLINE / KAGGLE_OFFLINE and set "
        "KAGGLE_USERNAME / KAGGLE_KEY if Kaggle asks for them.\n"
        "For tests and demos, `imagen_keras.text.build_tiny_t5_preset(captions, folder)` "
        "builds a small untrained encoder offline."
    )


def _kaggle_cached(handle):
    """Whether kagglehub's cache already holds the preset's config and weights."""
    try:
        from kagglehub.cache import Cache
        from kagglehub.handle import parse_model_handle
    except ImportError:
        return False
    try:
        parsed = parse_model_handle(handle)
    except ValueError:
        return False
    if not parsed.is_versioned():
        return False  # kagglehub asks the server for the latest version
    cache = Cache()
    return all(cache.load_from_cache(parsed, f) for f in ("config.json", "tokenizer.json"))


def _hf_cached(repo_id):
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _reachable(host, port, timeout):
    """Whether a TCP connection to host:port opens within `timeout` seconds.

    Name resolution cannot be given a timeout, so the probe runs in a daemon thread.
    """
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _uses_proxy():
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"))


def _check_remote(name, preset, scheme, cached):
    if cached:
        return
    if is_offline():
        flags = ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_ENV_VARS if v in os.environ)
        raise OSError(
            f"T5 preset {preset!r} is not in the local cache and downloads are off "
            f"({flags}).\n" + _how_to_provide(name, preset)
        )
    host, port = _PROBE_HOSTS[scheme]
    if not _uses_proxy() and not _reachable(host, port, PROBE_TIMEOUT):
        raise OSError(
            f"T5 preset {preset!r} is not in the local cache and {host} cannot be "
            f"reached (no answer within {PROBE_TIMEOUT:g} s).\n" + _how_to_provide(name, preset)
        )


def resolve_t5_preset(name):
    """Map a T5 name to something keras-hub's `from_preset` loads, or fail fast.

    Args:
        name: str or path-like. A local preset folder (made with `save_to_preset`), an
            imagen-pytorch / Hugging Face name (`"google/t5-v1_1-base"`,
            `"t5-v1_1-base"`), a keras-hub preset (`"t5_1.1_base"`) or a
            `kaggle://` / `hf://` handle.

    Returns:
        str. A local folder, a keras-hub preset name or a handle.

    Raises:
        ValueError: if `name` is not a known name, handle or preset folder.
        OSError: if the preset is not cached locally and cannot be downloaded (offline
            or unreachable); the message says how to provide the weights.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"`name` must be a string or a path. Received: name={name!r}")
    name = os.fspath(name)
    if os.path.isdir(name):
        if not is_local_preset(name):
            raise ValueError(
                f"Folder {name!r} is not a keras-hub preset: it has no config.json. Save "
                "one with `T5Backbone.save_to_preset(folder)` and "
                "`T5Tokenizer.save_to_preset(folder)`, or build a tiny one with "
                f"`build_tiny_t5_preset`. Received: name={name!r}"
            )
        if _is_transformers_folder(name):
            raise ValueError(
                f"Folder {name!r} holds a Hugging Face transformers T5 checkpoint, which "
                "keras-hub cannot load; convert it to a keras-hub preset first: "
                f"`python -m imagen_keras.text.hf_t5 {name} OUT_DIR`. Received: name={name!r}"
            )
        return name
    presets = keras_hub_t5_presets()
    preset = ALIASES.get(name, name)
    if preset in presets:
        handle = presets[preset]["kaggle_handle"]
        _check_remote(name, preset, "kaggle", _kaggle_cached(handle.split("://", 1)[1]))
        return preset
    if preset.startswith("kaggle://"):
        _check_remote(name, preset, "kaggle", _kaggle_cached(preset.split("://", 1)[1]))
        return preset
    if preset.startswith("hf://"):
        _check_remote(name, preset, "hf", _hf_cached(preset.split("://", 1)[1]))
        return preset
    raise ValueError(
        f"Unknown T5 encoder {name!r}: it is not a local preset folder, a known name or a "
        f"kaggle:// / hf:// handle. Known names: {sorted(ALIASES)}; keras-hub presets: "
        f"{sorted(presets)}. Received: name={name!r}"
    )
