"""Export a trained cascade, sampler loop included, as one TensorFlow SavedModel.

```python
from imagen_keras.export import export_saved_model
export_saved_model(cascade, "exported/imagen")  # KERAS_BACKEND=tensorflow or jax
```

The SavedModel's `serving_default` signature runs every stage of the cascade (up to
`stop_at_unet_number`) in one call, as `cascade.sample` does, and TF Serving (or plain
`tf.saved_model.load`) can run it without Keras or this package:

Inputs (the text ones only for text-conditioned models, `cond_scale` only for models
trained with `cond_drop_prob > 0`):

- `text_embeds` float32 `(batch, max_text_len, text_embed_dim)`: the text encoder's output.
- `text_masks` bool `(batch, max_text_len)`: True for real tokens.
- `seed` int32 `(batch,)`: image `i`'s seed; the same seed gives the same image.
- `cond_scale` float32 `()`: classifier-free guidance scale.
- `num_steps` int32 `()`: sampling steps of every stage; `0` uses each stage's default.

Outputs:

- `images` float32 `(batch, size, size, channels)`: the last stage's images in [0, 1].
- `png_bytes` string `(batch,)`: the same images as PNG files (a name ending in `_bytes`:
  TF Serving's REST API sends them base64-encoded, `{"b64": ...}`).

Image `i` of a request depends only on `seed[i]` and its own text, so it equals
`cascade.sample(..., seed=[...])` in Python for the same inputs. Raw strings are not an
input: the T5 tokenizer is a `tensorflow_text` op that the standard model server and a
plain TensorFlow process do not load; encode the prompts on the client (or in a text
encoder service) and send `text_embeds` and `text_masks`.

The graph holds ordinary TensorFlow ops (a `While` loop per stage) when exported from
the TensorFlow backend. From the JAX backend the sampler is one `XlaCallModule` op
(StableHLO, through `jax2tf`), which needs a TensorFlow (Serving) build that has that
op. The torch backend cannot write SavedModels (`python -m imagen_keras.recipes.export`
re-runs itself on TensorFlow for a torch user; the checkpoint is backend-independent).
"""

import os
import shutil
import tempfile

import keras
from keras import ops

from imagen_keras.generation.stage import OPTIONAL_INPUTS, StageStructure, stage_function

SIGNATURE = "serving_default"
IMAGES_ONLY_SIGNATURE = "sample_images"


def _check_backend():
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise RuntimeError(
            "Exporting a SavedModel needs the TensorFlow or JAX backend; the "
            f"{backend} backend cannot write one. Received: KERAS_BACKEND={backend!r}. "
            "Load the same checkpoint with KERAS_BACKEND=tensorflow (checkpoints are "
            "backend-independent), or run `python -m imagen_keras.recipes.export`, which "
            "does that for you."
        )


def _stop_stage(cascade, stop_at_unet_number):
    n = cascade.num_unets
    stop = n if stop_at_unet_number is None else stop_at_unet_number
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= n:
        raise ValueError(
            f"`stop_at_unet_number` must be an int in [1, {n}]. "
            f"Received: stop_at_unet_number={stop_at_unet_number!r}"
        )
    for index in range(stop):
        if getattr(cascade.unets[index], "is_null", False):
            raise ValueError(
                f"Unet {index + 1} is a NullUnet: an exported cascade samples from its first "
                f"stage. Received: stop_at_unet_number={stop}"
            )
    return stop


def sampling_function(
    cascade,
    *,
    stop_at_unet_number=None,
    sampler_options=None,
    cfg_remove_parallel_component=True,
    cfg_keep_parallel_frac=0.0,
    lowres_sample_noise_level=None,
):
    """`(fn, inputs)`: `fn(**tensors) -> images in [0, 1]`, the whole cascade as one
    function of the serving inputs (named in `inputs`), in `keras.ops` only.

    The settings given here are fixed in the function; `seed`, `cond_scale`, `num_steps`
    and the text are inputs (see the module docstring).
    """
    cascade.build()
    stop = _stop_stage(cascade, stop_at_unet_number)
    settings = cascade._sampler_settings(dict(sampler_options or {}))
    guided = bool(cascade.condition_on_text and cascade.cond_drop_prob > 0)
    level = cascade.lowres_sample_noise_level
    if lowres_sample_noise_level is not None:
        level = lowres_sample_noise_level
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(
            "`lowres_sample_noise_level` must be in [0, 1]. "
            f"Received: lowres_sample_noise_level={lowres_sample_noise_level!r}"
        )
    keep_frac = float(cfg_keep_parallel_frac)
    if not 0.0 <= keep_frac <= 1.0:
        raise ValueError(
            "`cfg_keep_parallel_frac` must be in [0, 1]. "
            f"Received: cfg_keep_parallel_frac={cfg_keep_parallel_frac!r}"
        )
    inputs = []
    if cascade.condition_on_text:
        inputs += ["text_embeds", "text_masks"]
    inputs.append("seed")
    if guided:
        inputs.append("cond_scale")
    inputs.append("num_steps")

    def sample(**tensors):
        requested = ops.cast(tensors["num_steps"], "int32")
        img = None
        for index in range(stop):
            runtime = dict(settings[index])
            static = runtime.pop("static")
            default_steps = runtime.pop("num_steps")
            stage_inputs = {name: None for name in OPTIONAL_INPUTS}
            stage_inputs.update(
                seeds=ops.cast(tensors["seed"], "int32"),
                cond_scale=ops.cast(tensors.get("cond_scale", 1.0), "float32"),
                keep_parallel_frac=ops.convert_to_tensor(keep_frac, "float32"),
                lowres_noise_level=ops.convert_to_tensor(level, "float32"),
                skip_steps=ops.convert_to_tensor(0, "int32"),
                num_steps=ops.where(requested > 0, requested, default_steps),
                prev=img,
                **{k: ops.convert_to_tensor(v, "float32") for k, v in runtime.items()},
            )
            if cascade.condition_on_text:
                stage_inputs["text_embeds"] = ops.cast(tensors["text_embeds"], "float32")
                stage_inputs["text_masks"] = ops.cast(tensors["text_masks"], "bool")
            structure = StageStructure(
                guided=guided,
                remove_parallel_component=bool(cfg_remove_parallel_component),
                resample_times=1,
                sampler=static,
                given=tuple(k for k in OPTIONAL_INPUTS if stage_inputs[k] is not None),
            )
            x = stage_function(cascade, index, structure)(stage_inputs)
            img = cascade.unnormalize_img(x)
        return img

    return sample, inputs


