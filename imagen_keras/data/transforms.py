"""Image transforms shared by the pipelines: imagen-pytorch's `Dataset` transform in tf.

imagen-pytorch (`imagen_pytorch/data.py`) applies `Resize(image_size)` (shorter side to
`image_size`, bilinear, antialiased), `RandomHorizontalFlip()`, `CenterCrop(image_size)` and
`ToTensor()` (float in [0, 1]). These are the same steps as tf ops, so they run inside
`tf.data` for every Keras backend.
"""

import tensorflow as tf

COLOUR_MODES = {"RGB": 3, "L": 1, "RGBA": 4}


def check_image_size(image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(
            f"`image_size` must be a positive int. Received: image_size={image_size!r}"
        )


def channels_of(convert_image_to):
    """The channel count of a colour mode; `None` means "RGB"."""
    mode = "RGB" if convert_image_to is None else convert_image_to
    if mode not in COLOUR_MODES:
        raise ValueError(
            f"`convert_image_to` must be None or one of {sorted(COLOUR_MODES)}. "
            f"Received: convert_image_to={convert_image_to!r}"
        )
    return mode, COLOUR_MODES[mode]


def to_channels(image, channels):
    """uint8 `(H, W, C)` with a static C in 1..4 -> `channels` (1, 3 or 4) channels.

    Grey is repeated to RGB, alpha is dropped (as PIL's `convert("RGB")` does) or set
    opaque, and RGB becomes grey with PIL's ITU-R 601-2 luma weights.
    """
    have = image.shape[-1]
    if have is None or have not in (1, 2, 3, 4):
        raise ValueError(
            f"Images must have 1 to 4 channels. Received an image of shape {image.shape}"
        )
    if have == channels:
        return image
    if have == 2:  # grey + alpha
        image = image[..., :1]
    elif have == 4:
        image = image[..., :3]
    have = image.shape[-1]
    if channels == 1:
        if have == 1:
            return image
        grey = tf.reduce_sum(tf.cast(image, tf.float32) * [0.299, 0.587, 0.114], -1, keepdims=True)
        return tf.cast(tf.clip_by_value(tf.round(grey), 0, 255), tf.uint8)
    rgb = image if have == 3 else tf.repeat(image, 3, axis=-1)
    if channels == 3:
        return rgb
    opaque = tf.fill(tf.concat([tf.shape(rgb)[:-1], [1]], 0), tf.constant(255, rgb.dtype))
    return tf.concat([rgb, opaque], axis=-1)


def resize_and_center_crop(image, image_size):
    """uint8 or float `(H, W, C)` in [0, 255] -> float32 `(image_size, image_size, C)` in [0, 1].

    The shorter side is resized to `image_size` (bilinear, antialiased; the longer side is
    truncated as torchvision's `Resize` does), then the centre square is cropped (offsets
    rounded as torchvision's `CenterCrop`).
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(height, width)
    size = tf.constant(float(image_size), tf.float64)
    new_h = tf.cast(tf.where(height <= width, size, tf.floor(size * height / short)), tf.int32)
    new_w = tf.cast(tf.where(width < height, size, tf.floor(size * width / short)), tf.int32)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float32) / 2.0), tf.int32)
    image = image[top : top + image_size, left : left + image_size]
    image = tf.ensure_shape(image, (image_size, image_size, image.shape[-1]))
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def element_seeds(seed):
    """A dataset of per-element stateless seeds, new each epoch, deterministic for `seed`."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)


def stateless_seed(random, stream):
    """The `(2,)` seed of random `stream` (an int) for one element's int64 `random`."""
    return tf.stack([random, tf.constant(stream, tf.int64)])


def random_flip(image, random):
    """Flip `image` left-right with probability 0.5, decided by the element's `random`."""
    return tf.image.stateless_random_flip_left_right(image, seed=stateless_seed(random, 1))


def choose_caption(captions, choice, random):
    """One caption of a 1-D string tensor: the "first" or a "random" one ("" if empty)."""
    padded = tf.concat([captions, [""]], axis=0)
    if choice == "first":
        return padded[0]
    count = tf.maximum(tf.shape(captions)[0], 1)
    index = tf.random.stateless_uniform(
        (), seed=stateless_seed(random, 2), maxval=count, dtype=tf.int32
    )
    return padded[index]


def check_caption_choice(caption_choice):
    if caption_choice not in ("first", "random"):
        raise ValueError(
            "`caption_choice` must be 'first' or 'random'. "
            f"Received: caption_choice={caption_choice!r}"
        )


def check_batch_size(batch_size):
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be None or a positive int. Received: batch_size={batch_size!r}"
        )


def finish(dataset, batch_size, drop_remainder):
    """Batch (when `batch_size` is set) and prefetch."""
    check_batch_size(batch_size)
    if batch_size is not None:
        dataset = dataset.batch(
            batch_size,
            drop_remainder=drop_remainder,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
