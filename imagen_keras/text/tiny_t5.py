"""A tiny, untrained T5 preset built offline, for tests and demos.

Its vocabulary is trained (SentencePiece unigram) on the captions you give, its weights
are random. The embeddings it gives tell captions apart, which is all a test or an
offline demo of the pipeline needs; they carry no language understanding. Never use it
for a real model: use a pretrained T5 (`T5Encoder.from_preset("t5-v1_1-base")`).
"""

import io
import os

import numpy as np

from imagen_keras.saving import atomic_directory

UNTRAINED_NOTE = (
    "This keras-hub T5 preset was written by imagen_keras.text.build_tiny_t5_preset.\n"
    "Its vocabulary was trained on a handful of captions and its weights are RANDOM:\n"
    "it is for tests and offline demos only, not for training a real model.\n"
)


def _train_vocabulary(captions, vocabulary_size, seed):
    import sentencepiece as spm

    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_writer=proto,
        vocab_size=vocabulary_size,
        model_type="unigram",
        # The T5 special tokens, as keras-hub's T5Tokenizer expects them.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        # A few captions hold fewer pieces than `vocabulary_size`: allow a smaller one.
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return proto.getvalue()


def _randomize(backbone, seed):
    """Deterministic weights from numpy, identical on every backend."""
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        shape = tuple(weight.shape)
        if len(shape) == 1:  # layer norm scales
            value = np.ones(shape)
        elif weight.path == "token_embedding/embeddings":
            value = rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        weight.assign(value.astype(weight.dtype))


def build_tiny_t5_preset(
    captions,
    directory,
    *,
    vocabulary_size=256,
    hidden_dim=32,
    intermediate_dim=64,
    num_layers=2,
    num_heads=2,
    key_value_dim=None,
    seed=0,
):
    """Write a tiny, UNTRAINED T5 as a local keras-hub preset.

    Trains a SentencePiece unigram vocabulary on `captions` (T5's special tokens:
    `<pad>`=0, `</s>`=1, `<unk>`=2, no BOS), builds a T5 v1.1-style `T5Backbone`
    (gated GELU, untied embeddings) with random weights drawn from `seed`, and saves
    both with `save_to_preset`, so `T5Encoder.from_preset(directory)` takes the same
    path as a real preset. The same captions and seed give the same files and the same
    embeddings on every backend. The weights are random: use it for tests and offline
    demos only.

    Args:
        captions: list of str. Text the vocabulary is trained on (at least one
            non-empty string).
        directory: str or path-like. Folder to write (created if needed).
        vocabulary_size: int, defaults to `256`. Upper bound of the vocabulary size;
            a small corpus gives fewer pieces.
        hidden_dim: int, defaults to `32`. The text embedding width.
        intermediate_dim: int, defaults to `64`.
        num_layers: int, defaults to `2`.
        num_heads: int, defaults to `2`.
        key_value_dim: int or `None`, defaults to `None` (`hidden_dim // num_heads`).
        seed: int, defaults to `0`. Seed of the random weights.

    Returns:
        str. `directory`.

    Example:
    ```python
    directory = build_tiny_t5_preset(["a red cube", "a blue ball"], "/tmp/tiny_t5")
    encoder = T5Encoder.from_preset(directory)
    ```
    """
    import keras_hub

    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise ValueError(f"`captions` must be a list of strings. Received: captions={captions!r}")
    for caption in captions:
        if not isinstance(caption, str):
            raise ValueError(f"`captions` must hold only strings. Received: {caption!r}")
    texts = [c for c in captions if c.strip()]
    if not texts:
        raise ValueError(
            f"`captions` must hold at least one non-empty string. Received: captions={captions!r}"
        )
    if (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, int)
        or (vocabulary_size < 8)
    ):
        raise ValueError(
            f"`vocabulary_size` must be an int >= 8. Received: vocabulary_size={vocabulary_size!r}"
        )
    if hidden_dim % num_heads and key_value_dim is None:
        raise ValueError(
            f"`hidden_dim` must be divisible by `num_heads` when `key_value_dim` is None. "
            f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
        )

    tokenizer = keras_hub.models.T5Tokenizer(
        proto=_train_vocabulary(texts, vocabulary_size, seed), name="t5_tokenizer"
    )
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        key_value_dim=key_value_dim,
        dropout=0.0,
        activation="gelu",
        use_gated_activation=True,
        tie_embedding_weights=False,
        name="tiny_t5_backbone",
    )
    _randomize(backbone, seed)
    directory = os.fspath(directory)
    with atomic_directory(directory) as tmp:  # an interrupted write keeps the old preset
        backbone.save_to_preset(tmp)
        tokenizer.save_to_preset(tmp)
        with open(os.path.join(tmp, "UNTRAINED.txt"), "w") as f:
            f.write(UNTRAINED_NOTE)
    return directory
