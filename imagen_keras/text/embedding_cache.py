"""`EmbeddingCache`: T5 embeddings of a caption set, computed once, read while training.

Imagen's text encoder is frozen, so the embeddings of a dataset's captions never change;
computing them once takes T5 (4.7 B parameters for XXL) out of the training loop.

Format: a folder of plain numpy files.

- `captions.json`: the unique captions; a caption's position is its row.
- `lengths.npy`: int32 `(N,)`, tokens per caption (end token included, at most
  `max_length`). Masks are not stored: a T5 mask is `True` on the first `length`
  positions.
- `embeds.npy`: `(T, D)` float32 (or float16), the token embeddings of all captions one
  after the other (`T = lengths.sum()`); caption `i` is rows
  `offsets[i]:offsets[i] + lengths[i]`.
- `manifest.json`: encoder fingerprint, `max_length`, `embed_dim`, dtype, batch size and
  `rows_done`, the number of captions encoded so far.

Why this format:
- Ragged rows store only real tokens. Captions average some 15-20 tokens against a
  `max_length` of 256, so padding every caption to 256 would take >10x the disk (T5-XXL:
  4 MiB per caption at float32).
- `embeds.npy` is opened with `np.lib.format.open_memmap`: it is preallocated at its
  final size (all lengths are known after a cheap tokenization pass), written in place
  batch by batch and, during training, read lazily by the OS page cache, so a cache much
  larger than RAM works and many reader processes share one copy. Any numpy can read it.
- float32 by default gives an exact round trip of what `T5Encoder.encode` returned;
  float16 halves the size (T5 activations stay well within its range after the final
  layer norm).
- Resumable: after each batch, the memmap is flushed and then the manifest is replaced
  atomically (`imagen_keras.saving.atomic_write`). A killed build leaves a manifest that
  counts only finished batches; the next build re-encodes from there, with the same
  batches (same batch size, checked), so the final files are identical.
- Keyed by caption text (a dict caption -> row), so an (image, caption) dataset looks up
  its embeddings with `lookup` or `attach` without running T5. The fingerprint of the
  encoder (architecture, max_length, vocabulary, weights) is checked, so embeddings from
  two encoders are never mixed.
"""

import json
import os

import numpy as np

from imagen_keras.saving import atomic_write

FORMAT = "imagen_keras.text.EmbeddingCache"
VERSION = 1
DTYPES = ("float32", "float16")
DEFAULT_BATCH_SIZE = 32


class CaptionNotCachedError(KeyError):
    """A caption asked of an `EmbeddingCache` that it does not hold."""

    def __str__(self):
        return str(self.args[0])


def _write_json_atomic(path, value, **kwargs):
    with atomic_write(path, "w") as f:
        json.dump(value, f, indent=1, **kwargs)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def unique_captions(captions):
    """The distinct captions of `captions`, in order of first appearance."""
    if isinstance(captions, (str, bytes)) or not hasattr(captions, "__iter__"):
        raise ValueError(f"`captions` must be a list of strings. Received: captions={captions!r}")
    out = {}
    for caption in captions:
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        if not isinstance(caption, str):
            raise ValueError(f"`captions` must hold only strings. Received an element {caption!r}")
        out.setdefault(caption, None)
    return list(out)


