"""Imagen cascade: training with fit, sampling, inpainting, serialization, text conditioning."""

import warnings

import keras
import numpy as np
import pytest

from imagen_keras import Imagen, NullUnet, Unet
from tests.conftest import JIT, SIZES, TEXT_DIM, colour_data, tiny_unet
from tests.unet_helpers import randomize_zero_init, to_numpy

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
    # With guidance (cond_scale 3, as sampling is used): at cond_scale 1 this 60-step model
    # drew 3 of 4 "blue" samples red on TensorFlow (gap 0.19; 0.65 guided).
    samples = to_numpy(
        imagen.sample(text_embeds=embeds, stop_at_unet_number=1, seed=0, cond_scale=3.0, verbose=0)
    )
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


def test_start_at_unet_number_upscales_the_given_image():
    imagen, _, _ = trained_cascade()
    _, embeds = colour_data(4)
    # Same texts and seed from a red and from a blue 8x8 start image: the start image is
    # the super-resolution stage's low-res conditioning, so the outputs differ (stage 2
    # has had 2 training steps here, too few to reproduce the colour itself).
    outputs = {}
    for name, colour in (("red", [0.9, 0.1, 0.1]), ("blue", [0.1, 0.1, 0.9])):
        start = np.zeros((4, 8, 8, 3), "float32") + np.array(colour, "float32")
        outputs[name] = to_numpy(
            imagen.sample(
                text_embeds=embeds,
                start_at_unet_number=2,
                start_image_or_video=start,
                seed=2,
                verbose=0,
            )
        )
        assert outputs[name].shape == (4, 16, 16, 3)
    assert np.abs(outputs["red"] - outputs["blue"]).mean() > 1e-3


def test_direct_call_returns_the_stage_loss():
    imagen, _, _ = trained_cascade()
    images, embeds = colour_data(4)
    loss = imagen(images, text_embeds=embeds, unet_number=2)
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_keras_round_trip_gives_identical_losses_and_samples(tmp_path):
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
    run = dict(text_embeds=embeds[:2], cond_scale=3.0, seed=9, stop_at_unet_number=1, verbose=0)
    np.testing.assert_allclose(
        to_numpy(restored.sample(**run)), to_numpy(imagen.sample(**run)), atol=1e-5
    )


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
    assert out.shape == (3, 16, 16, 3) and np.isfinite(out).all()
    assert np.abs(out[0] - out[1]).max() > 1e-3  # each image has its own seed


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


def test_p2_loss_weighting_is_the_closed_form_weight_of_the_drawn_time():
    from imagen_keras.diffusion.schedules import cosine_log_snr

    unet = tiny_unet()
    common = dict(image_sizes=8, text_embed_dim=TEXT_DIM, seed=5)
    plain = Imagen(unet, **common)
    p2 = Imagen(unet, p2_loss_weight_gamma=1.0, p2_loss_weight_k=2.0, **common)
    images, embeds = colour_data(1)
    # Same seed: the same text-dropout draw, then the same time t (the generator's second
    # draw) and noise; so the ratio of the losses is P2's (k + snr(t)) ** -gamma.
    generator = keras.random.SeedGenerator(5)
    keras.random.uniform((1,), seed=generator)
    t = keras.random.uniform((1,), seed=generator)
    snr = float(np.exp(to_numpy(cosine_log_snr(t))[0]))
    ratio = float(p2(images, text_embeds=embeds)) / float(plain(images, text_embeds=embeds))
    assert ratio == pytest.approx(1.0 / (2.0 + snr), rel=1e-4)
    assert p2.get_config()["p2_loss_weight_gamma"] == [1.0]


def test_text_dropout_of_the_cascade_drops_the_text():
    # cond_drop_prob=1: every sample trains on the null text, so the text cannot change
    # the loss; with 0 it does (same seed, same draws).
    images, embeds = colour_data(2)
    losses = {}
    for prob in (0.0, 1.0):
        imagen = Imagen(
            tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, cond_drop_prob=prob, seed=3
        )
        imagen.build()
        randomize_zero_init(imagen.unets[0])  # a zero final conv would ignore every input
        losses[prob] = []
        for text in (embeds, -embeds):
            imagen.seed_generator.state.assign(np.array([3, 0], "uint32"))
            losses[prob].append(float(imagen(images, text_embeds=text)))
    assert losses[1.0][0] == pytest.approx(losses[1.0][1], rel=1e-6)
    assert abs(losses[0.0][0] - losses[0.0][1]) > 1e-4 * losses[0.0][0]


def test_compile_refuses_a_user_loss_and_unet_number_zero_is_checked():
    imagen = Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM)
    with pytest.raises(ValueError, match="loss='mse'"):
        imagen.compile(optimizer="adam", loss="mse")
    images, embeds = colour_data(1)
    with pytest.raises(ValueError, match="unet_number=0"):
        imagen(images, text_embeds=embeds, unet_number=0)
