"""Hugging Face T5 folder -> keras-hub preset, checked against a numpy T5 encoder written
from the Hugging Face `modeling_t5.py` equations (random tiny checkpoint, no download)."""

import io
import json
import math

import keras
import numpy as np
import pytest

from imagen_keras.text import T5Encoder
from imagen_keras.text.hf_t5 import _Porter, backbone_kwargs, convert_hf_t5, main
from tests.text.conftest import CAPTIONS

safetensors_numpy = pytest.importorskip("safetensors.numpy")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
D, FF, KV, HEADS, LAYERS = 16, 24, 8, 2, 2


def _spiece():
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS),
        model_writer=proto,
        vocab_size=64,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return proto.getvalue()


def _state_dict(vocab, decoder, rng):
    def w(*shape):
        return rng.standard_normal(shape).astype("float32") / np.sqrt(shape[-1])

    state = {"shared.weight": rng.standard_normal((vocab, D)).astype("float32")}
    stacks = [("encoder", False)] + ([("decoder", True)] if decoder else [])
    for stack, is_decoder in stacks:
        for i in range(LAYERS):
            p = f"{stack}.block.{i}.layer"
            blocks = [("0.SelfAttention", True)] + (
                [("1.EncDecAttention", False)] if is_decoder else []
            )
            for name, self_attention in blocks:
                for proj in "qkv":
                    state[f"{p}.{name}.{proj}.weight"] = w(HEADS * KV, D)
                state[f"{p}.{name}.o.weight"] = w(D, HEADS * KV)
                if i == 0 and self_attention:
                    state[f"{p}.{name}.relative_attention_bias.weight"] = w(32, HEADS)
                state[f"{p}.{name[0]}.layer_norm.weight"] = 1 + 0.1 * w(D)
            ffn = f"{p}.{2 if is_decoder else 1}"
            state[f"{ffn}.DenseReluDense.wi_0.weight"] = w(FF, D)
            state[f"{ffn}.DenseReluDense.wi_1.weight"] = w(FF, D)
            state[f"{ffn}.DenseReluDense.wo.weight"] = w(D, FF)
            state[f"{ffn}.layer_norm.weight"] = 1 + 0.1 * w(D)
        state[f"{stack}.final_layer_norm.weight"] = 1 + 0.1 * w(D)
    if decoder:
        state["lm_head.weight"] = w(vocab, D)
    return state


def _write_hf_folder(folder, decoder=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    spiece = _spiece()
    (folder / "spiece.model").write_bytes(spiece)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_proto=spiece).vocab_size() + 4  # extra ids
    config = {
        "model_type": "t5",
        "d_model": D,
        "d_ff": FF,
        "d_kv": KV,
        "num_heads": HEADS,
        "num_layers": LAYERS,
        "num_decoder_layers": LAYERS,
        "vocab_size": vocab,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": False,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
    }
    (folder / "config.json").write_text(json.dumps(config))
    state = _state_dict(vocab, decoder, np.random.default_rng(seed))
    safetensors_numpy.save_file(state, str(folder / "model.safetensors"))
    return state


def _bucket(relative, num_buckets=32, max_distance=128):
    # modeling_t5.T5Attention._relative_position_bucket, bidirectional.
    num_buckets //= 2
    buckets = (relative > 0).astype(int) * num_buckets
    relative = np.abs(relative)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        large = max_exact + (
            np.log(relative / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).astype(int)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(relative < max_exact, relative, large)


def _reference_encoder(state, ids):
    """T5 encoder of one unpadded sequence, as modeling_t5.T5Stack computes it (with
    exact GELU, which keras-hub uses)."""
    gelu = np.vectorize(lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))))

    def norm(x, key):
        return state[key] * x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6)

    h = state["shared.weight"][ids]
    n = len(ids)
    positions = np.arange(n)
    table = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    bias = table[_bucket(positions[None, :] - positions[:, None])].transpose(2, 0, 1)
    for i in range(LAYERS):
        p = f"encoder.block.{i}.layer"
        x = norm(h, f"{p}.0.layer_norm.weight")
        q, k, v = (
            (x @ state[f"{p}.0.SelfAttention.{m}.weight"].T).reshape(n, HEADS, KV) for m in "qkv"
        )
        scores = np.einsum("qhd,khd->hqk", q, k) + bias  # T5 does not scale by sqrt(d)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(n, HEADS * KV)
        h = h + out @ state[f"{p}.0.SelfAttention.o.weight"].T
        x = norm(h, f"{p}.1.layer_norm.weight")
        gated = gelu(x @ state[f"{p}.1.DenseReluDense.wi_0.weight"].T) * (
            x @ state[f"{p}.1.DenseReluDense.wi_1.weight"].T
        )
        h = h + gated @ state[f"{p}.1.DenseReluDense.wo.weight"].T
    return norm(h, "encoder.final_layer_norm.weight")


def test_converted_encoder_matches_reference(tmp_path):
    state = _write_hf_folder(tmp_path / "hf")
    report = convert_hf_t5(tmp_path / "hf", tmp_path / "preset")
    assert report["decoder_converted"] and report["unused_keys"] == []
    encoder = T5Encoder.from_preset(tmp_path / "preset")
    texts = [CAPTIONS[0], "a cat"]
    embeds, mask = encoder.encode(texts)
    for row, ids in enumerate(encoder.tokenize(texts)):
        expected = _reference_encoder(state, np.array(ids))
        np.testing.assert_allclose(embeds[row, : len(ids)], expected, atol=1e-4, rtol=1e-4)


def test_encoder_only_checkpoint_and_cli(tmp_path, capsys):
    _write_hf_folder(tmp_path / "hf", decoder=False)
    assert main([str(tmp_path / "hf"), str(tmp_path / "preset")]) == 0
    assert '"decoder_converted": false' in capsys.readouterr().out
    assert (tmp_path / "preset" / "DECODER_NOT_CONVERTED.txt").is_file()
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_missing_or_misshapen_weights():
    variable = keras.Variable(np.zeros((3, 2), "float32"))
    with pytest.raises(ValueError, match="lacks 'encoder.final_layer_norm.weight'"):
        _Porter({})(variable, "encoder.final_layer_norm.weight")
    with pytest.raises(ValueError, match="shape"):
        _Porter({"w": np.zeros((3, 2), "float32")})(variable, "w", transpose=True)
    port = _Porter({"w": np.ones((2, 3), "float32")})
    port(variable, "w", transpose=True)
    assert port.used == {"w"} and np.all(keras.ops.convert_to_numpy(variable) == 1)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj"),
        ({"num_decoder_layers": 3}, "num_decoder_layers"),
        ({"relative_attention_num_buckets": 64}, "relative_attention_num_buckets"),
        ({"model_type": "bart"}, "Not a T5 config"),
    ],
)
def test_unsupported_configs(change, match):
    config = {"model_type": "t5", "num_layers": 2, "feed_forward_proj": "gated-gelu"}
    with pytest.raises(ValueError, match=match):
        backbone_kwargs({**config, **change})
