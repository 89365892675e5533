"""Plain `fit` + callbacks: sample grids with EMA weights, checkpoints, progress, TensorBoard."""

import glob
import importlib.util
import os

import keras
import numpy as np
import pytest
from PIL import Image

from imagen_keras.training import (
    CheckpointCallback,
    CheckpointManager,
    ProgressLogger,
    SampleGrid,
    make_grid,
)
from tests.conftest import colour_data
from tests.training.conftest import COMPILE, fast_ema_optimizer, small_cascade

HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of 2 steps on stage 1, then one of 2 steps on stage 2, with callbacks."""
    folder = tmp_path_factory.mktemp("fit")
    imagen = small_cascade()
    images, embeds = colour_data(4)
    data = {"images": images, "text_embeds": embeds}
    grid = SampleGrid(
        text_embeds=embeds[:2],
        captions=["red", "blue"],
        every_n_steps=2,
        directory=str(folder / "samples"),
        seed=7,
    )
    manager = CheckpointManager(str(folder / "checkpoints"), max_to_keep=2)
    lines = []
    callbacks = [
        grid,
        CheckpointCallback(manager, every_n_steps=4),
        ProgressLogger(every_n_steps=1, print_fn=lines.append),
    ]
    if HAVE_TENSORBOARD:  # Keras' TensorBoard callback needs `pip install tensorboard`
        callbacks.append(keras.callbacks.TensorBoard(str(folder / "logs")))
    imagen.compile(optimizer=fast_ema_optimizer(), unet_number=1, **COMPILE)
    imagen.fit(data, batch_size=2, epochs=2, callbacks=callbacks, verbose=0)
    imagen.compile(optimizer=fast_ema_optimizer(), unet_number=2, **COMPILE)
    imagen.fit(data, batch_size=2, epochs=1, callbacks=callbacks, verbose=0)
    return imagen, grid, manager, lines, folder, embeds


def test_fit_trains_both_stages_and_checkpoints(run):
    imagen, _, manager, _, _, _ = run
    assert imagen.stage_optimizers.steps() == [4, 2]
    assert [s for s, _ in manager.checkpoints()] == [4]  # every 4 updates of all unets


def test_sample_grid_uses_the_ema_weights(run):
    imagen, grid, _, _, folder, embeds = run
    names = sorted(os.path.basename(p) for p in grid.paths)
    assert names == ["samples.2.png", "samples.4.png", "samples.6.png"]
    # The last grid (stage 2 trained since step 4) is the EMA sample through unet 2.
    expected = imagen.sample(
        text_embeds=embeds[:2], seed=7, stop_at_unet_number=2, return_pil_images=True
    )
    want = np.asarray(make_grid(expected, ["red", "blue"]))
    got = np.asarray(Image.open(folder / "samples" / "samples.6.png"))
    np.testing.assert_array_equal(got, want)
    online = imagen.sample(
        text_embeds=embeds[:2],
        seed=7,
        stop_at_unet_number=2,
        return_pil_images=True,
        use_non_ema=True,
    )
    assert not np.array_equal(np.asarray(make_grid(online, ["red", "blue"])), want)


def test_progress_lines(run):
    _, _, _, lines, _, _ = run
    assert len(lines) == 6
    assert lines[0].startswith("step 1/4 - loss ") and "steps/s" in lines[0]
    assert "ETA" in lines[0] and "elapsed" in lines[0]
    assert lines[4].startswith("step 1/2 - ")  # the second fit


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_writes_the_loss(run):
    import tensorflow as tf

    _, _, _, _, folder, _ = run
    events = glob.glob(str(folder / "logs" / "train" / "events.out.tfevents.*"))
    assert events
    tags = {
        value.tag
        for path in events
        for event in tf.compat.v1.train.summary_iterator(path)
        for value in event.summary.value
    }
    assert "epoch_loss" in tags


def test_make_grid_and_argument_errors(tmp_path):
    images = np.zeros((3, 8, 8, 3), "float32")
    grid = make_grid(images, ["a", "b", "c"], cell_size=16)
    assert grid.size[0] == 2 * 16 and grid.size[1] > 2 * 16  # 2x2 cells with captions
    with pytest.raises(ValueError, match="one caption per image"):
        make_grid(images, ["a"])
    with pytest.raises(ValueError, match="exactly one of `prompts`"):
        SampleGrid(every_n_steps=2)
    with pytest.raises(ValueError, match="every_n_steps"):
        SampleGrid(["a red digit"], every_n_steps=0)
    with pytest.raises(ValueError, match="CheckpointManager"):
        CheckpointCallback(object())
