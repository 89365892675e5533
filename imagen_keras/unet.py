"""The Imagen Unet (2-D), argument for argument imagen-pytorch 2.1.0's `Unet`.

Layout is channels-last: images are `(batch, height, width, channels)`. The Unet knows
nothing about noise schedules or cascades: it maps a noisy image and a noise level
(`time`, the log-SNR) plus conditioning to a prediction.
"""

import warnings

import keras
from keras import ops

from imagen_keras.layers.attention import TransformerBlock
from imagen_keras.layers.common import Conv2D, cast_tuple, conv2d, dense
from imagen_keras.layers.embeddings import LearnedSinusoidalPosEmb
from imagen_keras.layers.perceiver import PerceiverResampler
from imagen_keras.layers.resnet import ResnetBlock
from imagen_keras.layers.sampling import CrossEmbedLayer, UpsampleCombiner, resize_image_to
from imagen_keras.text.t5_widths import DEFAULT_T5_NAME, get_encoded_dim
from imagen_keras.unet_levels import UnetDownLevel, UnetUpLevel

DEFAULT_TEXT_EMBED_DIM = get_encoded_dim(DEFAULT_T5_NAME)  # 768, T5 v1.1 base

# Settings a cascade decides for each stage; settable until the unet is built.
CASCADE_SETTINGS = ("lowres_cond", "text_embed_dim", "channels", "channels_out", "cond_on_text")

