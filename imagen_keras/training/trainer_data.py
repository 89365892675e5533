"""The `tf.data` side of `ImagenTrainer`: examples to dicts, batches, splits, micro-batches."""

import numbers

import numpy as np

INPUT_KEYS = ("images", "texts", "text_embeds", "text_masks", "cond_images")
DATASET_OPTIONS = ("shuffle", "shuffle_buffer_size", "drop_remainder")


def check_positive_int(value, name):
    """`value` is a positive int or None, else a `ValueError` naming `name`."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
    ):
        raise ValueError(f"`{name}` must be a positive int or None. Received: {name}={value!r}")


def examples(dataset, tuple_names, argument="ds"):
    """A `tf.data.Dataset` of single examples as dicts with the keys `fit` reads.

    Args:
        dataset: a `tf.data.Dataset` of dicts, tuples (named by `tuple_names`, as
            imagen-pytorch's `dl_tuple_output_keywords_names`) or images; or a dict of
            arrays with one row per example.
        tuple_names: names of the parts of tuple elements.
        argument: str. The argument name for error messages.
    """
    import tensorflow as tf

    if isinstance(dataset, dict):
        dataset = tf.data.Dataset.from_tensor_slices(dataset)
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"`{argument}` must be a tf.data.Dataset of single examples or a dict of "
            f"arrays (one row per example). Received: {type(dataset).__name__}"
        )
    spec = dataset.element_spec
    names = tuple(tuple_names)
    if isinstance(spec, tuple):
        if len(spec) > len(names):
            raise ValueError(
                f"The elements of `{argument}` are {len(spec)}-tuples, but "
                f"dl_tuple_output_keywords_names names {len(names)}: {names}."
            )

        def name_parts(*parts):
            return dict(zip(names, parts))

        dataset = dataset.map(name_parts)
    elif not isinstance(spec, dict):

        def as_images(image):
            return {"images": image}

        dataset = dataset.map(as_images)
    spec = dataset.element_spec
    unknown = sorted(set(spec) - set(INPUT_KEYS))
    if unknown or "images" not in spec:
        raise ValueError(
            f"The elements of `{argument}` need an 'images' key and may have "
            f"{list(INPUT_KEYS)}. Received keys: {sorted(spec)}"
        )
    if spec["images"].shape.rank != 3:
        raise ValueError(
            f"`{argument}` must hold single examples (images of shape (H, W, C)); the "
            f"trainer batches them. Received images of shape {spec['images'].shape}."
        )
    return dataset


def batched(dataset, batch_size, options, shuffle, seed):
    """Shuffle (unless `options["shuffle"]` says otherwise), batch and prefetch.

    Args:
        dataset: a dataset of single examples.
        batch_size: int.
        options: dict with `shuffle`, `shuffle_buffer_size` (default 10000) and
            `drop_remainder` (default `True`: every batch has the same size).
        shuffle: bool. The default of `options["shuffle"]`.
        seed: int. The shuffling seed.
    """
    import tensorflow as tf

    unknown = sorted(set(options) - set(DATASET_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown dataset options {unknown}; known: {list(DATASET_OPTIONS)}")
    check_positive_int(batch_size, "batch_size")
    if batch_size is None:
        raise ValueError("`batch_size` is required.")
    if options.get("shuffle", shuffle):
        dataset = dataset.shuffle(
            options.get("shuffle_buffer_size", 10_000), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size, drop_remainder=options.get("drop_remainder", True))
    return dataset.prefetch(tf.data.AUTOTUNE)


def split_valid(dataset, fraction, seed):
    """`(train, valid)`: a random `fraction` of the examples (drawn with `seed`) apart.

    The split is the same on every run with the same seed and dataset size; the dataset
    must have a known size.
    """
    import tensorflow as tf

    count = int(dataset.cardinality())
    if count < 0:
        raise ValueError(
            "split_valid_from_train needs a dataset of known size; this one's size is "
            "unknown (e.g. after `filter`)."
        )
    valid_count = int(round(count * fraction))
    if not 0 < valid_count < count:
        raise ValueError(
            f"split_valid_fraction={fraction} of {count} examples leaves an empty train or "
            "validation set."
        )
    chosen = np.random.default_rng(seed).permutation(count)[:valid_count]
    mask = np.zeros(count, bool)
    mask[chosen] = True
    mask = tf.constant(mask)
    numbered = dataset.enumerate()

    def in_valid(index, element):
        return tf.gather(mask, index)

    def in_train(index, element):
        return tf.logical_not(tf.gather(mask, index))

    def drop_index(index, element):
        return element

    return numbered.filter(in_train).map(drop_index), numbered.filter(in_valid).map(drop_index)


def micro_batches(dataset, chunks):
    """Each batch of `dataset` cut into `chunks` equal micro-batches, in order."""
    import tensorflow as tf

    if chunks == 1:
        return dataset

    def split(batch):
        return {
            k: tf.reshape(v, tf.concat([[chunks, -1], tf.shape(v)[1:]], 0))
            for k, v in batch.items()
        }

    return dataset.map(split).unbatch()
