"""Perceiver resampler: attention pooling of text tokens into a fixed set of latents.

Reference: Alayrac et al., "Flamingo" (2022), as used by imagen-pytorch to pool the T5
tokens (Imagen appendix: "attention pooling").
"""

import keras
from keras import ops

from imagen_keras.layers.attention import FeedForward, _merge_heads, _softmax_f32, _split_heads
from imagen_keras.layers.common import dense, l2norm
from imagen_keras.layers.norms import LayerNorm


@keras.saving.register_keras_serializable(package="imagen_keras")
class PerceiverAttention(keras.layers.Layer):
    """Latents attend to the concatenation of the input tokens and themselves.

    Args:
        dim: int. Token width.
        dim_head: int, defaults to 64.
        heads: int, defaults to 8.
        scale: float, defaults to 8. Cosine-similarity temperature.
    """

    def __init__(self, dim, dim_head=64, heads=8, scale=8.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dim_head, self.heads, self.scale = dim, dim_head, heads, scale
        inner = dim_head * heads
        d = self.dtype_policy
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=d, name="norm")
        self.norm_latents = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=d, name="norm_latents"
        )
        self.to_q = dense(inner, use_bias=False, dtype=d, name="to_q")
        self.to_kv = dense(inner * 2, use_bias=False, dtype=d, name="to_kv")
        self.to_out = dense(dim, use_bias=False, dtype=d, name="to_out")
        self.to_out_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=d, name="to_out_norm"
        )

    def build(self, input_shape):
        self.q_scale = self.add_weight(shape=(self.dim_head,), initializer="ones", name="q_scale")
        self.k_scale = self.add_weight(shape=(self.dim_head,), initializer="ones", name="k_scale")
        self.built = True

    def call(self, x, latents):
        x = self.norm(x)
        latents = self.norm_latents(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = ops.split(self.to_kv(ops.concatenate([x, latents], axis=1)), 2, axis=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        q = l2norm(q) * ops.cast(self.q_scale, q.dtype)
        k = l2norm(k) * ops.cast(self.k_scale, k.dtype)
        attn = _softmax_f32(ops.einsum("bhid,bhjd->bhij", q, k) * self.scale)
        out = _merge_heads(ops.einsum("bhij,bhjd->bhid", attn, v))
        return self.to_out_norm(self.to_out(out))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"dim": self.dim, "dim_head": self.dim_head, "heads": self.heads, "scale": self.scale}
        )
        return config


@keras.saving.register_keras_serializable(package="imagen_keras")
class PerceiverResampler(keras.layers.Layer):
    """Pools `(batch, n, dim)` tokens into `(batch, num_latents_mean_pooled + num_latents, dim)`.

    Positional embeddings are added to the tokens; `num_latents_mean_pooled` extra latents
    come from the mean of the tokens (Imagen-pytorch's addition). Masks are not used, as in
    the reference: padded positions hold the learned null embedding.

    Args:
        dim: int. Token width.
        depth: int. Number of attention + feed-forward layers.
        dim_head: int, defaults to 64.
        heads: int, defaults to 8.
        num_latents: int, defaults to 64.
        num_latents_mean_pooled: int, defaults to 4.
        max_seq_len: int, defaults to 512. Size of the positional embedding table.
        ff_mult: float, defaults to 4.
    """

    def __init__(
        self,
        dim,
        depth,
        dim_head=64,
        heads=8,
        num_latents=64,
        num_latents_mean_pooled=4,
        max_seq_len=512,
        ff_mult=4.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim, self.depth, self.dim_head, self.heads = dim, depth, dim_head, heads
        self.num_latents, self.num_latents_mean_pooled = num_latents, num_latents_mean_pooled
        self.max_seq_len, self.ff_mult = max_seq_len, ff_mult
        d = self.dtype_policy
        self.pos_emb = keras.layers.Embedding(
            max_seq_len,
            dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            dtype=d,
            name="pos_emb",
        )
        if num_latents_mean_pooled > 0:
            self.mean_pooled_norm = LayerNorm(dtype=d, name="mean_pooled_norm")
            self.mean_pooled_proj = dense(
                dim * num_latents_mean_pooled, dtype=d, name="mean_pooled_proj"
            )
        self.attns = [
            PerceiverAttention(dim, dim_head, heads, dtype=d, name=f"attn_{i}")
            for i in range(depth)
        ]
        self.ffs = [FeedForward(dim, ff_mult, dtype=d, name=f"ff_{i}") for i in range(depth)]

    def build(self, input_shape):
        self.latents = self.add_weight(
            shape=(self.num_latents, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="latents",
        )
        self.built = True

    def call(self, x):
        n = x.shape[1]
        if n is not None and n > self.max_seq_len:
            raise ValueError(
                f"PerceiverResampler got {n} tokens but max_seq_len={self.max_seq_len}."
            )
        b = ops.shape(x)[0]
        x_with_pos = x + self.pos_emb(ops.arange(ops.shape(x)[1]))[None]
        latents = ops.broadcast_to(
            ops.cast(self.latents, x.dtype)[None], (b, self.num_latents, self.dim)
        )
        if self.num_latents_mean_pooled > 0:
            pooled = self.mean_pooled_proj(self.mean_pooled_norm(ops.mean(x, axis=1)))
            pooled = ops.reshape(pooled, (b, self.num_latents_mean_pooled, self.dim))
            latents = ops.concatenate([pooled, latents], axis=1)
        for attn, ff in zip(self.attns, self.ffs):
            latents = attn(x_with_pos, latents) + latents
            latents = ff(latents) + latents
        return latents

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "depth": self.depth,
                "dim_head": self.dim_head,
                "heads": self.heads,
                "num_latents": self.num_latents,
                "num_latents_mean_pooled": self.num_latents_mean_pooled,
                "max_seq_len": self.max_seq_len,
                "ff_mult": self.ff_mult,
            }
        )
        return config
