"""`texts=` on the cascades: captions encoded by the T5 encoder named by `text_encoder_name`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from imagen_keras import ElucidatedImagen, Imagen
from tests.conftest import JIT, tiny_unet
from tests.unet_helpers import to_numpy

CAPTIONS = ["a red square", "a blue circle", "a small green tree", "red and blue"]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    from imagen_keras.text import build_tiny_t5_preset

    return str(build_tiny_t5_preset(CAPTIONS * 4, tmp_path_factory.mktemp("t5"), hidden_dim=16))


def images(n=4, size=8):
    return np.random.default_rng(0).uniform(size=(n, size, size, 3)).astype("float32")


def test_texts_give_the_same_loss_and_samples_as_their_embeddings(preset):
    unet = tiny_unet(max_text_len=6)
    with_texts = Imagen(unet, image_sizes=8, text_encoder_name=preset, timesteps=2, seed=1)
    assert with_texts.text_embed_dim == 16  # read from the preset folder, no T5 loaded
    embeds, masks = with_texts.encode_text(CAPTIONS)
    assert embeds.shape == (4, 6, 16) and masks.shape == (4, 6)
    lengths = masks.sum(axis=1)
    assert (masks == (np.arange(6)[None] < lengths[:, None])).all()  # masks follow padding
    assert (embeds[~masks] == 0).all() and (np.abs(embeds[masks]).sum(axis=-1) > 0).all()

    with_embeds = Imagen(unet, image_sizes=8, text_embed_dim=16, timesteps=2, seed=1)
    got = float(with_texts(images(), texts=CAPTIONS))
    expected = float(with_embeds(images(), text_embeds=embeds, text_masks=masks))
    assert got == pytest.approx(expected, rel=1e-6)

    kwargs = dict(cond_scale=2.0, seed=3, verbose=0)
    with pytest.warns(UserWarning, match="never been trained"):
        a = with_texts.sample(texts=CAPTIONS[:2], **kwargs)
        b = with_embeds.sample(text_embeds=embeds[:2], text_masks=masks[:2], **kwargs)
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_fit_encodes_texts_of_arrays_and_of_tf_data(preset):
    imagen = ElucidatedImagen(
        tiny_unet(max_text_len=6), image_sizes=8, text_encoder_name=preset, num_sample_steps=2
    )
    imagen.compile(optimizer="adam", jit_compile=JIT)
    data = {"images": images(8), "texts": np.array(CAPTIONS * 2)}
    history = imagen.fit(data, batch_size=4, epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
    history2 = imagen.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"] + history2.history["loss"]).all()
    assert to_numpy(imagen.unet_train_steps).tolist() == [4]
    out = imagen.sample(texts=CAPTIONS[:3], seed=0, verbose=0)
    assert tuple(out.shape) == (3, 8, 8, 3)


def test_encoder_width_must_match_text_embed_dim(preset):
    imagen = Imagen(tiny_unet(), image_sizes=8, text_encoder_name=preset, text_embed_dim=24)
    with pytest.raises(ValueError, match="text_embed_dim=24"):
        imagen(images(2), texts=CAPTIONS[:2])
    unconditional = Imagen(tiny_unet(), image_sizes=8, condition_on_text=False)
    with pytest.raises(ValueError, match="condition_on_text=False"):
        unconditional.set_text_encoder(keras.layers.Dense(2))
