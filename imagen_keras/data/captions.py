"""Captions of an image folder: sidecar `.txt` files or a CSV / JSONL manifest."""

import csv
import io
import json
import os
import posixpath

import tensorflow as tf

MISSING_CAPTIONS = ("skip", "error", "empty")


def _read_text(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read().decode("utf-8")


def sidecar_captions(files):
    """`{file: [caption]}` for each image whose `name.txt` exists beside it.

    The whole file, stripped, is one caption; an empty (or whitespace-only) file counts
    as a missing caption.
    """
    out = {}
    for path in files:
        sidecar = os.path.splitext(path)[0] + ".txt"
        if tf.io.gfile.exists(sidecar):
            text = _read_text(sidecar).strip()
            if text:
                out[path] = [text]
    return out


def _manifest_rows(manifest):
    text = _read_text(manifest)
    lower = manifest.lower()
    if lower.endswith(".csv") or lower.endswith(".tsv"):
        delimiter = "\t" if lower.endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        return list(reader), list(reader.fieldnames or [])
    if lower.endswith(".jsonl"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"Line {number} of the manifest {manifest!r} is not JSON: {e}"
                ) from e
            if not isinstance(row, dict):
                raise ValueError(
                    f"Line {number} of the manifest {manifest!r} must be a JSON object. "
                    f"Received: {line!r}"
                )
            rows.append(row)
        return rows, sorted({key for row in rows for key in row})
    raise ValueError(
        "`captions` must be None, 'sidecar' or the path of a .csv, .tsv or .jsonl manifest. "
        f"Received: captions={manifest!r}"
    )


def _relative(path, folder):
    return posixpath.normpath(os.path.relpath(path, folder).replace(os.sep, "/"))


def manifest_captions(manifest, folder, files, file_column="file", caption_column="caption"):
    """`({file: [captions]}, num_unmatched)` from a CSV/TSV/JSONL manifest.

    A row's file is a path relative to `folder` (or absolute). Several rows for one file
    give that image several captions. `num_unmatched` counts rows whose file is not one
    of `files` (e.g. a deleted image, or an extension not in `exts`).
    """
    if not tf.io.gfile.exists(manifest):
        raise ValueError(f"The captions manifest does not exist. Received: captions={manifest!r}")
    rows, columns = _manifest_rows(manifest)
    for argument, column in (("file_column", file_column), ("caption_column", caption_column)):
        if rows and column not in columns:
            raise ValueError(
                f"The manifest {manifest!r} has no column {column!r} (`{argument}`). "
                f"Its columns: {columns}"
            )
    by_relative = {_relative(f, folder): f for f in files}
    by_absolute = set(files)
    out, unmatched = {}, 0
    for row in rows:
        name = str(row.get(file_column) or "").replace("\\", "/")
        caption = row.get(caption_column)
        path = by_relative.get(posixpath.normpath(name)) if name else None
        if path is None and name and os.path.isabs(name):
            path = name if name in by_absolute else None
        if path is None:
            unmatched += 1
            continue
        if caption is not None and str(caption).strip():
            out.setdefault(path, []).append(str(caption).strip())
    return out, unmatched
