"""SavedModel export: load in a process that imports only TensorFlow, compare with
in-process sampling, seeds, batch sizes, PNG bytes, the graph's ops, the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from PIL import Image

from imagen_keras import ElucidatedImagen, Imagen
from imagen_keras.export import export_saved_model
from tests.conftest import SIZES, TEXT_DIM, tiny_unet
from tests.unet_helpers import randomize_zero_init, to_numpy

BACKEND = keras.backend.backend()
CAN_EXPORT = BACKEND in ("tensorflow", "jax")
needs_export = pytest.mark.skipif(not CAN_EXPORT, reason="SavedModels need TF or JAX")
pytestmark = pytest.mark.filterwarnings("ignore:The base dimension")

# Runs in a fresh interpreter that imports TensorFlow and numpy only (as TF Serving, it
# knows nothing of Keras or imagen_keras): loads the SavedModel, answers the requests in
# `requests.json` and saves images, decoded-nowhere PNG files and the signature.
SERVE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf

    folder, model = sys.argv[1], sys.argv[2]
    loaded = tf.saved_model.load(model)
    serve = loaded.signatures["serving_default"]
    arrays = np.load(os.path.join(folder, "inputs.npz"))
    with open(os.path.join(folder, "requests.json")) as f:
        requests = json.load(f)
    images = {}
    for name, request in requests.items():
        kwargs = {}
        for key, value in request.items():
            if isinstance(value, str):
                kwargs[key] = tf.constant(arrays[value])
            else:
                dtype = serve.structured_input_signature[1][key].dtype
                kwargs[key] = tf.constant(value, dtype=dtype)
        out = serve(**kwargs)
        images[name] = out["images"].numpy()
        for i, png in enumerate(out["png_bytes"].numpy()):
            with open(os.path.join(folder, f"{name}_{i}.png"), "wb") as f:
                f.write(png)
    np.savez(os.path.join(folder, "outputs.npz"), **images)
    def describe(specs):
        return {k: [v.dtype.name, v.shape.as_list()] for k, v in specs.items()}

    signature = {
        "inputs": describe(serve.structured_input_signature[1]),
        "outputs": describe(serve.structured_outputs),
        "imported": sorted(m for m in ("imagen_keras",) if m in sys.modules),
    }
    with open(os.path.join(folder, "signature.json"), "w") as f:
        json.dump(signature, f)
    """
)


def serve_in_tensorflow_only(tmp_path, model, arrays, requests):
    """Answer `requests` ({name: {input: value or name of an array}}) with the SavedModel
    in a fresh TensorFlow-only process; returns (images, signature, folder)."""
    folder = tmp_path / "served"
    folder.mkdir(exist_ok=True)
    np.savez(folder / "inputs.npz", **arrays)
    (folder / "requests.json").write_text(json.dumps(requests))
    script = folder / "serve.py"
    script.write_text(SERVE)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(model)],
        env=env,
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(folder / "outputs.npz") as outputs:
        images = dict(outputs)
    signature = json.loads((folder / "signature.json").read_text())
    assert signature["imported"] == []  # the served model needs nothing of ours
    return images, signature, folder


