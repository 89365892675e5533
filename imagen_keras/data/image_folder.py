"""Image folders (with optional captions) as streaming `tf.data` pipelines."""

import io
import os
import threading
import warnings

import numpy as np
import tensorflow as tf

from imagen_keras.data import captions as captions_lib
from imagen_keras.data import transforms

DEFAULT_EXTS = ("jpg", "jpeg", "png", "tiff", "webp", "bmp", "gif")


def _list_images(folder, exts):
    wanted = {"." + e.lower().lstrip(".") for e in exts}
    files = []
    for root, _, names in tf.io.gfile.walk(folder):
        for name in names:
            if os.path.splitext(name)[1].lower() in wanted:
                files.append(os.path.join(root, name))
    return sorted(files)


def _is_ok(element, ok):
    return ok


def _drop_ok(element, ok):
    return element


class ImageFolder:
    """The images under a folder (recursively), optionally captioned, read by `tf.data`.

    imagen-pytorch's `Dataset(folder, image_size)`: each image is converted to a colour
    mode, its shorter side resized to `image_size` (bilinear, antialiased), randomly
    flipped left-right and centre-cropped, giving float32 `(image_size, image_size, C)` in
    [0, 1]. Files are decoded by Pillow inside the pipeline (`tf.numpy_function`), so a
    folder of any size streams, and every Keras backend reads the same batches.

    An unreadable or corrupt image is skipped with a warning and counted in
    `num_skipped` (its path in `skipped_files`); a long run never stops on one bad file.
    Captions, when asked for, come from a sidecar `name.txt` beside each image or from a
    CSV/TSV/JSONL manifest; an image without a caption is handled as `missing_captions`
    says and counted in `num_missing_captions`.

    `keras.utils.image_dataset_from_directory` stops on the first corrupt file and knows
    no captions, hence this class.

    Args:
        folder: str. A local folder or a `tf.io.gfile` URL (`gs://...`).
        image_size: int. Side of the square images.
        exts: tuple of str, defaults to `("jpg", "jpeg", "png", "tiff", "webp", "bmp",
            "gif")`. File extensions (any case) that are images.
        convert_image_to: `None`, `"RGB"`, `"L"` or `"RGBA"`, defaults to `None`
            (`"RGB"`). Pillow colour mode every image is converted to (3, 1 or 4
            channels): grey images are repeated to RGB, RGBA loses its alpha.
        captions: `None`, `"sidecar"` or the path of a `.csv`, `.tsv` or `.jsonl`
            manifest, defaults to `None` (images only). A manifest row names a file
            (relative to `folder`, or absolute) and a caption; several rows for one
            file give it several captions, of which one is picked per read (see
            `caption_choice`). A sidecar file holds one caption (the whole file).
        file_column: str, defaults to `"file"`. The manifest's file column or key.
        caption_column: str, defaults to `"caption"`. The manifest's caption column.
        missing_captions: `"skip"`, `"error"` or `"empty"`, defaults to `"skip"`. For
            an image without a (non-empty) caption: leave it out (with one warning
            giving the count), raise a `ValueError` listing them, or train on it with the
            empty caption `""`.
        caption_choice: `"random"` or `"first"`, defaults to `"random"`. Which caption of
            an image with several is read.
        random_flip: bool, defaults to `True`. Flip images left-right at random.

    Attributes:
        files: list of str. The images read (sorted; without those skipped for a
            missing caption).
        num_missing_captions: int. Images found without a caption.
        num_unmatched_captions: int. Manifest rows whose file is not an image found.
        num_skipped: int. Distinct files skipped as unreadable so far (grows as the
            pipeline reads them).
        skipped_files: list of str. Those files.

    Example:
    ```python
    folder = ImageFolder("photos/", 64, captions="sidecar")
    dataset = folder.dataset(batch_size=16, seed=0)  # {"images", "texts"} batches
    imagen.fit(dataset, epochs=10)
    print(folder.num_skipped, folder.skipped_files)
    ```

    Reference:
    - imagen-pytorch 2.1.0, `imagen_pytorch/data.py` (`Dataset`).
    """

    def __init__(
        self,
        folder,
        image_size,
        *,
        exts=DEFAULT_EXTS,
        convert_image_to=None,
        captions=None,
        file_column="file",
        caption_column="caption",
        missing_captions="skip",
        caption_choice="random",
        random_flip=True,
    ):
        transforms.check_image_size(image_size)
        self.mode, self.channels = transforms.channels_of(convert_image_to)
        transforms.check_caption_choice(caption_choice)
        if missing_captions not in captions_lib.MISSING_CAPTIONS:
            raise ValueError(
                f"`missing_captions` must be one of {captions_lib.MISSING_CAPTIONS}. "
                f"Received: missing_captions={missing_captions!r}"
            )
        if isinstance(exts, str) or not exts:
            raise ValueError(f"`exts` must be a non-empty tuple of str. Received: exts={exts!r}")
        folder = os.fspath(folder)
        if not tf.io.gfile.isdir(folder):
            raise ValueError(f"`folder` is not a directory. Received: folder={folder!r}")
        files = _list_images(folder, exts)
        if not files:
            raise ValueError(
                f"No images with extensions {tuple(exts)} found under {folder!r} (`folder`)."
            )
        self.folder = folder
        self.image_size = image_size
        self.exts = tuple(exts)
        self.convert_image_to = convert_image_to
        self.captions = captions
        self.missing_captions = missing_captions
        self.caption_choice = caption_choice
        self.random_flip = random_flip
        self.num_unmatched_captions = 0
        self.num_missing_captions = 0
        self._captions = None
        if captions is not None:
            files = self._attach_captions(files, captions, file_column, caption_column)
        self.files = files
        self.skipped_files = []
        self._skip_events = 0
        self._lock = threading.Lock()

    def _attach_captions(self, files, captions, file_column, caption_column):
        if captions == "sidecar":
            found = captions_lib.sidecar_captions(files)
        else:
            found, self.num_unmatched_captions = captions_lib.manifest_captions(
                os.fspath(captions), self.folder, files, file_column, caption_column
            )
            if self.num_unmatched_captions:
                warnings.warn(
                    f"{self.num_unmatched_captions} rows of the manifest {captions!r} name no "
                    f"image found under {self.folder!r}; they are ignored.",
                    stacklevel=3,
                )
        missing = [f for f in files if f not in found]
        self.num_missing_captions = len(missing)
        if missing and self.missing_captions == "error":
            raise ValueError(
                f"{len(missing)} of {len(files)} images under {self.folder!r} have no caption "
                f"(captions={captions!r}, missing_captions='error'), e.g. {missing[:5]}"
            )
        if missing and self.missing_captions == "skip":
            warnings.warn(
                f"{len(missing)} of {len(files)} images under {self.folder!r} have no caption "
                f"and are skipped (missing_captions='skip'), e.g. {missing[:3]}",
                stacklevel=3,
            )
            files = [f for f in files if f in found]
            if not files:
                raise ValueError(
                    f"No image under {self.folder!r} has a caption (captions={captions!r})."
                )
        self._captions = [found.get(f, [""]) for f in files]
        return files

    @property
    def num_skipped(self):
        return len(self.skipped_files)

    def __len__(self):
        return len(self.files)

    def _skip(self, path, error):
        with self._lock:
            self._skip_events += 1
            first = path not in self.skipped_files
            if first:
                self.skipped_files.append(path)
            count = len(self.skipped_files)
        if first:
            warnings.warn(
                f"Skipped an unreadable image {path!r} ({type(error).__name__}: {error}); "
                f"{count} skipped so far.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _decode(self, path):
        from PIL import Image

        path = path.decode("utf-8")
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert(self.mode), dtype=np.uint8)
            if array.ndim == 2:
                array = array[..., None]
            if array.shape[0] < 1 or array.shape[1] < 1:
                raise ValueError(f"empty image of shape {array.shape}")
            return array, True
        except Exception as error:  # any bad file is skipped, never fatal
            self._skip(path, error)
            return np.zeros((1, 1, self.channels), np.uint8), False

    def dataset(self, batch_size=None, *, shuffle=True, seed=None, drop_remainder=False):
        """The `tf.data.Dataset` of `{"images": float32 (S, S, C)[, "texts": tf.string]}`.

        Args:
            batch_size: int or `None`, defaults to `None` (unbatched elements; `fit`
                needs batches).
            shuffle: bool, defaults to `True`. Read the files in a new random order
                each epoch.
            seed: int or `None`, defaults to `None`. Seed of the order, flips and caption
                choices: the same seed gives the same elements, epoch after epoch.
            drop_remainder: bool, defaults to `False`.

        Returns:
            A prefetched `tf.data.Dataset`.
        """
        elements = {"path": tf.constant(self.files)}
        if self._captions is not None:
            elements["captions"] = tf.ragged.constant(self._captions, dtype=tf.string)
        data = tf.data.Dataset.from_tensor_slices(elements)
        if shuffle:
            data = data.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        data = tf.data.Dataset.zip(data, transforms.element_seeds(seed))
        channels = self.channels

        def load(element, random):
            image, ok = tf.numpy_function(
                self._decode, [element["path"]], [tf.uint8, tf.bool], stateful=True
            )
            image = tf.ensure_shape(image, (None, None, channels))
            image = transforms.resize_and_center_crop(image, self.image_size)
            if self.random_flip:
                image = transforms.random_flip(image, random)
            out = {"images": image}
            if "captions" in element:
                out["texts"] = transforms.choose_caption(
                    element["captions"], self.caption_choice, random
                )
            return out, tf.ensure_shape(ok, ())

        data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        data = data.filter(_is_ok).map(_drop_ok)
        return transforms.finish(data, batch_size, drop_remainder)


