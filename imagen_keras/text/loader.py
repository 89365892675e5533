"""`load_text_encoder`: one `T5Encoder` per name in a process, as imagen-pytorch's
`get_model_and_tokenizer` keeps its `T5_CONFIGS` cache."""

import os
import threading

from imagen_keras.text.t5_encoder import MAX_LENGTH, T5Encoder

_ENCODERS = {}
_LOCK = threading.Lock()


def _key(name, max_length, dtype):
    name = os.fspath(name)
    if os.path.isdir(name):
        name = os.path.realpath(name)
    return name, max_length, None if dtype is None else str(dtype)


def load_text_encoder(encoder, max_length=MAX_LENGTH, dtype=None):
    """The `T5Encoder` for a name or folder, loaded once per process.

    Args:
        encoder: a `T5Encoder` (returned as is), or anything `T5Encoder.from_preset`
            takes: a local preset folder, `"t5-v1_1-base"`, `"google/t5-v1_1-xxl"`,
            `"t5_1.1_base"`, a `kaggle://` or `hf://` handle.
        max_length: int, defaults to `256`. Ignored when `encoder` is a `T5Encoder`.
        dtype: str or `None`, defaults to `None`. Ignored when `encoder` is a
            `T5Encoder`.

    Returns:
        `T5Encoder`. The same object for the same name, `max_length` and `dtype`.

    Raises:
        ValueError, OSError: as `T5Encoder.from_preset`.
    """
    if isinstance(encoder, T5Encoder):
        return encoder
    if not isinstance(encoder, (str, os.PathLike)):
        raise ValueError(
            "`encoder` must be a T5Encoder, a preset name or a preset folder. "
            f"Received: encoder={encoder!r}"
        )
    key = _key(encoder, max_length, dtype)
    with _LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = T5Encoder.from_preset(encoder, max_length=max_length, dtype=dtype)
        return _ENCODERS[key]


def clear_text_encoders():
    """Forget the encoders `load_text_encoder` has loaded (frees their memory)."""
    with _LOCK:
        _ENCODERS.clear()
