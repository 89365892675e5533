"""Convert a Hugging Face T5 checkpoint folder into a local keras-hub T5 preset.

keras-hub 0.32 has no Hugging Face converter for `model_type: t5` (only BLIP-2's
Flan-T5 inside `convert_blip2.py`, whose key names this follows), so a downloaded
`google/t5-v1_1-*` folder cannot be loaded directly. This writes the same folder as
`T5Backbone.save_to_preset` + `T5Tokenizer.save_to_preset`, which
`T5Encoder.from_preset(folder)` loads.

Usage:
```
python -m imagen_keras.text.hf_t5 HF_DIR OUT_DIR
```

HF_DIR holds `config.json`, `spiece.model` and the weights (`model.safetensors`,
`pytorch_model.bin`, or either sharded with an `.index.json`; `.bin` needs torch). The
encoder is required; a checkpoint without decoder (`T5EncoderModel`) keeps a random
decoder, and `DECODER_NOT_CONVERTED.txt` says so. T5 v1.1's `gated-gelu` becomes
keras-hub's `"gelu"` (exact GELU, as keras-hub's own T5 1.1 presets), where
transformers uses the tanh approximation: embeddings differ by about 1e-3.
"""

import argparse
import json
import os
import sys

from imagen_keras.saving import atomic_directory

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_ACTIVATIONS = {"relu": ("relu", False), "gated-gelu": ("gelu", True), "gated-relu": ("relu", True)}


