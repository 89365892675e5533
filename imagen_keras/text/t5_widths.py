"""Widths of the T5 encoders, known without any download.

imagen-pytorch fetches the T5 config from the Hugging Face hub at import time to learn
`text_embed_dim`; we keep a constant table instead.
"""

T5_WIDTHS = {
    "small": 512,
    "base": 768,
    "large": 1024,
    "xl": 2048,
    "xxl": 4096,
}

DEFAULT_T5_NAME = "t5-v1_1-base"


def get_encoded_dim(name):
    """Width of the encoder output for a T5 name such as `google/t5-v1_1-base`, `t5_base_multi`
    or `t5_1.1_xxl`.

    Raises:
        ValueError: if the size cannot be read from the name.
    """
    lowered = name.lower().replace("-", "_").rsplit("/", 1)[-1]
    parts = [p for p in lowered.replace(".", "_").split("_") if p]
    for size in ("xxl", "xl", "large", "base", "small"):
        if size in parts:
            return T5_WIDTHS[size]
    raise ValueError(
        f"Cannot tell the width of T5 encoder {name!r}; pass `text_embed_dim` explicitly. "
        f"Known sizes: {sorted(T5_WIDTHS)}."
    )
