"""Bad input across the public API: one table of what a user may get wrong (issue #12).

Each row is a call over shared tiny objects, the error class it must raise and a
fragment of the message. Unless a row is marked `wrapped` (an error raised inside a
Keras `__call__`, which Keras prefixes with "Exception encountered when calling ..."),
the fragment must be on the first line of the message: the package's own words are the
first thing the user reads. Nearly every row fails before a weight is built; none
compiles a step. The table covers every case listed under "Why" in issue #12; the
sampling rows repeat those of tests/test_generation.py on purpose, so that this is the
one place that lists them. Two cases of "Why" are not refusals and are tested where
they are handled: a NaN pixel or NaN text in training data is a skipped, counted step
(tests/test_training_safety.py), and an interrupted save keeps the previous file
(tests/test_saving.py).
"""

import contextlib
import functools
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from imagen_keras import ElucidatedImagen, Imagen, NullUnet, load_model
from imagen_keras.convert.__main__ import main as convert_main
from imagen_keras.convert.checkpoint_io import read_checkpoint
from imagen_keras.saving import DamagedFileError, save_model
from imagen_keras.text import EmbeddingCache, T5Encoder, load_text_encoder
from imagen_keras.text.cache import main as cache_main
from imagen_keras.text.cache import read_captions
from imagen_keras.text.embedding_cache import CaptionNotCachedError
from tests.conftest import SIZES, TEXT_DIM, colour_data, tiny_unet

pytestmark = pytest.mark.filterwarnings("ignore:The base dimension")

IMAGES, EMBEDS = colour_data(2)
NAN = float("nan")


class CommandError(Exception):
    """A command-line entry point exited with an error; the message is its stderr."""