def _read_state_dict(source):
    from imagen_keras.convert.checkpoint_io import read_checkpoint, to_numpy

    for name in WEIGHT_FILES:
        path = os.path.join(source, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        else:
            shards = [name]
        state = {}
        for shard in shards:
            state.update(read_checkpoint(os.path.join(source, shard)))
        return {k: to_numpy(v) for k, v in state.items()}
    raise ValueError(
        f"No T5 weights in {source!r}: expected one of {WEIGHT_FILES}. Received: source={source!r}"
    )


def backbone_kwargs(config):
    """`T5Backbone` arguments from a Hugging Face `T5Config` dict."""
    if config.get("model_type") not in ("t5", None):
        raise ValueError(
            f"Not a T5 config: model_type={config.get('model_type')!r}. Received a config "
            "with keys " + str(sorted(config))
        )
    proj = config.get("feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise ValueError(
            f"`feed_forward_proj` must be one of {sorted(_ACTIVATIONS)}. Received: "
            f"feed_forward_proj={proj!r}"
        )
    num_layers = config["num_layers"]
    if config.get("num_decoder_layers", num_layers) != num_layers:
        raise ValueError(
            "keras-hub's T5Backbone has as many decoder as encoder layers. Received: "
            f"num_layers={num_layers}, num_decoder_layers={config['num_decoder_layers']}"
        )
    for key, value in (
        ("relative_attention_num_buckets", 32),
        ("relative_attention_max_distance", 128),
    ):
        if config.get(key, value) != value:
            raise ValueError(f"keras-hub's T5 fixes {key}={value}. Received: {key}={config[key]}")
    activation, gated = _ACTIVATIONS[proj]
    return dict(
        vocabulary_size=config["vocab_size"],
        num_layers=num_layers,
        num_heads=config["num_heads"],
        hidden_dim=config["d_model"],
        intermediate_dim=config["d_ff"],
        key_value_dim=config["d_kv"],
        dropout=config.get("dropout_rate", 0.1),
        activation=activation,
        use_gated_activation=gated,
        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
        tie_embedding_weights=config.get("tie_word_embeddings", True),
    )


class _Porter:
    def __init__(self, state):
        self.state, self.used = state, set()

    def __call__(self, variable, key, transpose=False):
        if key not in self.state:
            raise ValueError(f"The checkpoint lacks {key!r}, which the T5 backbone needs.")
        value = self.state[key].T if transpose else self.state[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{key!r} has shape {value.shape}; the keras-hub variable {variable.path!r} "
                f"has {tuple(variable.shape)}."
            )
        variable.assign(value.astype(variable.dtype))
        self.used.add(key)


def _port_stack(port, layers, final_norm, prefix, decoder):
    for i, layer in enumerate(layers):
        p = f"{prefix}.block.{i}.layer"
        attentions = [(layer.self_attention, f"{p}.0.SelfAttention")]
        norms = [(layer.self_attention_layer_norm, f"{p}.0.layer_norm")]
        if decoder:
            attentions.append((layer.cross_attention, f"{p}.1.EncDecAttention"))
            norms.append((layer.cross_attention_layer_norm, f"{p}.1.layer_norm"))
        for attention, key in attentions:
            for projector, name in (
                ("query_projector", "q"),
                ("key_projector", "k"),
                ("value_projector", "v"),
                ("output_projector", "o"),
            ):
                port(getattr(attention, projector).kernel, f"{key}.{name}.weight", transpose=True)
            if attention.use_relative_attention_bias and attention is layer.self_attention:
                port(attention.relative_attention_bias, f"{key}.relative_attention_bias.weight")
        ffn = f"{p}.{2 if decoder else 1}"
        if layer.use_gated_activation:
            port(layer.input_projector.kernel, f"{ffn}.DenseReluDense.wi_0.weight", transpose=True)
            port(layer.gate_projector.kernel, f"{ffn}.DenseReluDense.wi_1.weight", transpose=True)
        else:
            port(layer.input_projector.kernel, f"{ffn}.DenseReluDense.wi.weight", transpose=True)
        port(layer.output_projector.kernel, f"{ffn}.DenseReluDense.wo.weight", transpose=True)
        norms.append((layer.layer_norm, f"{ffn}.layer_norm"))
        for norm, key in norms:
            port(norm.weight, f"{key}.weight")
    port(final_norm.weight, f"{prefix}.final_layer_norm.weight")


def convert_hf_t5(source, directory):
    """Write a keras-hub T5 preset from a Hugging Face T5 checkpoint folder.

    Args:
        source: str or path-like. Folder with `config.json`, `spiece.model` and weights.
        directory: str or path-like. The preset folder to write.

    Returns:
        dict. A report: `{"directory", "decoder_converted", "unused_keys"}`.

    Raises:
        ValueError: if a file is missing, the config is not a supported T5, or a weight
            the encoder needs is missing or has the wrong shape.
    """
    import keras_hub

    source, directory = os.fspath(source), os.fspath(directory)
    for name in ("config.json", "spiece.model"):
        if not os.path.isfile(os.path.join(source, name)):
            raise ValueError(
                f"{source!r} has no {name}; a Hugging Face T5 folder holds config.json, "
                f"spiece.model and the weights. Received: source={source!r}"
            )
    with open(os.path.join(source, "config.json")) as f:
        kwargs = backbone_kwargs(json.load(f))
    state = _read_state_dict(source)
    backbone = keras_hub.models.T5Backbone(**kwargs)
    port = _Porter(state)
    port(backbone.token_embedding.embeddings, "shared.weight")
    _port_stack(
        port, backbone.encoder_transformer_layers, backbone.encoder_layer_norm, "encoder", False
    )
    decoder = any(k.startswith("decoder.") for k in state)
    if decoder:
        _port_stack(
            port, backbone.decoder_transformer_layers, backbone.decoder_layer_norm, "decoder", True
        )
        if not kwargs["tie_embedding_weights"]:
            port(backbone.token_embedding.reverse_embeddings, "lm_head.weight", transpose=True)
    with open(os.path.join(source, "spiece.model"), "rb") as f:
        tokenizer = keras_hub.models.T5Tokenizer(proto=f.read(), name="t5_tokenizer")
    with atomic_directory(directory) as tmp:  # an interrupted write keeps the old preset
        backbone.save_to_preset(tmp)
        tokenizer.save_to_preset(tmp)
        if not decoder:
            with open(os.path.join(tmp, "DECODER_NOT_CONVERTED.txt"), "w") as f:
                f.write(f"{source} holds no decoder weights: its decoder is random.\n")
    # Tied copies of `shared.weight` are expected leftovers.
    ignored = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    unused = sorted(set(state) - port.used - ignored)
    return {"directory": directory, "decoder_converted": decoder, "unused_keys": unused}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m imagen_keras.text.hf_t5",
        description="Convert a Hugging Face T5 checkpoint folder to a keras-hub T5 preset.",
    )
    parser.add_argument("source", metavar="HF_DIR")
    parser.add_argument("output", metavar="OUT_DIR")
    args = parser.parse_args(argv)
    try:
        report = convert_hf_t5(args.source, args.output)
    except (ValueError, OSError, ImportError) as e:
        print(f"hf_t5: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
