"""`T5Encoder`: the encoder half of a keras-hub T5, frozen, with its tokenizer."""

import hashlib
import json
import warnings

import keras
import numpy as np
from keras import ops
from keras_hub.models import T5Backbone, T5Tokenizer

# Private keras-hub modules: T5Backbone builds its encoder from these, and only the encoder
# is rebuilt here.
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm
from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer

from imagen_keras.text.t5_presets import resolve_t5_preset

MAX_LENGTH = 256  # imagen-pytorch's t5.MAX_LENGTH


@keras.saving.register_keras_serializable(package="imagen_keras")
class T5Encoder(keras.Model):
    """The encoder of a T5 (token ids -> last hidden states), frozen, with its tokenizer.

    This is the text encoder of Imagen: the encoder stack of a keras-hub `T5Backbone`
    (embedding, transformer layers, final norm) without the decoder, so a T5 v1.1 XXL
    takes 4.7 B parameters instead of 11 B. The model maps
    `{"token_ids": int (B, L), "padding_mask": int (B, L)}` to hidden states
    `(B, L, hidden_dim)` with padded positions zeroed, as imagen-pytorch's
    `t5_encode_tokenized_text` does. `encode(texts)` tokenizes python strings, appends
    the end token `</s>` (as the Hugging Face T5 tokenizer does), truncates at
    `max_length`, pads to the longest text of the batch and returns numpy arrays.

    The weights are frozen (`trainable=False`): Imagen never trains its text encoder.
    Use `T5Encoder.from_preset` to load pretrained weights; the constructor gives a
    randomly initialised encoder.

    Args:
        vocabulary_size: int. Size of the token vocabulary.
        num_layers: int. Number of encoder transformer layers.
        num_heads: int. Number of attention heads.
        hidden_dim: int. Width of the hidden states, the text embedding width.
        intermediate_dim: int. Width of the feedforward blocks.
        key_value_dim: int or `None`, defaults to `None` (`hidden_dim // num_heads`).
            Width of each attention head.
        activation: str, defaults to `"relu"`. Feedforward activation (`"gelu"` for
            T5 v1.1).
        use_gated_activation: bool, defaults to `True`. Gated feedforward (GEGLU).
        layer_norm_epsilon: float, defaults to `1e-6`.
        tokenizer: `keras_hub.models.T5Tokenizer` or `None`, defaults to `None`.
            Needed by `encode` and `tokenize`.
        max_length: int, defaults to `256`. Texts are truncated to this many tokens
            (end token included).
        preset: str or `None`, defaults to `None`. Name or folder the weights came from
            (information only).
        dtype: str or `keras.DTypePolicy`, defaults to `None`. Weight and compute
            dtype; `encode` always returns float32.

    Example:
    ```python
    directory = build_tiny_t5_preset(["a red cube", "a blue ball"], "/tmp/tiny_t5")
    encoder = T5Encoder.from_preset(directory, max_length=16)
    embeds, mask = encoder.encode(["a red ball", "a cube"])
    embeds.shape, mask.shape  # (2, L, 32), (2, L)
    ```

    Reference:
    - [Raffel et al., 2020](https://arxiv.org/abs/1910.10683) (T5)
    - [Saharia et al., 2022](https://arxiv.org/abs/2205.11487) (Imagen, frozen T5-XXL)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        key_value_dim=None,
        activation="relu",
        use_gated_activation=True,
        layer_norm_epsilon=1e-6,
        tokenizer=None,
        max_length=MAX_LENGTH,
        preset=None,
        dtype=None,
        **kwargs,
    ):
        for arg, value in (
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("intermediate_dim", intermediate_dim),
            ("max_length", max_length),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value!r}")
        if tokenizer is not None and not isinstance(tokenizer, T5Tokenizer):
            raise ValueError(
                "`tokenizer` must be a `keras_hub.models.T5Tokenizer` or `None`. "
                f"Received: tokenizer={tokenizer!r}"
            )
        trainable = kwargs.pop("trainable", False)

        # === Layers (names as in T5Backbone, so its weights map one to one) ===
        token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(1.0),
            dtype=dtype,
            name="token_embedding",
        )
        transformer_layers = [
            T5TransformerLayer(
                is_decoder=False,
                hidden_dim=hidden_dim,
                intermediate_dim=intermediate_dim,
                key_value_dim=key_value_dim or hidden_dim // num_heads,
                dropout=0.0,
                activation=activation,
                layer_norm_epsilon=layer_norm_epsilon,
                num_heads=num_heads,
                use_gated_activation=use_gated_activation,
                use_relative_attention_bias=i == 0,
                dtype=dtype,
                name=f"transformer_encoder_layer_{i}",
            )
            for i in range(num_layers)
        ]
        layer_norm = T5LayerNorm(
            epsilon=layer_norm_epsilon, dtype=dtype, name="encoder_output_layer_norm"
        )

        # === Functional model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        x = token_embedding(token_ids)
        attention_mask = padding_mask[:, None, :]
        position_bias = None
        for layer in transformer_layers:
            x, position_bias = layer(
                x,
                attention_mask=attention_mask,
                position_bias=position_bias,
                use_causal_mask=False,
            )
        x = layer_norm(x)
        # imagen-pytorch zeroes the padded positions (t5.py, masked_fill).
        x = x * ops.cast(padding_mask, x.dtype)[:, :, None]
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=x,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.key_value_dim = key_value_dim
        self.activation = activation
        self.use_gated_activation = use_gated_activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.preset = preset
        self.token_embedding = token_embedding
        self.transformer_layers = transformer_layers
        self.encoder_layer_norm = layer_norm
        self.trainable = trainable
        self._fingerprint = None

    @property
    def embed_dim(self):
        """Width of the text embeddings (`hidden_dim`)."""
        return self.hidden_dim

    # --- Loading --------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, max_length=MAX_LENGTH, dtype=None):
        """Load a pretrained encoder from a keras-hub T5 preset.

        Args:
            preset: str or path-like. A local preset folder (made with
                `T5Backbone.save_to_preset` and `T5Tokenizer.save_to_preset`, or by
                `build_tiny_t5_preset`), an imagen-pytorch / Hugging Face name such as
                `"google/t5-v1_1-base"` or `"t5-v1_1-xxl"`, a keras-hub preset such as
                `"t5_1.1_base"`, or a `kaggle://` / `hf://` handle.
            max_length: int, defaults to `256`.
            dtype: str or `None`, defaults to `None` (the preset's dtype). E.g.
                `"bfloat16"` halves the memory of large encoders.

        Raises:
            ValueError: if `preset` is not a known name or a preset folder.
            OSError: if the preset is neither cached nor downloadable; the message says
                how to provide the weights. Offline this fails at once.
        """
        resolved = resolve_t5_preset(preset)
        backbone = T5Backbone.from_preset(resolved, dtype=dtype)
        tokenizer = T5Tokenizer.from_preset(resolved)
        encoder = cls.from_backbone(backbone, tokenizer, max_length=max_length, preset=str(preset))
        del backbone  # the decoder half is dropped here
        return encoder

    @classmethod
    def from_backbone(cls, backbone, tokenizer, max_length=MAX_LENGTH, preset=None):
        """The encoder half of a `keras_hub.models.T5Backbone`, weights copied."""
        if not isinstance(backbone, T5Backbone):
            raise ValueError(
                f"`backbone` must be a `keras_hub.models.T5Backbone`. Received: "
                f"backbone={backbone!r}"
            )
        config = backbone.get_config()
        encoder = cls(
            vocabulary_size=config["vocabulary_size"],
            num_layers=config["num_layers"],
            num_heads=config["num_heads"],
            hidden_dim=config["hidden_dim"],
            intermediate_dim=config["intermediate_dim"],
            key_value_dim=config["key_value_dim"],
            activation=config["activation"],
            use_gated_activation=config["use_gated_activation"],
            layer_norm_epsilon=config["layer_norm_epsilon"],
            tokenizer=tokenizer,
            max_length=max_length,
            preset=preset,
            dtype=backbone.dtype_policy,
        )
        pairs = [(encoder.token_embedding.embeddings, backbone.token_embedding.embeddings)]
        sources = backbone.encoder_transformer_layers + [backbone.encoder_layer_norm]
        targets = encoder.transformer_layers + [encoder.encoder_layer_norm]
        for target, source in zip(targets, sources):
            pairs.extend(zip(target.weights, source.weights, strict=True))
        for target, source in pairs:
            target.assign(source.value)
        return encoder

    # --- Encoding -------------------------------------------------------------------

    def tokenize(self, texts):
        """Token ids of each text: truncated to `max_length`, ending with `</s>`.

        Args:
            texts: list, tuple or 1-D array of str.

        Returns:
            list of lists of int.
        """
        texts = _as_text_list(texts)
        if self.tokenizer is None:
            raise ValueError("This T5Encoder has no tokenizer; pass `tokenizer=` to encode text.")
        if not texts:
            return []
        tokens = self.tokenizer.tokenize(texts)
        tokens = tokens.to_list() if hasattr(tokens, "to_list") else tokens
        end = self.tokenizer.end_token_id
        return [[int(t) for t in ids[: self.max_length - 1]] + [end] for ids in tokens]

    def encode(self, texts, pad_to=None):
        """Embed texts with the frozen encoder.

        The batch is encoded at the length of its longest text (at most `max_length`
        tokens), as imagen-pytorch does; `pad_to` then pads (zeros, mask `False`) or
        truncates the result to a fixed length, e.g. a unet's `max_text_len`.

        Args:
            texts: list, tuple or 1-D array of str.
            pad_to: int or `None`, defaults to `None` (the longest text of the batch).

        Returns:
            tuple `(embeds, mask)` of numpy arrays: float32 `(B, L, embed_dim)` with
            padded positions exactly zero, and bool `(B, L)`, `True` on tokens.
        """
        if pad_to is not None and (
            isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < 1
        ):
            raise ValueError(
                f"`pad_to` must be a positive int or None. Received: pad_to={pad_to!r}"
            )
        ids = self.tokenize(texts)
        length = max((len(t) for t in ids), default=1)
        token_ids = np.full((len(ids), length), self.tokenizer.pad_token_id, dtype="int32")
        mask = np.zeros((len(ids), length), dtype=bool)
        for row, t in enumerate(ids):
            token_ids[row, : len(t)] = t
            mask[row, : len(t)] = True
        if ids:
            with warnings.catch_warnings():
                # keras-hub's T5 attention ignores Keras masks (it reads padding_mask):
                # Keras' "does not support masking" warning says nothing wrong here.
                warnings.filterwarnings("ignore", message=".*does not support masking")
                outputs = self({"token_ids": token_ids, "padding_mask": mask.astype("int32")})
            embeds = ops.convert_to_numpy(ops.cast(outputs, "float32"))
        else:
            embeds = np.zeros((0, length, self.hidden_dim), dtype="float32")
        embeds = np.where(mask[:, :, None], embeds, np.float32(0))
        if pad_to is not None:
            embeds, mask = pad_or_truncate(embeds, mask, int(pad_to))
        return embeds, mask

    def fingerprint(self, refresh=False):
        """A string that identifies what `encode` computes, to key embedding caches.

        It hashes the architecture, `max_length`, the tokenizer vocabulary and every
        weight (SHA-256), so two encoders with the same fingerprint give the same
        embeddings whatever folder or name they were loaded from. It is computed once
        per instance (the weights are frozen); pass `refresh=True` after changing them.
        """
        if self._fingerprint is None or refresh:
            digest = hashlib.sha256()
            config = {k: v for k, v in self.get_config().items() if k not in ("name", "preset")}
            config.pop("tokenizer", None)
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            if self.tokenizer is not None and self.tokenizer.proto is not None:
                digest.update(self.tokenizer.proto)
            # Weights in their (fixed) order; not by path, which holds auto-numbered
            # layer names that change from one instance to the next.
            for index, weight in enumerate(self.weights):
                value = np.ascontiguousarray(ops.convert_to_numpy(weight.value))
                digest.update(f"{index}:{value.shape}:{value.dtype}".encode())
                digest.update(value.tobytes())
            self._fingerprint = (
                f"t5-d{self.hidden_dim}-len{self.max_length}-{digest.hexdigest()[:24]}"
            )
        return self._fingerprint

    # --- Serialization --------------------------------------------------------------

    def get_config(self):
        # Not the functional graph: the constructor's arguments, as keras-hub backbones.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "key_value_dim": self.key_value_dim,
            "activation": self.activation,
            "use_gated_activation": self.use_gated_activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "tokenizer": (
                None if self.tokenizer is None else keras.layers.serialize(self.tokenizer)
            ),
            "max_length": self.max_length,
            "preset": self.preset,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        if isinstance(config.get("tokenizer"), dict):
            # The vocabulary is an asset: `.keras` loading restores it (load_assets).
            config["tokenizer"] = keras.layers.deserialize(config["tokenizer"])
        return cls(**config)


def _as_text_list(texts):
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            "`texts` must be a list of strings, not a single string; wrap it in a list. "
            f"Received: texts={texts!r}"
        )
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise ValueError(f"`texts` must be 1-D. Received: texts.shape={texts.shape}")
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"`texts` must be a list of strings. Received: texts={texts!r}")
    out = []
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise ValueError(
                f"`texts` must hold only strings. Received an element {text!r} of type "
                f"{type(text).__name__}"
            )
        out.append(text)
    return out


def pad_or_truncate(embeds, mask, length):
    """Pad (zeros, mask `False`) or truncate `(B, L, D)` embeds and `(B, L)` masks to
    `length`."""
    current = embeds.shape[1]
    if current >= length:
        return embeds[:, :length], mask[:, :length]
    pad = length - current
    embeds = np.pad(embeds, ((0, 0), (0, pad), (0, 0)))
    mask = np.pad(mask, ((0, 0), (0, pad)))
    return embeds, mask
