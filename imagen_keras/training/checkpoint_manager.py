"""Numbered checkpoints in a folder: save every N steps, keep the last N, resume."""

import contextlib
import os
import re
import warnings

import numpy as np

from imagen_keras.saving import DamagedFileError, _gfile, _is_remote, remove_stale_temporaries
from imagen_keras.training.checkpoint import (
    _check_cascade,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)


class CheckpointManager:
    """Numbered checkpoints in a folder: save every N steps, keep the last N, resume.

    Files are named `checkpoint.{step}.zip` (imagen-pytorch's `checkpoint.{step}.pt`),
    each written atomically by `save_checkpoint`. `restore_latest` resumes from the
    newest checkpoint that loads, skipping (with a warning) damaged ones, e.g. left by
    a copy that was cut short; a killed save never leaves a file with a checkpoint's
    name. Saving removes the oldest files beyond `max_to_keep` and the temporary files
    of saves that were killed (local folders).

    Args:
        directory: str or path-like. The folder (created on the first save); local or
            a URL `tf.io.gfile` handles (`gs://bucket/run`, `ram://run`).
        max_to_keep: int or `None`, defaults to `20`. How many checkpoints to keep
            (`None`: all).

    Example:
    ```python
    manager = CheckpointManager("run/checkpoints", max_to_keep=3)
    manager.restore_latest(imagen)          # None on the first run
    ...                                     # train
    manager.save(imagen)                    # checkpoint.{total updates}.zip
    ```
    """

    _NAME = re.compile(r"^checkpoint\.(\d+)\.zip$")
    _TEMPORARY = re.compile(r"^\.(checkpoint\.\d+\.zip)\.\d+\.[0-9a-f]+\.tmp\.zip$")

    def __init__(self, directory, max_to_keep=20):
        directory = os.fspath(directory) if not isinstance(directory, str) else directory
        if not isinstance(directory, str) or not directory:
            raise ValueError(
                f"`directory` must be a non-empty str. Received: directory={directory!r}"
            )
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(
                "`max_to_keep` must be a positive int or None. "
                f"Received: max_to_keep={max_to_keep!r}"
            )
        self.directory = directory.rstrip("/") if _is_remote(directory) else directory
        self.max_to_keep = max_to_keep

    def _join(self, name):
        if _is_remote(self.directory):
            return f"{self.directory}/{name}"
        return os.path.join(self.directory, name)

    def _listdir(self):
        if _is_remote(self.directory):
            gfile = _gfile()
            if not gfile.isdir(self.directory):
                return []
            return [name.rstrip("/") for name in gfile.listdir(self.directory)]
        if not os.path.isdir(self.directory):
            return []
        return os.listdir(self.directory)

    def checkpoints(self):
        """`(step, path)` of every checkpoint file in the folder, oldest first."""
        found = []
        for name in self._listdir():
            match = self._NAME.match(name)
            if match:
                found.append((int(match.group(1)), self._join(name)))
        return sorted(found)

    def path_for(self, step):
        """The file a checkpoint at `step` is written to."""
        return self._join(f"checkpoint.{int(step)}.zip")

    def save(self, cascade, step=None, extra=None):
        """Save a checkpoint of `cascade` at `step`, then drop the oldest beyond `max_to_keep`.

        Args:
            cascade: the `Imagen`/`ElucidatedImagen`.
            step: int or `None`. Defaults to the total optimizer updates of all unets.
            extra: JSON-serializable dict or `None`, stored in the checkpoint.

        Returns:
            The path written.
        """
        _check_cascade(cascade)
        if step is None:
            step = sum(cascade.stage_optimizers.steps())
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"`step` must be an int >= 0. Received: step={step!r}")
        if _is_remote(self.directory):
            _gfile().makedirs(self.directory)
        else:
            os.makedirs(self.directory, exist_ok=True)
        path = save_checkpoint(cascade, self.path_for(step), extra=extra)
        self._prune()
        return path

    def _prune(self):
        if self.max_to_keep is not None:
            for _, old in self.checkpoints()[: -self.max_to_keep]:
                with contextlib.suppress(FileNotFoundError, OSError):
                    if _is_remote(old):
                        _gfile().remove(old)
                    else:
                        os.remove(old)
        if not _is_remote(self.directory):
            for name in self._listdir():
                match = self._TEMPORARY.match(name)
                if match:
                    remove_stale_temporaries(self._join(match.group(1)))

    def latest(self):
        """The newest checkpoint whose file is whole (zip readable, members present),
        or `None`; damaged ones are skipped with a warning."""
        for _, path in reversed(self.checkpoints()):
            try:
                checkpoint_metadata(path)
            except DamagedFileError as err:
                warnings.warn(f"Skipping a damaged checkpoint: {err}", stacklevel=2)
                continue
            return path
        return None

    def restore_latest(self, cascade, include_optimizers=True, strict=True):
        """Restore the newest checkpoint that loads into `cascade`.

        Damaged files are skipped with a warning (the next older one is tried). A
        config mismatch or an unsafe file raises.

        Args:
            cascade: the `Imagen`/`ElucidatedImagen` to restore into.
            include_optimizers, strict: see `load_checkpoint`.

        Returns:
            The path restored, or `None` when the folder holds no checkpoint.

        Raises:
            DamagedFileError: checkpoints exist but none of them loads.
        """
        _check_cascade(cascade)
        found = self.checkpoints()
        for _, path in reversed(found):
            try:
                load_checkpoint(path, cascade, include_optimizers, strict)
            except DamagedFileError as err:
                warnings.warn(f"Skipping a damaged checkpoint: {err}", stacklevel=2)
                continue
            return path
        if found:
            raise DamagedFileError(
                f"None of the {len(found)} checkpoints in {self.directory!r} loads "
                f"({[p for _, p in found][-3:]} ...): all are damaged."
            )
        return None
