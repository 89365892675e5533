"""Small helpers to feed any `tf.data` pipeline to the cascades' `fit`."""

import tensorflow as tf

from imagen_keras.data import transforms

CASCADE_KEYS = ("images", "texts", "text_embeds", "text_masks", "cond_images")


def batch_and_prefetch(dataset, batch_size, *, drop_remainder=False):
    """`dataset.batch(batch_size).prefetch(AUTOTUNE)`, deterministic and parallel.

    Args:
        dataset: an unbatched `tf.data.Dataset`.
        batch_size: int.
        drop_remainder: bool, defaults to `False`. `True` gives every batch the same
            shape (one compiled step instead of two).

    Returns:
        The batched, prefetched dataset.

    Example:
    ```python
    dataset = batch_and_prefetch(demo_dataset(32), 16)
    ```
    """
    if batch_size is None:
        raise ValueError("`batch_size` must be a positive int. Received: batch_size=None")
    return transforms.finish(dataset, batch_size, drop_remainder)


def _pick(element, key, argument):
    if isinstance(element, dict):
        if key not in element:
            raise ValueError(
                f"The dataset's elements have no key {key!r} (`{argument}`). "
                f"Their keys: {sorted(element)}"
            )
        return element[key]
    if isinstance(element, (tuple, list)):
        if (
            isinstance(key, bool)
            or not isinstance(key, int)
            or not -len(element) <= key < len(element)
        ):
            raise ValueError(
                f"The dataset's elements are {len(element)}-tuples: `{argument}` must be an "
                f"index into them. Received: {argument}={key!r}"
            )
        return element[key]
    if key in (0, "images") and argument == "images":
        return element
    raise ValueError(
        f"The dataset's elements are single tensors; only `images` can be read from them. "
        f"Received: {argument}={key!r}"
    )


def as_cascade_inputs(
    dataset, *, images="images", texts=None, text_embeds=None, text_masks=None, cond_images=None
):
    """Rename the parts of each element to the keys `Imagen.fit` reads.

    Each argument names where that input is in the dataset's elements: a dict key, or a
    tuple index (for `(image, label)` pipelines such as
    `keras.utils.image_dataset_from_directory`'s). Images may be float in [0, 1] or uint8.

    Args:
        dataset: a `tf.data.Dataset` of dicts, tuples or image tensors (batched or not).
        images: str or int, defaults to `"images"`.
        texts: str, int or `None`, defaults to `None`. Captions (tf.string).
        text_embeds: str, int or `None`, defaults to `None`.
        text_masks: str, int or `None`, defaults to `None`.
        cond_images: str, int or `None`, defaults to `None`.

    Returns:
        A `tf.data.Dataset` of dicts with keys among `"images"`, `"texts"`,
        `"text_embeds"`, `"text_masks"`, `"cond_images"`.

    Example:
    ```python
    data = tfds.load("mnist", split="train")  # {"image": uint8, "label": int64}
    data = as_cascade_inputs(data, images="image").batch(16)
    ```
    """
    wanted = {
        "images": images,
        "texts": texts,
        "text_embeds": text_embeds,
        "text_masks": text_masks,
        "cond_images": cond_images,
    }
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if "images" not in wanted:
        raise ValueError("`images` must name the images in the elements. Received: images=None")
    spec = dataset.element_spec
    for argument, key in wanted.items():  # fail now, not inside the map
        _pick(spec, key, argument)

    def rename(*element):
        element = element[0] if len(element) == 1 else element
        return {argument: _pick(element, key, argument) for argument, key in wanted.items()}

    return dataset.map(rename, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
