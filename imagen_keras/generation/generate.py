"""Generation through a cascade: argument checks, seeds, stages, progress, PIL output.

The host side of `Imagen.sample` / `ElucidatedImagen.sample`. Everything that runs per
step is in the compiled stage functions of `generation.stage`; this module checks the
arguments up front (a `ValueError` naming the argument and the value), turns seeds into
one seed per image, runs the stages in order and converts the result.
"""

import math
import numbers
import random as py_random
import warnings

import keras
import numpy as np
from keras import ops

from imagen_keras.cascade_inputs import is_int, per_unet
from imagen_keras.diffusion.noise import seeds_to_int32
from imagen_keras.generation.stage import (
    OPTIONAL_INPUTS,
    StageStructure,
    as_stage_inputs,
    compiled_stage_function,
)
from imagen_keras.layers.sampling import resize_image_to


def _check_number(value, name, low=-math.inf, high=math.inf):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        bounds = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}]"
        raise ValueError(f"`{name}` must be a finite number{bounds}. Received: {name}={value!r}")
    return float(value)


def _check_finite(array, name):
    values = ops.convert_to_numpy(array)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise ValueError(
            f"`{name}` holds NaN or infinite values. Received: {name} with "
            f"{int(np.size(values) - np.isfinite(values).sum())} non-finite entries"
        )


def resolve_seeds(seed, batch):
    """One seed per image: `seed + i` for an int, the given list, or random ones."""
    if seed is None:
        seed = py_random.randint(0, 2**31 - 1)
    if is_int(seed):
        return [int(seed) + i for i in range(batch)]
    if isinstance(seed, (list, tuple, np.ndarray)):
        seeds = list(np.asarray(seed).ravel()) if isinstance(seed, np.ndarray) else list(seed)
        if not seeds or not all(is_int(s) for s in seeds):
            raise ValueError(
                "`seed` must be an int, a list of ints (one per image) or None. "
                f"Received: seed={seed!r}"
            )
        if len(seeds) != batch:
            raise ValueError(
                f"`seed` must have one entry per image ({batch}). Received: seed={seed!r}"
            )
        return [int(s) for s in seeds]
    raise ValueError(
        f"`seed` must be an int, a list of ints (one per image) or None. Received: seed={seed!r}"
    )


