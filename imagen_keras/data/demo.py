"""A built-in text-to-image demo dataset: coloured handwritten digits with captions.

scikit-learn ships the UCI handwritten digits (1,797 greyscale 8x8 images) inside its
wheel, so the demo needs no download. Each digit is upscaled, painted in one of a few very
distinct colours on black, and captioned with its colour and digit ("a red digit seven"):
a text-conditioned model that learns it visibly follows the text in both.
"""

import functools

import numpy as np

from imagen_keras.data import transforms

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# RGB in [0, 1]; the demo uses the first four (the most distinct on black).
COLOUR_VALUES = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
}
DEMO_COLOURS = ("red", "green", "blue", "yellow")


def demo_caption(colour, digit):
    """The caption of a `colour` (name) `digit` (0-9): `"a red digit seven"`."""
    return f"a {colour} digit {DIGIT_WORDS[digit]}"


def _check_colours(colours):
    if isinstance(colours, str) or not colours:
        raise ValueError(
            f"`colours` must be a non-empty tuple of colour names. Received: colours={colours!r}"
        )
    unknown = [c for c in colours if c not in COLOUR_VALUES]
    if unknown or len(set(colours)) != len(colours):
        raise ValueError(
            f"`colours` must be distinct names among {sorted(COLOUR_VALUES)}. "
            f"Received: colours={colours!r}"
        )
    return tuple(colours)


def demo_prompts(colours=DEMO_COLOURS, digits=range(10)):
    """The prompts of the demo's sample grid: one row per colour, one column per digit.

    Args:
        colours: tuple of str, defaults to `DEMO_COLOURS` (red, green, blue, yellow).
        digits: iterable of int in 0-9, defaults to `range(10)`.

    Returns:
        list of str, row-major (`len(colours) * len(digits)` prompts), e.g.
        `["a red digit zero", "a red digit one", ...]`.

    Example:
    ```python
    prompts = demo_prompts(digits=(3, 7))  # 4 colours x 2 digits
    images = imagen.sample(texts=prompts, cond_scale=3.0)
    ```
    """
    colours = _check_colours(colours)
    digits = list(digits)
    if not digits or any(
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 9
        for d in digits
    ):
        raise ValueError(f"`digits` must be ints in 0-9. Received: digits={digits!r}")
    return [demo_caption(c, int(d)) for c in colours for d in digits]


def _bilinear_matrix(size_in, size_out):
    """`(size_out, size_in)` bilinear interpolation weights (half-pixel centres)."""
    x = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    x = np.clip(x, 0, size_in - 1)
    low = np.floor(x).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = x - low
    matrix = np.zeros((size_out, size_in))
    matrix[np.arange(size_out), low] += 1 - frac
    matrix[np.arange(size_out), high] += frac
    return matrix


@functools.lru_cache(maxsize=4)
def _demo_arrays(image_size, colours, every_colour, seed):
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = digits.images / 16.0  # (N, 8, 8) in [0, 1]
    labels = digits.target.astype("int32")
    upscale = _bilinear_matrix(grey.shape[1], image_size)
    grey = np.einsum("ij,njk,lk->nil", upscale, grey, upscale)
    grey = np.clip(grey, 0.0, 1.0).astype("float32")
    count = len(labels)
    if every_colour:
        colour_index = np.repeat(np.arange(len(colours), dtype="int32"), count)
        grey = np.tile(grey, (len(colours), 1, 1))
        labels = np.tile(labels, len(colours))
    else:
        rng = np.random.default_rng(seed)
        colour_index = rng.integers(0, len(colours), size=count).astype("int32")
    palette = np.array([COLOUR_VALUES[c] for c in colours], dtype="float32")
    images = grey[..., None] * palette[colour_index][:, None, None, :]
    texts = np.array([demo_caption(colours[c], d) for c, d in zip(colour_index, labels)])
    out = {"images": images, "texts": texts, "digits": labels, "colours": colour_index}
    for value in out.values():
        value.flags.writeable = False  # shared by the cache
    return out


def demo_arrays(image_size=32, *, colours=DEMO_COLOURS, every_colour=False, seed=0):
    """The demo data as numpy arrays (built once per argument set, then cached).

    Args:
        image_size: int, defaults to `32`. Side of the square images (the 8x8 digits
            are upscaled bilinearly).
        colours: tuple of str, defaults to `DEMO_COLOURS`. Names among `COLOUR_VALUES`.
        every_colour: bool, defaults to `False`. Paint every digit in every colour
            (`1797 * len(colours)` images) instead of one colour drawn from `seed`.
        seed: int, defaults to `0`. Seed of the colour draw.

    Returns:
        dict of read-only arrays: `"images"` float32 `(N, S, S, 3)` in [0, 1] (the
        colour times the digit's ink, black background), `"texts"` str `(N,)`,
        `"digits"` int32 `(N,)` and `"colours"` int32 `(N,)` (index into `colours`).
    """
    transforms.check_image_size(image_size)
    colours = _check_colours(colours)
    return _demo_arrays(image_size, colours, bool(every_colour), int(seed))


def demo_dataset(
    image_size=32,
    *,
    colours=DEMO_COLOURS,
    every_colour=False,
    seed=0,
    batch_size=None,
    shuffle=True,
    drop_remainder=False,
):
    """The built-in demo: coloured, captioned handwritten digits as a `tf.data` pipeline.

    1,797 scikit-learn digits (no download), each painted in a colour on black and
    captioned `"a {colour} digit {word}"`, e.g. "a red digit seven". Building it takes
    well under a second; the arrays are cached per argument set. Digits are not flipped
    (a mirrored digit is another shape).

    Args:
        image_size: int, defaults to `32`.
        colours: tuple of str, defaults to `DEMO_COLOURS` (red, green, blue, yellow).
        every_colour: bool, defaults to `False`. See `demo_arrays`.
        seed: int, defaults to `0`. Seed of the colours and of the shuffle order.
        batch_size: int or `None`, defaults to `None` (unbatched).
        shuffle: bool, defaults to `True`. A new order each epoch.
        drop_remainder: bool, defaults to `False`.

    Returns:
        A prefetched `tf.data.Dataset` of `{"images": float32 (S, S, 3), "texts":
        tf.string}`.

    Example:
    ```python
    dataset = demo_dataset(32, batch_size=16)
    batch = next(iter(dataset))  # batch["texts"][0] == b"a blue digit three", say
    ```

    Reference:
    - E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
      Learning Repository, 1998 (`sklearn.datasets.load_digits`).
    """
    import tensorflow as tf

    arrays = demo_arrays(image_size, colours=colours, every_colour=every_colour, seed=seed)
    data = tf.data.Dataset.from_tensor_slices(
        {"images": np.asarray(arrays["images"]), "texts": arrays["texts"].astype(object)}
    )
    if shuffle:
        data = data.shuffle(len(arrays["texts"]), seed=seed, reshuffle_each_iteration=True)
    return transforms.finish(data, batch_size, drop_remainder)