def command(main, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse
            status = e.code
    if status:
        raise CommandError(err.getvalue().strip())


def with_pixel(images, value):
    images = images.copy()
    images[0, 0, 0, 0] = value
    return images


# ------------------------------------------------------------------ shared objects


def _cascade_kwargs(**kwargs):
    return {**dict(image_sizes=SIZES, text_embed_dim=TEXT_DIM, timesteps=2), **kwargs}


def make_imagen(unets=None, **kwargs):
    return Imagen(
        unets if unets is not None else [tiny_unet(), tiny_unet()], **_cascade_kwargs(**kwargs)
    )


def make_elucidated(unets=None, **kwargs):
    kwargs = {**dict(image_sizes=SIZES, text_embed_dim=TEXT_DIM, num_sample_steps=2), **kwargs}
    return ElucidatedImagen(unets if unets is not None else [tiny_unet(), tiny_unet()], **kwargs)


def same_unet_twice():
    unet = tiny_unet()
    return [unet, unet]


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _files(folder):
    """Bad files for the converter, the loader and the caches."""
    files = SimpleNamespace(folder=str(folder))
    text = b"hello world\nthis is a text file\n"
    files.text_pt = _write(folder / "notes.pt", text)
    files.empty_pt = _write(folder / "empty.pt", b"")
    files.text_npz = _write(folder / "notes.npz", text)
    files.text_safetensors = _write(folder / "notes.safetensors", text)
    files.missing = str(folder / "missing.pt")
    files.output = str(folder / "out.keras")
    files.evil_marker = str(folder / "pwned")

    class Evil:  # a pickle that would create a folder when unpickled
        def __reduce__(self):
            return (os.mkdir, (files.evil_marker,))

    files.evil_pt = _write(folder / "evil.pt", pickle.dumps({"w": Evil()}, protocol=2))

    # .keras files: a good one (a tiny Keras model), then damaged copies.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    files.good_keras = str(folder / "good.keras")
    save_model(model, files.good_keras)
    with open(files.good_keras, "rb") as f:
        good = f.read()
    files.truncated_keras = _write(folder / "truncated.keras", good[: len(good) // 2])
    files.empty_keras = _write(folder / "empty.keras", b"")
    files.text_keras = _write(folder / "notes.keras", text)
    files.no_config_keras = str(folder / "no_config.keras")
    with zipfile.ZipFile(files.no_config_keras, "w") as archive:
        archive.writestr("metadata.json", "{}")
    files.missing_keras = str(folder / "missing.keras")
    files.model = model

    # Embedding caches: none, a foreign manifest, an unfinished one and a finished one.
    for name in ("no_cache", "foreign_cache", "unfinished_cache", "cache"):
        (folder / name).mkdir()
        setattr(files, name, str(folder / name))
    with open(folder / "foreign_cache" / "manifest.json", "w") as f:
        json.dump({"format": "something else"}, f)
    manifest = dict(
        format="imagen_keras.text.EmbeddingCache",
        version=1,
        encoder_fingerprint="test",
        embed_dim=TEXT_DIM,
        max_length=8,
        dtype="float32",
        num_captions=2,
        num_tokens=5,
        rows_done=1,
    )
    with open(folder / "unfinished_cache" / "manifest.json", "w") as f:
        json.dump(manifest, f)
    with open(folder / "cache" / "manifest.json", "w") as f:
        json.dump({**manifest, "rows_done": 2}, f)
    with open(folder / "cache" / "captions.json", "w") as f:
        json.dump(["a red cube", "a blue ball"], f)
    np.save(folder / "cache" / "lengths.npy", np.array([2, 3], "int32"))
    np.save(folder / "cache" / "embeds.npy", np.ones((5, TEXT_DIM), "float32"))
    files.bad_captions = _write(folder / "captions.json", b'{"not": "a list"}')
    files.captions = _write(folder / "captions.txt", b"a red cube\n")
    return files


class Env:
    """The shared objects, each made on first use (most rows need none of them)."""

    def __init__(self, folder):
        self.folder = folder

    @functools.cached_property
    def imagen(self):
        imagen = make_imagen()
        imagen.compile(optimizer="adam", unet_number=1)  # builds; nothing is traced
        return imagen

    @functools.cached_property
    def elucidated(self):
        return make_elucidated(tiny_unet(), image_sizes=8)

    @functools.cached_property
    def unconditional(self):
        return Imagen(tiny_unet(), image_sizes=8, condition_on_text=False, timesteps=2)

    @property
    def unet(self):
        """A built unet (the cascade's first): its own `call` checks its inputs (an
        unbuilt one is first built from the input shape, and a bad size then fails in
        Keras' shape inference)."""
        return self.imagen.unets[0]

    @functools.cached_property
    def encoder(self):
        return T5Encoder(
            vocabulary_size=8, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8
        )

    @functools.cached_property
    def files(self):
        return _files(self.folder)

    @functools.cached_property
    def tf(self):
        import tensorflow as tf

        return tf


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("bad_inputs"))


# ------------------------------------------------------------------ the table


@dataclass
class Bad:
    """One bad input: `call(env)` must raise `error` with `fragment` in its message."""

    id: str
    call: Callable
    error: type
    fragment: str
    wrapped: bool = False  # raised inside a Keras `__call__` (fragment not on line 1)


def fit(data, **kwargs):
    return lambda e: e.imagen.fit(data, epochs=1, verbose=0, **kwargs)


def dataset(e, *parts, batch=2):
    data = e.tf.data.Dataset.from_tensor_slices(parts[0] if len(parts) == 1 else parts)
    return data.batch(batch) if batch else data


def sample(**kwargs):
    return lambda e: e.imagen.sample(verbose=0, **kwargs)


UNET = [
    Bad("unet-dim-0", lambda e: tiny_unet(dim=0), ValueError, "dim=0"),
    Bad("unet-attn-heads-1", lambda e: tiny_unet(attn_heads=1), ValueError, "attn_heads=1"),
    Bad("unet-dim-mults-empty", lambda e: tiny_unet(dim_mults=()), ValueError, "dim_mults=()"),
    Bad("unet-channels-0", lambda e: tiny_unet(channels=0), ValueError, "channels=0"),
    Bad(
        "unet-even-kernel",
        lambda e: tiny_unet(final_conv_kernel_size=2),
        ValueError,
        "final_conv_kernel_size=2",
    ),
    Bad("unet-resize-mode", lambda e: tiny_unet(resize_mode="cubic"), ValueError, "'cubic'"),
    Bad(
        "unet-layer-attns-length",
        lambda e: tiny_unet(layer_attns=(True, True, True)),
        ValueError,
        "layer_attns",
    ),
    Bad(
        "unet-size-not-divisible",
        lambda e: e.unet(np.zeros((1, 15, 15, 3)), np.zeros((1,)), text_embeds=EMBEDS[:1]),
        ValueError,
        "divisible by 2",
        wrapped=True,
    ),
    Bad(
        "unet-one-channel",
        lambda e: e.unet(np.zeros((1, 8, 8, 1)), np.zeros((1,)), text_embeds=EMBEDS[:1]),
        ValueError,
        "x.shape=(1, 8, 8, 1)",
        wrapped=True,
    ),
    Bad(
        "unet-text-width",
        lambda e: e.unet(np.zeros((1, 8, 8, 3)), np.zeros((1,)), text_embeds=EMBEDS[:1, :, :8]),
        ValueError,
        "text_embeds.shape=(1, 3, 8)",
        wrapped=True,
    ),
    Bad(
        "unet-lowres-not-expected",
        lambda e: e.unet(
            np.zeros((1, 8, 8, 3)), np.zeros((1,)), lowres_cond_img=np.zeros((1, 8, 8, 3))
        ),
        ValueError,
        "unet has lowres_cond=False",
        wrapped=True,
    ),
]

IMAGEN = [
    Bad(
        "image-sizes-0",
        lambda e: make_imagen(image_sizes=(0, 16)),
        ValueError,
        "image_sizes=(0, 16)",
    ),
    Bad(
        "image-sizes-negative",
        lambda e: make_imagen(image_sizes=(-8, 16)),
        ValueError,
        "image_sizes=(-8, 16)",
    ),
    Bad(
        "image-sizes-float",
        lambda e: make_imagen(image_sizes=(8, 16.5)),
        ValueError,
        "image_sizes=(8, 16.5)",
    ),
    Bad(
        "image-sizes-not-divisible",
        lambda e: make_imagen(image_sizes=(8, 15)),
        ValueError,
        "divisible by each unet's total downsampling: unet 2 downsamples by 2",
    ),
    Bad(
        "image-sizes-not-divisible-memory-efficient",
        lambda e: make_imagen([tiny_unet(), tiny_unet(memory_efficient=True)], image_sizes=(8, 18)),
        ValueError,
        "unet 2 downsamples by 4",
    ),
    Bad(
        "image-sizes-equal",
        lambda e: make_imagen(image_sizes=(16, 16)),
        ValueError,
        "must increase",
    ),
    Bad(
        "image-sizes-decreasing",
        lambda e: make_imagen(image_sizes=(16, 8)),
        ValueError,
        "must increase",
    ),
    Bad(
        "image-sizes-count",
        lambda e: make_imagen(image_sizes=(8, 16, 32)),
        ValueError,
        "one value per unet (2)",
    ),
    Bad(
        "text-embed-dim-negative",
        lambda e: make_imagen(text_embed_dim=-5),
        ValueError,
        "text_embed_dim=-5",
    ),
    Bad(
        "text-embed-dim-0", lambda e: make_imagen(text_embed_dim=0), ValueError, "text_embed_dim=0"
    ),
    Bad(
        "text-embed-dim-float",
        lambda e: make_imagen(text_embed_dim=1.5),
        ValueError,
        "text_embed_dim=1.5",
    ),
    Bad(
        "unknown-text-encoder-width",
        lambda e: make_imagen(text_embed_dim=None, text_encoder_name="no-such-t5"),
        ValueError,
        "no-such-t5",
    ),
    Bad(
        "same-unet-twice",
        lambda e: make_imagen(same_unet_twice()),
        ValueError,
        "The same Unet object",
    ),
    Bad(
        "non-unet-layer",
        lambda e: make_imagen([tiny_unet(), keras.layers.Dense(3)]),
        ValueError,
        "unets[1]=<Dense",
    ),
    Bad(
        "non-unet-object",
        lambda e: make_imagen(["unet", tiny_unet()]),
        ValueError,
        "unets[0]='unet'",
    ),
    Bad(
        "null-unet-second",
        lambda e: make_imagen([tiny_unet(), NullUnet()]),
        ValueError,
        "NullUnet can only be the first",
    ),
    Bad("no-unets", lambda e: make_imagen([]), ValueError, "unets=[]"),
    Bad("channels-0", lambda e: make_imagen(channels=0), ValueError, "channels=0"),
    Bad(
        "cond-drop-prob-nan",
        lambda e: make_imagen(cond_drop_prob=NAN),
        ValueError,
        "cond_drop_prob=nan",
    ),
    Bad(
        "cond-drop-prob-1.5",
        lambda e: make_imagen(cond_drop_prob=1.5),
        ValueError,
        "cond_drop_prob=1.5",
    ),
    Bad(
        "cond-drop-prob-str",
        lambda e: make_imagen(cond_drop_prob="0.1"),
        ValueError,
        "cond_drop_prob='0.1'",
    ),
    Bad(
        "thresholding-percentile",
        lambda e: make_imagen(dynamic_thresholding_percentile=1.5),
        ValueError,
        "dynamic_thresholding_percentile=1.5",
    ),
    Bad(
        "resize-mode", lambda e: make_imagen(resize_mode="cubic"), ValueError, "resize_mode='cubic'"
    ),
    Bad(
        "lowres-noise-schedule",
        lambda e: make_imagen(lowres_noise_schedule="quadratic"),
        ValueError,
        "lowres_noise_schedule='quadratic'",
    ),
    Bad(
        "lowres-sample-noise-level",
        lambda e: make_imagen(lowres_sample_noise_level=5.0),
        ValueError,
        "lowres_sample_noise_level=5.0",
    ),
    Bad(
        "only-train-unet-0",
        lambda e: make_imagen(only_train_unet_number=0),
        ValueError,
        "only_train_unet_number=0",
    ),
    Bad(
        "only-train-unet-3",
        lambda e: make_imagen(only_train_unet_number=3),
        ValueError,
        "only_train_unet_number=3",
    ),
    Bad(
        "crop-first-unet",
        lambda e: make_imagen(random_crop_sizes=(8, 8)),
        ValueError,
        "never randomly cropped",
    ),
    Bad(
        "crop-too-large",
        lambda e: make_imagen(random_crop_sizes=(None, 32)),
        ValueError,
        "random_crop_sizes=(None, 32)",
    ),
    Bad(
        "condition-on-text-str",
        lambda e: make_imagen(condition_on_text="no"),
        ValueError,
        "condition_on_text='no'",
    ),
    Bad("timesteps-0", lambda e: make_imagen(timesteps=0), ValueError, "timesteps=0"),
    Bad("timesteps-negative", lambda e: make_imagen(timesteps=-5), ValueError, "timesteps=-5"),
    Bad("loss-type", lambda e: make_imagen(loss_type="l3"), ValueError, "'l3'"),
    Bad("pred-objective", lambda e: make_imagen(pred_objectives="eps"), ValueError, "'eps'"),
    Bad(
        "noise-schedule",
        lambda e: make_imagen(noise_schedules="quadratic"),
        ValueError,
        "quadratic",
    ),
    Bad("min-snr-gamma", lambda e: make_imagen(min_snr_gamma=-1), ValueError, "min_snr_gamma=-1"),
    Bad("seed-str", lambda e: make_imagen(seed="x"), ValueError, "seed='x'"),
]

ELUCIDATED = [
    Bad(
        "edm-image-sizes",
        lambda e: make_elucidated(image_sizes=(8, 15)),
        ValueError,
        "image_sizes=(8, 15)",
    ),
    Bad(
        "edm-text-embed-dim",
        lambda e: make_elucidated(text_embed_dim=-1),
        ValueError,
        "text_embed_dim=-1",
    ),
    Bad(
        "edm-same-unet",
        lambda e: make_elucidated(same_unet_twice()),
        ValueError,
        "The same Unet object",
    ),
    Bad(
        "edm-steps-0",
        lambda e: make_elucidated(num_sample_steps=0),
        ValueError,
        "num_sample_steps=(0, 0)",
    ),
    Bad("edm-sigma-min-0", lambda e: make_elucidated(sigma_min=0.0), ValueError, "sigma_min"),
    Bad(
        "edm-sigma-max-inf",
        lambda e: make_elucidated(sigma_max=float("inf")),
        ValueError,
        "sigma_max=(inf, inf)",
    ),
    Bad(
        "edm-sigma-max-low",
        lambda e: make_elucidated(sigma_max=0.001),
        ValueError,
        "larger than `sigma_min`",
    ),
    Bad("edm-rho-nan", lambda e: make_elucidated(rho=NAN), ValueError, "rho=(nan, nan)"),
    Bad("edm-churn", lambda e: make_elucidated(S_churn=-1), ValueError, "S_churn=(-1, -1)"),
    Bad(
        "edm-sample-sigma-min",
        lambda e: e.elucidated.sample(text_embeds=EMBEDS, sigma_min=0.0, verbose=0),
        ValueError,
        "sigma_min",
    ),
    Bad(
        "edm-sample-skip-steps",
        lambda e: e.elucidated.sample(text_embeds=EMBEDS, skip_steps=2, verbose=0),
        ValueError,
        "skip_steps",
    ),
]

SAMPLE = [
    Bad("texts-and-embeds", sample(texts=["a", "b"], text_embeds=EMBEDS), ValueError, "not both"),
    Bad("empty-texts", sample(texts=[]), ValueError, "texts=[]"),
    Bad("empty-text-embeds", sample(text_embeds=EMBEDS[:0]), ValueError, "at least one row"),
    Bad("nan-text-embeds", sample(text_embeds=np.full_like(EMBEDS, NAN)), ValueError, "NaN"),
    Bad("batch-size-ignored", sample(text_embeds=EMBEDS, batch_size=3), ValueError, "batch_size"),
    Bad("batch-size-0", sample(text_embeds=EMBEDS, batch_size=0), ValueError, "batch_size=0"),
    Bad(
        "batch-size-negative",
        sample(text_embeds=EMBEDS, batch_size=-1),
        ValueError,
        "batch_size=-1",
    ),
    Bad(
        "batch-size-float", sample(text_embeds=EMBEDS, batch_size=2.5), ValueError, "batch_size=2.5"
    ),
    Bad("cond-scale-nan", sample(text_embeds=EMBEDS, cond_scale=NAN), ValueError, "cond_scale=nan"),
    Bad(
        "cond-scale-inf",
        sample(text_embeds=EMBEDS, cond_scale=float("inf")),
        ValueError,
        "cond_scale=inf",
    ),
    Bad(
        "sample-lowres-noise-level",
        sample(text_embeds=EMBEDS, lowres_sample_noise_level=5.0),
        ValueError,
        "lowres_sample_noise_level=5.0",
    ),
    Bad("skip-steps-all", sample(text_embeds=EMBEDS, skip_steps=2), ValueError, "skip_steps"),
    Bad("skip-steps-negative", sample(text_embeds=EMBEDS, skip_steps=-1), ValueError, "skip_steps"),
    Bad(
        "init-images-one-channel",
        sample(text_embeds=EMBEDS, init_images=IMAGES[..., :1]),
        ValueError,
        "init_images` must have 3 channels",
    ),
    Bad(
        "init-images-batch",
        sample(text_embeds=EMBEDS, init_images=IMAGES[:1]),
        ValueError,
        "init_images",
    ),
    Bad(
        "seed-list-length",
        sample(text_embeds=EMBEDS, seed=[1, 2, 3]),
        ValueError,
        "one entry per image",
    ),
    Bad(
        "start-at-unet-0",
        sample(text_embeds=EMBEDS, start_at_unet_number=0),
        ValueError,
        "start_at_unet_number=0",
    ),
    Bad(
        "stop-at-unet-3",
        sample(text_embeds=EMBEDS, stop_at_unet_number=3),
        ValueError,
        "stop_at_unet_number=3",
    ),
    Bad(
        "inpaint-without-masks",
        sample(text_embeds=EMBEDS, inpaint_images=IMAGES),
        ValueError,
        "inpaint_masks",
    ),
    Bad(
        "inpaint-mask-shape",
        sample(text_embeds=EMBEDS, inpaint_images=IMAGES, inpaint_masks=np.ones((2, 16, 8), bool)),
        ValueError,
        "inpaint_masks.shape=(2, 16, 8)",
    ),
    Bad("unknown-sampler", sample(text_embeds=EMBEDS, sampler="euler"), ValueError, "'euler'"),
    Bad(
        "unknown-text-encoder",
        lambda e: make_imagen(text_encoder_name="no-such-t5").encode_text(["a"]),
        ValueError,
        "Unknown T5 encoder 'no-such-t5'",
    ),
]

FIT = [
    Bad(
        "fit-float-255",
        fit({"images": IMAGES * 255.0, "text_embeds": EMBEDS}),
        ValueError,
        "divide floats by 255",
    ),
    Bad(
        "fit-images-in-minus-one-one",
        fit({"images": IMAGES * 2 - 1, "text_embeds": EMBEDS}),
        ValueError,
        "must be in [0.0, 1.0]",
    ),
    Bad(
        "fit-inf-pixel",
        fit({"images": with_pixel(IMAGES, np.inf), "text_embeds": EMBEDS}),
        ValueError,
        "`images` must be in [0.0, 1.0]",
    ),
    Bad(
        "fit-lengths-differ",
        fit({"images": IMAGES, "text_embeds": EMBEDS[:1]}),
        ValueError,
        "one row per image",
    ),
    Bad("fit-tuple", fit((IMAGES, EMBEDS)), ValueError, 'takes a dict with keys "images"'),
    Bad(
        "fit-x-and-y",
        lambda e: e.imagen.fit(IMAGES, EMBEDS, verbose=0),
        ValueError,
        "takes no targets `y`",
    ),
    Bad("fit-no-images", fit({"text_embeds": EMBEDS}), ValueError, 'without "images"'),
    Bad(
        "fit-unknown-key",
        fit({"images": IMAGES, "text_embeds": EMBEDS, "labels": EMBEDS}),
        ValueError,
        "Unknown input keys ['labels']",
    ),
    Bad("fit-images-alone-with-text-model", fit(IMAGES), ValueError, "text-conditioned"),
    Bad(
        "evaluate-text-to-unconditional",
        lambda e: e.unconditional.evaluate({"images": IMAGES, "text_embeds": EMBEDS}, verbose=0),
        ValueError,
        "condition_on_text=False",
    ),
    Bad(
        "fit-one-channel",
        fit({"images": IMAGES[..., :1], "text_embeds": EMBEDS}),
        ValueError,
        "images.shape=(2, 16, 16, 1)",
    ),
    Bad(
        "fit-text-width",
        fit({"images": IMAGES, "text_embeds": EMBEDS[..., :8]}),
        ValueError,
        "text_embeds.shape=(2, 3, 8)",
    ),
    Bad(
        "fit-validation-tuple",
        fit({"images": IMAGES, "text_embeds": EMBEDS}, validation_data=(IMAGES, EMBEDS)),
        ValueError,
        "validation_data",
    ),
    Bad(
        "fit-dataset-of-tuples",
        lambda e: e.imagen.fit(dataset(e, IMAGES, EMBEDS), verbose=0),
        ValueError,
        "not of tuples",
    ),
    Bad(
        "fit-dataset-unbatched",
        lambda e: e.imagen.fit(
            dataset(e, {"images": IMAGES, "text_embeds": EMBEDS}, batch=0), verbose=0
        ),
        ValueError,
        "unbatched",
    ),
    Bad(
        "fit-dataset-no-images",
        lambda e: e.imagen.fit(dataset(e, {"text_embeds": EMBEDS}), verbose=0),
        ValueError,
        'without "images"',
    ),
    Bad(
        "train-on-batch-tuple",
        lambda e: e.imagen.train_on_batch((IMAGES, EMBEDS)),
        ValueError,
        "`train_on_batch` takes a dict",
    ),
    Bad(
        "train-on-batch-lengths",
        lambda e: e.imagen.train_on_batch({"images": IMAGES, "text_embeds": EMBEDS[:1]}),
        ValueError,
        "one row per image",
    ),
    Bad(
        "evaluate-no-images",
        lambda e: e.imagen.evaluate({"text_embeds": EMBEDS}, verbose=0),
        ValueError,
        'without "images"',
    ),
    Bad(
        "compile-unet-0",
        lambda e: make_imagen().compile(optimizer="adam", unet_number=0),
        ValueError,
        "unet_number=0",
    ),
    Bad(
        "compile-unet-3",
        lambda e: make_imagen().compile(optimizer="adam", unet_number=3),
        ValueError,
        "unet_number=3",
    ),
    Bad(
        "compile-no-unet-number",
        lambda e: make_imagen().compile(optimizer="adam"),
        ValueError,
        "unet_number=None",
    ),
    Bad(
        "compile-loss",
        lambda e: make_imagen().compile(optimizer="adam", loss="mse", unet_number=1),
        ValueError,
        "takes no `loss`",
    ),
    Bad(
        "call-unet-0",
        lambda e: e.imagen(IMAGES, text_embeds=EMBEDS, unet_number=0),
        ValueError,
        "unet_number=0",
        wrapped=True,
    ),
    Bad(
        "call-images-too-small",
        lambda e: e.imagen(IMAGES[:, :8, :8], text_embeds=EMBEDS, unet_number=2),
        ValueError,
        "at least that large",
        wrapped=True,
    ),
]

TEXT = [
    Bad("t5-vocabulary-0", lambda e: T5Encoder(0, 1, 1, 4, 8), ValueError, "vocabulary_size=0"),
    Bad(
        "t5-tokenizer-type",
        lambda e: T5Encoder(8, 1, 1, 4, 8, tokenizer="t5"),
        ValueError,
        "tokenizer='t5'",
    ),
    Bad(
        "t5-one-string", lambda e: e.encoder.encode("a red cube"), ValueError, "not a single string"
    ),
    Bad("t5-not-strings", lambda e: e.encoder.encode([1, 2]), ValueError, "only strings"),
    Bad(
        "t5-2d-texts",
        lambda e: e.encoder.encode(np.array([["a"]])),
        ValueError,
        "texts.shape=(1, 1)",
    ),
    Bad("t5-pad-to-0", lambda e: e.encoder.encode(["a"], pad_to=0), ValueError, "pad_to=0"),
    Bad("t5-no-tokenizer", lambda e: e.encoder.encode(["a"]), ValueError, "no tokenizer"),
    Bad(
        "t5-unknown-name",
        lambda e: T5Encoder.from_preset("no-such-t5"),
        ValueError,
        "Unknown T5 encoder",
    ),
    Bad("t5-load-not-a-name", lambda e: load_text_encoder(42), ValueError, "encoder=42"),
    Bad("encoder-width", lambda e: e.imagen.set_text_encoder(e.encoder), ValueError, "width 4"),
    Bad(
        "encoder-for-unconditional",
        lambda e: e.unconditional.set_text_encoder(e.encoder),
        ValueError,
        "condition_on_text=False",
    ),
]

CACHE = [
    Bad(
        "cache-missing",
        lambda e: EmbeddingCache(e.files.no_cache),
        ValueError,
        "No embedding cache",
    ),
    Bad(
        "cache-foreign-manifest",
        lambda e: EmbeddingCache(e.files.foreign_cache),
        ValueError,
        "not an imagen_keras embedding cache",
    ),
    Bad(
        "cache-unfinished",
        lambda e: EmbeddingCache(e.files.unfinished_cache),
        ValueError,
        "unfinished (1 of 2",
    ),
    Bad(
        "cache-one-string",
        lambda e: EmbeddingCache(e.files.cache).lookup("a red cube"),
        ValueError,
        "not one string",
    ),
    Bad(
        "cache-unknown-caption",
        lambda e: EmbeddingCache(e.files.cache).lookup(["a green cone"]),
        CaptionNotCachedError,
        "'a green cone' is not in the embedding cache",
    ),
    Bad(
        "cache-pad-to-0",
        lambda e: EmbeddingCache(e.files.cache).lookup(["a red cube"], pad_to=0),
        ValueError,
        "pad_to=0",
    ),
    Bad(
        "cache-build-no-captions",
        lambda e: EmbeddingCache.build(e.encoder, [], e.files.no_cache),
        ValueError,
        "captions=[]",
    ),
    Bad(
        "cache-build-dtype",
        lambda e: EmbeddingCache.build(e.encoder, ["a"], e.files.no_cache, dtype="int8"),
        ValueError,
        "dtype='int8'",
    ),
    Bad(
        "cache-captions-file",
        lambda e: read_captions(e.files.bad_captions),
        ValueError,
        "JSON list of strings",
    ),
    Bad(
        "cache-command-unknown-encoder",
        lambda e: command(
            cache_main,
            ["--encoder", "no-such-t5", "--captions", e.files.captions, "--out", e.files.no_cache],
        ),
        CommandError,
        "Unknown T5 encoder 'no-such-t5'",
    ),
]

CONVERTER = [
    Bad(
        "read-text-file",
        lambda e: read_checkpoint(e.files.text_pt),
        ValueError,
        "not a torch checkpoint",
    ),
    Bad(
        "read-empty-file",
        lambda e: read_checkpoint(e.files.empty_pt),
        ValueError,
        "is empty (0 bytes)",
    ),
    Bad(
        "read-text-npz",
        lambda e: read_checkpoint(e.files.text_npz),
        ValueError,
        "not an .npz archive",
    ),
    Bad(
        "read-text-safetensors",
        lambda e: read_checkpoint(e.files.text_safetensors),
        ValueError,
        "not a .safetensors file",
    ),
    Bad(
        "read-missing",
        lambda e: read_checkpoint(e.files.missing),
        FileNotFoundError,
        "No checkpoint file",
    ),
    Bad("read-folder", lambda e: read_checkpoint(e.files.folder), ValueError, "is a folder"),
    Bad(
        "convert-text-file",
        lambda e: command(convert_main, ["imagen", e.files.text_pt, e.files.output]),
        CommandError,
        "is not a torch checkpoint",
    ),
    Bad(
        "convert-output-suffix",
        lambda e: command(convert_main, ["imagen", e.files.text_pt, e.files.output + ".h5"]),
        CommandError,
        "OUTPUT must end in .keras",
    ),
]


def _convert_evil(e):
    try:
        command(convert_main, ["imagen", e.files.evil_pt, e.files.output])
    finally:
        assert not os.path.exists(e.files.evil_marker), "the pickle's code ran"


CONVERTER.append(Bad("convert-malicious-pickle", _convert_evil, CommandError, "Cannot read"))

LOADING = [
    Bad(
        "load-missing",
        lambda e: load_model(e.files.missing_keras),
        FileNotFoundError,
        "No such file",
    ),
    Bad(
        "load-truncated", lambda e: load_model(e.files.truncated_keras), DamagedFileError, "damaged"
    ),
    Bad("load-empty", lambda e: load_model(e.files.empty_keras), DamagedFileError, "empty file"),
    Bad("load-text-file", lambda e: load_model(e.files.text_keras), DamagedFileError, "damaged"),
    Bad(
        "load-no-config",
        lambda e: load_model(e.files.no_config_keras),
        DamagedFileError,
        "missing config.json",
    ),
    Bad(
        "load-safe-mode",
        lambda e: load_model(e.files.good_keras, safe_mode="yes"),
        ValueError,
        "safe_mode='yes'",
    ),
    Bad(
        "save-suffix",
        lambda e: save_model(e.files.model, e.files.good_keras + ".txt"),
        ValueError,
        "must end in `.keras`",
    ),
    Bad(
        "save-no-overwrite",
        lambda e: save_model(e.files.model, e.files.good_keras, overwrite=False),
        FileExistsError,
        "good.keras",
    ),
]

TABLE = UNET + IMAGEN + ELUCIDATED + SAMPLE + FIT + TEXT + CACHE + CONVERTER + LOADING


def test_the_table_is_large_and_ids_are_unique():
    assert len(TABLE) >= 60
    assert len({row.id for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_bad_input_is_refused(env, row):
    with pytest.raises(row.error) as info:
        row.call(env)
    message = str(info.value)
    if row.wrapped:
        assert row.fragment in message, message
    else:
        first_line = message.strip().splitlines()[0] if message.strip() else ""
        assert row.fragment in first_line, message


def test_training_data_is_refused_before_a_step_is_traced(env):
    """`fit` checks its data before Keras makes its train function: a refused call
    leaves nothing half-traced behind (a later `fit` on TensorFlow would otherwise fail
    with "Creating variables on a non-first call to a function")."""
    model = env.imagen
    for row in FIT:
        if row.id.startswith(("fit-", "train-on-batch-")):
            with pytest.raises(row.error):
                row.call(env)
    assert model.train_function is None
