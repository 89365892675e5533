import os

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras.text import T5Encoder
from tests.text.conftest import CAPTIONS, MAX_LENGTH, TINY, clone_encoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TEXTS = ["a red cat", "two blue dogs on a table at night", ""]


def test_encode_shapes_masks_and_zero_padding(tiny_encoder):
    embeds, mask = tiny_encoder.encode(TEXTS)
    lengths = [len(ids) for ids in tiny_encoder.tokenize(TEXTS)]
    assert embeds.dtype == np.float32 and mask.dtype == bool
    assert embeds.shape == (3, max(lengths), tiny_encoder.embed_dim)
    assert tiny_encoder.embed_dim == TINY["hidden_dim"]
    np.testing.assert_array_equal(mask.sum(axis=1), lengths)
    assert np.all(embeds[~mask] == 0.0)
    assert np.all(np.abs(embeds[mask]).sum(axis=-1) > 0)
    # The empty text is just the end token, as with the Hugging Face T5 tokenizer.
    assert tiny_encoder.tokenize([""]) == [[tiny_encoder.tokenizer.end_token_id]]


def test_encode_is_deterministic_and_batch_independent(tiny_encoder):
    embeds, mask = tiny_encoder.encode(TEXTS)
    again, _ = tiny_encoder.encode(TEXTS)
    np.testing.assert_array_equal(embeds, again)
    alone, alone_mask = tiny_encoder.encode(TEXTS[:1])
    n = alone.shape[1]
    np.testing.assert_allclose(alone, embeds[:1, :n], atol=1e-5)
    np.testing.assert_array_equal(alone_mask, mask[:1, :n])


def test_pad_to_pads_and_truncates(tiny_encoder):
    embeds, mask = tiny_encoder.encode(TEXTS)
    padded, padded_mask = tiny_encoder.encode(TEXTS, pad_to=embeds.shape[1] + 3)
    np.testing.assert_array_equal(padded[:, : embeds.shape[1]], embeds)
    assert np.all(padded[:, embeds.shape[1] :] == 0) and not padded_mask[:, embeds.shape[1] :].any()
    cut, cut_mask = tiny_encoder.encode(TEXTS, pad_to=2)
    np.testing.assert_array_equal(cut, embeds[:, :2])
    np.testing.assert_array_equal(cut_mask, mask[:, :2])


def test_truncates_at_max_length_keeping_the_end_token(tiny_encoder):
    long_text = " ".join(CAPTIONS)
    (ids,) = tiny_encoder.tokenize([long_text])
    assert len(ids) == MAX_LENGTH and ids[-1] == tiny_encoder.tokenizer.end_token_id
    embeds, mask = tiny_encoder.encode([long_text])
    assert embeds.shape[1] == MAX_LENGTH and mask.all()


def test_reloaded_preset_matches_keras_hub_backbone(tiny_preset, tiny_encoder):
    import keras_hub

    # The preset loaded again, through keras-hub: T5Encoder.from_preset is
    # resolve_t5_preset + these two loads + from_backbone.
    backbone = keras_hub.models.T5Backbone.from_preset(tiny_preset)
    tokenizer = keras_hub.models.T5Tokenizer.from_preset(tiny_preset)
    reloaded = T5Encoder.from_backbone(backbone, tokenizer, max_length=MAX_LENGTH)
    embeds, _ = tiny_encoder.encode(TEXTS)
    np.testing.assert_array_equal(reloaded.encode(TEXTS)[0], embeds)
    assert reloaded.fingerprint() == tiny_encoder.fingerprint()
    assert tiny_encoder.preset == str(tiny_preset)

    ids = np.array(tiny_encoder.tokenize(TEXTS[:1]), dtype="int32")
    outputs = backbone(
        {
            "encoder_token_ids": ids,
            "encoder_padding_mask": np.ones_like(ids),
            "decoder_token_ids": np.zeros((1, 2), "int32"),
            "decoder_padding_mask": np.ones((1, 2), "int32"),
        }
    )
    expected = ops.convert_to_numpy(outputs["encoder_sequence_output"])
    # Unpadded batch of one through the whole backbone against the padded
    # batch through the encoder: the same maths, summed in another order
    # (TensorFlow on CI differed by 1.2e-6 on one value of 112).
    np.testing.assert_allclose(embeds[:1, : ids.shape[1]], expected, rtol=1e-5, atol=1e-5)


def test_fingerprint_depends_on_max_length_and_weights(tiny_encoder):
    same = clone_encoder(tiny_encoder)
    assert same.fingerprint() == tiny_encoder.fingerprint()
    shorter = clone_encoder(tiny_encoder, max_length=MAX_LENGTH - 1)
    assert shorter.fingerprint() != tiny_encoder.fingerprint()
    weight = same.transformer_layers[0].weights[0]
    weight.assign(np.zeros(weight.shape, "float32"))
    assert same.fingerprint() == tiny_encoder.fingerprint()  # computed once per instance
    assert same.fingerprint(refresh=True) != tiny_encoder.fingerprint()


def test_frozen(tiny_encoder):
    assert tiny_encoder.trainable is False
    assert tiny_encoder.trainable_weights == []


def test_get_config_round_trip(tiny_encoder):
    config = tiny_encoder.get_config()
    restored = T5Encoder.from_config(config)
    assert restored.get_config() == config
    assert restored.count_params() == tiny_encoder.count_params()


def test_keras_file_round_trip(tiny_encoder, tmp_path):
    path = os.path.join(tmp_path, "encoder.keras")
    tiny_encoder.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, T5Encoder)
    np.testing.assert_array_equal(restored.encode(TEXTS)[0], tiny_encoder.encode(TEXTS)[0])
    assert restored.fingerprint() == tiny_encoder.fingerprint()


@pytest.mark.parametrize(
    "texts, pad_to, match",
    [
        ("a single string", None, "not a single string"),
        (["ok", 3], None, "only strings"),
        (np.array([["a"], ["b"]]), None, "1-D"),
        (["ok"], 0, "pad_to"),
    ],
)
def test_encode_errors(tiny_encoder, texts, pad_to, match):
    with pytest.raises(ValueError, match=match):
        tiny_encoder.encode(texts, pad_to=pad_to)


def test_constructor_errors(tiny_encoder):
    config = tiny_encoder.get_config()
    with pytest.raises(ValueError, match="max_length"):
        T5Encoder.from_config({**config, "max_length": 0})
    with pytest.raises(ValueError, match="tokenizer"):
        T5Encoder.from_config({**config, "tokenizer": "spm"})
    with pytest.raises(ValueError, match="backbone"):
        T5Encoder.from_backbone("not a backbone", tiny_encoder.tokenizer)
