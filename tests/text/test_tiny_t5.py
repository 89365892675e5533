import os

import h5py
import numpy as np
import pytest

from imagen_keras.text import build_tiny_t5_preset
from imagen_keras.text.tiny_t5 import UNTRAINED_NOTE
from tests.text.conftest import CAPTIONS, TINY

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _weights(directory):
    arrays = []
    with h5py.File(os.path.join(directory, "model.weights.h5"), "r") as f:
        f.visititems(
            lambda name, obj: (
                arrays.append((name, np.array(obj))) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return arrays


def _read(directory, name):
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


def test_writes_a_keras_hub_preset_marked_untrained(tiny_preset):
    for name in ("config.json", "tokenizer.json", "model.weights.h5", "metadata.json"):
        assert os.path.isfile(os.path.join(tiny_preset, name))
    assert os.path.isfile(os.path.join(tiny_preset, "assets", "tokenizer", "vocabulary.spm"))
    assert _read(tiny_preset, "UNTRAINED.txt").decode() == UNTRAINED_NOTE


def test_vocabulary_follows_t5_conventions(tiny_encoder):
    tokenizer = tiny_encoder.tokenizer
    assert tokenizer.pad_token_id == 0 and tokenizer.end_token_id == 1
    assert tokenizer.id_to_token(2) == "<unk>"
    assert tokenizer.vocabulary_size() <= TINY["vocabulary_size"]


def test_same_seed_same_files_other_seed_other_weights(tiny_preset, tmp_path):
    again = build_tiny_t5_preset(CAPTIONS, tmp_path / "again", **TINY)
    for name in ("config.json", "tokenizer.json", "assets/tokenizer/vocabulary.spm"):
        assert _read(again, name) == _read(tiny_preset, name)
    expected = _weights(tiny_preset)
    for (name, value), (expected_name, expected_value) in zip(_weights(again), expected):
        assert name == expected_name
        np.testing.assert_array_equal(value, expected_value)
    other = _weights(build_tiny_t5_preset(CAPTIONS, tmp_path / "other", seed=1, **TINY))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(other, expected))


@pytest.mark.parametrize(
    "captions, kwargs, match",
    [
        ("one string", {}, "list of strings"),
        (["", "  "], {}, "at least one non-empty"),
        (["ok", 1], {}, "only strings"),
        (["ok"], {"vocabulary_size": 4}, "vocabulary_size"),
        (["ok"], {"hidden_dim": 10, "num_heads": 3}, "divisible"),
    ],
)
def test_errors(tmp_path, captions, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_tiny_t5_preset(captions, tmp_path, **kwargs)
