"""`as_cascade_inputs` and `batch_and_prefetch`."""

import numpy as np
import pytest
import tensorflow as tf

from imagen_keras.data import as_cascade_inputs, batch_and_prefetch


def test_tuples_and_dicts_are_renamed_to_the_cascade_keys():
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    labels = np.array([b"cat", b"dog", b"cat", b"eel"])
    pairs = tf.data.Dataset.from_tensor_slices((images, labels))
    out = next(iter(as_cascade_inputs(pairs, images=0, texts=1).batch(4)))
    assert sorted(out) == ["images", "texts"]
    np.testing.assert_array_equal(out["images"], images)  # uint8 kept: fit accepts it
    assert out["texts"].numpy().tolist() == labels.tolist()

    dicts = tf.data.Dataset.from_tensor_slices({"image": images, "caption": labels, "id": [1] * 4})
    out = next(iter(as_cascade_inputs(dicts, images="image", texts="caption")))
    assert sorted(out) == ["images", "texts"] and out["texts"].numpy() == b"cat"

    plain = tf.data.Dataset.from_tensor_slices(images)
    assert sorted(next(iter(as_cascade_inputs(plain)))) == ["images"]


def test_errors_name_the_argument():
    dicts = tf.data.Dataset.from_tensor_slices({"image": np.zeros((2, 2, 2, 3))})
    with pytest.raises(ValueError, match=r"no key 'images' \(`images`\).*\['image'\]"):
        as_cascade_inputs(dicts)
    pairs = tf.data.Dataset.from_tensor_slices((np.zeros((2, 2, 2, 3)), np.zeros(2)))
    with pytest.raises(ValueError, match="2-tuples: `texts` must be an index.*texts=2"):
        as_cascade_inputs(pairs, images=0, texts=2)
    with pytest.raises(ValueError, match="images=None"):
        as_cascade_inputs(pairs, images=None)
    with pytest.raises(ValueError, match="batch_size=None"):
        batch_and_prefetch(pairs, None)


def test_batch_and_prefetch():
    data = tf.data.Dataset.range(10)
    assert [len(b) for b in batch_and_prefetch(data, 4)] == [4, 4, 2]
    assert [len(b) for b in batch_and_prefetch(data, 4, drop_remainder=True)] == [4, 4]
    assert batch_and_prefetch(data, 4, drop_remainder=True).element_spec.shape == (4,)