_WARNED_SMALL_DIM = False
_RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area", "lanczos3", "lanczos5")


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="imagen_keras")
class Unet(keras.Model):
    """Imagen's text-conditioned efficient Unet.

    Every argument of imagen-pytorch's `Unet` is accepted under the same name with the
    same default, and builds the same architecture (parameter counts are equal). Layers
    are created when the unet is built (its first call), so that a cascade can still set
    `lowres_cond`, `text_embed_dim`, `channels`, `channels_out` and `cond_on_text` for its
    stage (`cast_model_parameters`) without replacing the user's object.

    Args:
        dim: int. Base channel width.
        text_embed_dim: int, defaults to 768 (the width of T5 v1.1 base).
        num_resnet_blocks: int or per-level tuple, defaults to 1. Extra ResnetBlocks per
            level besides the level's first block.
        cond_dim: int or `None` (defaults to `dim`). Width of the conditioning tokens.
        num_image_tokens: int, defaults to 4. Ignored (unused by the reference too).
        num_time_tokens: int, defaults to 2. Time tokens appended to the context.
        learned_sinu_pos_emb_dim: int, defaults to 16. Fourier features of the noise level.
        out_dim: ignored, as in the reference (use `channels_out`).
        dim_mults: tuple of ints, defaults to `(1, 2, 4, 8)`. Level widths are `dim * m`.
        cond_images_channels: int, defaults to 0. Channels of extra conditioning images,
            resized and concatenated before the input.
        channels: int, defaults to 3.
        channels_out: int or `None` (defaults to `channels`).
        attn_dim_head: int, defaults to 64.
        attn_heads: int, defaults to 8. At least 2.
        ff_mult: float, defaults to 2.
        lowres_cond: bool, defaults to `False`. Super-resolution stage: concatenate the
            low-resolution image and condition on its augmentation noise level.
        layer_attns: bool or per-level tuple, defaults to `True`. Self-attention at the end
            of each level.
        layer_attns_depth: int or per-level tuple, defaults to 1.
        layer_mid_attns_depth: int, defaults to 1.
        layer_attns_add_text_cond: ignored; self attention always sees the context tokens,
            as in the reference.
        attend_at_middle: bool, defaults to `True`.
        layer_cross_attns: bool or per-level tuple, defaults to `True`. Cross attention in
            each level's first ResnetBlock.
        use_linear_attn: bool or per-level tuple, defaults to `False`. Linear attention
            where `layer_attns` is off.
        use_linear_cross_attn: bool or per-level tuple, defaults to `False`.
        cond_on_text: bool, defaults to `True`.
        max_text_len: int, defaults to 256. Text tokens are truncated or padded to it.
        init_dim: int or `None` (defaults to `dim`).
        init_conv_kernel_size: int, defaults to 7. Used when `init_cross_embed=False`.
        init_cross_embed: bool, defaults to `True`.
        init_cross_embed_kernel_sizes: tuple, defaults to `(3, 7, 15)`.
        cross_embed_downsample: bool, defaults to `False`.
        cross_embed_downsample_kernel_sizes: tuple, defaults to `(2, 4)`.
        attn_pool_text: bool, defaults to `True`. Perceiver attention pooling of text.
        attn_pool_num_latents: int, defaults to 32.
        dropout: ignored, as in the reference.
        memory_efficient: bool, defaults to `False`. Efficient U-Net variant.
        init_conv_to_final_conv_residual: bool, defaults to `False`.
        use_global_context_attn: bool, defaults to `True`.
        scale_skip_connection: bool, defaults to `True`. Skips are scaled by 2**-0.5.
        final_resnet_block: bool, defaults to `True`.
        final_conv_kernel_size: int, defaults to 3. The final conv is zero-initialised.
        self_cond: bool, defaults to `False`. Self-conditioning input.
        resize_mode: str, defaults to "nearest". Resizing of `cond_images`.
        combine_upsample_fmaps: bool, defaults to `False`.
        pixel_shuffle_upsample: bool, defaults to `True`.

    Call arguments:
        x: `(batch, size, size, channels)` noisy images.
        time: `(batch,)` noise levels as log-SNR.
        lowres_cond_img: `(batch, size, size, channels)`, required when `lowres_cond`.
        lowres_noise_times: `(batch,)` log-SNR of the low-res augmentation noise.
        text_embeds: `(batch, n, text_embed_dim)`.
        text_mask: `(batch, n)` bool; `False` positions are replaced by null tokens.
        cond_images: `(batch, h, w, cond_images_channels)`.
        self_cond: `(batch, size, size, channels)`; zeros when omitted.
        cond_drop_prob: float, defaults to 0. Probability of dropping each sample's text.
        text_keep_mask: `(batch,)` bool; overrides `cond_drop_prob` when given.

    Example:
    ```python
    unet = Unet(dim=16, dim_mults=(1, 2), text_embed_dim=32, attn_heads=2, attn_dim_head=8,
                layer_attns=(False, True), layer_cross_attns=(False, True))
    out = unet(np.zeros((2, 16, 16, 3)), np.zeros((2,)), text_embeds=np.zeros((2, 5, 32)))
    ```

    Reference: Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep
    Language Understanding" (2022), appendix F (Efficient U-Net).
    """

    def __init__(
        self,
        *,
        dim,
        text_embed_dim=DEFAULT_TEXT_EMBED_DIM,
        num_resnet_blocks=1,
        cond_dim=None,
        num_image_tokens=4,
        num_time_tokens=2,
        learned_sinu_pos_emb_dim=16,
        out_dim=None,
        dim_mults=(1, 2, 4, 8),
        cond_images_channels=0,
        channels=3,
        channels_out=None,
        attn_dim_head=64,
        attn_heads=8,
        ff_mult=2.0,
        lowres_cond=False,
        layer_attns=True,
        layer_attns_depth=1,
        layer_mid_attns_depth=1,
        layer_attns_add_text_cond=True,
        attend_at_middle=True,
        layer_cross_attns=True,
        use_linear_attn=False,
        use_linear_cross_attn=False,
        cond_on_text=True,
        max_text_len=256,
        init_dim=None,
        init_conv_kernel_size=7,
        init_cross_embed=True,
        init_cross_embed_kernel_sizes=(3, 7, 15),
        cross_embed_downsample=False,
        cross_embed_downsample_kernel_sizes=(2, 4),
        attn_pool_text=True,
        attn_pool_num_latents=32,
        dropout=0.0,
        memory_efficient=False,
        init_conv_to_final_conv_residual=False,
        use_global_context_attn=True,
        scale_skip_connection=True,
        final_resnet_block=True,
        final_conv_kernel_size=3,
        self_cond=False,
        resize_mode="nearest",
        combine_upsample_fmaps=False,
        pixel_shuffle_upsample=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("dim", dim)
        _check_positive_int("attn_heads", attn_heads, minimum=2)
        _check_positive_int("attn_dim_head", attn_dim_head)
        _check_positive_int("channels", channels)
        _check_positive_int("max_text_len", max_text_len)
        _check_positive_int("num_time_tokens", num_time_tokens)
        _check_positive_int("cond_images_channels", cond_images_channels, minimum=0)
        if not isinstance(dim_mults, (list, tuple)) or not dim_mults:
            raise ValueError(
                f"`dim_mults` must be a non-empty tuple. Received: dim_mults={dim_mults!r}"
            )
        levels = len(dim_mults)
        per_level = dict(
            num_resnet_blocks=num_resnet_blocks,
            layer_attns=layer_attns,
            layer_attns_depth=layer_attns_depth,
            layer_cross_attns=layer_cross_attns,
            use_linear_attn=use_linear_attn,
            use_linear_cross_attn=use_linear_cross_attn,
        )
        for name, value in per_level.items():
            cast_tuple(value, levels, name)
        for name in ("final_conv_kernel_size", "init_conv_kernel_size"):
            value = locals()[name]
            if value % 2 != 1:
                raise ValueError(f"`{name}` must be odd. Received: {name}={value}")
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"`resize_mode` must be one of {_RESIZE_MODES}. Received: {resize_mode!r}"
            )
        if cond_on_text and text_embed_dim is None:
            raise ValueError("`text_embed_dim` must be given when `cond_on_text=True`.")
        global _WARNED_SMALL_DIM
        if dim < 128 and not _WARNED_SMALL_DIM:
            _WARNED_SMALL_DIM = True
            warnings.warn(
                "The base dimension of the Unet should ideally be at least 128 "
                f"(received dim={dim}); small dims are for tests and demos.",
                stacklevel=2,
            )

        self.dim = dim
        self.text_embed_dim = text_embed_dim
        self.num_resnet_blocks = num_resnet_blocks
        self.cond_dim = cond_dim
        self.num_image_tokens = num_image_tokens
        self.num_time_tokens = num_time_tokens
        self.learned_sinu_pos_emb_dim = learned_sinu_pos_emb_dim
        self.out_dim = out_dim
        self.dim_mults = tuple(dim_mults)
        self.cond_images_channels = cond_images_channels
        self.channels = channels
        self.channels_out = channels_out
        self.attn_dim_head = attn_dim_head
        self.attn_heads = attn_heads
        self.ff_mult = ff_mult
        self.lowres_cond = lowres_cond
        self.layer_attns = layer_attns
        self.layer_attns_depth = layer_attns_depth
        self.layer_mid_attns_depth = layer_mid_attns_depth
        self.layer_attns_add_text_cond = layer_attns_add_text_cond
        self.attend_at_middle = attend_at_middle
        self.layer_cross_attns = layer_cross_attns
        self.use_linear_attn = use_linear_attn
        self.use_linear_cross_attn = use_linear_cross_attn
        self.cond_on_text = cond_on_text
        self.max_text_len = max_text_len
        self.init_dim = init_dim
        self.init_conv_kernel_size = init_conv_kernel_size
        self.init_cross_embed = init_cross_embed
        self.init_cross_embed_kernel_sizes = tuple(init_cross_embed_kernel_sizes)
        self.cross_embed_downsample = cross_embed_downsample
        self.cross_embed_downsample_kernel_sizes = tuple(cross_embed_downsample_kernel_sizes)
        self.attn_pool_text = attn_pool_text
        self.attn_pool_num_latents = attn_pool_num_latents
        self.dropout = dropout
        self.memory_efficient = memory_efficient
        self.init_conv_to_final_conv_residual = init_conv_to_final_conv_residual
        self.use_global_context_attn = use_global_context_attn
        self.scale_skip_connection = scale_skip_connection
        self.final_resnet_block = final_resnet_block
        self.final_conv_kernel_size = final_conv_kernel_size
        self.self_cond = self_cond
        self.resize_mode = resize_mode
        self.combine_upsample_fmaps = combine_upsample_fmaps
        self.pixel_shuffle_upsample = pixel_shuffle_upsample
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._layers_created = False

    # ------------------------------------------------------------------ cascade settings

    @property
    def resolved_channels_out(self):
        return self.channels_out if self.channels_out is not None else self.channels

    @property
    def downsample_factor(self):
        """Total downsampling; image sizes must be divisible by it."""
        levels = len(self.dim_mults)
        return 2 ** (levels if self.memory_efficient else levels - 1)

    def cast_model_parameters(
        self, *, lowres_cond, text_embed_dim, channels, channels_out, cond_on_text
    ):
        """Set the settings a cascade decides for this stage; returns `self`.

        Unlike imagen-pytorch, this never replaces the unet with a new random one: before
        the unet is built the settings are simply applied; after, a mismatch raises.

        Raises:
            ValueError: if the unet is already built with different settings.
        """
        wanted = dict(
            lowres_cond=lowres_cond,
            text_embed_dim=text_embed_dim,
            channels=channels,
            channels_out=channels_out,
            cond_on_text=cond_on_text,
        )
        current = dict(
            lowres_cond=self.lowres_cond,
            text_embed_dim=self.text_embed_dim,
            channels=self.channels,
            channels_out=self.resolved_channels_out,
            cond_on_text=self.cond_on_text,
        )
        if not cond_on_text:
            wanted.pop("text_embed_dim")
            current.pop("text_embed_dim")
        diff = {k: (current[k], v) for k, v in wanted.items() if current[k] != v}
        if not diff:
            return self
        if self.built:
            details = ", ".join(
                f"{k}: unet has {a!r}, cascade needs {b!r}" for k, (a, b) in diff.items()
            )
            raise ValueError(
                f"Unet '{self.name}' is already built with settings that do not fit this "
                f"cascade stage ({details}). Construct the unet with these settings, or pass "
                "an unbuilt unet so the cascade can configure it."
            )
        if cond_on_text and text_embed_dim is None:
            raise ValueError("`text_embed_dim` must be given when `cond_on_text=True`.")
        for key, value in wanted.items():
            setattr(self, key, value)
        if not cond_on_text:
            self.cond_on_text = False
        return self

    # ------------------------------------------------------------------ layers

    def _create_layers(self):
        if self._layers_created:
            return
        d = self.dtype_policy
        dim, levels = self.dim, len(self.dim_mults)
        init_dim = self.init_dim if self.init_dim is not None else dim
        cond_dim = self.cond_dim if self.cond_dim is not None else dim
        time_cond_dim = dim * 4 * (2 if self.lowres_cond else 1)
        heads, dim_head = self.attn_heads, self.attn_dim_head
        self._init_dim, self._cond_dim, self._time_cond_dim = init_dim, cond_dim, time_cond_dim

        if self.init_cross_embed:
            self.init_conv = CrossEmbedLayer(
                init_dim, self.init_cross_embed_kernel_sizes, stride=1, dtype=d, name="init_conv"
            )
        else:
            self.init_conv = conv2d(init_dim, self.init_conv_kernel_size, dtype=d, name="init_conv")

        # Noise level (log-SNR) -> time vector `t` and time tokens.
        def time_modules(prefix):
            return (
                LearnedSinusoidalPosEmb(
                    self.learned_sinu_pos_emb_dim, dtype=d, name=f"{prefix}_sinu"
                ),
                dense(time_cond_dim, dtype=d, name=f"{prefix}_hiddens"),
                dense(time_cond_dim, dtype=d, name=f"{prefix}_cond"),
                dense(cond_dim * self.num_time_tokens, dtype=d, name=f"{prefix}_tokens"),
            )

        self.time_sinu, self.to_time_hiddens, self.to_time_cond, self.to_time_tokens = time_modules(
            "to_time"
        )
        if self.lowres_cond:
            (
                self.lowres_time_sinu,
                self.to_lowres_time_hiddens,
                self.to_lowres_time_cond,
                self.to_lowres_time_tokens,
            ) = time_modules("to_lowres_time")

        self.norm_cond = keras.layers.LayerNormalization(epsilon=1e-5, dtype=d, name="norm_cond")

        # Like the reference, the pooler (and the null embeddings) exist even when
        # `cond_on_text=False`, so that checkpoints map one to one; they are then unused.
        if self.attn_pool_text:
            self.attn_pool = PerceiverResampler(
                cond_dim,
                depth=2,
                dim_head=dim_head,
                heads=heads,
                num_latents=self.attn_pool_num_latents,
                dtype=d,
                name="attn_pool",
            )
        if self.cond_on_text:
            self.text_to_cond = dense(cond_dim, dtype=d, name="text_to_cond")
            self.text_non_attn_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=d, name="text_non_attn_norm"
            )
            self.text_non_attn_in = dense(time_cond_dim, dtype=d, name="text_non_attn_in")
            self.text_non_attn_out = dense(time_cond_dim, dtype=d, name="text_non_attn_out")
        self.null_text_embed = self.add_weight(
            shape=(1, self.max_text_len, cond_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="null_text_embed",
        )
        self.null_text_hidden = self.add_weight(
            shape=(1, time_cond_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="null_text_hidden",
        )

        nrb = cast_tuple(self.num_resnet_blocks, levels, "num_resnet_blocks")
        attns = cast_tuple(self.layer_attns, levels, "layer_attns")
        depths = cast_tuple(self.layer_attns_depth, levels, "layer_attns_depth")
        cross = cast_tuple(self.layer_cross_attns, levels, "layer_cross_attns")
        lin = cast_tuple(self.use_linear_attn, levels, "use_linear_attn")
        lin_cross = cast_tuple(self.use_linear_cross_attn, levels, "use_linear_cross_attn")
        kinds = ["full" if a else ("linear" if la else "none") for a, la in zip(attns, lin)]
        dims = [init_dim, *(dim * m for m in self.dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        ce = self.cross_embed_downsample_kernel_sizes if self.cross_embed_downsample else None

        self.init_resnet_block = None
        if self.memory_efficient:
            self.init_resnet_block = ResnetBlock(
                init_dim,
                init_dim,
                time_cond_dim=time_cond_dim,
                use_gca=self.use_global_context_attn,
                heads=heads,
                dim_head=dim_head,
                dtype=d,
                name="init_resnet_block",
            )

        common = dict(
            use_gca=self.use_global_context_attn,
            cond_dim=cond_dim,
            time_cond_dim=time_cond_dim,
            heads=heads,
            dim_head=dim_head,
            ff_mult=self.ff_mult,
            dtype=d,
        )
        self.downs = []
        for i, (dim_in, dim_out) in enumerate(in_out):
            self.downs.append(
                UnetDownLevel(
                    dim_in,
                    dim_out,
                    nrb[i],
                    kinds[i],
                    depths[i],
                    cross[i],
                    lin_cross[i],
                    is_last=i == levels - 1,
                    memory_efficient=self.memory_efficient,
                    cross_embed_downsample_kernel_sizes=ce,
                    name=f"down_{i}",
                    **common,
                )
            )
        skip_dims = [level.skip_dim for level in self.downs]

        mid_dim = dims[-1]
        # The reference builds the mid blocks' cross attention with its default 8 heads of
        # 64, whatever `attn_heads`/`attn_dim_head` are; kept for weight compatibility.
        self.mid_block1 = ResnetBlock(
            mid_dim,
            mid_dim,
            cond_dim=cond_dim,
            time_cond_dim=time_cond_dim,
            dtype=d,
            name="mid_block1",
        )
        self.mid_attn = None
        if self.attend_at_middle:
            self.mid_attn = TransformerBlock(
                mid_dim,
                depth=self.layer_mid_attns_depth,
                heads=heads,
                dim_head=dim_head,
                dtype=d,
                name="mid_attn",
            )
        self.mid_block2 = ResnetBlock(
            mid_dim,
            mid_dim,
            cond_dim=cond_dim,
            time_cond_dim=time_cond_dim,
            dtype=d,
            name="mid_block2",
        )

        upsample_kind = "pixel_shuffle" if self.pixel_shuffle_upsample else "nearest"
        self.ups = []
        up_dims = []
        for j, (dim_in, dim_out) in enumerate(reversed(in_out)):
            i = levels - 1 - j
            is_last = j == levels - 1
            up_dims.append(dim_out)
            self.ups.append(
                UnetUpLevel(
                    dim_in,
                    dim_out,
                    skip_dims.pop(),
                    nrb[i],
                    kinds[i],
                    depths[i],
                    cross[i],
                    lin_cross[i],
                    upsample=upsample_kind if (not is_last or self.memory_efficient) else "none",
                    skip_scale=2**-0.5 if self.scale_skip_connection else 1.0,
                    name=f"up_{j}",
                    **common,
                )
            )

        self.upsample_combiner = None
        if self.combine_upsample_fmaps:
            self.upsample_combiner = UpsampleCombiner(
                (dim,) * len(up_dims), dtype=d, name="upsample_combiner"
            )
        self.final_res_block = None
        if self.final_resnet_block:
            combined = dim * (1 + len(up_dims)) if self.combine_upsample_fmaps else dim
            final_conv_dim = combined + (dim if self.init_conv_to_final_conv_residual else 0)
            self.final_res_block = ResnetBlock(
                final_conv_dim,
                dim,
                time_cond_dim=time_cond_dim,
                use_gca=True,
                dtype=d,
                name="final_res_block",
            )
        self.final_conv = Conv2D(
            self.resolved_channels_out,
            self.final_conv_kernel_size,
            padding="same",
            kernel_initializer="zeros",
            bias_initializer="zeros",
            dtype=d,
            name="final_conv",
        )
        self._layers_created = True

    def build(self, input_shape):
        self._create_layers()
        # Structure does not depend on the image size; any valid size builds the layers.
        # A bad size in `input_shape` is left to `call`, whose check names it.
        h = w = self.downsample_factor * 4
        kt = lambda shape, dtype="float32": keras.KerasTensor(shape, dtype=dtype)
        inputs = dict(
            x=kt((1, h, w, self.channels)),
            time=kt((1,)),
        )
        if self.lowres_cond:
            inputs["lowres_cond_img"] = kt((1, h, w, self.channels))
            inputs["lowres_noise_times"] = kt((1,))
        if self.cond_on_text:
            inputs["text_embeds"] = kt((1, 1, self.text_embed_dim))
        if self.cond_images_channels:
            inputs["cond_images"] = kt((1, h, w, self.cond_images_channels))
        self._forward(**inputs, text_keep_mask=kt((1,), "bool"))
        if self.attn_pool_text and not self.cond_on_text:
            self.attn_pool(kt((1, self.max_text_len, self._cond_dim)))
        self.built = True

    def get_build_config(self):
        return {"input_shape": (None, None, None, self.channels)}

    def build_from_config(self, config):
        self.build(config.get("input_shape"))

    # ------------------------------------------------------------------ validation

    def _validate(
        self, x, lowres_cond_img, lowres_noise_times, text_embeds, text_mask, cond_images, self_cond
    ):
        if len(x.shape) != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"`x` must be (batch, height, width, {self.channels}) channels-last images. "
                f"Received: x.shape={tuple(x.shape)}"
            )
        f = self.downsample_factor
        for axis in (1, 2):
            if x.shape[axis] is not None and x.shape[axis] % f != 0:
                raise ValueError(
                    f"Image height and width must be divisible by {f}, the Unet's total "
                    f"downsampling. Received: x.shape={tuple(x.shape)}"
                )
        if self.lowres_cond and (lowres_cond_img is None or lowres_noise_times is None):
            raise ValueError(
                "This unet has `lowres_cond=True`: pass `lowres_cond_img` and "
                f"`lowres_noise_times`. Received: lowres_cond_img={lowres_cond_img is not None}, "
                f"lowres_noise_times={lowres_noise_times is not None}"
            )
        if lowres_cond_img is not None:
            if not self.lowres_cond:
                raise ValueError("`lowres_cond_img` was given but the unet has lowres_cond=False.")
            if tuple(lowres_cond_img.shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(
                    f"`lowres_cond_img` must have the shape of `x` ({tuple(x.shape)}). "
                    f"Received: lowres_cond_img.shape={tuple(lowres_cond_img.shape)}"
                )
        if text_embeds is not None and self.cond_on_text:
            if len(text_embeds.shape) != 3 or text_embeds.shape[-1] != self.text_embed_dim:
                raise ValueError(
                    f"`text_embeds` must be (batch, tokens, {self.text_embed_dim}) "
                    f"(text_embed_dim={self.text_embed_dim}). "
                    f"Received: text_embeds.shape={tuple(text_embeds.shape)}"
                )
            if text_mask is not None and tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
                raise ValueError(
                    f"`text_mask` must be (batch, tokens) = {tuple(text_embeds.shape[:2])}. "
                    f"Received: text_mask.shape={tuple(text_mask.shape)}"
                )
        has_cond = self.cond_images_channels > 0
        if has_cond != (cond_images is not None):
            raise ValueError(
                f"The unet has cond_images_channels={self.cond_images_channels}; `cond_images` "
                f"must be given exactly when it is > 0. Received: "
                f"cond_images={'a tensor' if cond_images is not None else None}"
            )
        if cond_images is not None and cond_images.shape[-1] != self.cond_images_channels:
            raise ValueError(
                f"`cond_images` must have {self.cond_images_channels} channels (last axis). "
                f"Received: cond_images.shape={tuple(cond_images.shape)}"
            )
        if self_cond is not None and tuple(self_cond.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"`self_cond` must have the shape of `x` ({tuple(x.shape)}). "
                f"Received: self_cond.shape={tuple(self_cond.shape)}"
            )

    # ------------------------------------------------------------------ forward

    def call(
        self,
        x,
        time,
        lowres_cond_img=None,
        lowres_noise_times=None,
        text_embeds=None,
        text_mask=None,
        cond_images=None,
        self_cond=None,
        cond_drop_prob=0.0,
        text_keep_mask=None,
        training=None,
    ):
        self._validate(
            x, lowres_cond_img, lowres_noise_times, text_embeds, text_mask, cond_images, self_cond
        )
        if text_keep_mask is None and text_embeds is not None and self.cond_on_text:
            text_keep_mask = self.text_keep_mask(ops.shape(x)[0], cond_drop_prob)
        return self._forward(
            x,
            time,
            lowres_cond_img=lowres_cond_img,
            lowres_noise_times=lowres_noise_times,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond_images=cond_images,
            self_cond=self_cond,
            text_keep_mask=text_keep_mask,
            training=training,
        )

    def text_keep_mask(self, batch_size, cond_drop_prob):
        """Per-sample bool mask of samples that keep their text (`1 - cond_drop_prob`)."""
        if isinstance(cond_drop_prob, (int, float)):
            if not 0.0 <= cond_drop_prob <= 1.0:
                raise ValueError(f"`cond_drop_prob` must be in [0, 1]. Received: {cond_drop_prob}")
            if cond_drop_prob == 0:
                return ops.ones((batch_size,), dtype="bool")
            if cond_drop_prob == 1:
                return ops.zeros((batch_size,), dtype="bool")
        u = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return u < (1.0 - cond_drop_prob)

    def _forward(
        self,
        x,
        time,
        lowres_cond_img=None,
        lowres_noise_times=None,
        text_embeds=None,
        text_mask=None,
        cond_images=None,
        self_cond=None,
        text_keep_mask=None,
        training=None,
    ):
        dtype = self.compute_dtype
        x = ops.cast(x, dtype)
        time = ops.cast(time, "float32")  # the time embedding computes in float32
        batch = ops.shape(x)[0]

        parts = [x]
        if self.self_cond:
            parts.append(ops.zeros_like(x) if self_cond is None else ops.cast(self_cond, dtype))
        if lowres_cond_img is not None:
            lowres_cond_img = ops.cast(lowres_cond_img, dtype)
            parts.append(lowres_cond_img)
        if cond_images is not None:
            cond_images = resize_image_to(
                ops.cast(cond_images, dtype), x.shape[1], self.resize_mode
            )
            parts.insert(0, cond_images)
        x = ops.concatenate(parts, axis=-1) if len(parts) > 1 else x

        x = self.init_conv(x)
        init_conv_residual = x

        time_hiddens = ops.silu(self.to_time_hiddens(self.time_sinu(time)))
        time_tokens = ops.reshape(
            self.to_time_tokens(time_hiddens), (batch, self.num_time_tokens, self._cond_dim)
        )
        t = self.to_time_cond(time_hiddens)
        if self.lowres_cond:
            lowres_noise_times = ops.cast(lowres_noise_times, "float32")
            lowres_hiddens = ops.silu(
                self.to_lowres_time_hiddens(self.lowres_time_sinu(lowres_noise_times))
            )
            lowres_tokens = ops.reshape(
                self.to_lowres_time_tokens(lowres_hiddens),
                (batch, self.num_time_tokens, self._cond_dim),
            )
            t = t + self.to_lowres_time_cond(lowres_hiddens)
            time_tokens = ops.concatenate([time_tokens, lowres_tokens], axis=1)

        c = time_tokens
        if text_embeds is not None and self.cond_on_text:
            text_tokens, text_hiddens = self._text_conditioning(
                ops.cast(text_embeds, dtype), text_mask, text_keep_mask
            )
            t = t + text_hiddens
            c = ops.concatenate([time_tokens, text_tokens], axis=1)
        c = self.norm_cond(c)

        if self.init_resnet_block is not None:
            x = self.init_resnet_block(x, t)

        skips = []
        for level in self.downs:
            x, level_skips = level(x, t, c)
            skips.append(level_skips)

        x = self.mid_block1(x, t, c)
        if self.mid_attn is not None:
            x = self.mid_attn(x)
        x = self.mid_block2(x, t, c)

        fmaps = []
        for level in self.ups:
            x, fmap = level(x, list(reversed(skips.pop())), t, c)
            fmaps.append(fmap)

        if self.upsample_combiner is not None:
            x = self.upsample_combiner(x, fmaps)
        if self.init_conv_to_final_conv_residual:
            x = ops.concatenate([x, init_conv_residual], axis=-1)
        if self.final_res_block is not None:
            x = self.final_res_block(x, t)
        if lowres_cond_img is not None:
            x = ops.concatenate([x, lowres_cond_img], axis=-1)
        # The prediction is float32 under every dtype policy: the diffusion maths
        # (loss, sampler, guidance) around the unet stays in float32.
        return ops.cast(self.final_conv(x), "float32")

    def _text_conditioning(self, text_embeds, text_mask, keep):
        """Project, pad/truncate to `max_text_len`, swap in null tokens, pool."""
        dtype = text_embeds.dtype
        tokens = self.text_to_cond(text_embeds)[:, : self.max_text_len]
        if text_mask is not None:
            text_mask = ops.cast(text_mask, "bool")[:, : self.max_text_len]
        remainder = self.max_text_len - tokens.shape[1]
        if remainder > 0:
            tokens = ops.pad(tokens, ((0, 0), (0, remainder), (0, 0)))
            if text_mask is not None:
                text_mask = ops.pad(text_mask, ((0, 0), (0, remainder)), constant_values=False)
        keep = ops.cast(keep, "bool")
        keep_embed = keep[:, None, None]
        if text_mask is not None:
            keep_embed = ops.logical_and(keep_embed, text_mask[:, :, None])
        tokens = ops.where(keep_embed, tokens, ops.cast(self.null_text_embed, dtype))
        if self.attn_pool_text:
            tokens = self.attn_pool(tokens)
        hiddens = self.text_non_attn_norm(ops.mean(tokens, axis=1))
        hiddens = self.text_non_attn_out(ops.silu(self.text_non_attn_in(hiddens)))
        hiddens = ops.where(keep[:, None], hiddens, ops.cast(self.null_text_hidden, dtype))
        return tokens, hiddens

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        for key in UNET_ARG_NAMES:
            value = getattr(self, key)
            config[key] = list(value) if isinstance(value, tuple) else value
        config["seed"] = self.seed
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key, value in config.items():
            if isinstance(value, list):
                config[key] = tuple(value)
        return cls(**config)

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Save to a `.keras` file atomically: an interrupted save keeps the old file.

        Same arguments as `keras.Model.save`; see `imagen_keras.saving.save_model`.
        """
        from imagen_keras.saving import save_model

        return save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Save the weights to a `.weights.h5` file atomically (see `saving.save_weights`)."""
        from imagen_keras.saving import save_weights

        return save_weights(self, filepath, overwrite=overwrite, max_shard_size=max_shard_size)


UNET_ARG_NAMES = (
    "dim",
    "text_embed_dim",
    "num_resnet_blocks",
    "cond_dim",
    "num_image_tokens",
    "num_time_tokens",
    "learned_sinu_pos_emb_dim",
    "out_dim",
    "dim_mults",
    "cond_images_channels",
    "channels",
    "channels_out",
    "attn_dim_head",
    "attn_heads",
    "ff_mult",
    "lowres_cond",
    "layer_attns",
    "layer_attns_depth",
    "layer_mid_attns_depth",
    "layer_attns_add_text_cond",
    "attend_at_middle",
    "layer_cross_attns",
    "use_linear_attn",
    "use_linear_cross_attn",
    "cond_on_text",
    "max_text_len",
    "init_dim",
    "init_conv_kernel_size",
    "init_cross_embed",
    "init_cross_embed_kernel_sizes",
    "cross_embed_downsample",
    "cross_embed_downsample_kernel_sizes",
    "attn_pool_text",
    "attn_pool_num_latents",
    "dropout",
    "memory_efficient",
    "init_conv_to_final_conv_residual",
    "use_global_context_attn",
    "scale_skip_connection",
    "final_resnet_block",
    "final_conv_kernel_size",
    "self_cond",
    "resize_mode",
    "combine_upsample_fmaps",
    "pixel_shuffle_upsample",
)
