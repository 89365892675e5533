"""Saving that never destroys the last good file, and loading that tells damage from absence.

Every file imagen-keras writes goes through `atomic_path` (or `atomic_write`, its
file-object form): the new content is written to a temporary file in the same folder,
flushed and fsynced, then renamed over the target with `os.replace`, and the folder is
fsynced. A reader, or a process killed at any moment (Ctrl-C, SIGKILL, power loss after
the rename), sees either the complete old file or the complete new one, never a mix.

Temporary files are named `.<name>.<pid>.<token>.tmp<suffix>` (the suffix of the target,
e.g. `.keras`, so Keras accepts the name). A process killed mid-write leaves its
temporary file behind; the next atomic write to the same target removes the ones whose
process is gone.

Paths with a scheme (`gs://`, `s3://`, `hdfs://`, `ram://`, ...) go through
`tf.io.gfile`: write to a temporary name beside the target, then `gfile.rename(...,
overwrite=True)`. Object stores give no atomic rename guarantee beyond what their gfile
`rename` provides (on GCS it is a copy then a delete: the target is never a partial
object, but a crash can leave the temporary object behind, which is not cleaned up).

`save_model` / `AtomicSaveMixin` put Keras' `model.save` and `model.save_weights` on
this writer; `load_model` wraps `keras.saving.load_model` with a clear message for a
damaged file and keeps Keras' `safe_mode` on by default.
"""

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import zipfile
import zlib

from imagen_keras.backend import gfile as _gfile

# Multi-part suffixes that a writer (Keras, numpy) insists on.
_SUFFIXES = (".weights.h5", ".weights.json", ".tar.gz")
_TEXT_MODES = ("w", "wt")
_BINARY_MODES = ("wb",)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _is_remote(path):
    return bool(_SCHEME.match(path))


def _suffix(name):
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


def _temp_name(name):
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{_suffix(name)}"


def _fspath(path, argument="path"):
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(
            f"`{argument}` must be a str or path-like. Received: {argument}={path!r}"
        ) from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path or path.endswith(("/", os.sep)):
        raise ValueError(f"`{argument}` must name a file. Received: {argument}={path!r}")
    return path


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temporaries(path):
    """Delete the temporary files of killed writes to `path` (local paths only).

    A temporary file is stale when the process id in its name is no longer running on
    this machine. Temporaries of live processes (a concurrent save) are left alone.

    Args:
        path: str or path-like. The target file whose stale temporaries to remove.

    Returns:
        list of str. The paths removed.
    """
    path = _fspath(path)
    if _is_remote(path):
        return []
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(
        re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]+\.tmp" + re.escape(_suffix(name)) + "$"
    )
    removed = []
    for candidate in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*")):
        match = pattern.match(os.path.basename(candidate))
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                if os.path.isdir(candidate):
                    shutil.rmtree(candidate)
                else:
                    os.remove(candidate)
                removed.append(candidate)
    return removed


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_overwrite(path, overwrite, exists):
    if not overwrite and exists(path):
        raise FileExistsError(
            f"{path!r} exists and `overwrite=False`; pass `overwrite=True` to replace it. "
            f"Received: filepath={path!r}, overwrite=False"
        )


@contextlib.contextmanager
def _local_atomic_path(path, overwrite):
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No folder {directory!r} to write {path!r} into.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; atomic writes replace files only.")
    _check_overwrite(path, overwrite, os.path.exists)
    remove_stale_temporaries(path)
    tmp = os.path.join(directory, _temp_name(name))
    # Created up front (O_EXCL) so the name is ours; 0o666 & ~umask like a plain open().
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if os.path.isdir(tmp):
            raise IsADirectoryError(f"The writer made a folder at {tmp!r}, not a file.")
        if os.path.exists(path):  # keep the permissions of the file being replaced
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: never clobbers
            os.remove(tmp)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            else:
                os.remove(tmp)
        raise


@contextlib.contextmanager
def _remote_atomic_path(path, overwrite):
    gfile = _gfile()
    if gfile.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder; atomic writes replace files only.")
    _check_overwrite(path, overwrite, gfile.exists)
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/{_temp_name(name)}"
    try:
        yield tmp
        gfile.rename(tmp, path, overwrite=overwrite)
    except BaseException:
        with contextlib.suppress(Exception):
            if gfile.exists(tmp):
                gfile.remove(tmp)
        raise


