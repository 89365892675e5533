"""Checkpoints that resume a cascade exactly and rebuild it from the file alone.

A checkpoint is one zip file, written atomically (`imagen_keras.saving.atomic_path`):

- `model.keras`: the cascade as `cascade.save` writes it (its config and weights, with
  the per-unet step counts `unet_train_steps` and the state of its seed generator), but
  without any optimizer.
- `optimizers.npz`: every variable of every stage's optimizer (Adam moments, EMA
  weights, `iterations`, gradient accumulators, skipped-step counters), as plain
  arrays, read with `allow_pickle=False`.
- `meta.json`: the format version, each stage's optimizer config and variable list,
  the per-unet update counts, and the caller's `extra` dict (e.g. the training config).

Nothing in the file can run code when loaded: the model goes through Keras' safe mode
(a `Lambda` layer is refused), the optimizer configs through
`keras.saving.deserialize_keras_object(..., safe_mode=True)`, and arrays are never
unpickled. Paths with a scheme (`gs://`, `ram://`, ...) go through `tf.io.gfile`.
"""

import contextlib
import json
import os
import tempfile
import warnings
import zipfile
import zlib

import keras
import numpy as np

from imagen_keras.backend import variable_to_numpy
from imagen_keras.saving import (
    DamagedFileError,
    _fspath,
    _gfile,
    _is_remote,
    atomic_path,
    load_model,
)

FORMAT = "imagen_keras.checkpoint"
VERSION = 1
MEMBERS = ("meta.json", "model.keras", "optimizers.npz")
# Config keys that may differ between a checkpoint and the model it is loaded into.
_FREE_KEYS = frozenset(
    {"name", "trainable", "only_train_unet_number", "build_config", "shared_object_id"}
)


def _check_cascade(cascade, argument="cascade"):
    from imagen_keras.cascade import Cascade

    if not isinstance(cascade, Cascade):
        raise ValueError(
            f"`{argument}` must be an `Imagen` or `ElucidatedImagen`. "
            f"Received: {argument}={cascade!r}"
        )


@contextlib.contextmanager
def _without_optimizer(model):
    """`model` seen by Keras' saving as uncompiled: its optimizer is saved separately."""
    saved = {k: model.__dict__[k] for k in ("optimizer", "compiled") if k in model.__dict__}
    object.__setattr__(model, "optimizer", None)
    object.__setattr__(model, "compiled", False)
    try:
        yield model
    finally:
        for key in ("optimizer", "compiled"):
            if key in saved:
                object.__setattr__(model, key, saved[key])
            else:
                model.__dict__.pop(key, None)


