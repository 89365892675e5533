"""One resolution level of the Unet, on the way down and on the way up.

These mirror `Unet.downs[i]` and `Unet.ups[i]` of imagen-pytorch, so that its weights map
one to one.
"""

import keras
from keras import ops

from imagen_keras.layers.attention import LinearAttentionTransformerBlock, TransformerBlock
from imagen_keras.layers.resnet import ResnetBlock
from imagen_keras.layers.sampling import (
    CrossEmbedLayer,
    Downsample,
    ParallelConv,
    PixelShuffleUpsample,
    Upsample,
)


def _attn_block(kind, dim, depth, ff_mult, cond_dim, heads, dim_head, dtype):
    if kind == "full":
        return TransformerBlock(
            dim,
            depth=depth,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
            context_dim=cond_dim,
            dtype=dtype,
            name="attn",
        )
    if kind == "linear":
        return LinearAttentionTransformerBlock(
            dim,
            depth=depth,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
            context_dim=cond_dim,
            dtype=dtype,
            name="attn",
        )
    return None


def _downsample(dim_out, cross_embed_kernel_sizes, dtype, name):
    if cross_embed_kernel_sizes:
        return CrossEmbedLayer(
            dim_out, kernel_sizes=cross_embed_kernel_sizes, stride=2, dtype=dtype, name=name
        )
    return Downsample(dim_out, dtype=dtype, name=name)


def _resnet_blocks(
    dim_in,
    dim_out,
    num_resnet_blocks,
    cross_attn,
    linear_cross_attn,
    use_gca,
    cond_dim,
    time_cond_dim,
    heads,
    dim_head,
    dtype,
):
    """A level's first ResnetBlock (with cross attention when enabled) and its extra ones."""
    init_block = ResnetBlock(
        dim_in,
        dim_out,
        cond_dim=cond_dim if (cross_attn or linear_cross_attn) else None,
        time_cond_dim=time_cond_dim,
        linear_attn=linear_cross_attn,
        heads=heads,
        dim_head=dim_head,
        dtype=dtype,
        name="init_block",
    )
    blocks = [
        ResnetBlock(
            dim_in,
            dim_out,
            time_cond_dim=time_cond_dim,
            use_gca=use_gca,
            dtype=dtype,
            name=f"resnet_block_{i}",
        )
        for i in range(num_resnet_blocks)
    ]
    return init_block, blocks


