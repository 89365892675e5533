"""Quick start: build a tiny text-conditioned Imagen Unet, run it with classifier-free
guidance, save and reload it. Runs in under a minute on a CPU, with no network.

    python examples/unet_quickstart.py

This is the first set-up command of the README until the demo training recipe lands
(the Imagen cascade and its trainer are the next milestones).
"""

import os
import tempfile
import warnings

import keras
import numpy as np

from imagen_keras import Unet
from imagen_keras.generation import guided_call

warnings.filterwarnings("ignore", message="The base dimension")


def main():
    unet = Unet(
        dim=16,
        dim_mults=(1, 2),
        text_embed_dim=32,
        attn_heads=2,
        attn_dim_head=16,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        max_text_len=16,
    )
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    log_snr = np.array([2.0, -1.0], "float32")
    text_embeds = rng.normal(size=(2, 7, 32)).astype("float32")
    text_mask = np.array([[True] * 7, [True] * 4 + [False] * 3])

    out = unet(images, log_snr, text_embeds=text_embeds, text_mask=text_mask)
    guided = guided_call(
        unet, images, log_snr, cond_scale=5.0, text_embeds=text_embeds, text_mask=text_mask
    )
    print(f"backend: {keras.backend.backend()}")
    print(f"Unet parameters: {unet.count_params():,}")
    print(f"prediction: {tuple(out.shape)}, guided prediction: {tuple(guided.shape)}")

    path = os.path.join(tempfile.mkdtemp(), "unet.keras")
    unet.save(path)
    restored = keras.saving.load_model(path)
    again = restored(images, log_snr, text_embeds=text_embeds, text_mask=text_mask)
    diff = float(np.abs(keras.ops.convert_to_numpy(again) - keras.ops.convert_to_numpy(out)).max())
    print(f"saved to {path} and reloaded: max difference {diff}")


if __name__ == "__main__":
    main()
