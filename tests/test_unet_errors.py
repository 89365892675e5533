"""Every documented Unet error names the argument and the value received."""

import numpy as np
import pytest

from imagen_keras import Unet
from tests.test_unet import built_unet
from tests.unet_helpers import CONFIGS, make_inputs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer_attns=(False, True, True)), r"layer_attns=\(False, True, True\)"),
        (dict(num_resnet_blocks=(1, 2, 3)), r"num_resnet_blocks=\(1, 2, 3\)"),
        (dict(layer_cross_attns=(True,)), r"layer_cross_attns=\(True,\)"),
        (dict(attn_heads=1), "attn_heads=1"),
        (dict(dim=0), "dim=0"),
        (dict(dim_mults=()), r"dim_mults=\(\)"),
        (dict(final_conv_kernel_size=4), "final_conv_kernel_size=4"),
        (dict(resize_mode="cubic-ish"), "cubic-ish"),
        (dict(text_embed_dim=None), "text_embed_dim"),
        (dict(init_cross_embed_kernel_sizes=(3, 4)), r"kernel_sizes=\(3, 4\)"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    config = dict(CONFIGS["full"], **kwargs)
    with pytest.raises(ValueError, match=match):
        unet = Unet(**config)
        x, time, call_kwargs = make_inputs(CONFIGS["full"])
        unet(x, time, **call_kwargs)


def test_image_size_not_divisible():
    unet = built_unet("efficient")  # memory efficient: downsamples 4x
    x, time, kwargs = make_inputs(CONFIGS["efficient"])
    with pytest.raises(ValueError, match=r"divisible by 4.*x.shape=\(2, 18, 18, 3\)"):
        unet(np.zeros((2, 18, 18, 3), "float32"), time, **kwargs)


def test_wrong_channel_count():
    unet = built_unet("uncond")
    _, time, kwargs = make_inputs(CONFIGS["uncond"])
    with pytest.raises(ValueError, match=r"x.shape=\(2, 16, 16, 4\)"):
        unet(np.zeros((2, 16, 16, 4), "float32"), time, **kwargs)


def test_text_embeds_of_wrong_width():
    unet = built_unet("efficient")
    x, time, kwargs = make_inputs(CONFIGS["efficient"])
    kwargs["text_embeds"] = np.zeros((2, 5, 12), "float32")
    with pytest.raises(ValueError, match=r"text_embed_dim=16.*text_embeds.shape=\(2, 5, 12\)"):
        unet(x, time, **kwargs)


def test_text_mask_of_wrong_shape():
    unet = built_unet("efficient")
    x, time, kwargs = make_inputs(CONFIGS["efficient"])
    kwargs["text_mask"] = np.ones((2, 4), bool)
    with pytest.raises(ValueError, match=r"text_mask.shape=\(2, 4\)"):
        unet(x, time, **kwargs)


def test_missing_lowres_inputs():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"])
    del kwargs["lowres_cond_img"]
    with pytest.raises(ValueError, match="lowres_cond_img"):
        unet(x, time, **kwargs)


def test_cond_images_missing_or_wrong_channels():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"])
    wrong = dict(kwargs, cond_images=np.zeros((2, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match=r"cond_images.shape=\(2, 8, 8, 3\)"):
        unet(x, time, **wrong)
    del kwargs["cond_images"]
    with pytest.raises(ValueError, match="cond_images_channels=2"):
        unet(x, time, **kwargs)


def test_bad_cond_drop_prob():
    unet = built_unet("full")
    x, time, kwargs = make_inputs(CONFIGS["full"])
    with pytest.raises(ValueError, match="1.5"):
        unet(x, time, cond_drop_prob=1.5, **kwargs)
