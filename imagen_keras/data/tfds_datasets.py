"""TensorFlow Datasets by name as `fit`-ready pipelines, failing fast when offline."""

import tensorflow as tf

from imagen_keras.data import transforms

PREPARE_HINT = (
    "Prepare it on a machine with network access (`tfds build {name} --data_dir DIR`, or "
    "`tfds.load('{name}', data_dir=DIR, download=True)`), copy DIR here and pass "
    "`data_dir=DIR` (or set TFDS_DATA_DIR). `download=True` offline retries for minutes "
    "before failing."
)


def _get(element, key, argument):
    """`element[key]`, where "a/b" also reads `element["a"]["b"]` (tfds flat keys first)."""
    if key in element:
        return element[key]
    value = element
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            keys = sorted(element) if isinstance(element, dict) else element
            raise ValueError(
                f"The dataset's elements have no {key!r} (`{argument}`). Their keys: {keys}"
            )
        value = value[part]
    return value


def _load(name, split, data_dir, download, shuffle_files, seed):
    import tensorflow_datasets as tfds

    try:
        return tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"TFDS has no dataset named {name!r} (`name`). See "
            "https://www.tensorflow.org/datasets/catalog/overview for the names."
        ) from error
    except AssertionError as error:
        # tfds raises AssertionError when the prepared files are not in data_dir.
        where = data_dir or "the default data_dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"
        raise ValueError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}, and "
            f"download={download}. " + PREPARE_HINT.format(name=name)
        ) from error


def tfds_dataset(
    name,
    image_size,
    *,
    split="train",
    image_key="image",
    caption_key=None,
    caption_choice="random",
    data_dir=None,
    download=False,
    convert_image_to=None,
    random_flip=True,
    batch_size=None,
    shuffle=True,
    shuffle_buffer=1024,
    seed=None,
    drop_remainder=False,
):
    """A TensorFlow Datasets dataset by name, as `{"images"[, "texts"]}` for `fit`.

    Images go through the same transform as `ImageFolder` (colour mode, shorter side to
    `image_size`, random flip, centre crop; float32 in [0, 1]). Nothing is downloaded
    unless `download=True`: a dataset that is not prepared in `data_dir` fails at once with
    a `ValueError` saying how to prepare it, instead of tfds' minutes of retries offline.

    Args:
        name: str. The TFDS name, e.g. `"coco_captions"`, `"oxford_flowers102"`,
            `"mnist"` (with a config or version: `"coco_captions/2014:1.1.0"`).
        image_size: int. Side of the square images.
        split: str, defaults to `"train"`. A TFDS split, slicing included
            (`"train[:90%]"`).
        image_key: str, defaults to `"image"`. The image feature; `"a/b"` reads a
            nested feature.
        caption_key: `None`, str or callable, defaults to `None` (images only). The
            caption feature (`"captions/text"` for COCO captions), or a function of the
            element returning a scalar tf.string (e.g. a caption built from a label). A
            feature holding a list of captions gives one per read (`caption_choice`).
        caption_choice: `"random"` or `"first"`, defaults to `"random"`.
        data_dir: str or `None`, defaults to `None` (TFDS's default folder).
        download: bool, defaults to `False`.
        convert_image_to: `None`, `"RGB"`, `"L"` or `"RGBA"`, defaults to `None`
            (`"RGB"`).
        random_flip: bool, defaults to `True`.
        batch_size: int or `None`, defaults to `None` (unbatched).
        shuffle: bool, defaults to `True`. Shuffle the files and, in a buffer of
            `shuffle_buffer`, the examples.
        shuffle_buffer: int, defaults to `1024`.
        seed: int or `None`, defaults to `None`. Seed of the shuffles, flips and caption
            choices.
        drop_remainder: bool, defaults to `False`.

    Returns:
        A prefetched `tf.data.Dataset` of dicts.

    Example:
    ```python
    dataset = tfds_dataset("coco_captions", 64, caption_key="captions/text", batch_size=16,
                           data_dir="/data/tfds")
    imagen.fit(dataset, epochs=1)
    ```

    Reference:
    - TensorFlow Datasets, `tfds.load`: https://www.tensorflow.org/datasets/api_docs/python/tfds/load
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a TFDS dataset name. Received: name={name!r}")
    transforms.check_image_size(image_size)
    _, channels = transforms.channels_of(convert_image_to)
    transforms.check_caption_choice(caption_choice)
    transforms.check_batch_size(batch_size)
    if not (caption_key is None or isinstance(caption_key, str) or callable(caption_key)):
        raise ValueError(
            "`caption_key` must be None, a str or a callable. "
            f"Received: caption_key={caption_key!r}"
        )
    data = _load(name, split, data_dir, download, shuffle, seed)
    spec = data.element_spec
    if not isinstance(spec, dict):
        raise ValueError(
            f"TFDS dataset {name!r} yields {spec}, not dicts of features: pick one with an "
            "image feature."
        )
    image_spec = _get(spec, image_key, "image_key")
    if not isinstance(image_spec, tf.TensorSpec) or len(image_spec.shape) != 3:
        raise ValueError(
            f"Feature {image_key!r} (`image_key`) of {name!r} is not an image "
            f"(H, W, C). Received: {image_spec}"
        )
    if isinstance(caption_key, str):
        caption_spec = _get(spec, caption_key, "caption_key")
        if getattr(caption_spec, "dtype", None) != tf.string or len(caption_spec.shape) > 1:
            raise ValueError(
                f"Feature {caption_key!r} (`caption_key`) of {name!r} must be a string or a "
                f"list of strings. Received: {caption_spec}"
            )
    if shuffle:
        data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    data = tf.data.Dataset.zip(data, transforms.element_seeds(seed))

    def convert(element, random):
        image = _get(element, image_key, "image_key")
        if image.dtype.is_floating:  # float features in [0, 1]
            image = tf.cast(tf.clip_by_value(tf.round(image * 255.0), 0, 255), tf.uint8)
        elif image.dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        image = transforms.to_channels(image, channels)
        image = transforms.resize_and_center_crop(image, image_size)
        if random_flip:
            image = transforms.random_flip(image, random)
        out = {"images": image}
        if caption_key is not None:
            caption = (
                caption_key(element)
                if callable(caption_key)
                else _get(element, caption_key, "caption_key")
            )
            caption = tf.convert_to_tensor(caption)
            if caption.shape.rank == 1:
                caption = transforms.choose_caption(caption, caption_choice, random)
            out["texts"] = caption
        return out

    data = data.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return transforms.finish(data, batch_size, drop_remainder)