def graph_ops(model):
    """Op types of every function in the SavedModel, and whether any must be XLA-compiled."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(model, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops, must_compile = set(), False
    for meta in proto.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
            attr = function.attr.get("_XlaMustCompile")
            must_compile |= bool(attr is not None and attr.b)
    return ops, must_compile


def assert_same_images(actual, expected):
    """Equal up to float rounding: the exported graph is optimized differently from the
    in-process one, and with guidance, thresholding and two stages a rounding difference
    of 1e-7 grows to ~1e-3 (up to 1e-2 in a few pixels) of these random tiny unets."""
    diff = np.abs(np.asarray(actual) - np.asarray(expected))
    assert diff.mean() < 3e-3 and diff.max() < 5e-2, (diff.mean(), diff.max())


def png_pixels(folder, name, count):
    return np.stack([np.asarray(Image.open(folder / f"{name}_{i}.png")) for i in range(count)])


@pytest.fixture(scope="module")
def text_cascade():
    keras.utils.set_random_seed(0)
    model = Imagen(
        [tiny_unet(), tiny_unet()],
        image_sizes=SIZES,
        text_embed_dim=TEXT_DIM,
        timesteps=20,
        cond_drop_prob=0.1,
    )
    model.build()
    for index, unet in enumerate(model.unets):
        randomize_zero_init(unet, seed=index)
    model.unet_train_steps.assign([1, 1])
    return model


@needs_export
def test_exported_cascade_serves_the_in_process_samples(text_cascade, tmp_path):
    model = text_cascade
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(3, model.max_text_len, TEXT_DIM)).astype("float32")
    masks = np.ones((3, model.max_text_len), bool)
    masks[1, 2:] = False

    def in_process(cond_scale=3.0, steps=3):
        images = model.sample(
            text_embeds=embeds,
            text_masks=masks,
            seed=[5, 6, 7],
            cond_scale=cond_scale,
            sampler="ddim",
            ddim_steps=steps,
            verbose=False,
        )
        return to_numpy(images)

    # Sample in-process first: a cascade that has sampled (and holds compiled stages)
    # must still export.
    expected = {
        "a": in_process(),
        "scale_1": in_process(cond_scale=1.0),
        "steps_2": in_process(steps=2),
    }
    path = export_saved_model(
        model, tmp_path / "imagen" / "1", sampler_options={"sampler": "ddim", "ddim_steps": 3}
    )
    arrays = {"embeds": embeds, "masks": masks, "one_embed": embeds[1:2], "one_mask": masks[1:2]}
    text = {"text_embeds": "embeds", "text_masks": "masks"}
    requests = {
        "a": {**text, "seed": [5, 6, 7], "cond_scale": 3.0, "num_steps": 0},
        "again": {**text, "seed": [5, 6, 7], "cond_scale": 3.0, "num_steps": 0},
        "other_seeds": {**text, "seed": [8, 9, 10], "cond_scale": 3.0, "num_steps": 0},
        "one": {
            "text_embeds": "one_embed",
            "text_masks": "one_mask",
            "seed": [6],
            "cond_scale": 3.0,
            "num_steps": 0,
        },
        "scale_1": {**text, "seed": [5, 6, 7], "cond_scale": 1.0, "num_steps": 0},
        "steps_2": {**text, "seed": [5, 6, 7], "cond_scale": 3.0, "num_steps": 2},
    }
    served, signature, folder = serve_in_tensorflow_only(tmp_path, path, arrays, requests)

    assert signature["inputs"] == {
        "text_embeds": ["float32", [None, model.max_text_len, TEXT_DIM]],
        "text_masks": ["bool", [None, model.max_text_len]],
        "seed": ["int32", [None]],
        "cond_scale": ["float32", []],
        "num_steps": ["int32", []],
    }
    assert signature["outputs"] == {
        "images": ["float32", [None, SIZES[-1], SIZES[-1], 3]],
        "png_bytes": ["string", [None]],
    }
    a = served["a"]
    assert_same_images(a, expected["a"])
    np.testing.assert_array_equal(served["again"], a)  # same seed, same image, every call
    spread = np.abs(served["other_seeds"] - a).mean(axis=(1, 2, 3))
    assert np.all(spread > 0.05), spread  # each request's seeds give new noise
    # Batch size 1 gives image 1 of the batch of 3 (its seed, its text).
    assert_same_images(served["one"][0], a[1])
    # cond_scale and num_steps are inputs: they change the images as in-process sampling.
    assert_same_images(served["scale_1"], expected["scale_1"])
    assert_same_images(served["steps_2"], expected["steps_2"])
    assert np.abs(served["scale_1"] - a).mean() > 0.02
    assert np.abs(served["steps_2"] - a).mean() > 0.02
    # The PNG bytes are the images, rounded to 8 bits.
    pixels = png_pixels(folder, "a", 3).astype(int)
    assert pixels.shape == (3, SIZES[-1], SIZES[-1], 3)
    assert np.abs(pixels - np.round(a * 255)).max() <= 1

    # A request whose rows disagree gets an error that names the inputs.
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="one entry per row of `text_embeds`"):
        serve(
            text_embeds=tf.constant(embeds),
            text_masks=tf.constant(masks),
            seed=tf.constant([1, 2]),
            cond_scale=tf.constant(3.0),
            num_steps=tf.constant(0),
        )

    ops, must_compile = graph_ops(path)
    assert not must_compile
    if BACKEND == "tensorflow":
        assert "While" in ops or "StatelessWhile" in ops
        assert "XlaCallModule" not in ops  # ordinary ops the standard model server has
    else:
        assert "XlaCallModule" in ops  # jax2tf: StableHLO in one op (documented)
    assert "EncodePng" in ops


@needs_export
def test_exported_unconditional_elucidated_cascade(tmp_path):
    keras.utils.set_random_seed(1)
    model = ElucidatedImagen(
        [tiny_unet(cond_on_text=False)],
        image_sizes=(8,),
        condition_on_text=False,
        channels=1,
        num_sample_steps=3,
    )
    model.build()
    randomize_zero_init(model.unets[0], seed=3)
    model.unet_train_steps.assign([1])
    path = export_saved_model(model, tmp_path / "edm")
    requests = {
        "three": {"seed": [1, 2, 3], "num_steps": 0},
        "one": {"seed": [2], "num_steps": 0},
    }
    served, signature, folder = serve_in_tensorflow_only(tmp_path, path, {}, requests)
    assert sorted(signature["inputs"]) == ["num_steps", "seed"]
    expected = to_numpy(model.sample(batch_size=3, seed=[1, 2, 3], verbose=False))
    assert_same_images(served["three"], expected)
    assert_same_images(served["one"][0], served["three"][1])
    assert np.abs(served["three"][0] - served["three"][1]).mean() > 0.05
    pixels = png_pixels(folder, "three", 3).astype(int)  # grayscale PNGs
    assert pixels.shape == (3, 8, 8)
    assert np.abs(pixels - np.round(served["three"][..., 0] * 255)).max() <= 1


@needs_export
def test_export_errors(text_cascade, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_saved_model(text_cascade, tmp_path / "taken")
    with pytest.raises(ValueError, match="stop_at_unet_number=3"):
        export_saved_model(text_cascade, tmp_path / "x", stop_at_unet_number=3)
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        export_saved_model(text_cascade, tmp_path / "x", sampler_options={"sampler": "euler"})
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.skipif(CAN_EXPORT, reason="the torch backend's error")
def test_torch_backend_cannot_export(text_cascade, tmp_path):
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export_saved_model(text_cascade, tmp_path / "x")