def _batch_size(batch_size, text_embeds, seed, images):
    """The number of images: from the text rows, given images, a seed list or batch_size."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    sources = []
    if text_embeds is not None:
        sources.append(("text_embeds", int(text_embeds.shape[0])))
    for name, value in images:
        if value is not None:
            sources.append((name, int(value.shape[0])))
    if isinstance(seed, (list, tuple, np.ndarray)) and not sources and batch_size == 1:
        sources.append(("seed", len(seed)))
    if batch_size != 1 or not sources:
        sources.append(("batch_size", batch_size))
    name, batch = sources[0]
    for other, value in sources[1:]:
        if value != batch:
            raise ValueError(
                f"`{other}` gives {value} images but `{name}` gives {batch}. Received: "
                f"{other} for {value} images, {name} for {batch}"
            )
    if batch < 1:
        raise ValueError(f"There must be at least one image to sample. Received: {name} with 0")
    return batch


def to_pil(images):
    from PIL import Image

    array = np.clip(np.round(ops.convert_to_numpy(images) * 255.0), 0, 255).astype(np.uint8)
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in array]


def warn_untrained(cascade, first, last):
    steps = ops.convert_to_numpy(cascade.unet_train_steps)
    untrained = [n for n in range(first, last + 1) if steps[n - 1] == 0]
    if untrained:
        trained = [n for n in range(1, cascade.num_unets + 1) if steps[n - 1] > 0]
        hint = (
            f" Trained so far: {trained}; stop at the last trained stage with "
            f"`stop_at_unet_number={max(trained)}`."
            if trained
            else ""
        )
        warnings.warn(
            f"Unet(s) {untrained} have never been trained in this model: their samples "
            f"will be noise.{hint}",
            stacklevel=4,
        )


def generate(
    cascade,
    *,
    texts=None,
    text_masks=None,
    text_embeds=None,
    cond_images=None,
    inpaint_images=None,
    inpaint_masks=None,
    inpaint_resample_times=5,
    init_images=None,
    skip_steps=None,
    batch_size=1,
    cond_scale=1.0,
    cfg_remove_parallel_component=True,
    cfg_keep_parallel_frac=0.0,
    lowres_sample_noise_level=None,
    start_at_unet_number=1,
    start_image_or_video=None,
    stop_at_unet_number=None,
    return_all_unet_outputs=False,
    return_pil_images=False,
    seed=None,
    verbose=True,
    sampler_options=None,
):
    """Run the cascade; the arguments are `Cascade.sample`'s."""
    cascade.build()
    n = cascade.num_unets
    if texts is not None and text_embeds is not None:
        raise ValueError(
            "Pass `texts` or `text_embeds`, not both. Received: texts and text_embeds "
            f"(texts={texts!r:.60})"
        )
    if texts is not None and (isinstance(texts, str) or len(texts) == 0):
        raise ValueError(f"`texts` must be a non-empty list of strings. Received: texts={texts!r}")
    if not is_int(start_at_unet_number) or not 1 <= start_at_unet_number <= n:
        raise ValueError(
            f"`start_at_unet_number` must be an int in [1, {n}]. "
            f"Received: start_at_unet_number={start_at_unet_number!r}"
        )
    stop = n if stop_at_unet_number is None else stop_at_unet_number
    if not is_int(stop) or not start_at_unet_number <= stop <= n:
        raise ValueError(
            f"`stop_at_unet_number` must be an int in [{start_at_unet_number}, {n}]. "
            f"Received: stop_at_unet_number={stop_at_unet_number!r}"
        )
    text_embeds, text_masks = cascade._prepare_text(texts, text_embeds, text_masks, None)
    if text_embeds is not None:
        if text_embeds.shape[0] == 0:
            raise ValueError("`text_embeds` must have at least one row. Received: 0 rows")
        _check_finite(text_embeds, "text_embeds")

    # Images the caller gives, in [0, 1] (or [-1, 1] without auto-normalization).
    if inpaint_images is not None or inpaint_masks is not None:
        if inpaint_images is None or inpaint_masks is None:
            raise ValueError(
                "Inpainting needs both `inpaint_images` and `inpaint_masks`. Received: "
                f"inpaint_images={'given' if inpaint_images is not None else None}, "
                f"inpaint_masks={'given' if inpaint_masks is not None else None}"
            )
        inpaint_images = cascade._as_float_images(inpaint_images, "inpaint_images")
        inpaint_masks = ops.convert_to_tensor(inpaint_masks)
        if not is_int(inpaint_resample_times) or inpaint_resample_times < 1:
            raise ValueError(
                "`inpaint_resample_times` must be a positive int. "
                f"Received: inpaint_resample_times={inpaint_resample_times!r}"
            )
    if not isinstance(init_images, (list, tuple)):
        init_images = (init_images,) * n  # like the reference: one image for every stage
    init_images = per_unet(init_images, n, "init_images")
    init_images = tuple(
        None if image is None else cascade._as_float_images(image, "init_images")
        for image in init_images
    )
    start_images = None
    if start_at_unet_number > 1:
        if start_image_or_video is None:
            raise ValueError(
                "`start_at_unet_number > 1` needs `start_image_or_video`, the images of "
                f"stage {start_at_unet_number - 1}. Received: start_image_or_video=None"
            )
        start_images = cascade._as_float_images(start_image_or_video, "start_image_or_video")
    if cond_images is not None:
        cond_images = cascade._as_float_images(cond_images, "cond_images")
    batch = _batch_size(
        batch_size,
        text_embeds,
        seed,
        [
            ("inpaint_images", inpaint_images),
            ("start_image_or_video", start_images),
            ("cond_images", cond_images),
            ("init_images", next((i for i in init_images if i is not None), None)),
        ],
    )
    for name, images in [
        ("inpaint_images", inpaint_images),
        ("start_image_or_video", start_images),
        ("cond_images", cond_images),
        ("init_images", next((i for i in init_images if i is not None), None)),
    ]:
        if images is not None:
            _check_finite(images, name)
            if name != "cond_images" and images.shape[-1] != cascade.channels:
                raise ValueError(
                    f"`{name}` must have {cascade.channels} channels (channels-last). "
                    f"Received: {name}.shape={tuple(images.shape)}"
                )
    if inpaint_images is not None:
        expected = (batch, *inpaint_images.shape[1:3])
        if tuple(inpaint_masks.shape) != expected:
            raise ValueError(
                f"`inpaint_masks` must be (batch, height, width) = {expected}, like "
                f"`inpaint_images`. Received: inpaint_masks.shape={tuple(inpaint_masks.shape)}"
            )
    seeds = seeds_to_int32(resolve_seeds(seed, batch))

    cond_scales = [_check_number(s, "cond_scale") for s in per_unet(cond_scale, n, "cond_scale")]
    can_guide = cascade.condition_on_text and cascade.cond_drop_prob > 0
    if any(s != 1 for s in cond_scales) and cascade.condition_on_text and not can_guide:
        raise ValueError(
            "Classifier-free guidance (cond_scale != 1) needs a model trained with "
            f"cond_drop_prob > 0. Received: cond_scale={cond_scale}, cond_drop_prob=0"
        )
    keep_frac = _check_number(cfg_keep_parallel_frac, "cfg_keep_parallel_frac", 0.0, 1.0)
    level = cascade.lowres_sample_noise_level
    if lowres_sample_noise_level is not None:
        level = lowres_sample_noise_level
    level = _check_number(level, "lowres_sample_noise_level", 0.0, 1.0)
    skip_steps = per_unet(skip_steps, n, "skip_steps")
    settings = cascade._sampler_settings(sampler_options or {})
    for index, skip in enumerate(skip_steps):
        steps = settings[index]["num_steps"]
        if skip is not None and (not is_int(skip) or not 0 <= skip < steps):
            raise ValueError(
                f"`skip_steps` must be an int in [0, {steps - 1}] for unet {index + 1} "
                f"({steps} sampling steps). Received: skip_steps={skip_steps!r}"
            )
    warn_untrained(cascade, start_at_unet_number, stop)

    img = None
    if start_images is not None:
        size = cascade.image_sizes[start_at_unet_number - 2]
        img = resize_image_to(start_images, size, cascade.resize_mode)
    outputs = []
    progbar = keras.utils.Progbar(stop - start_at_unet_number + 1, verbose=int(bool(verbose)))
    for number in range(start_at_unet_number, stop + 1):
        index = number - 1
        if getattr(cascade.unets[index], "is_null", False):
            raise ValueError(
                f"Unet {number} is a NullUnet: there is nothing to sample from. "
                f"Received: start_at_unet_number={start_at_unet_number}"
            )
        size = cascade.image_sizes[index]
        runtime = dict(settings[index])
        static = runtime.pop("static")
        inputs = dict(
            seeds=seeds,
            cond_scale=cond_scales[index],
            keep_parallel_frac=keep_frac,
            lowres_noise_level=level,
            skip_steps=skip_steps[index] or 0,
            text_embeds=text_embeds,
            text_masks=text_masks,
            cond_images=cond_images,
            prev=img,
            init=None,
            inpaint=None,
            mask=None,
            **runtime,
        )
        if init_images[index] is not None:
            init = resize_image_to(init_images[index], size, cascade.resize_mode)
            inputs["init"] = cascade.normalize_img(init)
        if inpaint_images is not None:
            known = resize_image_to(inpaint_images, size, cascade.resize_mode)
            inputs["inpaint"] = cascade.normalize_img(known)
            mask = ops.cast(inpaint_masks, "float32")[..., None]
            inputs["mask"] = ops.cast(resize_image_to(mask, size, "nearest"), "bool")
        structure = StageStructure(
            guided=can_guide,
            remove_parallel_component=bool(cfg_remove_parallel_component),
            resample_times=int(inpaint_resample_times) if inpaint_images is not None else 1,
            sampler=static,
            given=tuple(k for k in OPTIONAL_INPUTS if inputs[k] is not None),
        )
        stage = compiled_stage_function(cascade, index, structure)
        img = cascade.unnormalize_img(stage(as_stage_inputs(inputs)))
        outputs.append(img)
        progbar.add(1)

    if return_pil_images:
        outputs = [to_pil(o) for o in outputs]
    return outputs if return_all_unet_outputs else outputs[-1]
