"""Input checks of a cascade: constructor arguments, training data, images and texts.

`check_cascade_arguments` validates the constructor's arguments against each other and
the unets' own constraints, at construction. `CascadeInputs` is a mixin of `Cascade`:
it checks the data given to `fit`, `train_on_batch` and `evaluate` before Keras traces
a step (an error raised inside `call` would reach the user wrapped in Keras' "Exception
encountered when calling ..."), and turns what the user passes to `call` and `sample`
into float tensors of the expected shape. Every error is a `ValueError` that names the
argument and the value received.
"""

import math
import numbers
import os
import warnings

import keras
import numpy as np
from keras import ops

from imagen_keras.backend import is_concrete
from imagen_keras.diffusion.schedules import NOISE_SCHEDULES
from imagen_keras.unet import _RESIZE_MODES, Unet
from imagen_keras.unet_presets import NullUnet

INPUT_KEYS = ("images", "texts", "text_embeds", "text_masks", "cond_images")


def per_unet(value, num_unets, name):
    """`value` as a tuple with one entry per unet (a scalar is repeated)."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_unets:
            raise ValueError(
                f"`{name}` must have one value per unet ({num_unets}). Received: {name}={value!r}"
            )
        return tuple(value)
    return (value,) * num_unets


def is_int(value):
    """True for Python and numpy ints, not for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_non_negative_int(value, name):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0
    ):
        raise ValueError(f"`{name}` must be a non-negative int or None. Received: {name}={value!r}")


