"""Writing an `EmbeddingCache` folder: tokenize, preallocate, encode batch by batch.

Each batch is written into the memory-mapped `embeds.npy`, flushed, and only then
counted in `manifest.json` (replaced atomically), so a build killed at any point
resumes at the first batch that was not committed. See `embedding_cache.py` for the
format.
"""

import os

import numpy as np

from imagen_keras.saving import atomic_path
from imagen_keras.text.embedding_cache import (
    DEFAULT_BATCH_SIZE,
    DTYPES,
    FORMAT,
    VERSION,
    _mismatch_message,
    _read_json,
    _write_json_atomic,
    unique_captions,
)

_TOKENIZE_CHUNK = 4096


def _check_args(batch_size, dtype):
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive int or None. Received: batch_size={batch_size!r}"
        )
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")


def _resume_manifest(directory, manifest, encoder, captions, batch_size, dtype):
    """Check that an existing (maybe unfinished) cache can be continued."""
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory!r} holds a manifest.json that is not an embedding cache's.")
    if manifest["encoder_fingerprint"] != encoder.fingerprint():
        raise ValueError(_mismatch_message(directory, manifest, encoder))
    if manifest["dtype"] != dtype:
        raise ValueError(
            f"The embedding cache in {directory!r} stores {manifest['dtype']}. Received: "
            f"dtype={dtype!r}"
        )
    if batch_size is not None and batch_size != manifest["batch_size"]:
        raise ValueError(
            f"The embedding cache in {directory!r} is built with batch_size="
            f"{manifest['batch_size']}; resume it with the same batch size (or None), so "
            f"its results stay identical. Received: batch_size={batch_size}"
        )
    stored = _read_json(os.path.join(directory, "captions.json"))
    if stored != captions:
        raise ValueError(
            f"The embedding cache in {directory!r} holds another caption set "
            f"({len(stored)} distinct captions, {len(captions)} given). Build the new set "
            "in a new folder."
        )


def _start(directory, encoder, captions, batch_size, dtype):
    """Write captions, lengths, an empty embeds.npy and a manifest with rows_done=0."""
    lengths = []
    for start in range(0, len(captions), _TOKENIZE_CHUNK):
        lengths.extend(
            len(ids) for ids in encoder.tokenize(captions[start : start + _TOKENIZE_CHUNK])
        )
    lengths = np.asarray(lengths, dtype="int32")
    _write_json_atomic(os.path.join(directory, "captions.json"), captions, ensure_ascii=False)
    with atomic_path(os.path.join(directory, "lengths.npy")) as tmp:
        np.save(tmp, lengths)
    # embeds.npy is written in place, batch by batch: the manifest's rows_done says which
    # rows are final, and a build that dies before the first manifest starts over.
    embeds = np.lib.format.open_memmap(
        os.path.join(directory, "embeds.npy"),
        mode="w+",
        dtype=dtype,
        shape=(int(lengths.sum()), encoder.embed_dim),
    )
    del embeds
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "encoder_fingerprint": encoder.fingerprint(),
        "encoder_preset": None if getattr(encoder, "preset", None) is None else str(encoder.preset),
        "max_length": encoder.max_length,
        "embed_dim": encoder.embed_dim,
        "dtype": dtype,
        "batch_size": batch_size,
        "num_captions": len(captions),
        "num_tokens": int(lengths.sum()),
        "rows_done": 0,
    }
    _write_json_atomic(os.path.join(directory, "manifest.json"), manifest)
    return manifest


def build_cache(encoder, captions, directory, *, batch_size=None, dtype="float32", progress=True):
    """Write or resume a cache folder; see `EmbeddingCache.build`."""
    import keras

    from imagen_keras.text.loader import load_text_encoder

    _check_args(batch_size, dtype)
    if isinstance(encoder, (str, os.PathLike)):
        encoder = load_text_encoder(encoder)
    for attribute in ("encode", "tokenize", "fingerprint", "embed_dim", "max_length"):
        if not hasattr(encoder, attribute):
            raise ValueError(
                "`encoder` must be a T5Encoder (or have its `encode`, `tokenize`, "
                f"`fingerprint`, `embed_dim` and `max_length`). Received: encoder={encoder!r}"
            )
    captions = unique_captions(captions)
    if not captions:
        raise ValueError("`captions` must hold at least one caption. Received: captions=[]")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    manifest_path = os.path.join(directory, "manifest.json")
    if os.path.isfile(manifest_path):
        manifest = _read_json(manifest_path)
        _resume_manifest(directory, manifest, encoder, captions, batch_size, dtype)
    else:
        manifest = _start(directory, encoder, captions, batch_size or DEFAULT_BATCH_SIZE, dtype)
    batch_size = manifest["batch_size"]

    lengths = np.load(os.path.join(directory, "lengths.npy"))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype="int64")])
    embeds = np.lib.format.open_memmap(os.path.join(directory, "embeds.npy"), mode="r+")
    bar = keras.utils.Progbar(len(captions), unit_name="caption") if progress else None
    if bar is not None:
        bar.update(manifest["rows_done"])
    for start in range(manifest["rows_done"], len(captions), batch_size):
        stop = min(start + batch_size, len(captions))
        batch, mask = encoder.encode(captions[start:stop])
        if not np.array_equal(mask.sum(axis=1), lengths[start:stop]):
            raise ValueError(
                f"The encoder gave other token counts than when {directory!r} was started "
                f"(captions {start}..{stop - 1}); was the tokenizer changed?"
            )
        for i in range(stop - start):
            row = start + i
            embeds[offsets[row] : offsets[row + 1]] = batch[i, : lengths[row]]
        embeds.flush()
        manifest["rows_done"] = stop
        _write_json_atomic(manifest_path, manifest)
        if bar is not None:
            bar.update(stop)
    del embeds
    return manifest
