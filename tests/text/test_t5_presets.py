import socket
import time

import pytest

from imagen_keras.text import (
    DEFAULT_T5_NAME,
    T5Encoder,
    get_encoded_dim,
    load_text_encoder,
    resolve_t5_preset,
    t5_presets,
)
from tests.text.conftest import MAX_LENGTH, TINY

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_every_alias_names_a_keras_hub_preset():
    presets = t5_presets.keras_hub_t5_presets()
    assert set(t5_presets.ALIASES.values()) <= set(presets)
    assert t5_presets.ALIASES[DEFAULT_T5_NAME] == "t5_1.1_base"
    assert t5_presets.ALIASES["google/t5-v1_1-xxl"] == "t5_1.1_xxl"


@pytest.mark.parametrize(
    "name", ["t5-v1_1-base", "google/t5-v1_1-xxl", "t5_1.1_small", "hf://google/t5-v1_1-base"]
)
def test_offline_unavailable_preset_fails_fast_with_instructions(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(t5_presets, "_kaggle_cached", lambda handle: False)
    monkeypatch.setattr(t5_presets, "_hf_cached", lambda repo: False)
    start = time.monotonic()
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1") as info:
        T5Encoder.from_preset(name)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "save_to_preset" in message and "KAGGLEHUB_CACHE" in message
    assert "build_tiny_t5_preset" in message


def test_unreachable_network_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KAGGLE_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(t5_presets, "_kaggle_cached", lambda handle: False)
    monkeypatch.setattr(t5_presets, "_reachable", lambda host, port, timeout: False)
    with pytest.raises(OSError, match="cannot be reached"):
        resolve_t5_preset("t5-v1_1-base")


def test_cached_preset_resolves_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(t5_presets, "_kaggle_cached", lambda handle: True)
    assert resolve_t5_preset("google/t5-v1_1-base") == "t5_1.1_base"
    assert resolve_t5_preset("t5_1.1_xl") == "t5_1.1_xl"


def test_reachable_probe():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert t5_presets._reachable("127.0.0.1", port, 1.0)
    server.close()
    start = time.monotonic()
    assert not t5_presets._reachable("127.0.0.1", port, 1.0)
    assert time.monotonic() - start < 2


def test_unknown_name_and_bad_folder(tmp_path):
    with pytest.raises(ValueError, match="Unknown T5 encoder 'bert_base_en'"):
        resolve_t5_preset("bert_base_en")
    with pytest.raises(ValueError, match="no config.json"):
        resolve_t5_preset(tmp_path)
    with pytest.raises(ValueError, match="must be a string"):
        resolve_t5_preset(3)


def test_local_folder_resolves_to_itself(tiny_preset):
    assert resolve_t5_preset(tiny_preset) == str(tiny_preset)


def test_load_text_encoder_caches_per_name(tiny_preset, tiny_encoder):
    first = load_text_encoder(tiny_preset, max_length=MAX_LENGTH)
    assert load_text_encoder(str(tiny_preset), max_length=MAX_LENGTH) is first
    assert load_text_encoder(tiny_encoder) is tiny_encoder
    with pytest.raises(ValueError, match="encoder"):
        load_text_encoder(42)


def test_get_encoded_dim_of_folder_and_encoder(tiny_preset, tiny_encoder):
    assert get_encoded_dim(tiny_preset) == TINY["hidden_dim"]
    assert get_encoded_dim(tiny_encoder) == TINY["hidden_dim"]
    assert get_encoded_dim("google/t5-v1_1-xxl") == 4096


def test_transformers_folder_points_to_the_converter(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5", "d_model": 8}')
    with pytest.raises(ValueError, match="imagen_keras.text.hf_t5"):
        resolve_t5_preset(tmp_path)