def is_finite_number(value):
    """True for a finite Python or numpy real number, not for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_real(value, name, low=-math.inf, high=math.inf, low_open=False):
    """`value` as a float: a finite real number in `[low, high]` (`(low, high]` with
    `low_open`), else a `ValueError` naming `name`."""
    if not is_finite_number(value) or not (
        low < value <= high if low_open else low <= value <= high
    ):
        if (low, high) == (-math.inf, math.inf):
            bounds = ""
        elif high == math.inf:
            bounds = f" {'>' if low_open else '>='} {low}"
        else:
            bounds = f" in {'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"`{name}` must be a finite number{bounds}. Received: {name}={value!r}")
    return float(value)


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")


def _check_unets(unets):
    """The unets as a list: `Unet`s (a `NullUnet` may be stage 1), each object once."""
    unets = list(unets) if isinstance(unets, (list, tuple)) else [unets]
    if not unets:
        raise ValueError("`unets` must hold at least one unet. Received: unets=[]")
    for index, unet in enumerate(unets):
        if isinstance(unet, NullUnet):
            if index > 0:
                raise ValueError(
                    f"A NullUnet can only be the first unet. Received one at {index + 1}: "
                    f"unets={unets!r}"
                )
        elif not isinstance(unet, Unet):
            raise ValueError(
                "Every entry of `unets` must be an imagen_keras `Unet` (or a `NullUnet` as "
                f"the first). Received: unets[{index}]={unet!r} of type {type(unet).__name__}"
            )
    for index, unet in enumerate(unets):
        first = next(i for i, other in enumerate(unets) if other is unet)
        if first != index:
            raise ValueError(
                f"The same Unet object ('{unet.name}') is passed for stages {first + 1} and "
                f"{index + 1}; each stage trains its own weights: pass a separate Unet per "
                "stage, e.g. `Unet(**unet.get_config())`."
            )
    return unets


def _check_image_sizes(unets, image_sizes):
    n = len(unets)
    sizes = per_unet(image_sizes, n, "image_sizes")
    for size in sizes:
        if not is_int(size) or size < 1:
            raise ValueError(
                "`image_sizes` must hold positive ints (one per unet). "
                f"Received: image_sizes={image_sizes!r}"
            )
    sizes = tuple(int(size) for size in sizes)
    if any(low >= high for low, high in zip(sizes, sizes[1:])):
        raise ValueError(
            "`image_sizes` must increase from each unet to the next. "
            f"Received: image_sizes={image_sizes!r}"
        )
    for index, (unet, size) in enumerate(zip(unets, sizes)):
        if isinstance(unet, Unet) and size % unet.downsample_factor:
            raise ValueError(
                f"`image_sizes` must be divisible by each unet's total downsampling: unet "
                f"{index + 1} downsamples by {unet.downsample_factor} (dim_mults="
                f"{unet.dim_mults}). Received: image_sizes={image_sizes!r}"
            )
    return sizes


def _check_crop_sizes(unets, sizes, random_crop_sizes):
    crops = per_unet(random_crop_sizes, len(unets), "random_crop_sizes")
    if crops[0] is not None:
        raise ValueError(
            "The first unet is never randomly cropped; use e.g. random_crop_sizes=(None, 64). "
            f"Received: random_crop_sizes={random_crop_sizes!r}"
        )
    for index, (unet, size, crop) in enumerate(zip(unets, sizes, crops)):
        if crop is None:
            continue
        if not is_int(crop) or not 1 <= crop <= size or crop % unet.downsample_factor:
            raise ValueError(
                f"`random_crop_sizes` must be None or an int in [1, {size}] (unet "
                f"{index + 1}'s image size) divisible by {unet.downsample_factor} (its "
                f"downsampling). Received: random_crop_sizes={random_crop_sizes!r}"
            )
    return tuple(None if crop is None else int(crop) for crop in crops)


def check_cascade_arguments(
    unets,
    *,
    image_sizes,
    text_encoder_name,
    text_embed_dim,
    channels,
    cond_drop_prob,
    random_crop_sizes,
    lowres_noise_schedule,
    lowres_sample_noise_level,
    per_sample_random_aug_noise_level,
    condition_on_text,
    auto_normalize_img,
    dynamic_thresholding,
    dynamic_thresholding_percentile,
    only_train_unet_number,
    resize_mode,
    seed,
):
    """Validate the arguments of `Cascade.__init__` (see `Imagen` for their meaning).

    Checked against the unets' own constraints, at construction rather than at the
    first call: each image size is divisible by its unet's total downsampling, and no
    unet object serves two stages.

    Returns:
        tuple `(unets, image_sizes, random_crop_sizes)`: a list and two tuples with
        one entry per unet.

    Raises:
        ValueError: naming the first bad argument and the value received.
    """
    unets = _check_unets(unets)
    n = len(unets)
    sizes = _check_image_sizes(unets, image_sizes)
    crops = _check_crop_sizes(unets, sizes, random_crop_sizes)
    if not isinstance(text_encoder_name, (str, os.PathLike)):
        raise ValueError(
            "`text_encoder_name` must be a T5 name or a preset folder. "
            f"Received: text_encoder_name={text_encoder_name!r}"
        )
    if text_embed_dim is not None and (not is_int(text_embed_dim) or text_embed_dim < 1):
        raise ValueError(
            "`text_embed_dim` must be a positive int or None (the text encoder's width). "
            f"Received: text_embed_dim={text_embed_dim!r}"
        )
    if not is_int(channels) or channels < 1:
        raise ValueError(f"`channels` must be a positive int. Received: channels={channels!r}")
    check_real(cond_drop_prob, "cond_drop_prob", 0.0, 1.0)
    check_real(lowres_sample_noise_level, "lowres_sample_noise_level", 0.0, 1.0)
    check_real(dynamic_thresholding_percentile, "dynamic_thresholding_percentile", 0.0, 1.0)
    if lowres_noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(
            f"`lowres_noise_schedule` must be one of {NOISE_SCHEDULES}. "
            f"Received: lowres_noise_schedule={lowres_noise_schedule!r}"
        )
    if resize_mode not in _RESIZE_MODES:
        raise ValueError(
            f"`resize_mode` must be one of {_RESIZE_MODES}. Received: resize_mode={resize_mode!r}"
        )
    for name, value in (
        ("per_sample_random_aug_noise_level", per_sample_random_aug_noise_level),
        ("condition_on_text", condition_on_text),
        ("auto_normalize_img", auto_normalize_img),
    ):
        _check_bool(value, name)
    for value in per_unet(dynamic_thresholding, n, "dynamic_thresholding"):
        _check_bool(value, "dynamic_thresholding")
    if only_train_unet_number is not None and (
        not is_int(only_train_unet_number) or not 1 <= only_train_unet_number <= n
    ):
        raise ValueError(
            f"`only_train_unet_number` must be None or an int in [1, {n}]. "
            f"Received: only_train_unet_number={only_train_unet_number!r}"
        )
    if seed is not None and not is_int(seed):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
    return unets, sizes, crops


_FIT_FORM = (
    'a dict with keys "images" (required), "texts" or "text_embeds" (and "text_masks"), '
    '"cond_images", or the images alone'
)


def _shape(value):
    shape = getattr(value, "shape", None)
    if shape is not None:
        return tuple(shape)
    if isinstance(value, (list, tuple)):
        return (len(value),)
    return None


def _describe(value):
    shape = _shape(value)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {shape}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"{value!r:.80}"


def _check_keys(cascade, keys, method, name):
    unknown = sorted(set(keys) - set(INPUT_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown input keys {unknown} in `{method}`'s `{name}`; expected some of "
            f"{INPUT_KEYS}. Received keys: {sorted(keys)}"
        )
    if "images" not in keys:
        raise ValueError(
            f"`{method}` needs images: `{name}` must be {_FIT_FORM}. Received: a dict "
            f'without "images", with keys {sorted(keys)}'
        )
    has_text = "texts" in keys or "text_embeds" in keys
    if cascade.condition_on_text and not has_text:
        raise ValueError(
            f'This cascade is text-conditioned: `{name}` needs "texts" or "text_embeds" '
            f"beside the images. Received keys: {sorted(keys)}"
        )
    if not cascade.condition_on_text and (has_text or "text_masks" in keys):
        raise ValueError(
            "This cascade has condition_on_text=False: its training data takes no texts. "
            f"Received keys: {sorted(keys)}"
        )


def _check_ranks(cascade, shapes, name, batched_hint=""):
    """Ranks and widths of known shapes (None entries unknown)."""
    expected = {
        "images": (4, cascade.channels, "(batch, height, width, channels)"),
        "cond_images": (4, None, "(batch, height, width, channels)"),
        "text_embeds": (3, cascade.text_embed_dim, "(batch, tokens, text_embed_dim)"),
        "text_masks": (2, None, "(batch, tokens)"),
        "texts": (1, None, "(batch,)"),
    }
    for key, shape in shapes.items():
        if shape is None or key not in expected:
            continue
        rank, width, form = expected[key]
        if len(shape) != rank or (width is not None and shape[-1] not in (None, width)):
            wanted = form.replace("channels", str(cascade.channels)).replace(
                "text_embed_dim", str(cascade.text_embed_dim)
            )
            raise ValueError(
                f'`{name}`\'s "{key}" must be {wanted}{batched_hint}. Received: {key}.shape={shape}'
            )


def _check_image_range(cascade, images):
    """Numpy float images in the model's range, before any step (cheap: two passes).

    NaN is left to the training step, which skips and counts a non-finite step, as it
    does for data it cannot see in advance (datasets)."""
    if not (isinstance(images, np.ndarray) and images.dtype.kind == "f" and images.size):
        return
    with warnings.catch_warnings():  # an all-NaN batch: no range to check
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
    low, high = cascade.input_image_range
    if lo < low - 1e-3 or hi > high + 1e-3:
        hint = "; uint8 images are scaled by the model, divide floats by 255" if hi > 2 else ""
        raise ValueError(
            f"`images` must be in [{low}, {high}] (auto_normalize_img="
            f"{cascade.auto_normalize_img}){hint}. Received values in [{lo:.3g}, {hi:.3g}]"
        )


def _check_dataset(cascade, spec, method, name):
    if isinstance(spec, tuple):
        if len(spec) == 1:
            return _check_dataset(cascade, spec[0], method, name)
        raise ValueError(
            f"`{method}` reads a dataset of dicts (or of images alone), not of tuples: a "
            f"dataset of ({', '.join('...' for _ in spec)}) tuples is taken as (x, y) and "
            "its text would be dropped. Rename the parts with imagen_keras.data."
            "as_cascade_inputs(dataset, images=0, text_embeds=1) (or texts=1). "
            f"Received: element_spec={spec}"
        )
    hint = " (batch the dataset before `fit`: dataset.batch(n))"
    if isinstance(spec, dict):
        _check_keys(cascade, list(spec), method, name)
        shapes = {k: tuple(v.shape) for k, v in spec.items() if hasattr(v, "shape")}
        if len(shapes.get("images", (0,) * 4)) == 3:
            raise ValueError(
                f'The dataset\'s "images" are unbatched{hint}. Received: element_spec'
                f'["images"].shape={shapes["images"]}'
            )
        _check_ranks(cascade, shapes, name, hint)
    elif hasattr(spec, "shape"):
        _check_dict_free_images(cascade, tuple(spec.shape), method, name, hint)


def _check_dict_free_images(cascade, shape, method, name, hint=""):
    if cascade.condition_on_text:
        raise ValueError(
            f"This cascade is text-conditioned: `{method}` needs texts or text embeddings "
            f'with the images, as `{name}`={{"images": ..., "text_embeds": ...}} (or '
            f'"texts"). Received: images alone, shape {shape}'
        )
    _check_ranks(cascade, {"images": shape}, name, hint)


def check_training_data(cascade, x, y=None, method="fit", name="x"):
    """Refuse training data `fit` cannot use, before Keras traces a step.

    Checks the form of `x` (a dict of the cascade's input keys, or the images alone;
    a `tf.data.Dataset` of either), the presence of text for a text-conditioned model,
    ranks and widths, that every array has one row per image and, for numpy arrays,
    that images are in the model's range. Other data (generators, `PyDataset`s) is
    checked in the step. NaN is not refused here: a step with non-finite gradients is
    skipped and counted, whatever the data's form.

    Raises:
        ValueError: naming the part of `x` (or `y`) and the value received.
    """
    if y is not None:
        raise ValueError(
            f"`{method}` takes no targets `y`: a cascade trains on its own diffusion loss. "
            f"Pass everything in `{name}`, {_FIT_FORM}. Received: y={_describe(y)}"
        )
    spec = getattr(x, "element_spec", None)
    if spec is not None:
        return _check_dataset(cascade, spec, method, name)
    if isinstance(x, (tuple, list)):
        raise ValueError(
            f'`{method}` takes {_FIT_FORM}, e.g. `{name}`={{"images": images, '
            f'"text_embeds": text_embeds}}. Received: a {type(x).__name__} of {len(x)} '
            f"({', '.join(_describe(v) for v in x[:4])})"
        )
    if isinstance(x, dict):
        _check_keys(cascade, list(x), method, name)
        shapes = {k: _shape(v) for k, v in x.items()}
        _check_ranks(cascade, shapes, name)
        rows = {k: s[0] for k, s in shapes.items() if s and s[0] is not None}
        if len(set(rows.values())) > 1:
            detail = ", ".join(f"{k}: {v}" for k, v in rows.items())
            raise ValueError(
                f"Every array of `{name}` must have one row per image. Received rows: "
                f"{detail} (shapes {', '.join(f'{k}={shapes[k]}' for k in rows)})"
            )
        _check_image_range(cascade, x["images"])
    elif _shape(x) is not None and hasattr(x, "dtype"):
        _check_dict_free_images(cascade, _shape(x), method, name)
        _check_image_range(cascade, x)


class CascadeInputs:
    """Input checks shared by `Imagen` and `ElucidatedImagen` (a mixin of `Cascade`).

    `fit`, `train_on_batch` and `evaluate` check their data with `check_training_data`
    first: `Cascade`'s overrides of these reach them through `super()`.
    """

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        check_training_data(self, x, y, "fit")
        if validation_data is not None:
            check_training_data(self, validation_data, None, "fit", "validation_data")
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def train_on_batch(self, x=None, y=None, *args, **kwargs):
        check_training_data(self, x, y, "train_on_batch")
        return super().train_on_batch(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        check_training_data(self, x, y, "evaluate")
        return super().evaluate(x, y, *args, **kwargs)

    def _as_float_images(self, images, name):
        images = ops.convert_to_tensor(images)
        if len(images.shape) != 4:
            raise ValueError(
                f"`{name}` must be (batch, height, width, channels). "
                f"Received: {name}.shape={tuple(images.shape)}"
            )
        if keras.backend.standardize_dtype(images.dtype) == "uint8":
            return ops.cast(images, "float32") / 255.0
        return ops.cast(images, "float32")

    def _prepare_images(self, images, index):
        is_uint8 = keras.backend.standardize_dtype(getattr(images, "dtype", "float32")) == "uint8"
        images = self._as_float_images(images, "images")
        if not is_uint8 and is_concrete(images):  # a value check only outside compiled code
            low, high = self.input_image_range
            lo, hi = float(ops.min(images)), float(ops.max(images))
            if lo < low - 1e-3 or hi > high + 1e-3:
                raise ValueError(
                    f"`images` must be in [{low}, {high}] (auto_normalize_img="
                    f"{self.auto_normalize_img}). Received values in [{lo:.3g}, {hi:.3g}]"
                )
        _, h, w, c = images.shape
        size = self.image_sizes[index]
        if c != self.channels or (h is not None and h != w):
            raise ValueError(
                f"`images` must be square with {self.channels} channels (channels-last). "
                f"Received: images.shape={tuple(images.shape)}"
            )
        if h is not None and h < size:
            raise ValueError(
                f"Unet {index + 1} trains at {size}x{size}; `images` must be at least that "
                f"large. Received: images.shape={tuple(images.shape)}"
            )
        return images

    def _prepare_text(self, texts, text_embeds, text_masks, images):
        if texts is not None and text_embeds is None and self.condition_on_text:
            if not is_concrete(images if images is not None else ops.zeros(())):
                raise ValueError(
                    "`texts` cannot be encoded inside a compiled training step. Give `fit` "
                    "a dict of arrays or a batched tf.data.Dataset with a 'texts' key (both "
                    "are encoded before the step), attach an EmbeddingCache to the dataset, "
                    "or pass `text_embeds`."
                )
            text_embeds, text_masks = self.encode_text(texts)
        if not self.condition_on_text:
            if text_embeds is not None or texts is not None:
                raise ValueError(
                    "This model has condition_on_text=False but `text_embeds` or `texts` "
                    "were given."
                )
            return None, None
        if text_embeds is None:
            raise ValueError("This Imagen is text-conditioned: pass `text_embeds` (or `texts`).")
        text_embeds = ops.cast(ops.convert_to_tensor(text_embeds), "float32")
        if len(text_embeds.shape) != 3 or text_embeds.shape[-1] != self.text_embed_dim:
            raise ValueError(
                f"`text_embeds` must be (batch, tokens, {self.text_embed_dim}). "
                f"Received: text_embeds.shape={tuple(text_embeds.shape)}"
            )
        if (
            images is not None
            and images.shape[0] is not None
            and text_embeds.shape[0] is not None
            and images.shape[0] != text_embeds.shape[0]
        ):
            raise ValueError(
                "`text_embeds` must have one row per image. Received: "
                f"images.shape={tuple(images.shape)}, text_embeds.shape={tuple(text_embeds.shape)}"
            )
        if text_masks is None:
            text_masks = ops.any(ops.not_equal(text_embeds, 0.0), axis=-1)
        else:
            text_masks = ops.cast(ops.convert_to_tensor(text_masks), "bool")
            if tuple(text_masks.shape) != tuple(text_embeds.shape[:2]):
                raise ValueError(
                    f"`text_masks` must be (batch, tokens) = {tuple(text_embeds.shape[:2])}. "
                    f"Received: text_masks.shape={tuple(text_masks.shape)}"
                )
        return text_embeds, text_masks
