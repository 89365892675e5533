"""Parameter counts equal imagen-pytorch 2.1.0's for the same configs, and the presets."""

import json

import pytest

from imagen_keras import BaseUnet64, NullUnet, SRUnet256, SRUnet1024, Unet
from tests.conftest import DATA_DIR

GOLDEN = json.loads((DATA_DIR / "imagen-pytorch-golden.json").read_text())["unet_param_counts"]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_param_count_matches_reference(name):
    spec = GOLDEN[name]
    unet = Unet(**spec["kwargs"])
    unet.build((None, 32, 32, 3))
    assert unet.count_params() == spec["params"]


@pytest.mark.parametrize(
    "preset, params",
    [
        (BaseUnet64, 1_625_742_116),
        (SRUnet256, 694_818_745),
        (SRUnet1024, 684_026_553),
    ],
)
@pytest.mark.slow
def test_preset_param_counts(preset, params):
    unet = preset(text_embed_dim=768)
    unet.build((None, 64, 64, 3))
    assert unet.count_params() == params


def test_preset_defaults_and_overrides():
    unet = SRUnet256(dim=16, lowres_cond=True)
    assert unet.dim == 16
    assert unet.num_resnet_blocks == (2, 4, 8, 8)
    assert unet.memory_efficient and unet.lowres_cond
    assert BaseUnet64().dim_mults == (1, 2, 3, 4)
    assert SRUnet1024().layer_attns is False
    assert Unet(dim=8).text_embed_dim == 768  # T5 v1.1 base, known without network


def test_null_unet_returns_input():
    import numpy as np

    unet = NullUnet()
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_array_equal(np.asarray(unet(x, np.zeros(1))), x)
    assert unet.count_params() == 1
    assert unet.lowres_cond is False