class EmbeddingCache:
    """T5 embeddings of a caption set, stored in memory-mapped numpy files.

    Build a cache with `EmbeddingCache.build(encoder, captions, directory)` (or the
    command `python -m imagen_keras.text.cache`), then open it with
    `EmbeddingCache(directory)`; see the module docstring for the format.

    Args:
        directory: str or path-like. A cache folder written by `build`.
        encoder: `T5Encoder` or `None`, defaults to `None`. If given, its fingerprint
            must match the one the cache was built with.

    Raises:
        ValueError: if `directory` holds no cache, an unfinished one, or one built with
            another encoder than `encoder`.

    Example:
    ```python
    cache = EmbeddingCache.build(encoder, ["a red cube", "a blue ball"], "/tmp/cache")
    embeds, masks = cache.lookup(["a blue ball"])          # numpy (1, L, D), (1, L)
    dataset = cache.attach(dataset, caption_key="texts")   # adds text_embeds/text_masks
    ```
    """

    def __init__(self, directory, encoder=None):
        self.directory = os.fspath(directory)
        path = os.path.join(self.directory, "manifest.json")
        if not os.path.isfile(path):
            raise ValueError(
                f"No embedding cache in {self.directory!r} (no manifest.json); build one "
                "with `EmbeddingCache.build` or `python -m imagen_keras.text.cache`. "
                f"Received: directory={self.directory!r}"
            )
        self.manifest = _read_json(path)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not an imagen_keras embedding cache manifest.")
        if self.manifest["rows_done"] < self.manifest["num_captions"]:
            raise ValueError(
                f"The embedding cache in {self.directory!r} is unfinished "
                f"({self.manifest['rows_done']} of {self.manifest['num_captions']} captions);"
                " run the same build again to resume it."
            )
        if encoder is not None:
            self.check_encoder(encoder)
        self.captions = _read_json(os.path.join(self.directory, "captions.json"))
        self._rows = {caption: row for row, caption in enumerate(self.captions)}
        self.lengths = np.load(os.path.join(self.directory, "lengths.npy"))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype="int64")])
        self.embeds = np.load(os.path.join(self.directory, "embeds.npy"), mmap_mode="r")

    # --- Properties -----------------------------------------------------------------

    @property
    def fingerprint(self):
        """Fingerprint of the encoder the cache was built with."""
        return self.manifest["encoder_fingerprint"]

    @property
    def embed_dim(self):
        return self.manifest["embed_dim"]

    @property
    def max_length(self):
        """The encoder's `max_length` (tokens per caption, at most)."""
        return self.manifest["max_length"]

    @property
    def max_tokens(self):
        """Tokens of the longest cached caption: the default `pad_to` of `attach`."""
        return int(self.lengths.max())

    @property
    def dtype(self):
        return self.manifest["dtype"]

    def __len__(self):
        return len(self.captions)

    def __contains__(self, caption):
        return caption in self._rows

    def check_encoder(self, encoder):
        """Raise `ValueError` if `encoder`'s fingerprint is not the cache's."""
        theirs = encoder.fingerprint()
        if theirs != self.fingerprint:
            raise ValueError(_mismatch_message(self.directory, self.manifest, encoder))

    # --- Reading --------------------------------------------------------------------

    def _row(self, caption):
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        try:
            return self._rows[caption]
        except (KeyError, TypeError):
            raise CaptionNotCachedError(
                f"Caption {caption!r} is not in the embedding cache {self.directory!r} "
                f"({len(self)} captions). Build the cache from all the captions of the "
                "dataset, in a new folder: python -m imagen_keras.text.cache --encoder "
                "... --captions ... --out ..."
            ) from None

    def lookup(self, captions, pad_to=None):
        """The cached embeddings of `captions`, as `T5Encoder.encode` returns them.

        Args:
            captions: list or 1-D array of str (or bytes).
            pad_to: int or `None`, defaults to `None` (the longest of these captions).
                Pads with zeros or truncates to this many tokens.

        Returns:
            tuple `(embeds, masks)` of numpy arrays: float32 `(B, L, embed_dim)`, padded
            positions zero, and bool `(B, L)`.

        Raises:
            CaptionNotCachedError (a `KeyError`): for a caption the cache lacks.
        """
        if isinstance(captions, (str, bytes)):
            raise ValueError(
                f"`captions` must be a list of strings, not one string. Received: {captions!r}"
            )
        rows = [self._row(c) for c in np.asarray(captions, dtype=object).reshape(-1)]
        _check_pad_to(pad_to)
        length = int(pad_to) if pad_to is not None else int(max(self.lengths[rows], default=1))
        embeds = np.zeros((len(rows), length, self.embed_dim), dtype="float32")
        masks = np.zeros((len(rows), length), dtype=bool)
        for b, row in enumerate(rows):
            n = min(int(self.lengths[row]), length)
            start = self.offsets[row]
            embeds[b, :n] = self.embeds[start : start + n]
            masks[b, :n] = True
        return embeds, masks

    def map_fn(
        self,
        caption_key="texts",
        pad_to=None,
        embeds_key="text_embeds",
        masks_key="text_masks",
        keep_captions=False,
    ):
        """A `tf.data` map function: caption strings -> cached embeddings and masks.

        The function takes a dict element (batched or not), looks up
        `element[caption_key]` through `tf.numpy_function` (a dict lookup and a slice
        of the memory map; no T5 runs) and returns the dict with `embeds_key`
        (float32 `(..., pad_to, D)`) and `masks_key` (bool `(..., pad_to)`) added and,
        unless `keep_captions`, the captions removed.

        Args:
            caption_key: str, defaults to `"texts"`.
            pad_to: int or `None`, defaults to `None` (`max_tokens`). A fixed length,
                e.g. the unets' `max_text_len`, so elements batch.
            embeds_key: str, defaults to `"text_embeds"`.
            masks_key: str, defaults to `"text_masks"`.
            keep_captions: bool, defaults to `False`.
        """
        import tensorflow as tf

        _check_pad_to(pad_to)
        length = int(pad_to) if pad_to is not None else self.max_tokens
        dim = self.embed_dim

        def lookup_numpy(captions):
            captions = np.asarray(captions, dtype=object)  # a scalar arrives as bytes
            embeds, masks = self.lookup(list(captions.reshape(-1)), pad_to=length)
            shape = captions.shape
            return embeds.reshape(shape + (length, dim)), masks.reshape(shape + (length,))

        def fn(element):
            if not isinstance(element, dict) or caption_key not in element:
                raise ValueError(
                    f"The dataset's elements must be dicts with a {caption_key!r} key "
                    f"(`caption_key`). Received: {element!r}"
                )
            element = dict(element)
            captions = element[caption_key] if keep_captions else element.pop(caption_key)
            embeds, masks = tf.numpy_function(
                lookup_numpy, [captions], [tf.float32, tf.bool], stateful=False
            )
            embeds.set_shape(captions.shape.concatenate([length, dim]))
            masks.set_shape(captions.shape.concatenate([length]))
            element[embeds_key] = embeds
            element[masks_key] = masks
            return element

        return fn

    def attach(self, dataset, caption_key="texts", pad_to=None, **kwargs):
        """`dataset.map(self.map_fn(caption_key, pad_to, ...))`; see `map_fn`."""
        import tensorflow as tf

        return dataset.map(
            self.map_fn(caption_key=caption_key, pad_to=pad_to, **kwargs),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    # --- Building -------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        encoder,
        captions,
        directory,
        *,
        batch_size=None,
        dtype="float32",
        progress=True,
    ):
        """Encode the distinct `captions` into a cache folder, or resume an unfinished one.

        Args:
            encoder: `T5Encoder`, or a name or folder for `load_text_encoder`.
            captions: iterable of str. Duplicates are stored once.
            directory: str or path-like. Created if needed.
            batch_size: int or `None`, defaults to `None` (32, or the batch size of
                the build being resumed; resuming with another one is refused, since
                batches of other lengths can change the last bits of the results).
            dtype: `"float32"` (exact) or `"float16"`, defaults to `"float32"`.
            progress: bool, defaults to `True`. Show a `keras.utils.Progbar`.

        Returns:
            `EmbeddingCache`. The finished cache.

        Raises:
            ValueError: on bad arguments, or if `directory` holds a cache built with
                another encoder (the message shows both fingerprints), dtype, batch
                size or caption set.
        """
        from imagen_keras.text.embedding_cache_build import build_cache

        build_cache(
            encoder,
            captions,
            directory,
            batch_size=batch_size,
            dtype=dtype,
            progress=progress,
        )
        return cls(directory)


def _check_pad_to(pad_to):
    if pad_to is not None and (
        isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < 1
    ):
        raise ValueError(f"`pad_to` must be a positive int or None. Received: pad_to={pad_to!r}")


def _mismatch_message(directory, manifest, encoder):
    return (
        f"The embedding cache in {directory!r} was built with another encoder or "
        f"max_length: cache fingerprint {manifest['encoder_fingerprint']!r} "
        f"(preset {manifest.get('encoder_preset')!r}, max_length "
        f"{manifest['max_length']}), this encoder {encoder.fingerprint()!r} (preset "
        f"{getattr(encoder, 'preset', None)!r}, max_length {encoder.max_length}). Use a "
        "new folder for this encoder, or the encoder the cache was built with."
    )
