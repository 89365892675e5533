"""Reading imagen-pytorch files without executing pickled code.

Three kinds of files are understood:

- torch files (`.pt`, `.pth`, `.ckpt`, ...) are read with
  `torch.load(..., weights_only=True)`, which refuses arbitrary pickled objects; this
  needs torch (the `torch` extra);
- `.safetensors` files, read with `safetensors.numpy` (no torch needed);
- `.npz` archives of name -> array, read with `numpy.load(allow_pickle=False)`.

A file holds either a plain state dict, a `Unet.persist_to_file` package
(`{"config": ..., "state_dict": ...}`) or an `ImagenTrainer.save` checkpoint (`model`
with keys `unets.{i}.…` and, with EMA, `ema` with keys `{i}.ema_model.…`). A trainer
checkpoint can also be stored flat, for reading without torch: an `.npz` or
`.safetensors` file with the arrays `model.<key>`, `ema.<key>` and `steps`, and the
strings `imagen_type`, `imagen_params` (JSON) and `version` (0-d string arrays in an
`.npz`, metadata in a `.safetensors` file); `read_checkpoint` nests it back. This is the
only module of the package that touches torch, and only inside functions.
"""

import json
import os

import numpy as np


def _torch_to_numpy(value):
    value = value.detach().cpu()
    if value.is_floating_point():
        value = value.float()  # also handles bfloat16, which numpy lacks
    return value.numpy()


