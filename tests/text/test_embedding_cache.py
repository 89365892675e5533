import json
import os

import numpy as np
import pytest

from imagen_keras.text import EmbeddingCache
from imagen_keras.text.embedding_cache import CaptionNotCachedError
from tests.text.conftest import CAPTIONS, MAX_LENGTH, clone_encoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BATCH = 3


class Interrupted(Exception):
    pass


class FailingEncoder:
    """Wraps an encoder; raises on the `fail_at`-th call of `encode`."""

    def __init__(self, encoder, fail_at):
        self.encoder, self.fail_at, self.calls = encoder, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, texts, pad_to=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted
        return self.encoder.encode(texts, pad_to=pad_to)


@pytest.fixture(scope="module")
def cache(tiny_encoder, tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache")
    return EmbeddingCache.build(
        tiny_encoder, CAPTIONS + CAPTIONS[:2], directory, batch_size=BATCH, progress=False
    )


def _files(directory):
    out = {}
    for name in ("embeds.npy", "lengths.npy", "captions.json"):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def test_round_trip_is_exact(cache, tiny_encoder):
    assert len(cache) == len(CAPTIONS)  # duplicates stored once
    assert cache.embed_dim == tiny_encoder.embed_dim and cache.max_length == MAX_LENGTH
    assert cache.fingerprint == tiny_encoder.fingerprint()
    for start in range(0, len(CAPTIONS), BATCH):
        batch = CAPTIONS[start : start + BATCH]
        expected, expected_mask = tiny_encoder.encode(batch)
        embeds, masks = cache.lookup(batch)
        np.testing.assert_array_equal(embeds, expected)
        np.testing.assert_array_equal(masks, expected_mask)


def test_lookup_pads_and_truncates(cache):
    embeds, masks = cache.lookup(CAPTIONS[:2])
    padded, padded_masks = cache.lookup(CAPTIONS[:2], pad_to=20)
    assert padded.shape == (2, 20, cache.embed_dim) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, : embeds.shape[1]], embeds)
    assert np.all(padded[~padded_masks] == 0)
    cut, cut_masks = cache.lookup(CAPTIONS[:2], pad_to=2)
    np.testing.assert_array_equal(cut, embeds[:, :2])
    np.testing.assert_array_equal(cut_masks, masks[:, :2])


def test_unknown_caption(cache):
    with pytest.raises(KeyError, match="not in the embedding cache") as info:
        cache.lookup([CAPTIONS[0], "a caption nobody wrote"])
    assert isinstance(info.value, CaptionNotCachedError)
    assert "a caption nobody wrote" in str(info.value)
    assert "a caption nobody wrote" not in cache and CAPTIONS[0] in cache


def test_resume_after_interruption_gives_identical_files(cache, tiny_encoder, tmp_path):
    failing = FailingEncoder(tiny_encoder, fail_at=2)
    with pytest.raises(Interrupted):
        EmbeddingCache.build(failing, CAPTIONS, tmp_path, batch_size=BATCH, progress=False)
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f)["rows_done"] == BATCH
    with pytest.raises(ValueError, match="unfinished"):
        EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match="batch_size=3"):
        EmbeddingCache.build(tiny_encoder, CAPTIONS, tmp_path, batch_size=2, progress=False)
    resumed_encoder = FailingEncoder(tiny_encoder, fail_at=0)
    resumed = EmbeddingCache.build(resumed_encoder, CAPTIONS, tmp_path, progress=False)
    assert len(resumed) == len(CAPTIONS)
    assert resumed_encoder.calls == 2  # only the batches that were not committed
    assert _files(tmp_path) == _files(cache.directory)


def test_refuses_another_encoder(cache, tiny_encoder):
    other = clone_encoder(tiny_encoder, max_length=MAX_LENGTH - 2)
    with pytest.raises(ValueError, match="another encoder") as info:
        EmbeddingCache.build(other, CAPTIONS, cache.directory, progress=False)
    assert cache.fingerprint in str(info.value) and other.fingerprint() in str(info.value)
    with pytest.raises(ValueError, match="another encoder"):
        EmbeddingCache(cache.directory, encoder=other)


def test_refuses_another_caption_set_or_dtype(cache, tiny_encoder):
    with pytest.raises(ValueError, match="another caption set"):
        EmbeddingCache.build(tiny_encoder, CAPTIONS[:3], cache.directory, progress=False)
    with pytest.raises(ValueError, match="float32"):
        EmbeddingCache.build(
            tiny_encoder, CAPTIONS, cache.directory, dtype="float16", progress=False
        )


def test_float16_cache(cache, tiny_encoder, tmp_path):
    half = EmbeddingCache.build(
        tiny_encoder, CAPTIONS, tmp_path, batch_size=BATCH, dtype="float16", progress=False
    )
    assert half.embeds.dtype == np.float16
    embeds, masks = half.lookup(CAPTIONS)
    expected, expected_masks = cache.lookup(CAPTIONS)
    assert embeds.dtype == np.float32
    np.testing.assert_allclose(embeds, expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(masks, expected_masks)


def test_build_errors(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingCache.build(tiny_encoder, CAPTIONS, tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingCache.build(tiny_encoder, CAPTIONS, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="at least one caption"):
        EmbeddingCache.build(tiny_encoder, [], tmp_path)
    with pytest.raises(ValueError, match="No embedding cache"):
        EmbeddingCache(tmp_path / "nothing")


@pytest.mark.parametrize("batched", [False, True])
def test_attach_to_tf_data(cache, batched):
    import tensorflow as tf

    captions = [CAPTIONS[i] for i in (4, 0, 2, 1)]
    images = np.arange(4 * 2, dtype="float32").reshape(4, 2)
    dataset = tf.data.Dataset.from_tensor_slices({"images": images, "texts": captions})
    if batched:
        dataset = dataset.batch(2)
    dataset = cache.attach(dataset, caption_key="texts", pad_to=8)
    spec = dataset.element_spec
    assert set(spec) == {"images", "text_embeds", "text_masks"}
    assert spec["text_embeds"].shape[-2:] == (8, cache.embed_dim)
    elements = list(dataset.as_numpy_iterator())
    embeds = np.concatenate(
        [np.reshape(e["text_embeds"], (-1, 8, cache.embed_dim)) for e in elements]
    )
    masks = np.concatenate([np.reshape(e["text_masks"], (-1, 8)) for e in elements])
    expected, expected_masks = cache.lookup(captions, pad_to=8)
    np.testing.assert_array_equal(embeds, expected)
    np.testing.assert_array_equal(masks, expected_masks)


def test_attach_unknown_caption_fails(cache):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices({"texts": ["never seen"]})
    with pytest.raises(Exception, match="not in the embedding cache"):
        list(cache.attach(dataset).as_numpy_iterator())


def test_pad_to_errors(cache):
    with pytest.raises(ValueError, match="pad_to"):
        cache.lookup(CAPTIONS[:1], pad_to=0)
    with pytest.raises(ValueError, match="pad_to"):
        cache.map_fn(pad_to=2.5)
    with pytest.raises(ValueError, match="one string"):
        cache.lookup(CAPTIONS[0])
