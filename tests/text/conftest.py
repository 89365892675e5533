"""A tiny T5 preset, built once per session, shared by the text tests."""

import pytest

CAPTIONS = [
    "a red cube on a wooden table",
    "a blue sphere floating in the sky",
    "two green dogs running on the beach",
    "a photo of a sleeping cat",
    "an oil painting of a lighthouse at night",
    "a small yellow bird on a branch",
    "a bowl of fruit",
]
MAX_LENGTH = 12
TINY = dict(hidden_dim=16, intermediate_dim=32, num_layers=2, num_heads=2, vocabulary_size=64)


def clone_encoder(encoder, **overrides):
    """A copy of `encoder` (same weights and tokenizer) with some config values changed,
    without the cost of loading a preset again."""
    from imagen_keras.text import T5Encoder

    config = {**encoder.get_config(), **overrides, "tokenizer": None}
    clone = T5Encoder.from_config(config)
    clone.tokenizer = encoder.tokenizer
    clone.set_weights(encoder.get_weights())
    return clone


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    from imagen_keras.text import build_tiny_t5_preset

    return build_tiny_t5_preset(CAPTIONS, tmp_path_factory.mktemp("tiny_t5"), **TINY)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_preset):
    from imagen_keras.text import load_text_encoder

    # Through the process-wide loader, so the command-line tests reuse it.
    return load_text_encoder(tiny_preset, max_length=MAX_LENGTH)