def _input_specs(cascade, names):
    import tensorflow as tf

    length, width = cascade.max_text_len, cascade.text_embed_dim
    specs = {
        "text_embeds": tf.TensorSpec((None, length, width), tf.float32, name="text_embeds"),
        "text_masks": tf.TensorSpec((None, length), tf.bool, name="text_masks"),
        "seed": tf.TensorSpec((None,), tf.int32, name="seed"),
        "cond_scale": tf.TensorSpec((), tf.float32, name="cond_scale"),
        "num_steps": tf.TensorSpec((), tf.int32, name="num_steps"),
    }
    return [specs[name] for name in names]


def _encode_png(images):
    import tensorflow as tf

    pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
    return tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)


def export_saved_model(
    cascade,
    path,
    *,
    stop_at_unet_number=None,
    sampler_options=None,
    cfg_remove_parallel_component=True,
    cfg_keep_parallel_frac=0.0,
    lowres_sample_noise_level=None,
    overwrite=False,
    verbose=False,
):
    """Write `cascade` (its current weights; load a checkpoint with EMA weights first) as
    a SavedModel at `path` with the `serving_default` signature of the module docstring,
    plus `sample_images` (the same inputs, `images` only).

    Args:
        cascade: a built, trained `Imagen` or `ElucidatedImagen`.
        path: the SavedModel folder (local, or a URL tf.io.gfile writes). A local
            export is written to a temporary folder beside it and renamed into place.
        stop_at_unet_number: the last stage to run (default: all).
        sampler_options: `cascade.sample`'s sampler keywords, fixed at export (e.g.
            `{"sampler": "ddim", "ddim_steps": 50}` for `Imagen`); the `num_steps` input
            overrides the step count per request.
        cfg_remove_parallel_component, cfg_keep_parallel_frac,
            lowres_sample_noise_level: as in `cascade.sample`, fixed at export.
        overwrite: replace an existing folder at `path` (else `FileExistsError`).

    Returns:
        `path`.
    """
    _check_backend()
    import tensorflow as tf

    sample, names = sampling_function(
        cascade,
        stop_at_unet_number=stop_at_unet_number,
        sampler_options=sampler_options,
        cfg_remove_parallel_component=cfg_remove_parallel_component,
        cfg_keep_parallel_frac=cfg_keep_parallel_frac,
        lowres_sample_noise_level=lowres_sample_noise_level,
    )
    specs = _input_specs(cascade, names)
    path = os.fspath(path)
    remote = "://" in path
    if not remote and os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists; pass overwrite=True to replace it.")

    archive = keras.export.ExportArchive()
    archive.track(cascade)
    kwargs = {}
    if keras.backend.backend() == "jax":
        # The sampler draws its noise from `seed` (no state), and every batch dimension
        # is the same symbol.
        shapes = [
            "(batch" + "".join(f", {d}" for d in s.shape[1:]) + ")" if s.shape.rank else "()"
            for s in specs
        ]
        kwargs = {
            "is_static": True,
            "jax2tf_kwargs": {"polymorphic_shapes": shapes, "with_gradient": False},
        }
    images_fn = archive.add_endpoint(
        IMAGES_ONLY_SIGNATURE,
        lambda *args: {"images": sample(**dict(zip(names, args)))},
        input_signature=specs,
        **kwargs,
    )

    @tf.function(input_signature=specs)
    def serve(*args):
        tensors = dict(zip(names, args))
        checks = [  # a clear error for a request whose rows disagree, before sampling
            tf.debugging.assert_equal(
                tf.shape(tensors[name])[0],
                tf.shape(tensors["seed"])[0],
                message=f"`seed` must have one entry per row of `{name}`",
            )
            for name in ("text_embeds", "text_masks")
            if name in tensors
        ]
        with tf.control_dependencies(checks):
            images = images_fn(*args)["images"]
        return {"images": images, "png_bytes": _encode_png(images)}

    serve.get_concrete_function()
    archive.add_endpoint(SIGNATURE, serve)

    if remote:
        archive.write_out(path, verbose=verbose)
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        archive.write_out(os.path.join(staging, "model"), verbose=verbose)
        if os.path.exists(path):
            old = os.path.join(staging, "old")
            os.rename(path, old)
        os.rename(os.path.join(staging, "model"), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


__all__ = ["export_saved_model", "sampling_function"]
