"""Tiny Unet configs and helpers shared by the Unet tests."""

import keras
import numpy as np

# Every Unet option is switched on in at least one of these (dim 8, 16x16 images).
TINY = dict(
    dim=8,
    dim_mults=(1, 2),
    text_embed_dim=16,
    attn_heads=2,
    attn_dim_head=8,
    max_text_len=8,
    attn_pool_num_latents=4,
)
CONFIGS = {
    # lowres_cond + self_cond + cond_images + full/cross attention + upsample combiner
    "full": dict(
        TINY,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        lowres_cond=True,
        self_cond=True,
        cond_images_channels=2,
        init_conv_to_final_conv_residual=True,
        combine_upsample_fmaps=True,
        layer_attns_depth=(1, 2),
    ),
    # Efficient U-Net + linear attention + cross-embed downsampling + plain upsampling
    "efficient": dict(
        TINY,
        memory_efficient=True,
        layer_attns=False,
        layer_cross_attns=False,
        use_linear_attn=True,
        use_linear_cross_attn=True,
        cross_embed_downsample=True,
        pixel_shuffle_upsample=False,
        init_cross_embed=False,
        attend_at_middle=False,
        scale_skip_connection=False,
        num_resnet_blocks=(1, 2),
    ),
    # unconditional, no attention pooling, no global context, no final resnet block
    "uncond": dict(
        TINY,
        cond_on_text=False,
        attn_pool_text=False,
        use_global_context_attn=False,
        final_resnet_block=False,
        layer_attns=(False, True),
        layer_cross_attns=False,
        final_conv_kernel_size=1,
    ),
}

SIZE = 16


def make_inputs(config, batch=2, seed=0, tokens=5):
    """Positional (x, time) and keyword inputs for a config."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, SIZE, SIZE, 3)).astype("float32")
    time = rng.normal(size=(batch,)).astype("float32") * 3
    kwargs = {}
    if config.get("cond_on_text", True):
        kwargs["text_embeds"] = rng.normal(size=(batch, tokens, config["text_embed_dim"])).astype(
            "float32"
        )
        mask = np.ones((batch, tokens), bool)
        mask[0, tokens - 2 :] = False
        kwargs["text_mask"] = mask
    if config.get("lowres_cond"):
        kwargs["lowres_cond_img"] = rng.normal(size=x.shape).astype("float32")
        kwargs["lowres_noise_times"] = rng.normal(size=(batch,)).astype("float32")
    if config.get("self_cond"):
        kwargs["self_cond"] = rng.normal(size=x.shape).astype("float32")
    if config.get("cond_images_channels"):
        c = config["cond_images_channels"]
        kwargs["cond_images"] = rng.uniform(size=(batch, SIZE // 2, SIZE // 2, c)).astype("float32")
    return x, time, kwargs


def randomize_zero_init(unet, seed=0):
    """The final conv is zero-initialised (output 0); give it weights so tests are strict."""
    rng = np.random.default_rng(seed)
    for w in unet.final_conv.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.2)


def to_numpy(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


@keras.saving.register_keras_serializable(package="imagen_keras_tests")
class UnetTrainer(keras.Model):
    """Wraps a Unet so that `train_on_batch` runs one gradient step on every backend."""

    def __init__(self, unet, kwarg_names, cond_drop_prob=0.0, **kwargs):
        super().__init__(**kwargs)
        self.unet, self.kwarg_names, self.cond_drop_prob = unet, kwarg_names, cond_drop_prob

    def call(self, inputs, training=False):
        kwargs = {k: inputs[k] for k in self.kwarg_names}
        if self.unet.cond_on_text:
            kwargs["cond_drop_prob"] = self.cond_drop_prob
        return self.unet(inputs["x"], inputs["time"], training=training, **kwargs)