def _storable(array):
    """A numpy array `np.save` writes without pickling (bfloat16 etc. as float32)."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        array = array.astype("float32")
    return array


def _stage_record(optimizer, index, include_variables, arrays):
    if optimizer is None:
        return None
    record = {"config": keras.saving.serialize_keras_object(optimizer), "variables": None}
    if include_variables and optimizer.built:
        record["variables"] = []
        for j, variable in enumerate(optimizer.variables):
            key = f"stage{index + 1}_{j}"
            arrays[key] = _storable(variable_to_numpy(variable))
            record["variables"].append(
                {"key": key, "path": variable.path, "shape": list(variable.shape)}
            )
    return record


def save_checkpoint(cascade, path, extra=None, include_optimizers=True, overwrite=True):
    """Write everything needed to resume training of `cascade` to one file, atomically.

    Args:
        cascade: the `Imagen` or `ElucidatedImagen` to save.
        path: str or path-like. The file to write (local, or a URL `tf.io.gfile`
            writes: `gs://...`, `ram://...`). A crash mid-save leaves the previous
            file as it was.
        extra: JSON-serializable dict or `None`. Stored as is (e.g. the training
            config); read it back with `checkpoint_metadata(path)["extra"]`.
        include_optimizers: bool, defaults to `True`. `False` stores the optimizer
            configs but not their state (imagen-pytorch's
            `without_optim_and_sched=True`): a model to sample from or fine-tune.
        overwrite: bool, defaults to `True`. If `False` and `path` exists, raise
            `FileExistsError`.

    Returns:
        The path written (str).

    Example:
    ```python
    save_checkpoint(imagen, "run/checkpoint.100.zip", extra={"lr": 1e-4})
    imagen = load_checkpoint("run/checkpoint.100.zip")
    ```
    """
    _check_cascade(cascade)
    path = _fspath(path)
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"`extra` must be a dict or None. Received: extra={extra!r}")
    try:
        extra_json = json.loads(json.dumps(extra))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`extra` must be JSON-serializable (str, numbers, lists, dicts). {err}"
        ) from None
    cascade.build()
    arrays = {}
    stages = [
        _stage_record(optimizer, index, include_optimizers, arrays)
        for index, optimizer in enumerate(cascade.stage_optimizers.optimizers)
    ]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "model_class": type(cascade).__name__,
        "unet_number": cascade.unet_number,
        "num_steps_taken": cascade.stage_optimizers.steps(),
        "unet_train_steps": [int(s) for s in keras.ops.convert_to_numpy(cascade.unet_train_steps)],
        "stages": stages,
        "extra": extra_json,
    }
    with tempfile.TemporaryDirectory(prefix="imagen_checkpoint_") as local:
        model_path = os.path.join(local, "model.keras")
        with _without_optimizer(cascade):
            keras.saving.save_model(cascade, model_path)
        arrays_path = os.path.join(local, "optimizers.npz")
        np.savez(arrays_path, **arrays)
        with atomic_path(path, overwrite=overwrite) as tmp:
            archive = os.path.join(local, "checkpoint.zip") if _is_remote(tmp) else tmp
            with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.write(model_path, "model.keras")
                zf.write(arrays_path, "optimizers.npz")
                zf.writestr("meta.json", json.dumps(meta, indent=1))
            if archive != tmp:
                _gfile().copy(archive, tmp, overwrite=True)
    return path


# ---------------------------------------------------------------------------- reading


def _damaged(path, what, cause=None):
    detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
    return DamagedFileError(
        f"Checkpoint {path!r} is damaged ({what}){detail}. It cannot be loaded; resume "
        "from an older checkpoint (`CheckpointManager.restore_latest` does)."
    )


def _exists(path):
    return _gfile().exists(path) if _is_remote(path) else os.path.isfile(path)


@contextlib.contextmanager
def _open_archive(path):
    """The checkpoint as an open `zipfile.ZipFile`, read in place (URLs through gfile)."""
    if not _exists(path):
        raise FileNotFoundError(f"No such checkpoint: {path!r}")
    if _is_remote(path):
        gfile = _gfile()
        size, handle = gfile.stat(path).length, gfile.GFile(path, "rb")
    else:
        size, handle = os.path.getsize(path), open(path, "rb")
    with handle:
        if size == 0:
            raise _damaged(path, "empty file, 0 bytes")
        if not zipfile.is_zipfile(handle):
            raise _damaged(path, "not a zip archive, or truncated")
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError) as err:
            raise _damaged(path, "unreadable zip archive", err) from err
        with archive:
            yield archive


def _read_meta(zf, path):
    names = zf.namelist()
    unexpected = sorted(set(names) - set(MEMBERS))
    if unexpected:
        raise ValueError(
            f"{path!r} is not an imagen-keras checkpoint, refused: it holds unexpected "
            f"members {unexpected[:5]} (a checkpoint holds exactly {list(MEMBERS)})."
        )
    missing = [m for m in MEMBERS if m not in names]
    if missing:
        raise _damaged(path, f"missing {missing}")
    try:
        meta = json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        raise _damaged(path, "unreadable meta.json", err) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an imagen-keras checkpoint (meta.json format).")
    if meta.get("version", 0) > VERSION:
        raise ValueError(
            f"{path!r} has checkpoint format version {meta.get('version')}; this imagen-keras "
            f"reads versions up to {VERSION}: upgrade imagen-keras."
        )
    return meta


def checkpoint_metadata(path):
    """The `meta.json` of a checkpoint, without loading the model.

    Args:
        path: str or path-like. A checkpoint file (local or URL).

    Returns:
        A dict: `"extra"` (the dict given to `save_checkpoint`), `"num_steps_taken"`
        (optimizer updates per unet), `"unet_train_steps"` (training batches per unet),
        `"unet_number"`, `"model_class"`, `"keras_version"`, `"backend"`, `"stages"`.

    Raises:
        FileNotFoundError: no such file.
        DamagedFileError: (a `ValueError`) the file exists but is not readable.
    """
    path = _fspath(path)
    with _open_archive(path) as zf:
        return _read_meta(zf, path)


def _read_arrays(zf, meta, path, folder):
    """The optimizer arrays, checked against meta.json; never unpickled."""
    try:
        zf.extract("optimizers.npz", folder)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise _damaged(path, "corrupt optimizers.npz", err) from err
    arrays = {}
    try:
        with np.load(os.path.join(folder, "optimizers.npz"), allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(
                f"{path!r} holds a pickled object array, refused: checkpoints never "
                "contain pickles, and loading one could run arbitrary code."
            ) from None
        raise _damaged(path, "unreadable optimizers.npz", err) from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise _damaged(path, "unreadable optimizers.npz", err) from err
    for number, stage in enumerate(meta.get("stages") or [], start=1):
        for spec in (stage or {}).get("variables") or []:
            array = arrays.get(spec["key"])
            if array is None or list(array.shape) != list(spec["shape"]):
                raise _damaged(
                    path,
                    f"optimizer variable {spec['path']!r} of unet {number} missing or of "
                    "the wrong shape",
                )
    return arrays


def _differences(saved, current, where=""):
    """Human-readable differences between two JSON-like configs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            if key in _FREE_KEYS:
                continue
            sub = f"{where}.{key}" if where else str(key)
            if key not in saved or key not in current:
                out.append(
                    f"{sub}: checkpoint {saved.get(key, '<absent>')!r}, "
                    f"model {current.get(key, '<absent>')!r}"
                )
            else:
                out.extend(_differences(saved[key], current[key], sub))
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        if all(not isinstance(x, (dict, list)) for x in saved + current):
            return [] if saved == current else [f"{where}: checkpoint {saved}, model {current}"]
        out = []
        for i, (a, b) in enumerate(zip(saved, current)):
            out.extend(_differences(a, b, f"{where}[{i}]"))
        return out
    if saved != current:
        return [f"{where}: checkpoint {saved!r}, model {current!r}"]
    return []