@keras.saving.register_keras_serializable(package="imagen_keras")
class UnetDownLevel(keras.layers.Layer):
    """[pre-downsample] -> init ResnetBlock (cross attn) -> ResnetBlocks -> attention ->
    [post-downsample]; returns the output and the skip connections it pushes.

    Args:
        dim_in: int. Channels coming in.
        dim_out: int. Channels of the next level.
        num_resnet_blocks: int. Extra ResnetBlocks after the init block.
        attn: one of "full", "linear", "none".
        attn_depth: int.
        cross_attn: bool. Cross attention in the init block.
        linear_cross_attn: bool. Use linear cross attention there.
        is_last: bool. The last level keeps its resolution.
        memory_efficient: bool. Downsample first (Efficient U-Net).
        use_gca: bool. Global context gating in the extra ResnetBlocks.
        cond_dim, time_cond_dim, heads, dim_head, ff_mult: widths, as in `Unet`.
        cross_embed_downsample_kernel_sizes: tuple or `None`. Cross-embed downsampling.
    """

    def __init__(
        self,
        dim_in,
        dim_out,
        num_resnet_blocks,
        attn,
        attn_depth,
        cross_attn,
        linear_cross_attn,
        is_last,
        memory_efficient,
        use_gca,
        cond_dim,
        time_cond_dim,
        heads,
        dim_head,
        ff_mult,
        cross_embed_downsample_kernel_sizes=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = dict(
            dim_in=dim_in,
            dim_out=dim_out,
            num_resnet_blocks=num_resnet_blocks,
            attn=attn,
            attn_depth=attn_depth,
            cross_attn=cross_attn,
            linear_cross_attn=linear_cross_attn,
            is_last=is_last,
            memory_efficient=memory_efficient,
            use_gca=use_gca,
            cond_dim=cond_dim,
            time_cond_dim=time_cond_dim,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
            cross_embed_downsample_kernel_sizes=cross_embed_downsample_kernel_sizes,
        )
        d = self.dtype_policy
        ce = cross_embed_downsample_kernel_sizes
        current = dim_out if memory_efficient else dim_in
        self.pre_downsample = (
            _downsample(dim_out, ce, d, "pre_downsample") if memory_efficient else None
        )
        self.init_block, self.resnet_blocks = _resnet_blocks(
            current,
            current,
            num_resnet_blocks,
            cross_attn,
            linear_cross_attn,
            use_gca,
            cond_dim,
            time_cond_dim,
            heads,
            dim_head,
            d,
        )
        self.attn = _attn_block(attn, current, attn_depth, ff_mult, cond_dim, heads, dim_head, d)
        self.post_downsample = None
        if not memory_efficient:
            if is_last:
                self.post_downsample = ParallelConv(dim_out, dtype=d, name="post_downsample")
            else:
                self.post_downsample = _downsample(dim_out, ce, d, "post_downsample")
        self.skip_dim = current

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x, t, c):
        skips = []
        if self.pre_downsample is not None:
            x = self.pre_downsample(x)
        x = self.init_block(x, t, c)
        for block in self.resnet_blocks:
            x = block(x, t)
            skips.append(x)
        if self.attn is not None:
            x = self.attn(x, c)
        skips.append(x)
        if self.post_downsample is not None:
            x = self.post_downsample(x)
        return x, skips

    def get_config(self):
        config = super().get_config()
        config.update(self._config)
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class UnetUpLevel(keras.layers.Layer):
    """Concat skip -> init ResnetBlock (cross attn) -> [concat skip -> ResnetBlock]* ->
    attention -> [upsample]; returns the output and the pre-upsample feature map.

    Args:
        dim_in: int. Channels after upsampling (the next level up).
        dim_out: int. Channels of this level.
        skip_dim: int. Channels of the skip connections.
        upsample: one of "pixel_shuffle", "nearest", "none".
        skip_scale: float. Multiplier of the skip connections.
        Other arguments as `UnetDownLevel`.
    """

    def __init__(
        self,
        dim_in,
        dim_out,
        skip_dim,
        num_resnet_blocks,
        attn,
        attn_depth,
        cross_attn,
        linear_cross_attn,
        upsample,
        skip_scale,
        use_gca,
        cond_dim,
        time_cond_dim,
        heads,
        dim_head,
        ff_mult,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = dict(
            dim_in=dim_in,
            dim_out=dim_out,
            skip_dim=skip_dim,
            num_resnet_blocks=num_resnet_blocks,
            attn=attn,
            attn_depth=attn_depth,
            cross_attn=cross_attn,
            linear_cross_attn=linear_cross_attn,
            upsample=upsample,
            skip_scale=skip_scale,
            use_gca=use_gca,
            cond_dim=cond_dim,
            time_cond_dim=time_cond_dim,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
        )
        d = self.dtype_policy
        self.skip_scale = skip_scale
        self.init_block, self.resnet_blocks = _resnet_blocks(
            dim_out + skip_dim,
            dim_out,
            num_resnet_blocks,
            cross_attn,
            linear_cross_attn,
            use_gca,
            cond_dim,
            time_cond_dim,
            heads,
            dim_head,
            d,
        )
        self.attn = _attn_block(attn, dim_out, attn_depth, ff_mult, cond_dim, heads, dim_head, d)
        if upsample == "pixel_shuffle":
            self.upsample = PixelShuffleUpsample(dim_in, dtype=d, name="upsample")
        elif upsample == "nearest":
            self.upsample = Upsample(dim_in, dtype=d, name="upsample")
        else:
            self.upsample = None

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x, skips, t, c):
        """`skips` in the order they are consumed (the last one pushed first)."""
        skips = list(skips)

        def add_skip(h):
            return ops.concatenate([h, skips.pop(0) * self.skip_scale], axis=-1)

        x = self.init_block(add_skip(x), t, c)
        for block in self.resnet_blocks:
            x = block(add_skip(x), t)
        if self.attn is not None:
            x = self.attn(x, c)
        fmap = x
        if self.upsample is not None:
            x = self.upsample(x)
        return x, fmap

    def get_config(self):
        config = super().get_config()
        config.update(self._config)
        return config