def atomic_path(path, overwrite=True):
    """Context manager: a temporary path to write, renamed over `path` on success.

    Use it for a function that writes to a path (`np.save`, `model.save`, ...): write
    to the path it yields; when the block ends without an exception the temporary file
    is fsynced and atomically renamed to `path` (and the folder fsynced). On an
    exception the temporary file is removed and `path` is untouched. The temporary
    file lies in the same folder as `path` and ends with the same suffix (`.keras`,
    `.weights.h5`, `.npy`, ...). URLs (`gs://...`) go through `tf.io.gfile`.

    Args:
        path: str or path-like. The file to write.
        overwrite: bool, defaults to `True`. If `False` and `path` exists, raise
            `FileExistsError` before anything is written (and never replace a file
            that appears during the write).

    Example:
    ```python
    with atomic_path("lengths.npy") as tmp:
        np.save(tmp, lengths)
    ```
    """
    path = _fspath(path)
    if _is_remote(path):
        return _remote_atomic_path(path, overwrite)
    return _local_atomic_path(path, overwrite)


@contextlib.contextmanager
def atomic_write(path, mode="wb", overwrite=True, encoding=None):
    """Context manager: open a file whose content replaces `path` only once complete.

    The file object writes to a temporary file in the same folder; on leaving the block
    without an exception it is flushed, fsynced and renamed over `path`; on an exception
    the old `path` is left as it was. See `atomic_path` for paths given to a function.

    Args:
        path: str or path-like. The file to write.
        mode: str, defaults to `"wb"`. `"wb"` (bytes), or `"w"`/`"wt"` (text).
        overwrite: bool, defaults to `True`. If `False` and `path` exists, raise
            `FileExistsError`.
        encoding: str or None, defaults to `None` (`"utf-8"` in text mode).

    Example:
    ```python
    with atomic_write("manifest.json", "w") as f:
        json.dump(manifest, f)
    ```
    """
    if mode not in _TEXT_MODES + _BINARY_MODES:
        raise ValueError(
            f"`mode` must be one of {_TEXT_MODES + _BINARY_MODES} (an atomic write replaces "
            f"the whole file). Received: mode={mode!r}"
        )
    if mode in _TEXT_MODES:
        encoding = encoding or "utf-8"
    with atomic_path(path, overwrite=overwrite) as tmp:
        if _is_remote(tmp):
            with _gfile().GFile(tmp, "wb" if mode in _BINARY_MODES else "w") as f:
                yield f
        else:
            with open(tmp, mode, encoding=encoding) as f:
                yield f


def _restore_interrupted_swap(path):
    """Put back the old folder a killed `atomic_directory` swap left beside `path`."""
    if os.path.exists(path):
        return
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]+\.old$")
    for candidate in sorted(
        glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.old"))
    ):
        match = pattern.match(os.path.basename(candidate))
        if match and not _pid_alive(int(match.group(1))):
            os.rename(candidate, path)
            return


def _fsync_tree(root):
    for folder, _, files in os.walk(root):
        for file in files:
            _fsync_file(os.path.join(folder, file))
        _fsync_dir(folder)


