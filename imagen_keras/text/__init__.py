"""Text conditioning: the frozen keras-hub T5 encoder, its presets and an embedding cache.

`T5Encoder.from_preset(name_or_folder)` loads a T5 by imagen-pytorch name
("t5-v1_1-base", "google/t5-v1_1-xxl"), keras-hub preset ("t5_1.1_base") or local preset
folder; `load_text_encoder` does the same once per process. `build_tiny_t5_preset`
writes a small untrained encoder for tests and offline demos. `EmbeddingCache` encodes
a caption set once into memory-mapped files and serves the embeddings during training
(command: `python -m imagen_keras.text.cache`). `python -m imagen_keras.text.hf_t5`
converts a Hugging Face T5 checkpoint folder into a keras-hub preset folder.
keras-hub is imported only when one of these is first used.
"""

from imagen_keras.text.t5_widths import DEFAULT_T5_NAME, T5_WIDTHS, get_encoded_dim

__all__ = [
    "DEFAULT_T5_NAME",
    "T5_WIDTHS",
    "EmbeddingCache",
    "T5Encoder",
    "build_tiny_t5_preset",
    "get_encoded_dim",
    "load_text_encoder",
    "resolve_t5_preset",
]


def __getattr__(name):
    # keras-hub takes seconds to import: load it only when the encoder is asked for.
    if name == "T5Encoder":
        from imagen_keras.text.t5_encoder import T5Encoder

        return T5Encoder
    if name == "load_text_encoder":
        from imagen_keras.text.loader import load_text_encoder

        return load_text_encoder
    if name == "build_tiny_t5_preset":
        from imagen_keras.text.tiny_t5 import build_tiny_t5_preset

        return build_tiny_t5_preset
    if name == "resolve_t5_preset":
        from imagen_keras.text.t5_presets import resolve_t5_preset

        return resolve_t5_preset
    if name == "EmbeddingCache":
        from imagen_keras.text.embedding_cache import EmbeddingCache

        return EmbeddingCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
