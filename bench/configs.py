"""Benchmark configs, shared by the imagen-keras and imagen-pytorch workers (stdlib only).

`tiny64` and `cascade64to128` are those of `shared/reference/bench_reference.py`
(unchanged unet and Imagen kwargs); `digits32` is the 5.15 M-parameter one-channel
config of issue #16. The batch size is chosen per run (4 or 32); text is
`text_len` tokens of width `text_dim`, with valid lengths `text_len - (i % 4)`.
"""

F, T = False, True

BASE_UNET_KW = dict(
    dim=32,
    cond_dim=128,
    dim_mults=(1, 2, 4),
    num_resnet_blocks=2,
    layer_attns=(F, T, T),
    layer_cross_attns=(F, T, T),
)
SR_UNET_KW = dict(
    dim=32,
    dim_mults=(1, 2, 4),
    num_resnet_blocks=(2, 2, 2),
    layer_attns=(F, F, T),
    layer_cross_attns=(F, F, T),
)
DIGITS_UNET_KW = dict(
    dim=32,
    cond_dim=64,
    dim_mults=(1, 2, 4),
    num_resnet_blocks=2,
    layer_attns=(F, T, T),
    layer_cross_attns=(F, T, T),
    channels=1,
)

CONFIGS = {
    "tiny64": dict(
        unets=[BASE_UNET_KW],
        image_sizes=(64,),
        channels=3,
        text_len=16,
        text_dim=128,
        train_unet=1,
        sample_steps=8,
    ),
    "cascade64to128": dict(
        # Trains the 64 -> 128 super-resolution stage only; samples the whole cascade.
        unets=[BASE_UNET_KW, SR_UNET_KW],
        image_sizes=(64, 128),
        channels=3,
        text_len=16,
        text_dim=128,
        train_unet=2,
        sample_steps=4,
    ),
    "digits32": dict(
        unets=[DIGITS_UNET_KW],
        image_sizes=(32,),
        channels=1,
        text_len=8,
        text_dim=64,
        train_unet=1,
        sample_steps=8,
    ),
}

# Imagen kwargs shared by both implementations (timesteps is the training schedule; the
# sampler is a second Imagen sharing the unets with `timesteps=sample_steps`).
IMAGEN_KW = dict(cond_drop_prob=0.1, timesteps=1000)
# ImagenTrainer's Adam defaults.
ADAM = dict(lr=1e-4, beta_1=0.9, beta_2=0.99, eps=1e-8)
COND_SCALE = 3.0
BATCH_SIZES = (4, 32)


def valid_lengths(batch, text_len):
    return [max(text_len - (i % 4), 1) for i in range(batch)]


def imagen_kwargs(config):
    c = CONFIGS[config]
    return dict(
        IMAGEN_KW,
        image_sizes=c["image_sizes"],
        channels=c["channels"],
        text_embed_dim=c["text_dim"],
    )