@contextlib.contextmanager
def atomic_directory(path):
    """Context manager: a temporary folder that replaces the folder `path` once complete.

    For writers that fill a folder (keras-hub's `save_to_preset`). The block writes into
    a new folder beside `path`; on success its files are fsynced and it takes the place
    of `path`:
    - `path` missing or empty: one atomic `rename`.
    - `path` holds only files the new folder also holds (an earlier version): the old
      folder is renamed aside to `.<name>.<pid>.<token>.old`, the new one renamed in,
      and the old one deleted. A process killed between the two renames leaves no
      `path`; the next `atomic_directory(path)` puts the old folder back first.
    - `path` holds other files too: the new files are moved in one by one (each with
      `os.replace`, so each file is whole; a kill mid-way can leave a mix of old and new
      files), and the other files are left alone.
    On an exception the temporary folder is deleted and `path` is untouched. Local paths
    only.

    Args:
        path: str or path-like. The folder to write.

    Example:
    ```python
    with atomic_directory("tiny_t5") as tmp:
        backbone.save_to_preset(tmp)
        tokenizer.save_to_preset(tmp)
    ```
    """
    path = _fspath(path)
    if _is_remote(path):
        raise ValueError(f"`path` must be a local folder. Received: path={path!r}")
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} exists and is not a folder.")
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    _restore_interrupted_swap(path)
    remove_stale_temporaries(path)
    tmp = os.path.join(directory, _temp_name(name))
    os.mkdir(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        old = sorted(os.listdir(path)) if os.path.isdir(path) else []
        new = {os.path.relpath(os.path.join(f, n), tmp) for f, _, ns in os.walk(tmp) for n in ns}
        if not old:
            os.replace(tmp, path)
        elif all(
            os.path.relpath(os.path.join(f, n), path) in new
            for f, _, ns in os.walk(path)
            for n in ns
        ):
            aside = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.old")
            os.rename(path, aside)
            os.rename(tmp, path)
            _fsync_dir(directory)
            shutil.rmtree(aside)
        else:
            for relative in sorted(new):
                os.makedirs(os.path.dirname(os.path.join(path, relative)), exist_ok=True)
                os.replace(os.path.join(tmp, relative), os.path.join(path, relative))
            _fsync_tree(path)
            shutil.rmtree(tmp)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model, filepath, overwrite=True, zipped=None, **kwargs):
    """Save `model` like `keras.saving.save_model`, atomically.

    Keras writes to a temporary `.keras` (or `.h5`) file in the same folder, which then
    replaces `filepath`: an interrupted save (exception, Ctrl-C, SIGKILL) leaves the
    previous file loadable.

    Args:
        model: `keras.Model`. The model to save.
        filepath: str or path-like. Where to save; ends in `.keras` (or legacy `.h5`).
        overwrite: bool, defaults to `True`. If `False` and `filepath` exists, raise
            `FileExistsError` (Keras would ask on the terminal).
        zipped: bool or None, defaults to `None`. Only zipped archives can be written
            atomically: `False` raises `ValueError`.
        **kwargs: passed to `keras.saving.save_model` (e.g. `include_optimizer` for
            `.h5`).

    Example:
    ```python
    save_model(unet, "unet.keras")
    unet = load_model("unet.keras")
    ```
    """
    import keras

    filepath = _fspath(filepath, "filepath")
    if zipped is False:
        raise ValueError(
            "An unzipped model folder cannot be replaced atomically; save a zipped "
            f"`.keras` file. Received: zipped={zipped!r}"
        )
    if not filepath.endswith((".keras", ".h5", ".hdf5")):
        raise ValueError(
            "`filepath` must end in `.keras` (or the legacy `.h5`). "
            f"Received: filepath={filepath!r}"
        )
    with atomic_path(filepath, overwrite=overwrite) as tmp:
        keras.saving.save_model(model, tmp, overwrite=True, zipped=zipped, **kwargs)


def save_weights(model, filepath, overwrite=True, max_shard_size=None):
    """Save `model`'s weights like `keras.Model.save_weights`, atomically.

    Args:
        model: `keras.Model`. The model whose weights to save.
        filepath: str or path-like. Ends in `.weights.h5`.
        overwrite: bool, defaults to `True`. If `False` and `filepath` exists, raise
            `FileExistsError`.
        max_shard_size: must be `None`, defaults to `None`. Sharded weights are several
            files that cannot be replaced together atomically: a value raises
            `ValueError`; call `keras.Model.save_weights(model, ...)` for those.

    Example:
    ```python
    save_weights(unet, "unet.weights.h5")
    unet.load_weights("unet.weights.h5")
    ```
    """
    import keras

    filepath = _fspath(filepath, "filepath")
    if max_shard_size is not None:
        raise ValueError(
            "Sharded weights are several files and cannot be replaced atomically; call "
            "`keras.Model.save_weights(model, path, max_shard_size=...)` for those. "
            f"Received: max_shard_size={max_shard_size!r}"
        )
    if not filepath.endswith(".weights.h5"):
        raise ValueError(f"`filepath` must end in `.weights.h5`. Received: filepath={filepath!r}")
    with atomic_path(filepath, overwrite=overwrite) as tmp:
        keras.saving.save_weights(model, tmp, overwrite=True)


