"""Widths of the T5 encoders, known without any download.

imagen-pytorch fetches the T5 config from the Hugging Face hub at import time to learn
`text_embed_dim`; we keep a constant table instead, and read a local preset folder's
`config.json` (no keras-hub import).
"""

import json
import os

T5_WIDTHS = {
    "small": 512,
    "base": 768,
    "large": 1024,
    "xl": 2048,
    "xxl": 4096,
}

DEFAULT_T5_NAME = "t5-v1_1-base"


def _preset_folder_width(path):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    return int(config.get("config", config)["hidden_dim"])


def get_encoded_dim(name):
    """Width of the encoder output for a T5 name such as `google/t5-v1_1-base`, `t5_base_multi`
    or `t5_1.1_xxl`, a local preset folder, or a `T5Encoder`.

    Raises:
        ValueError: if the size cannot be read from the name.
    """
    if hasattr(name, "embed_dim"):
        return name.embed_dim
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if os.path.isfile(os.path.join(name, "config.json")):
        return _preset_folder_width(name)
    lowered = name.lower().replace("-", "_").rsplit("/", 1)[-1]
    parts = [p for p in lowered.replace(".", "_").split("_") if p]
    for size in ("xxl", "xl", "large", "base", "small"):
        if size in parts:
            return T5_WIDTHS[size]
    raise ValueError(
        f"Cannot tell the width of T5 encoder {name!r}; pass `text_embed_dim` explicitly. "
        f"Known sizes: {sorted(T5_WIDTHS)}."
    )
