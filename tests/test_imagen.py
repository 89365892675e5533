"""Imagen cascade: training with fit, sampling, inpainting, serialization, text conditioning."""

import warnings

import keras
import numpy as np
import pytest

from imagen_keras import Imagen, NullUnet, Unet
from tests.unet_helpers import to_numpy

TEXT_DIM = 16
SIZES = (8, 16)
# Compile training steps on JAX (eager JAX is slow); graph/eager elsewhere compiles faster.
JIT = keras.backend.backend() == "jax"


def tiny_unet(**kwargs):
    config = dict(
        dim=8,
        dim_mults=(1, 2),
        attn_heads=2,
        attn_dim_head=8,
        max_text_len=4,
        attn_pool_num_latents=2,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
    )
    config.update(kwargs)
    return Unet(**config)


def colour_data(n=16, seed=0):
    """Red images for text A (+1 embeddings), blue ones for text B (-1 embeddings)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    embeds = np.where(labels[:, None, None] == 0, 1.0, -1.0) * np.ones((n, 3, TEXT_DIM))
    embeds = (embeds + 0.05 * rng.normal(size=embeds.shape)).astype("float32")
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.1, 0.9])
    colours = np.where(labels[:, None] == 0, red, blue)
    images = colours[:, None, None, :] + 0.03 * rng.normal(size=(n, SIZES[-1], SIZES[-1], 3))
    return np.clip(images, 0, 1).astype("float32"), embeds


_STATE = {}


def trained_cascade():
    """A two-stage cascade whose stage 1 learned colour-from-text, stage 2 a few steps."""
    if "cascade" not in _STATE:
        keras.utils.set_random_seed(1)
        # v-prediction learns the colour (decided at high noise) much faster than noise
        # prediction, which keeps this test short.
        imagen = Imagen(
            [tiny_unet(), tiny_unet()],
            image_sizes=SIZES,
            text_embed_dim=TEXT_DIM,
            timesteps=(16, 4),
            pred_objectives=("v", "noise"),
            seed=3,
        )
        images, embeds = colour_data()
        data = {"images": images, "text_embeds": embeds}
        imagen.compile(optimizer=keras.optimizers.Adam(5e-3), unet_number=1, jit_compile=JIT)
        losses = [float(imagen.train_on_batch(data)) for _ in range(60)]
        imagen.compile(optimizer=keras.optimizers.Adam(1e-3), unet_number=2, jit_compile=JIT)
        history = imagen.fit(data, batch_size=8, epochs=1, verbose=0)
        _STATE["cascade"] = (imagen, losses, history.history["loss"])
    return _STATE["cascade"]


def test_fit_trains_both_stages_and_the_loss_decreases():
    imagen, losses, stage2_losses = trained_cascade()
    assert np.isfinite(losses).all() and np.isfinite(stage2_losses).all()
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    steps = to_numpy(imagen.unet_train_steps)
    assert steps[0] == 60 and steps[1] == 2
    assert imagen.unets[1].lowres_cond and not imagen.unets[0].lowres_cond


def test_text_conditioning_is_real():
    imagen, _, _ = trained_cascade()
    _, embeds = colour_data(8, seed=5)
    samples = to_numpy(imagen.sample(text_embeds=embeds, stop_at_unet_number=1, seed=0, verbose=0))
    redness = samples[..., 0].mean(axis=(1, 2)) - samples[..., 2].mean(axis=(1, 2))
    red_text, blue_text = redness[0::2], redness[1::2]
    # Samples follow the text: red for "A" embeddings, blue for "B" ones.
    assert red_text.mean() - blue_text.mean() > 0.3, (red_text, blue_text)


def test_sample_shape_range_and_seed():
    imagen, _, _ = trained_cascade()
    _, embeds = colour_data(4, seed=7)
    first = to_numpy(imagen.sample(text_embeds=embeds, cond_scale=3.0, seed=11, verbose=0))
    again = to_numpy(imagen.sample(text_embeds=embeds, cond_scale=3.0, seed=11, verbose=0))
    other = to_numpy(imagen.sample(text_embeds=embeds, cond_scale=3.0, seed=12, verbose=0))
    assert first.shape == (4, 16, 16, 3)
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_stop_at_unet_number_and_all_outputs():
    imagen, _, _ = trained_cascade()
    _, embeds = colour_data(4)
    kwargs = dict(text_embeds=embeds, cond_scale=3.0, seed=1, verbose=0)
    outs = imagen.sample(return_all_unet_outputs=True, **kwargs)
    assert [tuple(o.shape) for o in outs] == [(4, 8, 8, 3), (4, 16, 16, 3)]
    first = imagen.sample(stop_at_unet_number=1, **kwargs)
    np.testing.assert_allclose(to_numpy(first), to_numpy(outs[0]), atol=1e-6)
    pils = imagen.sample(return_pil_images=True, **kwargs)
    assert len(pils) == 4 and pils[0].size == (16, 16)


def test_inpainting_keeps_the_known_region():
    imagen, _, _ = trained_cascade()
    images, embeds = colour_data(4)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, :, :8] = True
    out = to_numpy(
        imagen.sample(
            text_embeds=embeds,
            inpaint_images=images,
            inpaint_masks=masks,
            inpaint_resample_times=2,
            cond_scale=3.0,
            seed=4,
            verbose=0,
        )
    )
    np.testing.assert_allclose(out[:, :, :8], images[:, :, :8], atol=1e-6)
    assert np.abs(out[:, :, 8:] - images[:, :, 8:]).max() > 1e-3


def test_start_at_unet_number_upscales_a_given_image():
    imagen, _, _ = trained_cascade()
    images, embeds = colour_data(4)
    out = imagen.sample(
        text_embeds=embeds,
        cond_scale=3.0,
        start_at_unet_number=2,
        start_image_or_video=images[:, ::2, ::2],
        seed=2,
        verbose=0,
    )
    assert tuple(out.shape) == (4, 16, 16, 3)


def test_direct_call_returns_the_stage_loss():
    imagen, _, _ = trained_cascade()
    images, embeds = colour_data(4)
    loss = imagen(images, text_embeds=embeds, unet_number=2)
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_keras_round_trip_gives_identical_losses(tmp_path):
    imagen, _, _ = trained_cascade()
    images, embeds = colour_data(4)
    path = tmp_path / "imagen.keras"
    imagen.save(path)
    restored = keras.saving.load_model(path)
    assert [type(u) for u in restored.unets] == [Unet, Unet]
    np.testing.assert_array_equal(
        to_numpy(restored.unet_train_steps), to_numpy(imagen.unet_train_steps)
    )
    for number in (1, 2):
        expected = float(imagen(images, text_embeds=embeds, unet_number=number))
        got = float(restored(images, text_embeds=embeds, unet_number=number))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_untrained_unet_warns_before_sampling():
    imagen = Imagen(
        [tiny_unet(), tiny_unet()], image_sizes=SIZES, text_embed_dim=TEXT_DIM, timesteps=2
    )
    _, embeds = colour_data(1)
    with pytest.warns(UserWarning, match=r"\[1\] have never been trained"):
        imagen.sample(text_embeds=embeds, stop_at_unet_number=1, verbose=0)


def test_variant_cascade_unconditional_objectives_self_cond_and_crops():
    # Stage 1: noise objective with self-conditioning; stage 2: x_start, crops, huber.
    keras.utils.set_random_seed(2)
    imagen = Imagen(
        [tiny_unet(self_cond=True), tiny_unet(memory_efficient=True, layer_attns=False)],
        image_sizes=(8, 16),
        condition_on_text=False,
        timesteps=3,
        pred_objectives=("noise", "x_start"),
        loss_type="huber",
        random_crop_sizes=(None, 8),
        per_sample_random_aug_noise_level=True,
        dynamic_thresholding=(True, False),
        min_snr_loss_weight=(True, False),
    )
    assert not imagen.unets[0].cond_on_text and imagen.unets[1].lowres_cond
    images, _ = colour_data(8)
    for number in (1, 2):
        imagen.compile(optimizer="adam", unet_number=number, jit_compile=JIT)
        history = imagen.fit(images, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
    out = to_numpy(imagen.sample(batch_size=3, seed=0, verbose=0))
    assert out.shape == (3, 16, 16, 3) and out.min() >= 0 and out.max() <= 1


def test_null_unet_first_stage_trains_only_the_upsampler():
    imagen = Imagen(
        [NullUnet(), tiny_unet()], image_sizes=SIZES, text_embed_dim=TEXT_DIM, timesteps=2
    )
    images, embeds = colour_data(4)
    with pytest.raises(ValueError, match="NullUnet"):
        imagen.compile(optimizer="adam", unet_number=1)
    imagen.compile(optimizer="adam", unet_number=2, jit_compile=JIT)
    imagen.fit({"images": images, "text_embeds": embeds}, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="NullUnet"):
        imagen.sample(text_embeds=embeds, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = imagen.sample(
            text_embeds=embeds, start_at_unet_number=2, start_image_or_video=images, verbose=0
        )
    assert tuple(out.shape) == (4, 16, 16, 3)


def test_imagen_configures_the_users_unets_in_place():
    first, second = tiny_unet(), tiny_unet()
    imagen = Imagen([first, second], image_sizes=SIZES, text_embed_dim=24)
    assert imagen.unets[0] is first and imagen.unets[1] is second
    assert second.lowres_cond and second.text_embed_dim == 24


def test_built_unet_with_wrong_settings_is_refused():
    unet = tiny_unet(text_embed_dim=TEXT_DIM)
    unet.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="text_embed_dim: unet has 16, cascade needs 24"):
        Imagen(unet, image_sizes=8, text_embed_dim=24)


def test_p2_loss_weighting_scales_each_sample_loss_down():
    unet = tiny_unet()
    common = dict(image_sizes=8, text_embed_dim=TEXT_DIM, seed=5)
    plain = Imagen(unet, **common)
    p2 = Imagen(unet, p2_loss_weight_gamma=1.0, **common)
    images, embeds = colour_data(1)
    # Same seed: same time, noise and dropout draws, so the ratio is the P2 weight
    # (1 + snr) ** -1 of the drawn time, strictly between 0 and 1.
    ratio = float(p2(images, text_embeds=embeds)) / float(plain(images, text_embeds=embeds))
    assert 0.0 < ratio < 1.0
    assert p2.get_config()["p2_loss_weight_gamma"] == [1.0]
