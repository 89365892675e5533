"""End to end: a tiny text-conditioned `Imagen` trains on the data pipelines with `fit`.

Captions go through `encode_texts_in_data`, the function `fit` applies to a dataset with
"texts", with a stand-in encoder (a fixed random embedding per word), so the test costs
no T5; `tests/test_imagen_texts.py` covers `fit` with a real (tiny) T5.
"""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from imagen_keras import Imagen, Unet
from imagen_keras.data import as_cascade_inputs, demo_dataset, demo_prompts, image_folder_dataset
from imagen_keras.text.datasets import encode_texts_in_data

DIM, LENGTH = 16, 6
# Compile the step on JAX (eager JAX is slow); graph/eager elsewhere compiles faster.
JIT = keras.backend.backend() == "jax"


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def encode(texts):
    """Stand-in text encoder: one fixed random vector per word, padded to LENGTH."""
    embeds = np.zeros((len(texts), LENGTH, DIM), "float32")
    masks = np.zeros((len(texts), LENGTH), bool)
    for i, text in enumerate(texts):
        for j, word in enumerate(text.split()[:LENGTH]):
            rng = np.random.default_rng(zlib.crc32(word.encode()))
            embeds[i, j], masks[i, j] = rng.standard_normal(DIM), True
    return embeds, masks


def encoded(dataset):
    return encode_texts_in_data(dataset, encode, embed_dim=DIM, length=LENGTH)


@pytest.fixture(scope="module")
def imagen():
    unet = Unet(
        dim=8,
        dim_mults=(1, 2),
        attn_heads=2,
        attn_dim_head=8,
        max_text_len=LENGTH,
        attn_pool_num_latents=2,
        layer_attns=False,
        layer_cross_attns=(False, True),
    )
    model = Imagen(unet, image_sizes=8, text_embed_dim=DIM, timesteps=4, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=JIT)
    return model


def test_fit_on_the_demo_then_on_an_image_folder(imagen, photo_folder):
    # Batches of 3 everywhere: one compiled step for the whole file.
    data = encoded(demo_dataset(8, batch_size=3, seed=0).take(1))
    batch = next(iter(data))
    texts = next(iter(demo_dataset(8, batch_size=3, seed=0)))["texts"].numpy()
    np.testing.assert_array_equal(batch["text_embeds"], encode([t.decode() for t in texts])[0])
    before = [to_numpy(w).copy() for w in imagen.unets[0].trainable_weights]
    history = imagen.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert to_numpy(imagen.unet_train_steps).tolist() == [1]
    after = [to_numpy(w) for w in imagen.unets[0].trainable_weights]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))

    # Sidecar captions, a corrupt file and an uncaptioned one: both skipped, training goes on.
    batches = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda i, logs: batches.append(i))
    with pytest.warns(UserWarning):
        folder = image_folder_dataset(photo_folder, 8, captions="sidecar", batch_size=4)
        history = imagen.fit(encoded(folder), epochs=1, verbose=0, callbacks=[count])
    assert batches == [0]  # one batch: the 3 readable captioned images
    assert np.isfinite(history.history["loss"]).all()


def test_fit_on_a_renamed_pipeline(imagen):
    # float32 like the others (uint8 images would compile a second step)
    images = np.random.default_rng(0).uniform(size=(3, 8, 8, 3)).astype("float32")
    pairs = tf.data.Dataset.from_tensor_slices((images, np.array(demo_prompts()[:3])))
    data = encoded(as_cascade_inputs(pairs, images=0, texts=1).batch(3))
    steps = to_numpy(imagen.unet_train_steps)[0]
    history = imagen.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert to_numpy(imagen.unet_train_steps)[0] == steps + 1
