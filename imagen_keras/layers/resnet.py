"""Residual blocks of the Imagen Unet (channels-last)."""

import keras
from keras import ops

from imagen_keras.layers.attention import CrossAttention, LinearCrossAttention
from imagen_keras.layers.common import conv2d, dense
from imagen_keras.layers.norms import ChanRMSNorm


@keras.saving.register_keras_serializable(package="imagen_keras")
class Block(keras.layers.Layer):
    """ChanRMSNorm -> optional FiLM scale/shift -> SiLU -> 3x3 conv.

    Args:
        dim_out: int. Output channels.
        norm: bool, defaults to `True`.
    """

    def __init__(self, dim_out, norm=True, **kwargs):
        super().__init__(**kwargs)
        self.dim_out, self.norm = dim_out, norm
        d = self.dtype_policy
        if norm:
            self.norm_layer = ChanRMSNorm(dtype=d, name="norm")
        self.project = conv2d(dim_out, 3, dtype=d, name="project")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x, scale_shift=None):
        if self.norm:
            x = self.norm_layer(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1.0) + shift
        return self.project(ops.silu(x))

    def get_config(self):
        config = super().get_config()
        config.update({"dim_out": self.dim_out, "norm": self.norm})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class GlobalContext(keras.layers.Layer):
    """Global context gating, an attention-pooled squeeze-excitation.

    Reference: Cao et al., "GCNet" (2019). Returns per-channel gates of shape
    `(batch, 1, 1, dim_out)` in (0, 1).

    Args:
        dim_out: int. Number of gates.
    """

    def __init__(self, dim_out, **kwargs):
        super().__init__(**kwargs)
        self.dim_out = dim_out
        d = self.dtype_policy
        self.to_k = dense(1, dtype=d, name="to_k")
        self.net_in = dense(max(3, dim_out // 2), dtype=d, name="net_in")
        self.net_out = dense(dim_out, dtype=d, name="net_out")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1] * shape[2], x.shape[-1]))
        # Softmax over positions, written out: `ops.softmax` warns on a 1x1 feature map.
        logits = self.to_k(x)
        weights = ops.exp(logits - ops.max(logits, axis=1, keepdims=True))
        weights = weights / ops.sum(weights, axis=1, keepdims=True)
        pooled = ops.sum(weights * x, axis=1)
        gates = ops.sigmoid(self.net_out(ops.silu(self.net_in(pooled))))
        return gates[:, None, None, :]

    def get_config(self):
        config = super().get_config()
        config.update({"dim_out": self.dim_out})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class ResnetBlock(keras.layers.Layer):
    """Imagen's residual block: Block, optional cross attention, FiLM Block, GC gating.

    `h = Block1(x)`; `h += CrossAttn(h, cond)` if `cond_dim`; `h = Block2(h, scale_shift(t))`;
    `h *= GlobalContext(h)` if `use_gca`; `out = h + res_conv(x)`.

    Args:
        dim: int. Input channels.
        dim_out: int. Output channels.
        cond_dim: int or `None`. Context-token width; enables cross attention.
        time_cond_dim: int or `None`. Width of the time vector; enables scale/shift.
        linear_attn: bool, defaults to `False`. Use `LinearCrossAttention`.
        use_gca: bool, defaults to `False`. Global context gating.
        heads: int, defaults to 8. Cross-attention heads.
        dim_head: int, defaults to 64. Cross-attention head width.
    """

    def __init__(
        self,
        dim,
        dim_out,
        cond_dim=None,
        time_cond_dim=None,
        linear_attn=False,
        use_gca=False,
        heads=8,
        dim_head=64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim, self.dim_out, self.cond_dim = dim, dim_out, cond_dim
        self.time_cond_dim, self.linear_attn, self.use_gca = time_cond_dim, linear_attn, use_gca
        self.heads, self.dim_head = heads, dim_head
        d = self.dtype_policy
        if time_cond_dim is not None:
            self.time_mlp = dense(dim_out * 2, dtype=d, name="time_mlp")
        if cond_dim is not None:
            attn_class = LinearCrossAttention if linear_attn else CrossAttention
            self.cross_attn = attn_class(
                dim_out,
                context_dim=cond_dim,
                heads=heads,
                dim_head=dim_head,
                dtype=d,
                name="cross_attn",
            )
        self.block1 = Block(dim_out, dtype=d, name="block1")
        self.block2 = Block(dim_out, dtype=d, name="block2")
        if use_gca:
            self.gca = GlobalContext(dim_out, dtype=d, name="gca")
        if dim != dim_out:
            self.res_conv = conv2d(dim_out, 1, dtype=d, name="res_conv")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x, time_emb=None, cond=None):
        scale_shift = None
        if self.time_cond_dim is not None and time_emb is not None:
            t = self.time_mlp(ops.silu(time_emb))[:, None, None, :]
            scale_shift = ops.split(t, 2, axis=-1)
        h = self.block1(x)
        if self.cond_dim is not None:
            if cond is None:
                raise ValueError(
                    f"ResnetBlock '{self.name}' has cross attention but got cond=None."
                )
            shape = ops.shape(h)
            tokens = ops.reshape(h, (shape[0], shape[1] * shape[2], self.dim_out))
            tokens = self.cross_attn(tokens, cond) + tokens
            h = ops.reshape(tokens, shape)
        h = self.block2(h, scale_shift=scale_shift)
        if self.use_gca:
            h = h * self.gca(h)
        residual = self.res_conv(x) if self.dim != self.dim_out else x
        return h + residual

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "dim_out": self.dim_out,
                "cond_dim": self.cond_dim,
                "time_cond_dim": self.time_cond_dim,
                "linear_attn": self.linear_attn,
                "use_gca": self.use_gca,
                "heads": self.heads,
                "dim_head": self.dim_head,
            }
        )
        return config