def _readable(differences):
    # `unets[0].config.dim` reads better as `unets[0].dim`.
    return [d.replace(".config.", ".").replace("config.", "", 1) for d in differences]


def _check_same_config(cascade, model_path, path, strict):
    try:
        with zipfile.ZipFile(model_path) as inner:
            saved = json.loads(inner.read("config.json"))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError) as err:
        raise _damaged(path, "unreadable model.keras", err) from err
    current = json.loads(json.dumps(keras.saving.serialize_keras_object(cascade)))
    saved = {k: saved.get(k) for k in ("class_name", "config")}
    current = {k: current.get(k) for k in ("class_name", "config")}
    differences = _readable(_differences(saved, current))
    if not differences:
        return
    message = (
        f"Checkpoint {path!r} was saved from a model with another config: "
        + "; ".join(differences[:10])
        + (f"; and {len(differences) - 10} more" if len(differences) > 10 else "")
        + ". Build the model from the checkpoint instead (`load_checkpoint(path)`), or "
        "pass `strict=False` to load the weights anyway."
    )
    if strict:
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _stage_variables(cascade, index):
    """The variables stage `index`'s optimizer updates, in the order `fit` gives them."""
    unet = cascade.unets[index]
    if unet.trainable:
        return list(unet.trainable_variables)
    unet.trainable = True
    try:
        return list(unet.trainable_variables)
    finally:
        unet.trainable = False


