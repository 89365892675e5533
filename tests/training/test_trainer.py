"""ImagenTrainer: the reference's API over compile/fit, per-unet steps, EMA, checkpoints."""

import numpy as np
import pytest

from imagen_keras.training import ImagenTrainer, ema_weights
from imagen_keras.training.ema import _unwrap
from tests.conftest import colour_data
from tests.training.conftest import COMPILE, small_cascade, to_numpy

EMA = dict(ema_update_after_step=0, ema_update_every=1)


def make_trainer(**kwargs):
    config = dict(
        lr=1e-3,
        max_batch_size=2,
        verbose=False,
        jit_compile=COMPILE["jit_compile"],
        run_eagerly=COMPILE["run_eagerly"],
        **EMA,
    )
    config.update(kwargs)
    return ImagenTrainer(small_cascade(), **config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Unet 1: 2 updates by `trainer(...)` (batch 4 in micro-batches of 2); unet 2: one
    `train_step` from the added dataset, then `train(steps=1)` through `fit`."""
    folder = tmp_path_factory.mktemp("trainer")
    trainer = make_trainer(checkpoint_path=str(folder / "checkpoints"), checkpoint_every=2)
    images, embeds = colour_data(8)
    losses = []
    for _ in range(2):
        losses.append(trainer(images[:4], text_embeds=embeds[:4], unet_number=1))
        trainer.update(unet_number=1)
    trainer.add_train_dataset({"images": images, "text_embeds": embeds}, batch_size=4)
    losses.append(trainer.train_step(unet_number=2))
    history = trainer.train(unet_number=2, steps=1)
    return trainer, losses, history, folder


def test_each_unet_trains_and_counts_updates(trained):
    trainer, losses, history, _ = trained
    assert np.isfinite(losses).all() and np.isfinite(history.history["loss"]).all()
    assert trainer.steps.tolist() == [2, 2]
    assert trainer.num_steps_taken(1) == 2 and trainer.num_steps_taken(2) == 2
    # Micro-batches: 2 per update (max_batch_size=2 of a batch of 4).
    np.testing.assert_array_equal(to_numpy([trainer.imagen.unet_train_steps])[0], [4, 4])
    for optimizer in trainer.imagen.stage_optimizers.optimizers:
        assert _unwrap(optimizer).gradient_accumulation_steps == 2
    assert trainer.get_lr(1) == pytest.approx(1e-3)
    # checkpoint_every=2 counts all unets' updates: saved at 2 and at 4.
    assert [s for s, _ in trainer.checkpoint_manager.checkpoints()] == [2, 4]


def test_sample_uses_the_ema_weights(trained):
    trainer, _, _, _ = trained
    imagen = trainer.imagen
    _, embeds = colour_data(2, seed=3)
    kwargs = dict(text_embeds=embeds, stop_at_unet_number=1, seed=5, verbose=False)
    ema = to_numpy([trainer.sample(**kwargs)])[0]
    online = to_numpy([trainer.sample(use_non_ema=True, **kwargs)])[0]
    with ema_weights(imagen.unets[0], imagen.stage_optimizers.get(0)):
        by_hand = to_numpy([imagen.sample(use_non_ema=True, **kwargs)])[0]
    np.testing.assert_array_equal(ema, by_hand)
    assert np.abs(ema - online).max() > 1e-4
    chunked = to_numpy([trainer.sample(max_batch_size=1, **kwargs)])[0]
    np.testing.assert_allclose(chunked, ema, atol=2e-3)
    pils = trainer.sample(max_batch_size=1, return_pil_images=True, **kwargs)
    assert len(pils) == 2 and pils[0].size == (8, 8)


def test_valid_step_split_and_ema(trained):
    trainer, _, _, _ = trained
    valid = ImagenTrainer(  # a second trainer of the trained cascade
        trainer.imagen, split_valid_from_train=True, split_valid_fraction=0.25, verbose=False
    )
    images, embeds = colour_data(8)
    valid.add_train_dataset({"images": images, "text_embeds": embeds}, batch_size=2)
    assert int(valid.valid_dataset.unbatch().reduce(0, lambda n, _: n + 1)) == 2
    assert int(valid.train_dataset.unbatch().reduce(0, lambda n, _: n + 1)) == 6
    online = valid.valid_step(unet_number=1)
    ema = valid.valid_step(unet_number=1, use_ema_unets=True)
    assert np.isfinite([online, ema]).all()
    assert trainer.steps.tolist() == [2, 2]  # no update


def test_save_load_and_rebuild_from_a_checkpoint(trained, tmp_path):
    trainer, _, _, folder = trained
    path = str(tmp_path / "trainer.zip")
    trainer.save(path, note="hello")
    rebuilt = ImagenTrainer(imagen_checkpoint_path=path, verbose=False)
    assert rebuilt.steps.tolist() == trainer.steps.tolist()
    other = ImagenTrainer(small_cascade(), verbose=False)
    assert other.load(path)["extra"] == {"note": "hello"}
    assert other.steps.tolist() == [2, 2]
    for a, b in zip(to_numpy(other.imagen.weights), to_numpy(trainer.imagen.weights)):
        np.testing.assert_array_equal(a, b)
    assert other.load(str(tmp_path / "missing.zip"), noop_if_not_exist=True) is None
    # A new trainer on the checkpoint folder resumes from its newest checkpoint.
    resumed = ImagenTrainer(small_cascade(), checkpoint_path=str(folder / "checkpoints"))
    assert resumed.steps.tolist() == [2, 2]


def test_errors():
    imagen = small_cascade()
    with pytest.raises(ValueError, match="exactly one of `imagen` and `imagen_checkpoint_path`"):
        ImagenTrainer()
    with pytest.raises(ValueError, match="`precision` must be one of .*precision='fp8'"):
        ImagenTrainer(imagen, precision="fp8")
    with pytest.raises(ValueError, match="tf.io.gfile"):
        ImagenTrainer(imagen, checkpoint_fs=object())
    with pytest.raises(ValueError, match="lr"):
        ImagenTrainer(imagen, lr=(1e-4, 1e-4, 1e-4))
    trainer = ImagenTrainer(imagen, verbose=False, only_train_unet_number=2)
    images, embeds = colour_data(3)
    with pytest.raises(ValueError, match="only trains unet 2"):
        trainer(images, text_embeds=embeds, unet_number=1)
    with pytest.raises(ValueError, match="cannot be cut into 2 equal chunks"):
        trainer(images, text_embeds=embeds, max_batch_size=2)
    with pytest.raises(ValueError, match="Unknown inputs"):
        trainer(images, text_embeddings=embeds)
    with pytest.raises(ValueError, match="No train dataset"):
        trainer.train_step()
    with pytest.raises(ValueError, match="single examples"):
        trainer.add_train_dataset(_batched({"images": images, "text_embeds": embeds}), batch_size=2)
    with pytest.raises(ValueError, match="pass `unet_number`"):
        ImagenTrainer(small_cascade(), verbose=False)(images, text_embeds=embeds)


def _batched(data):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(data).batch(2)


def test_accumulation_is_fixed_per_unet(trained):
    trainer, _, _, _ = trained
    images, embeds = colour_data(4)
    with pytest.raises(ValueError, match="accumulates 2 micro-batch"):
        trainer(images, text_embeds=embeds, unet_number=1, max_batch_size=4)