def image_folder_dataset(
    folder,
    image_size,
    *,
    exts=DEFAULT_EXTS,
    convert_image_to=None,
    captions=None,
    file_column="file",
    caption_column="caption",
    missing_captions="skip",
    caption_choice="random",
    random_flip=True,
    batch_size=None,
    shuffle=True,
    seed=None,
    drop_remainder=False,
):
    """The images (and captions) under `folder` as a `tf.data` pipeline for `fit`.

    `ImageFolder(folder, image_size, ...).dataset(batch_size, ...)`; see `ImageFolder`
    for the arguments, the transform and how corrupt images and missing captions are
    handled. Build the `ImageFolder` yourself to read `num_skipped` and
    `num_missing_captions`.

    Returns:
        A prefetched `tf.data.Dataset` of dicts: `"images"` float32
        `(image_size, image_size, C)` in [0, 1], and `"texts"` (tf.string) when
        `captions` is set; batched when `batch_size` is set.

    Example:
    ```python
    dataset = image_folder_dataset("photos/", 64, captions="captions.csv", batch_size=16)
    imagen.fit(dataset, epochs=10)  # "texts" are T5-encoded per batch by `fit`
    ```

    Reference:
    - imagen-pytorch 2.1.0, `imagen_pytorch/data.py` (`Dataset`, `get_images_dataloader`).
    """
    folder = ImageFolder(
        folder,
        image_size,
        exts=exts,
        convert_image_to=convert_image_to,
        captions=captions,
        file_column=file_column,
        caption_column=caption_column,
        missing_captions=missing_captions,
        caption_choice=caption_choice,
        random_flip=random_flip,
    )
    return folder.dataset(batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder)