def _restore_optimizer(cascade, index, stage, arrays, path):
    """A new optimizer for stage `index` from its record, built and filled; or None."""
    try:
        optimizer = keras.saving.deserialize_keras_object(stage["config"], safe_mode=True)
    except Exception as err:
        raise ValueError(
            f"The optimizer config of unet {index + 1} in {path!r} cannot be loaded "
            f"safely: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"The optimizer of unet {index + 1} in {path!r} is not a Keras optimizer: "
            f"{type(optimizer).__name__}."
        )
    specs = stage.get("variables")
    if specs is None:
        return optimizer
    optimizer.build(_stage_variables(cascade, index))
    variables = optimizer.variables
    if len(variables) != len(specs):
        raise ValueError(
            f"The optimizer of unet {index + 1} in {path!r} has {len(specs)} variables; "
            f"rebuilt for this model it has {len(variables)}: the unet differs."
        )
    for variable, spec in zip(variables, specs):
        array = arrays[spec["key"]]
        if tuple(variable.shape) != array.shape:
            raise ValueError(
                f"Optimizer variable {spec['path']!r} of unet {index + 1} in {path!r} has "
                f"shape {array.shape}; this model's {variable.path!r} has "
                f"{tuple(variable.shape)}: the unet differs."
            )
        variable.assign(array.astype(variable.dtype) if array.dtype.kind == "f" else array)
    return optimizer


def load_checkpoint(path, cascade=None, include_optimizers=True, strict=True):
    """Restore a checkpoint into `cascade`, or rebuild the cascade from the file alone.

    Everything `save_checkpoint` stored comes back: the weights, the per-unet step
    counts, the seed generator's state (the next training step draws the same random
    numbers as the run that saved it) and every stage's optimizer (Adam moments, EMA
    weights, `iterations`, accumulators), which `compile(unet_number=n)` picks up.

    The whole file is read and checked before the model changes, so a damaged file
    leaves `cascade` as it was.

    Args:
        path: str or path-like. A checkpoint file (local or URL).
        cascade: an `Imagen`/`ElucidatedImagen` built with the same config, or `None`
            to rebuild the model from the file's config.
        include_optimizers: bool, defaults to `True`. `False` restores the model only
            (imagen-pytorch's `only_model=True`) and leaves the stage optimizers alone.
        strict: bool, defaults to `True`: a checkpoint from a model whose config
            differs (image sizes, unet dims, schedules, ...; the names,
            `only_train_unet_number` and the trainable flags may differ) raises a
            `ValueError` naming the differences. `False` warns and loads the weights
            anyway (Keras still refuses weights of another shape).

    Returns:
        The cascade (`cascade` itself when given).

    Raises:
        FileNotFoundError: no such file.
        DamagedFileError: (a `ValueError`) the file is truncated or corrupt.
        ValueError: another config, or a file that is refused as unsafe (a `Lambda`
            layer, a pickled array, unexpected members).

    Example:
    ```python
    save_checkpoint(imagen, "checkpoint.zip")
    imagen = load_checkpoint("checkpoint.zip")         # rebuilt from the file
    load_checkpoint("checkpoint.zip", imagen)          # or restored in place
    imagen.compile(unet_number=1)                      # its optimizer state is back
    ```
    """
    path = _fspath(path)
    if cascade is not None:
        _check_cascade(cascade)
    with tempfile.TemporaryDirectory(prefix="imagen_checkpoint_") as folder:
        with _open_archive(path) as zf:
            meta = _read_meta(zf, path)
            arrays = _read_arrays(zf, meta, path, folder)
            try:
                zf.extract("model.keras", folder)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise _damaged(path, "corrupt model.keras", err) from err
        model_path = os.path.join(folder, "model.keras")
        if cascade is None:
            try:
                cascade = load_model(model_path, compile=False, safe_mode=True)
            except DamagedFileError as err:
                raise _damaged(path, "unreadable model.keras", err) from err
            _check_cascade(cascade, "the checkpoint's model")
        else:
            _check_same_config(cascade, model_path, path, strict)
            cascade.build()
            try:
                with _without_optimizer(cascade):
                    cascade.load_weights(model_path)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise _damaged(path, "unreadable weights", err) from err
    if include_optimizers:
        _restore_optimizers(cascade, meta, arrays, path)
    return cascade


