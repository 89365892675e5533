"""The built-in demo dataset: captions say the colour and the digit of their image."""

import numpy as np
import pytest

from imagen_keras.data import (
    COLOUR_VALUES,
    DEMO_COLOURS,
    DIGIT_WORDS,
    demo_arrays,
    demo_dataset,
    demo_prompts,
)


def test_captions_name_the_colour_of_the_ink_and_the_digit():
    from sklearn.datasets import load_digits

    data = demo_arrays(16)
    images, texts = data["images"], data["texts"]
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    palette = np.array([COLOUR_VALUES[c] for c in DEMO_COLOURS])
    # The brightest pixels of each image, normalised, are the colour its caption names.
    ink = images.reshape(len(images), -1, 3)
    brightest = np.take_along_axis(ink, ink.sum(-1).argmax(1)[:, None, None], axis=1)[:, 0]
    nearest = np.argmax(brightest @ palette.T - 0.5 * (palette**2).sum(-1), axis=1)
    named = np.array([DEMO_COLOURS.index(t.split()[1]) for t in texts])
    np.testing.assert_array_equal(nearest, named)
    np.testing.assert_array_equal(named, data["colours"])
    # The digit word is sklearn's label, and the grey ink is sklearn's image.
    target = load_digits().target
    np.testing.assert_array_equal([DIGIT_WORDS.index(t.split()[3]) for t in texts], target)
    np.testing.assert_array_equal(data["digits"], target)
    assert texts[0].startswith("a ") and texts[0].endswith(" digit zero")
    # every colour is used, about equally
    assert np.bincount(named, minlength=4).min() > 1797 / 4 * 0.8


def test_upscaled_digit_keeps_the_source_shape():
    from sklearn.datasets import load_digits

    data = demo_arrays(32)
    grey = data["images"].max(-1)  # one channel is the ink
    source = load_digits().images / 16.0
    # Average-pooling the 4x (bilinear, so smoothed) upscale back to 8x8 gives the source
    # digit again, up to the blur.
    pooled = grey.reshape(-1, 8, 4, 8, 4).mean((2, 4))
    assert np.corrcoef(pooled.ravel(), source.ravel())[0, 1] > 0.95
    assert np.abs(pooled - source).mean() < 0.1


def test_seeded_and_cached():
    a, b = demo_arrays(8, seed=1), demo_arrays(8, seed=1)
    assert a["images"] is b["images"]  # cached, and read-only so nobody changes it
    with pytest.raises(ValueError, match="read-only"):
        a["images"][0, 0, 0, 0] = 1.0
    other = demo_arrays(8, seed=2)
    assert (a["colours"] != other["colours"]).mean() > 0.5
    np.testing.assert_array_equal(a["digits"], other["digits"])


def test_every_colour_paints_each_digit_in_each_colour():
    data = demo_arrays(8, colours=("red", "cyan"), every_colour=True)
    assert data["images"].shape == (2 * 1797, 8, 8, 3)
    assert data["texts"][0] == "a red digit zero" and data["texts"][1797] == "a cyan digit zero"
    np.testing.assert_array_equal(data["images"][1797:, ..., 1], data["images"][:1797, ..., 0])
    assert data["images"][1797:, ..., 0].max() == 0.0


def test_dataset_batches_and_is_deterministic_for_a_seed():
    def first_batch(seed):
        batch = next(iter(demo_dataset(8, batch_size=5, seed=seed)))
        return batch["images"].numpy(), [t.decode() for t in batch["texts"].numpy()]

    images, texts = first_batch(3)
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.float32
    again_images, again_texts = first_batch(3)
    assert texts == again_texts
    np.testing.assert_array_equal(images, again_images)
    assert texts != first_batch(4)[1]
    data = demo_arrays(8, seed=3)  # the batch holds the arrays' (image, caption) pairs
    row = list(data["texts"]).index(texts[0])
    matches = [i for i, t in enumerate(data["texts"]) if t == texts[0]]
    assert any(np.array_equal(images[0], data["images"][i]) for i in matches), row
    unshuffled = next(iter(demo_dataset(8, batch_size=3, seed=3, shuffle=False)))
    assert [t.decode() for t in unshuffled["texts"].numpy()] == list(data["texts"][:3])


def test_prompts_grid():
    prompts = demo_prompts()
    assert len(prompts) == 40
    assert prompts[:2] == ["a red digit zero", "a red digit one"]
    assert prompts[10] == "a green digit zero" and prompts[-1] == "a yellow digit nine"
    assert demo_prompts(("blue",), digits=(7,)) == ["a blue digit seven"]
    assert set(demo_prompts()) >= set(demo_arrays(8)["texts"])


def test_errors():
    with pytest.raises(ValueError, match="colours=\\('red', 'purple'\\)"):
        demo_arrays(8, colours=("red", "purple"))
    with pytest.raises(ValueError, match="colours='red'"):
        demo_prompts(colours="red")
    with pytest.raises(ValueError, match="digits=\\[10\\]"):
        demo_prompts(digits=[10])
    with pytest.raises(ValueError, match="image_size=-1"):
        demo_dataset(-1)