def to_numpy(value):
    """A tensor-like (numpy, torch, Keras, JAX, TF) as a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):
        return _torch_to_numpy(value)
    return np.asarray(value)


def _import_torch(path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading the torch file {str(path)!r} needs torch (`pip install "
            "imagen-keras[torch]`). Without torch, convert the state dict to a "
            ".safetensors or .npz file (name -> array) first."
        ) from e
    return torch


def _load_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError(
            f"Reading {str(path)!r} needs the `safetensors` package (`pip install "
            "safetensors`); or convert the state dict to an .npz file."
        ) from e

    try:
        tensors = load_file(path)
    except TypeError:
        # bfloat16 has no numpy dtype ("data type 'bfloat16' not understood"); torch
        # can read it.
        _import_torch(path)
        from safetensors.torch import load_file as load_torch_file

        tensors = {k: _torch_to_numpy(v) for k, v in load_torch_file(path).items()}
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    strings = {k: metadata[k] for k in _FLAT_STRINGS if k in metadata}
    return {**tensors, **strings} if strings else tensors


# The entries of a flat trainer checkpoint besides `model.*` and `ema.*`.
_FLAT_STRINGS = ("imagen_type", "imagen_params", "version")
_FLAT_ARRAYS = ("steps",)


def _string(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.ndim == 0:
        return str(value)
    return value


def _nest_flat_trainer_checkpoint(flat):
    """A flat trainer checkpoint (see the module docstring) as `trainer.save` writes it;
    anything else unchanged."""
    entries = ("model", "ema")
    if "model" in flat or not any(k.startswith("model.") for k in flat):
        return flat
    known = set(_FLAT_STRINGS) | set(_FLAT_ARRAYS)
    if any(k.partition(".")[0] not in entries and k not in known for k in flat):
        return flat
    checkpoint = {}
    for key, value in flat.items():
        entry, dot, rest = key.partition(".")
        if dot and entry in entries:
            checkpoint.setdefault(entry, {})[rest] = value
        else:
            checkpoint[key] = _string(value)
    params = checkpoint.get("imagen_params")
    if isinstance(params, str):
        try:
            checkpoint["imagen_params"] = json.loads(params)
        except json.JSONDecodeError as e:
            raise ValueError(f"The checkpoint's `imagen_params` is not valid JSON: {e}") from e
    return checkpoint


class NotACheckpointError(ValueError):
    """A file that is not a torch, safetensors or npz file at all (e.g. a text file)."""


_ZIP_MAGIC = b"PK\x03\x04"


def _first_bytes(path, size=512):
    with open(path, "rb") as f:
        return f.read(size)


def _looks_like(head):
    text = head.decode("utf-8", errors="replace")
    if head and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it looks like text: {text[:40]!r}"
    return f"it starts with {head[:16]!r}"


def _check_format(path):
    """Refuse files that cannot be what their name says, before a reader fails on them
    with a message of its own internals (torch says "pop from empty list")."""
    head = _first_bytes(path)
    if not head:
        raise NotACheckpointError(f"{path!r} is empty (0 bytes), not a checkpoint.")
    if path.endswith(".npz"):
        if not head.startswith(_ZIP_MAGIC):
            raise NotACheckpointError(
                f"{path!r} is not an .npz archive (a zip file); {_looks_like(head)}."
            )
    elif path.endswith(".safetensors"):
        # An 8-byte little-endian header length, then the JSON header.
        if len(head) < 9 or head[8:9] != b"{":
            raise NotACheckpointError(
                f"{path!r} is not a .safetensors file (no JSON header); {_looks_like(head)}."
            )
    elif not (
        head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80" or head[257:262] == b"ustar"
    ):  # torch.save's zip, its legacy pickle, or its oldest (tar) format
        raise NotACheckpointError(
            f"{path!r} is not a torch checkpoint (torch.save writes a zip archive or a "
            f"pickle); {_looks_like(head)}."
        )


def read_checkpoint(path):
    """Read a torch, safetensors or npz file.

    Args:
        path: str or path-like.

    Returns:
        dict. A state dict (name -> array), a persisted Unet package or a trainer
        checkpoint (flat `.npz` / `.safetensors` trainer checkpoints are nested back
        into `trainer.save`'s layout). Torch files keep their torch tensors (optimizer
        states and the like are never converted); `as_state_dict` and
        `extract_unet_state_dict` turn the tensors they take out into numpy arrays.

    Raises:
        FileNotFoundError: if `path` does not exist.
        NotACheckpointError: (a `ValueError`) if the file cannot be of its kind (empty,
            text, ...).
        ImportError: for a torch file when torch is not installed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    if os.path.isdir(path):
        raise NotACheckpointError(f"{path!r} is a folder; SOURCE must be a checkpoint file.")
    _check_format(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return _nest_flat_trainer_checkpoint({k: archive[k] for k in archive.files})
    if path.endswith(".safetensors"):
        return _nest_flat_trainer_checkpoint(_load_safetensors(path))
    torch = _import_torch(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def is_trainer_checkpoint(obj):
    """Whether `obj` looks like an `ImagenTrainer.save` checkpoint."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict)


def is_unet_package(obj):
    """Whether `obj` looks like a `Unet.persist_to_file` package."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("config"), dict)
        and isinstance(obj.get("state_dict"), dict)
    )


def as_state_dict(obj):
    """A plain name -> numpy array state dict from a state dict or a persisted package.

    Raises:
        ValueError: for a trainer checkpoint (use `extract_unet_state_dict`) or anything
            that is not a mapping of names to arrays.
    """
    if is_unet_package(obj):
        obj = obj["state_dict"]
    if is_trainer_checkpoint(obj):
        raise ValueError(
            "This is an ImagenTrainer checkpoint holding several unets; pick one with "
            "`extract_unet_state_dict(checkpoint, unet_index, use_ema=...)` first."
        )
    if not isinstance(obj, dict):
        raise ValueError(
            "Expected a state dict (a mapping of parameter names to arrays). "
            f"Received: {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not _is_array(v)]
    if bad:
        raise ValueError(
            "A state dict must map parameter names to arrays; these entries are not "
            f"arrays: {bad[:10]}"
        )
    return {str(k): to_numpy(v) for k, v in obj.items()}


def _unet_indices(keys, prefix_of):
    indices = set()
    for key in keys:
        index = prefix_of(key)
        if index is not None:
            indices.add(index)
    return sorted(indices)


def extract_unet_state_dict(checkpoint, unet_index, use_ema=False):
    """One unet's state dict out of an imagen-pytorch `ImagenTrainer` checkpoint.

    Args:
        checkpoint: a loaded checkpoint dict or a path to one (`trainer.save(path)`).
        unet_index: int. Zero-based index of the unet in the cascade.
        use_ema: bool, defaults to `False`. Take the exponential-moving-average weights
            (`ema` entry, keys `{i}.ema_model.…`) instead of the online weights
            (`model` entry, keys `unets.{i}.…`).

    Returns:
        dict. Parameter name (as in the unet's own `state_dict()`) -> numpy array.

    Raises:
        ValueError: if the checkpoint has no such unet, or no EMA weights.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    if not is_trainer_checkpoint(checkpoint):
        raise ValueError(
            "Expected an ImagenTrainer checkpoint (a dict with a 'model' entry). "
            f"Received a dict with keys {sorted(checkpoint)[:10]}"
        )
    if use_ema:
        if not isinstance(checkpoint.get("ema"), dict):
            raise ValueError(
                "The checkpoint has no EMA weights (no 'ema' entry; was the trainer "
                "created with use_ema=False?). Use use_ema=False for the online weights."
            )
        source, prefix, entry = checkpoint["ema"], f"{unet_index}.ema_model.", "ema"

        def index_of(key):
            head, _, rest = key.partition(".")
            return int(head) if head.isdigit() and rest.startswith("ema_model.") else None
    else:
        source, prefix, entry = checkpoint["model"], f"unets.{unet_index}.", "model"

        def index_of(key):
            parts = key.split(".")
            if len(parts) > 2 and parts[0] == "unets" and parts[1].isdigit():
                return int(parts[1])
            return None

    state_dict = {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}
    if not state_dict:
        raise ValueError(
            f"The checkpoint's '{entry}' entry has no unet {unet_index}; it holds unets "
            f"{_unet_indices(source, index_of)}. Received: unet_index={unet_index!r}"
        )
    return as_state_dict(state_dict)