def _restore_optimizers(cascade, meta, arrays, path):
    stages = meta.get("stages") or []
    holder = cascade.stage_optimizers
    if len(stages) != len(holder):
        raise ValueError(
            f"{path!r} holds {len(stages)} stage optimizers; this model has {len(holder)} unets."
        )
    restored = [
        None if stage is None else _restore_optimizer(cascade, index, stage, arrays, path)
        for index, stage in enumerate(stages)
    ]
    old = list(holder.optimizers)
    for index, optimizer in enumerate(restored):
        # A stage the checkpoint never trained keeps an optimizer that never stepped
        # (compiled, unbuilt); a trained one's state belongs to other weights: dropped.
        current = old[index]
        if optimizer is None and current is not None and not current.built:
            optimizer = current
        holder.optimizers[index] = optimizer
    compiled_with = getattr(cascade, "optimizer", None)
    if cascade.compiled and compiled_with is not None and compiled_with not in holder.optimizers:
        # `fit` would train with the replaced optimizer: compile the stage again.
        cascade.compile(
            unet_number=cascade.unet_number,
            jit_compile=cascade.jit_compile,
            run_eagerly=cascade.run_eagerly,
            steps_per_execution=cascade.steps_per_execution,
        )


def load_imagen_from_checkpoint(path, load_weights=True, load_ema_if_available=False):
    """Rebuild a cascade from a checkpoint file alone (imagen-pytorch's function).

    The model comes back without optimizers, for sampling or export; use
    `load_checkpoint` to resume training.

    Args:
        path: str or path-like. A checkpoint file (local or URL).
        load_weights: bool, defaults to `True`. `False` gives the same architecture
            with freshly initialised weights.
        load_ema_if_available: bool, defaults to `False`. Put each stage's EMA weights
            into its unet (stages trained without EMA keep their weights). With
            `False` the unets hold the online (last trained) weights.

    Returns:
        The `Imagen` or `ElucidatedImagen`.

    Example:
    ```python
    imagen = load_imagen_from_checkpoint("checkpoint.zip", load_ema_if_available=True)
    images = imagen.sample(text_embeds=embeds, cond_scale=3.0)
    ```
    """
    from imagen_keras.training.ema import _unwrap, copy_ema_to_weights

    path = _fspath(path)
    if not load_weights:
        with tempfile.TemporaryDirectory() as folder:
            with _open_archive(path) as zf:
                _read_meta(zf, path)
                zf.extract("model.keras", folder)
            with zipfile.ZipFile(os.path.join(folder, "model.keras")) as inner:
                config = json.loads(inner.read("config.json"))
        import imagen_keras  # noqa: F401  registers the cascades

        config.pop("compile_config", None)
        cascade = keras.saving.deserialize_keras_object(config, safe_mode=True)
        _check_cascade(cascade, "the checkpoint's model")
        cascade.build()
        return cascade
    cascade = load_checkpoint(path, include_optimizers=load_ema_if_available)
    if load_ema_if_available:
        for unet, optimizer in zip(cascade.unets, cascade.stage_optimizers.optimizers):
            inner = None if optimizer is None else _unwrap(optimizer)
            if inner is not None and inner.use_ema and inner.built:
                copy_ema_to_weights(unet, optimizer)
        cascade.stage_optimizers.optimizers[:] = [None] * len(cascade.unets)
    return cascade