class AtomicSaveMixin:
    """Makes a `keras.Model`'s `save` and `save_weights` atomic.

    Put it before `keras.Model` in the bases. `save` and `save_weights` keep Keras'
    signatures and results; the difference is that the previous file survives an
    interrupted save, and `overwrite=False` raises `FileExistsError` instead of
    prompting on the terminal.

    Example:
    ```python
    class Cascade(AtomicSaveMixin, keras.Model):
        ...
    ```
    """

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Save the model to a `.keras` file atomically; see `imagen_keras.saving.save_model`."""
        return save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Save the weights to a `.weights.h5` file atomically; see `saving.save_weights`."""
        return save_weights(self, filepath, overwrite=overwrite, max_shard_size=max_shard_size)


class DamagedFileError(ValueError):
    """A model file exists but cannot be read: truncated, overwritten or corrupt."""


def _damaged(path, what, cause=None):
    detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
    return DamagedFileError(
        f"{path!r} is damaged ({what}){detail}. The file exists but cannot be loaded; "
        "restore it from a backup or save it again."
    )


def _check_keras_archive(path, display):
    """Raise `DamagedFileError` unless `path` is a zip with a readable config.json and weights."""
    if os.path.getsize(path) == 0:
        raise _damaged(display, "empty file, 0 bytes")
    if not zipfile.is_zipfile(path):
        raise _damaged(display, "not a valid .keras zip archive, or truncated")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise _damaged(display, f"missing config.json; the archive holds {names[:5]}")
            if not {"model.weights.h5", "model.weights.npz"} & set(names):
                raise _damaged(
                    display, f"missing model.weights.h5, an unfinished save; it holds {names[:5]}"
                )
            config = archive.read("config.json")
        json.loads(config)
    except DamagedFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        raise _damaged(display, "unreadable config.json", err) from err
    return config


def _register_custom_objects(config):
    import imagen_keras  # noqa: F401  registers the Unet, cascades and layers

    if b"T5Encoder" in config:  # keras-hub is slow to import: only when needed
        import imagen_keras.text.t5_encoder  # noqa: F401


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model saved by imagen-keras (or any Keras 3 `.keras` file).

    Wraps `keras.saving.load_model` with the package's custom objects registered, a
    `FileNotFoundError` only when the file does not exist, and a `ValueError`
    (`DamagedFileError`) naming the damage when it exists but is not a valid archive
    (truncated, empty, overwritten, missing `config.json`, corrupt member). Keras'
    `safe_mode` stays on by default: a file with a `Lambda` layer (arbitrary code) is
    refused.

    Args:
        filepath: str or path-like. A `.keras` file (local or a URL `tf.io.gfile` reads),
            a `.h5` file or a Keras model folder.
        custom_objects: dict or None, defaults to `None`. Extra classes or functions.
        compile: bool, defaults to `True`. Compile the model if it was saved compiled.
        safe_mode: bool, defaults to `True`. Refuse `Lambda` layers and other
            deserialization that can run code. Set `False` only for files you trust.

    Returns:
        The `keras.Model`.

    Raises:
        FileNotFoundError: if `filepath` does not exist.
        ValueError: if it exists but is damaged, or is refused by `safe_mode`.

    Example:
    ```python
    unet.save("unet.keras")
    unet = imagen_keras.load_model("unet.keras")
    ```
    """
    import keras

    filepath = _fspath(filepath, "filepath")
    if not isinstance(safe_mode, bool):
        raise ValueError(f"`safe_mode` must be a bool. Received: safe_mode={safe_mode!r}")
    if _is_remote(filepath):
        gfile = _gfile()
        if not gfile.exists(filepath):
            raise FileNotFoundError(f"No such file: {filepath!r}")
        if filepath.endswith(".keras") and not gfile.isdir(filepath):
            with tempfile.TemporaryDirectory() as local:
                local_path = os.path.join(local, "model.keras")
                gfile.copy(filepath, local_path)
                return _load_local(local_path, filepath, custom_objects, compile, safe_mode, keras)
        _register_custom_objects(b"")
        return keras.saving.load_model(
            filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No such file: {filepath!r}")
    return _load_local(filepath, filepath, custom_objects, compile, safe_mode, keras)


def _load_local(path, display, custom_objects, compile, safe_mode, keras):
    config = b""
    if os.path.isfile(path) and path.endswith(".keras"):
        config = _check_keras_archive(path, display)
    elif os.path.isfile(path) and path.endswith((".h5", ".hdf5")):
        import h5py

        if not h5py.is_hdf5(path):
            raise _damaged(display, "not a valid HDF5 file, or truncated")
    _register_custom_objects(config)
    try:
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise _damaged(display, "a corrupt member in the archive", err) from err
