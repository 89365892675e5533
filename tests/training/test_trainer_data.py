"""The trainer's tf.data helpers: tuple names, the valid split, micro-batches, errors."""

import numpy as np
import pytest
import tensorflow as tf

from imagen_keras.training.trainer_data import batched, examples, micro_batches, split_valid


def _images(n):
    return np.arange(n, dtype="float32")[:, None, None, None] * np.ones((n, 2, 2, 3), "float32")


def test_tuples_are_named_and_images_alone_become_dicts():
    embeds = np.zeros((4, 3, 5), "float32")
    named = examples(
        tf.data.Dataset.from_tensor_slices((_images(4), embeds)), ("images", "text_embeds")
    )
    assert sorted(named.element_spec) == ["images", "text_embeds"]
    alone = examples(tf.data.Dataset.from_tensor_slices(_images(4)), ("images",))
    assert list(alone.element_spec) == ["images"]
    with pytest.raises(ValueError, match="3-tuples"):
        examples(tf.data.Dataset.from_tensor_slices((_images(4),) * 3), ("images", "texts"))
    with pytest.raises(ValueError, match="Received keys: \\['captions', 'images'\\]"):
        examples({"images": _images(4), "captions": np.array(["a"] * 4)}, ())
    with pytest.raises(ValueError, match="single examples"):
        examples(tf.data.Dataset.from_tensor_slices({"images": _images(4)}).batch(2), ())


def test_split_is_seeded_disjoint_and_complete():
    data = examples({"images": _images(20)}, ())
    first = [
        sorted(float(x["images"][0, 0, 0]) for x in part) for part in split_valid(data, 0.25, 42)
    ]
    again = [
        sorted(float(x["images"][0, 0, 0]) for x in part) for part in split_valid(data, 0.25, 42)
    ]
    other = sorted(float(x["images"][0, 0, 0]) for x in split_valid(data, 0.25, 7)[1])
    assert first == again and len(first[1]) == 5 and other != first[1]
    assert sorted(first[0] + first[1]) == list(range(20))
    with pytest.raises(ValueError, match="empty train or validation set"):
        split_valid(data, 0.01, 42)
    with pytest.raises(ValueError, match="known size"):
        split_valid(data.filter(lambda x: True), 0.25, 42)


def test_micro_batches_cut_each_batch_in_order():
    data = batched(examples({"images": _images(8)}, ()), 4, {}, shuffle=False, seed=0)
    parts = [x["images"][:, 0, 0, 0].numpy().tolist() for x in micro_batches(data, 2)]
    assert parts == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="Unknown dataset options \\['num_workers'\\]"):
        batched(data, 4, {"num_workers": 2}, shuffle=False, seed=0)
