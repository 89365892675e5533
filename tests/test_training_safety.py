"""Training a cascade safely: bad batches never reach the weights, resuming is exact."""

import keras
import numpy as np
import pytest

from imagen_keras import Imagen
from imagen_keras.training import NonFiniteTrainingError
from tests.conftest import JIT, TEXT_DIM, colour_data, tiny_unet
from tests.unet_helpers import to_numpy

pytestmark = pytest.mark.filterwarnings("ignore:The base dimension")


def weights(model):
    return [to_numpy(v).copy() for v in model.trainable_variables]


@pytest.fixture(scope="module")
def imagen():
    keras.utils.set_random_seed(0)
    model = Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=2, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=JIT)
    return model


def data(images):
    _, embeds = colour_data(len(images))
    return {"images": images.astype("float32"), "text_embeds": embeds}


def test_compile_builds_the_optimizer_and_the_step_is_traced_once():
    """Built inside the first traced step, the optimizer's new variables made TensorFlow
    trace that step twice (the demo's first step took 60 s instead of 35)."""
    keras.utils.set_random_seed(0)
    model = Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=JIT)
    assert model.optimizer.built
    trainable = model.unets[0].trainable_variables
    assert len(model.optimizer.inner_optimizer.variables) == 2 * len(trainable) + 2
    calls = []
    train_step = model.train_step

    def counted_train_step(*args, **kwargs):
        calls.append(1)  # once per trace when the step is compiled, once per step if not
        return train_step(*args, **kwargs)

    model.train_step = counted_train_step
    images, _ = colour_data(8)
    model.fit(data(images[:, :8, :8]), batch_size=4, epochs=1, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 2
    compiled = keras.backend.backend() != "torch"
    assert len(calls) == (1 if compiled else 2)


def test_a_nan_pixel_skips_the_step_and_is_reported(imagen):
    images, _ = colour_data(8)
    imagen.fit(data(images[:, :8, :8]), batch_size=4, epochs=1, verbose=0)
    before = weights(imagen)
    steps = to_numpy(imagen.unet_train_steps).copy()
    bad = images[:4, :8, :8].copy()
    bad[0, 3, 3, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="Skipped 1 training step"):
        imagen.fit(data(bad), batch_size=4, epochs=1, verbose=0)
    after = weights(imagen)
    assert all(np.isfinite(w).all() for w in after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(to_numpy(imagen.unet_train_steps), steps)
    assert int(to_numpy(imagen.optimizer.skipped_steps)) == 1


def test_images_in_0_255_stop_fit_before_any_update(imagen):
    images, _ = colour_data(8)
    before = weights(imagen)
    with pytest.raises(ValueError, match=r"`images` must be in \[0.0, 1.0\]"):
        imagen.fit(data(images[:, :8, :8] * 255.0), batch_size=4, epochs=1, verbose=0)
    for a, b in zip(before, weights(imagen)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="must be in"):
        imagen.train_on_batch(data(images[:4, :8, :8] * 255.0))


def test_consecutive_non_finite_steps_stop_training():
    keras.utils.set_random_seed(0)
    model = Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=2)
    from imagen_keras.training import imagen_optimizer

    model.compile(optimizer=imagen_optimizer(max_consecutive_non_finite=2), jit_compile=JIT)
    images, _ = colour_data(8)
    bad = images[:, :8, :8].copy()
    bad[:, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive steps"):
        with pytest.warns(RuntimeWarning):
            model.fit(data(bad), batch_size=2, epochs=1, verbose=0)


def test_keras_file_resumes_the_stage_exactly(tmp_path):
    """A `.keras` file brings back the stage's optimizer state, step counter and random
    stream: the next losses equal those of the uninterrupted run."""
    images, embeds = colour_data(4)
    batch = {"images": images[:, :8, :8], "text_embeds": embeds}

    def new_model():
        keras.utils.set_random_seed(0)
        model = Imagen(
            [tiny_unet(), tiny_unet()], image_sizes=(8, 16), text_embed_dim=TEXT_DIM, seed=3
        )
        model.compile(unet_number=1, jit_compile=JIT)
        return model

    model = new_model()
    for _ in range(2):
        model.train_on_batch(batch)
    path = tmp_path / "resume.keras"
    model.save(path)
    uninterrupted = [float(model.train_on_batch(batch)) for _ in range(3)]
    restored = keras.saving.load_model(path)
    assert restored.optimizer is not None and restored.unet_number == 1
    # Only the trained stage's weights are trainable (the frozen stage 2 was saved with
    # trainable=False, which TensorFlow once left on its layer but not its variables).
    trained = {id(v) for v in restored.unets[0].variables if v.trainable}
    assert {id(v) for v in restored.trainable_variables} == trained
    assert int(to_numpy(restored.optimizer.iterations)) == 2
    resumed = [float(restored.train_on_batch(batch)) for _ in range(3)]
    np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-5)
    np.testing.assert_array_equal(to_numpy(restored.unet_train_steps), [5, 0])
