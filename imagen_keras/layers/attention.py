"""Attention layers of the Imagen Unet (channels-last).

All softmax attention here is cosine-similarity attention: queries and keys are
l2-normalised, multiplied by learned per-dimension scales and a fixed scale of 8, and the
softmax runs in float32 ("Scaling Vision Transformers to 22 Billion Parameters" /
"Query-Key Normalization for Transformers", Henry et al. 2020), as in imagen-pytorch.
"""

import keras
from keras import ops

from imagen_keras.layers.common import dense, l2norm
from imagen_keras.layers.norms import LayerNorm


def _softmax_f32(x, axis=-1):
    return ops.cast(ops.softmax(ops.cast(x, "float32"), axis=axis), x.dtype)


def _split_heads(x, heads):
    """(b, n, h*d) -> (b, h, n, d)."""
    b, n = ops.shape(x)[0], ops.shape(x)[1]
    x = ops.reshape(x, (b, n, heads, x.shape[-1] // heads))
    return ops.transpose(x, (0, 2, 1, 3))


def _merge_heads(x):
    """(b, h, n, d) -> (b, n, h*d)."""
    x = ops.transpose(x, (0, 2, 1, 3))
    b, n = ops.shape(x)[0], ops.shape(x)[1]
    return ops.reshape(x, (b, n, x.shape[-2] * x.shape[-1]))


class _QKScale(keras.layers.Layer):
    """Base for layers with learned q/k scales and a learned null key/value."""

    def _add_qk_scales(self, dim_head):
        self.q_scale = self.add_weight(shape=(dim_head,), initializer="ones", name="q_scale")
        self.k_scale = self.add_weight(shape=(dim_head,), initializer="ones", name="k_scale")

    def _add_null_kv(self, dim_head):
        self.null_kv = self.add_weight(
            shape=(2, dim_head),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="null_kv",
        )

    def _cosine_qk(self, q, k):
        q = l2norm(q) * ops.cast(self.q_scale, q.dtype)
        k = l2norm(k) * ops.cast(self.k_scale, k.dtype)
        return q, k


@keras.saving.register_keras_serializable(package="imagen_keras")
class Attention(_QKScale):
    """Multi-query self attention with optional context keys/values (imagen-pytorch `Attention`).

    Queries have `heads` heads; keys and values have a single head of `dim_head`
    (multi-query attention, Shazeer 2019). A learned null key/value is prepended, and the
    context tokens (time + text) are projected to extra keys/values.

    Args:
        dim: int. Width of the input tokens.
        dim_head: int, defaults to 64.
        heads: int, defaults to 8.
        context_dim: int or `None`. Width of the context tokens; `None` for no context.
        scale: float, defaults to 8. Cosine-similarity temperature.
    """

    def __init__(self, dim, dim_head=64, heads=8, context_dim=None, scale=8.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dim_head, self.heads = dim, dim_head, heads
        self.context_dim, self.scale = context_dim, scale
        inner = dim_head * heads
        d = self.dtype_policy
        self.norm = LayerNorm(dtype=d, name="norm")
        self.to_q = dense(inner, use_bias=False, dtype=d, name="to_q")
        self.to_kv = dense(dim_head * 2, use_bias=False, dtype=d, name="to_kv")
        if context_dim is not None:
            self.to_context_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=d, name="to_context_norm"
            )
            self.to_context = dense(dim_head * 2, dtype=d, name="to_context")
        self.to_out = dense(dim, use_bias=False, dtype=d, name="to_out")
        self.to_out_norm = LayerNorm(dtype=d, name="to_out_norm")

    def build(self, input_shape):
        self._add_qk_scales(self.dim_head)
        self._add_null_kv(self.dim_head)
        self.built = True

    def call(self, x, context=None):
        b = ops.shape(x)[0]
        x = self.norm(x)
        # Every head attends to the same single-head keys and values, so the heads fold
        # into the query positions: (b, n * heads, d) against (b, j, d) is one batched
        # matmul, with none of the head transposes that multi-head attention needs.
        q = ops.reshape(self.to_q(x), (b, -1, self.dim_head))
        k, v = ops.split(self.to_kv(x), 2, axis=-1)
        null_kv = ops.cast(self.null_kv, x.dtype)
        nk = ops.broadcast_to(null_kv[0][None, None], (b, 1, self.dim_head))
        nv = ops.broadcast_to(null_kv[1][None, None], (b, 1, self.dim_head))
        k, v = ops.concatenate([nk, k], axis=1), ops.concatenate([nv, v], axis=1)
        if context is not None:
            if self.context_dim is None:
                raise ValueError(f"Attention layer '{self.name}' was built without context_dim.")
            ck, cv = ops.split(self.to_context(self.to_context_norm(context)), 2, axis=-1)
            k, v = ops.concatenate([ck, k], axis=1), ops.concatenate([cv, v], axis=1)
        q, k = self._cosine_qk(q, k)
        sim = ops.einsum("bid,bjd->bij", q, k) * self.scale
        attn = _softmax_f32(sim)
        out = ops.reshape(ops.matmul(attn, v), (b, -1, self.heads * self.dim_head))
        return self.to_out_norm(self.to_out(out))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "dim_head": self.dim_head,
                "heads": self.heads,
                "context_dim": self.context_dim,
                "scale": self.scale,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class CrossAttention(_QKScale):
    """Multi-head cross attention from image tokens to context tokens (imagen-pytorch).

    Args:
        dim: int. Width of the query tokens.
        context_dim: int or `None` (defaults to `dim`). Width of the context tokens.
        dim_head: int, defaults to 64.
        heads: int, defaults to 8.
        norm_context: bool, defaults to `False`. Layer-norm the context first.
        scale: float, defaults to 8.
    """

    def __init__(
        self, dim, context_dim=None, dim_head=64, heads=8, norm_context=False, scale=8.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.dim, self.context_dim, self.dim_head, self.heads = dim, context_dim, dim_head, heads
        self.norm_context, self.scale = norm_context, scale
        inner = dim_head * heads
        d = self.dtype_policy
        self.norm = LayerNorm(dtype=d, name="norm")
        if norm_context:
            self.context_norm = LayerNorm(dtype=d, name="context_norm")
        self.to_q = dense(inner, use_bias=False, dtype=d, name="to_q")
        self.to_kv = dense(inner * 2, use_bias=False, dtype=d, name="to_kv")
        self.to_out = dense(dim, use_bias=False, dtype=d, name="to_out")
        self.to_out_norm = LayerNorm(dtype=d, name="to_out_norm")

    def build(self, input_shape):
        self._add_qk_scales(self.dim_head)
        self._add_null_kv(self.dim_head)
        self.built = True

    def _qkv(self, x, context):
        b = ops.shape(x)[0]
        x = self.norm(x)
        if self.norm_context:
            context = self.context_norm(context)
        q = _split_heads(self.to_q(x), self.heads)
        k, v = ops.split(self.to_kv(context), 2, axis=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        null_kv = ops.cast(self.null_kv, x.dtype)
        shape = (b, self.heads, 1, self.dim_head)
        nk = ops.broadcast_to(null_kv[0][None, None, None], shape)
        nv = ops.broadcast_to(null_kv[1][None, None, None], shape)
        return q, ops.concatenate([nk, k], axis=2), ops.concatenate([nv, v], axis=2)

    def call(self, x, context):
        q, k, v = self._qkv(x, context)
        q, k = self._cosine_qk(q, k)
        sim = ops.einsum("bhid,bhjd->bhij", q, k) * self.scale
        attn = _softmax_f32(sim)
        out = _merge_heads(ops.einsum("bhij,bhjd->bhid", attn, v))
        return self.to_out_norm(self.to_out(out))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "context_dim": self.context_dim,
                "dim_head": self.dim_head,
                "heads": self.heads,
                "norm_context": self.norm_context,
                "scale": self.scale,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class LinearCrossAttention(CrossAttention):
    """Cross attention with the softmax-linear trick (imagen-pytorch `LinearCrossAttention`).

    Queries are softmax-normalised over features and keys over positions, so the cost is
    linear in the number of image tokens (Shen et al., "Efficient Attention", 2018). Same
    weights and arguments as `CrossAttention`.
    """

    def call(self, x, context):
        q, k, v = self._qkv(x, context)
        q = ops.softmax(q, axis=-1) * self.scale
        k = ops.softmax(k, axis=-2)
        ctx = ops.einsum("bhnd,bhne->bhde", k, v)
        out = _merge_heads(ops.einsum("bhnd,bhde->bhne", q, ctx))
        return self.to_out_norm(self.to_out(out))


@keras.saving.register_keras_serializable(package="imagen_keras")
class LinearAttention(keras.layers.Layer):
    """Linear self attention over a feature map (imagen-pytorch `LinearAttention`).

    q, k and v come from dropout, a 1x1 conv and a depthwise 3x3 conv; optional context
    tokens add keys/values. Input and output are `(batch, height, width, dim)`.

    Args:
        dim: int. Channels of the feature map.
        dim_head: int, defaults to 32.
        heads: int, defaults to 8.
        dropout: float, defaults to 0.05.
        context_dim: int or `None`.
    """

    def __init__(self, dim, dim_head=32, heads=8, dropout=0.05, context_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dim_head, self.heads = dim, dim_head, heads
        self.dropout, self.context_dim = dropout, context_dim
        inner = dim_head * heads
        d = self.dtype_policy
        self.norm = LayerNorm(dtype=d, name="norm")
        self.drop = keras.layers.Dropout(dropout, dtype=d, name="drop")
        for part in ("q", "k", "v"):
            setattr(self, f"to_{part}", dense(inner, use_bias=False, dtype=d, name=f"to_{part}"))
            setattr(
                self,
                f"to_{part}_dw",
                keras.layers.DepthwiseConv2D(
                    3, padding="same", use_bias=False, dtype=d, name=f"to_{part}_dw"
                ),
            )
        if context_dim is not None:
            self.to_context_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=d, name="to_context_norm"
            )
            self.to_context = dense(inner * 2, use_bias=False, dtype=d, name="to_context")
        self.to_out = dense(dim, use_bias=False, dtype=d, name="to_out")
        self.to_out_norm = LayerNorm(dtype=d, name="to_out_norm")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, fmap, context=None, training=None):
        shape = ops.shape(fmap)
        b, height, width = shape[0], shape[1], shape[2]
        fmap = self.norm(fmap)

        def project(part):
            t = getattr(self, f"to_{part}")(self.drop(fmap, training=training))
            t = getattr(self, f"to_{part}_dw")(t)
            return _split_heads(ops.reshape(t, (b, height * width, t.shape[-1])), self.heads)

        q, k, v = project("q"), project("k"), project("v")
        if context is not None:
            ck, cv = ops.split(self.to_context(self.to_context_norm(context)), 2, axis=-1)
            k = ops.concatenate([k, _split_heads(ck, self.heads)], axis=2)
            v = ops.concatenate([v, _split_heads(cv, self.heads)], axis=2)
        q = ops.softmax(q, axis=-1) * (self.dim_head**-0.5)
        k = ops.softmax(k, axis=-2)
        ctx = ops.einsum("bhnd,bhne->bhde", k, v)
        out = _merge_heads(ops.einsum("bhnd,bhde->bhne", q, ctx))
        out = ops.reshape(out, (b, height, width, out.shape[-1]))
        return self.to_out_norm(self.to_out(ops.silu(out)))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "dim_head": self.dim_head,
                "heads": self.heads,
                "dropout": self.dropout,
                "context_dim": self.context_dim,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class FeedForward(keras.layers.Layer):
    """LayerNorm -> Dense -> GELU -> LayerNorm -> Dense, no biases (imagen-pytorch `FeedForward`).

    Over the last axis, so on channels-last feature maps it is also the reference's
    `ChanFeedForward` (its 1x1 convolutions are dense layers over channels).

    Args:
        dim: int. Input and output width.
        mult: float, defaults to 2. Hidden width is `int(dim * mult)`.
    """

    def __init__(self, dim, mult=2.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.mult = dim, mult
        d = self.dtype_policy
        self.norm1 = LayerNorm(dtype=d, name="norm1")
        self.proj_in = dense(int(dim * mult), use_bias=False, dtype=d, name="proj_in")
        self.norm2 = LayerNorm(dtype=d, name="norm2")
        self.proj_out = dense(dim, use_bias=False, dtype=d, name="proj_out")

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x):
        x = ops.gelu(self.proj_in(self.norm1(x)), approximate=False)
        return self.proj_out(self.norm2(x))

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "mult": self.mult})
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class TransformerBlock(keras.layers.Layer):
    """`depth` x (multi-query attention + feed-forward), residual, over a feature map.

    Args:
        dim: int. Channels.
        depth: int, defaults to 1.
        heads: int, defaults to 8.
        dim_head: int, defaults to 32.
        ff_mult: float, defaults to 2.
        context_dim: int or `None`. Width of the context tokens given to attention.
    """

    def __init__(self, dim, depth=1, heads=8, dim_head=32, ff_mult=2.0, context_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.ff_mult, self.context_dim = ff_mult, context_dim
        d = self.dtype_policy
        self.attns = [
            Attention(dim, dim_head, heads, context_dim, dtype=d, name=f"attn_{i}")
            for i in range(depth)
        ]
        self.ffs = [FeedForward(dim, ff_mult, dtype=d, name=f"ff_{i}") for i in range(depth)]

    def build(self, input_shape):
        # Sublayers are built by the first (symbolic) call; tracing them here too would
        # multiply tracing cost with nesting depth.
        self.built = True

    def call(self, x, context=None):
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1] * shape[2], x.shape[-1]))
        for attn, ff in zip(self.attns, self.ffs):
            x = attn(x, context=context) + x
            x = ff(x) + x
        return ops.reshape(x, shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "depth": self.depth,
                "heads": self.heads,
                "dim_head": self.dim_head,
                "ff_mult": self.ff_mult,
                "context_dim": self.context_dim,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class LinearAttentionTransformerBlock(TransformerBlock):
    """`depth` x (linear attention + channel feed-forward), residual, over a feature map.

    Same arguments as `TransformerBlock`.
    """

    def __init__(self, dim, depth=1, heads=8, dim_head=32, ff_mult=2.0, context_dim=None, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.ff_mult, self.context_dim = ff_mult, context_dim
        d = self.dtype_policy
        self.attns = [
            LinearAttention(
                dim,
                dim_head=dim_head,
                heads=heads,
                context_dim=context_dim,
                dtype=d,
                name=f"attn_{i}",
            )
            for i in range(depth)
        ]
        self.ffs = [FeedForward(dim, ff_mult, dtype=d, name=f"ff_{i}") for i in range(depth)]

    def call(self, x, context=None, training=None):
        for attn, ff in zip(self.attns, self.ffs):
            x = attn(x, context=context, training=training) + x
            x = ff(x) + x
        return x
