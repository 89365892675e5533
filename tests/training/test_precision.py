"""Mixed precision as a switch: bfloat16 and float16 (with loss scaling) compute, train,
checkpoint and sample; the diffusion around the unets stays float32."""

import glob
import os

import keras
import numpy as np
import pytest

from imagen_keras.training import (
    ImagenTrainer,
    SkipNonFiniteOptimizer,
    load_checkpoint,
    precision_policy,
    save_checkpoint,
    set_precision,
)
from tests.conftest import colour_data
from tests.training.conftest import COMPILE, small_cascade, to_numpy

LR = 0.05


def test_precision_names():
    assert precision_policy(None) == precision_policy("no") == "float32"
    assert precision_policy("bf16") == precision_policy("bfloat16") == "mixed_bfloat16"
    assert precision_policy("fp16") == precision_policy("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError, match=r"`precision` must be one of .*precision='fp8'"):
        precision_policy("fp8")
    with pytest.raises(ValueError, match="`fp16=True` asks for float16.*precision='bf16'"):
        ImagenTrainer(small_cascade(), fp16=True, precision="bf16", verbose=False)


def _sgd_step(precision, tensorboard_dir=None):
    """One SGD step of unet 1 from fixed weights and seed: (weights before, after, imagen)."""
    imagen = small_cascade()
    imagen.build()
    # The same initial weights whatever the precision.
    rng = np.random.default_rng(0)
    imagen.set_weights([rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in imagen.get_weights()])
    if precision is not None:
        set_precision(imagen, precision)
    optimizer = keras.optimizers.SGD(LR)
    if precision == "fp16":
        # A scaler the user configures is kept (re-wrapped outside the non-finite guard).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**10)
    imagen.compile(optimizer=optimizer, unet_number=1, **COMPILE)
    images, embeds = colour_data(4)
    before = to_numpy(imagen.unets[0].trainable_weights)
    callbacks = []
    if tensorboard_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir))
    imagen.fit(
        {"images": images, "text_embeds": embeds},
        batch_size=4,
        epochs=1,
        shuffle=False,  # the same noise for the same example in every run
        verbose=0,
        callbacks=callbacks,
    )
    return before, to_numpy(imagen.unets[0].trainable_weights), imagen


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    board = str(tmp_path_factory.mktemp("tensorboard"))
    runs = {p: _sgd_step(p) for p in (None, "fp16")}
    runs["bf16"] = _sgd_step("bf16", tensorboard_dir=board)
    return runs, board


def _update(run):
    before, after, _ = run
    return np.concatenate([(a - b).ravel() for a, b in zip(after, before)])


@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.1), ("fp16", 0.02)])
def test_half_precision_step_moves_the_weights_as_float32(steps, precision, tolerance):
    runs, _ = steps
    full, half = _update(runs[None]), _update(runs[precision])
    assert np.linalg.norm(full) > 1e-3
    error = np.linalg.norm(half - full) / np.linalg.norm(full)
    # Not float32 (the switch changed the arithmetic), yet the same step: the loss
    # scale of float16 is divided out again (else the step would be 1024x longer).
    assert 1e-6 < error < tolerance, error
    _, _, imagen = runs[precision]
    assert all(w.dtype == "float32" for w in imagen.weights if "float" in str(w.dtype))


def test_layers_compute_in_half_precision_and_the_unet_returns_float32(steps):
    runs, _ = steps
    for precision, dtype in (("bf16", "bfloat16"), ("fp16", "float16")):
        unet = runs[precision][2].unets[0]
        x = keras.ops.ones((1, 8, 8, 3))
        assert keras.backend.standardize_dtype(unet.init_conv(x).dtype) == dtype
        out = unet(x, keras.ops.zeros((1,)), text_embeds=keras.ops.ones((1, 3, 16)))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_float16_keeps_its_loss_scale_through_a_checkpoint(steps, tmp_path):
    runs, _ = steps
    imagen = runs["fp16"][2]
    optimizer = imagen.stage_optimizers.get(0)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert optimizer.initial_scale == 2.0**10
    # The scaler is outermost: overflowing steps reach it, not the non-finite guard.
    assert isinstance(optimizer.inner_optimizer, SkipNonFiniteOptimizer)
    optimizer.dynamic_scale.assign(512.0)
    path = str(tmp_path / "fp16.zip")
    save_checkpoint(imagen, path)
    loaded = load_checkpoint(path)
    assert loaded.unets[0].dtype_policy.name == "mixed_float16"
    restored = loaded.stage_optimizers.get(0)
    assert isinstance(restored, keras.optimizers.LossScaleOptimizer)
    assert float(keras.ops.convert_to_numpy(restored.dynamic_scale)) == 512.0
    # Compiling the stage again keeps that optimizer (no second scaler around it).
    loaded.compile(unet_number=1, **COMPILE)
    assert loaded.optimizer is restored


def test_tensorboard_callback_logs_the_loss(steps):
    _, board = steps
    events = glob.glob(os.path.join(board, "train", "events.out.tfevents.*"))
    assert events, os.listdir(board)
    import tensorflow as tf

    tags = {
        value.tag
        for path in events
        for event in tf.compat.v1.train.summary_iterator(path)
        for value in event.summary.value
    }
    assert "epoch_loss" in tags, tags


def test_trainer_switches_precision():
    imagen = small_cascade()
    trainer = ImagenTrainer(imagen, precision="bf16", verbose=False)
    assert {layer.dtype_policy.name for layer in imagen._flatten_layers()} == {"mixed_bfloat16"}
    # bfloat16 needs no loss scaling.
    imagen.compile(unet_number=1)
    assert not isinstance(imagen.optimizer, keras.optimizers.LossScaleOptimizer)
    del trainer
    ImagenTrainer(imagen, fp16=True, verbose=False)
    assert imagen.unets[1].dtype_policy.name == "mixed_float16"
    imagen.compile(unet_number=2)
    assert isinstance(imagen.optimizer, keras.optimizers.LossScaleOptimizer)
