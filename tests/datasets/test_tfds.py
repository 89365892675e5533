"""`tfds_dataset`: TFDS by name with configurable keys (mock data), and the offline error."""

import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from imagen_keras.data import tfds_dataset


def test_mnist_grey_images_with_captions_from_labels():
    with tfds.testing.mock_data(num_examples=6):
        raw = list(tfds.load("mnist", split="train", shuffle_files=False))
        data = tfds_dataset(
            "mnist",
            8,
            caption_key=lambda e: tf.strings.format("a digit {}", e["label"]),
            shuffle=False,
            random_flip=False,
            batch_size=3,
        )
        batches = list(data)
    assert len(batches) == 2
    images = np.concatenate([b["images"].numpy() for b in batches])
    texts = [t.decode() for b in batches for t in b["texts"].numpy()]
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.float32
    assert texts == [f"a digit {int(e['label'])}" for e in raw]
    # grey repeated to RGB; 28 -> 8 is an antialiased resize of the raw image
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    expected = tf.image.resize(raw[0]["image"], (8, 8), antialias=True).numpy()[..., 0] / 255
    np.testing.assert_allclose(images[0, ..., 0], expected, atol=1e-5)


def test_coco_captions_first_or_random_caption_of_the_list():
    with tfds.testing.mock_data(num_examples=4):
        raw = list(tfds.load("coco_captions", split="train", shuffle_files=False))
        first = list(
            tfds_dataset(
                "coco_captions",
                8,
                caption_key="captions/text",
                caption_choice="first",
                shuffle=False,
            )
        )
        random = tfds_dataset(
            "coco_captions", 8, caption_key="captions/text", seed=0, shuffle=False
        )
        picks = [[e["texts"].numpy() for e in random] for _ in range(6)]
        with pytest.raises(ValueError, match=r"no 'captions/txt' \(`caption_key`\)"):
            tfds_dataset("coco_captions", 8, caption_key="captions/txt")
        with pytest.raises(ValueError, match="'image/filename' .*not an image"):
            tfds_dataset("coco_captions", 8, image_key="image/filename")
        gray = list(tfds_dataset("coco_captions", 8, convert_image_to="L", shuffle=False))
    captions = [list(e["captions"]["text"].numpy()) for e in raw]
    assert [e["texts"].numpy() for e in first] == [c[0] if c else b"" for c in captions]
    assert all(e["images"].shape == (8, 8, 3) for e in first)
    assert gray[0]["images"].shape == (8, 8, 1)
    for epoch in picks:
        assert all(p in (c or [b""]) for p, c in zip(epoch, captions))
    several = [i for i, c in enumerate(captions) if len(set(c)) > 1]
    assert several, "the mock data should give some image several captions"
    assert any(len({epoch[i] for epoch in picks}) > 1 for i in several)


def test_offline_not_prepared_fails_fast_with_a_clear_message(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"'mnist' .*not prepared in .*tfds build mnist"):
        tfds_dataset("mnist", 8, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError, match="no dataset named 'no_such_dataset_xyz'"):
        tfds_dataset("no_such_dataset_xyz", 8)
    with pytest.raises(ValueError, match="caption_key=3"):
        tfds_dataset("mnist", 8, caption_key=3)
    with pytest.raises(ValueError, match="name=''"):
        tfds_dataset("", 8)
