"""Bad input to Imagen raises a ValueError naming the argument and the value received."""

import numpy as np
import pytest

from imagen_keras import Imagen
from tests.conftest import SIZES, TEXT_DIM, colour_data, tiny_unet

_STATE = {}


def cascade():
    if "imagen" not in _STATE:
        _STATE["imagen"] = Imagen(
            [tiny_unet(), tiny_unet()], image_sizes=SIZES, text_embed_dim=TEXT_DIM, timesteps=2
        )
    return _STATE["imagen"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_sizes=(8, 16, 32)), r"image_sizes=\(8, 16, 32\)"),
        (dict(image_sizes=(16, 8)), r"image_sizes=\(16, 8\)"),
        (dict(loss_type="l3"), "'l3'"),
        (dict(pred_objectives="eps"), "'eps'"),
        (dict(random_crop_sizes=(8, 8)), r"random_crop_sizes=\(8, 8\)"),
        (dict(noise_schedules="quadratic"), "quadratic"),
        (dict(cond_drop_prob=1.5), "1.5"),
        (dict(only_train_unet_number=3), "only_train_unet_number=3"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    config = dict(image_sizes=SIZES, text_embed_dim=TEXT_DIM)
    config.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Imagen([tiny_unet(), tiny_unet()], **config)


def test_images_of_the_wrong_size_or_range():
    imagen = cascade()
    images, embeds = colour_data(2)
    with pytest.raises(ValueError, match=r"at least that large.*images.shape=\(2, 8, 8, 3\)"):
        imagen(images[:, :8, :8], text_embeds=embeds, unet_number=2)
    with pytest.raises(ValueError, match=r"must be in \[0.0, 1.0\]"):
        imagen(images * 255.0, text_embeds=embeds, unet_number=1)
    with pytest.raises(ValueError, match=r"images.shape=\(2, 16, 12, 3\)"):
        imagen(images[:, :, :12], text_embeds=embeds, unet_number=1)


def test_unet_number_out_of_range():
    imagen = cascade()
    images, embeds = colour_data(2)
    with pytest.raises(ValueError, match="unet_number=3"):
        imagen(images, text_embeds=embeds, unet_number=3)
    with pytest.raises(ValueError, match="unet_number=None"):
        imagen(images, text_embeds=embeds)
    with pytest.raises(ValueError, match="unet_number=0"):
        imagen.compile(optimizer="adam", unet_number=0)


def test_text_embeds_batch_width_and_presence():
    imagen = cascade()
    images, embeds = colour_data(4)
    with pytest.raises(ValueError, match=r"one row per image.*text_embeds.shape=\(2, 3, 16\)"):
        imagen(images, text_embeds=embeds[:2], unet_number=1)
    with pytest.raises(ValueError, match=r"text_embeds.shape=\(4, 3, 8\)"):
        imagen(images, text_embeds=embeds[..., :8], unet_number=1)
    with pytest.raises(ValueError, match="pass `text_embeds`"):
        imagen(images, unet_number=1)
    with pytest.raises(ValueError, match=r"text_masks.shape=\(4, 2\)"):
        imagen(images, text_embeds=embeds, text_masks=np.ones((4, 2), bool), unet_number=1)


def test_guidance_needs_conditional_dropout():
    imagen = Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, cond_drop_prob=0.0)
    _, embeds = colour_data(2)
    with pytest.raises(ValueError, match="cond_scale=3.0, cond_drop_prob=0"):
        imagen.sample(text_embeds=embeds, cond_scale=3.0, verbose=0)


def test_inpaint_masks_of_the_wrong_shape():
    imagen = cascade()
    images, embeds = colour_data(2)
    with pytest.raises(ValueError, match=r"inpaint_masks.shape=\(2, 16, 8\)"):
        imagen.sample(
            text_embeds=embeds,
            inpaint_images=images,
            inpaint_masks=np.ones((2, 16, 8), bool),
            verbose=0,
        )
    with pytest.raises(ValueError, match="both"):
        imagen.sample(text_embeds=embeds, inpaint_images=images, verbose=0)


def test_stop_and_start_numbers():
    imagen = cascade()
    _, embeds = colour_data(2)
    with pytest.raises(ValueError, match="stop_at_unet_number=3"):
        imagen.sample(text_embeds=embeds, stop_at_unet_number=3, verbose=0)
    with pytest.raises(ValueError, match="start_image_or_video"):
        imagen.sample(text_embeds=embeds, start_at_unet_number=2, verbose=0)


def test_unconditional_model_refuses_text():
    imagen = Imagen(tiny_unet(), image_sizes=8, condition_on_text=False)
    images, embeds = colour_data(2)
    with pytest.raises(ValueError, match="condition_on_text=False"):
        imagen(images, text_embeds=embeds)
