"""imagen-pytorch `Unet` weights -> Keras `Unet`.

Our Unet mirrors the reference module for module, so every state-dict key names exactly
one Keras variable. The table below walks the built Keras unet and yields, for each of
its variables, the reference key and how the tensor's layout changes:

| layout      | torch tensor          | Keras variable                         |
|-------------|-----------------------|----------------------------------------|
| `linear`    | Linear (out, in)      | Dense kernel (in, out)                 |
| `conv`      | Conv2d (out, in, h, w)| Conv2D kernel (h, w, in, out)          |
| `conv1x1`   | Conv2d (out, in, 1, 1)| Dense kernel (in, out) (1x1 convs over channels-last maps) |
| `depthwise` | Conv2d (C, 1, h, w)   | DepthwiseConv2D kernel (h, w, C, 1)    |
| `chan`      | (C, 1, 1) gains       | (C,) (ChanRMSNorm, ChanLayerNorm)      |
| `same`      | anything else         | same shape                             |

Pixel (un)shuffle channel orders already equal torch's (`layers/sampling.py`), so no
channel permutation is needed anywhere.
"""

import dataclasses

import numpy as np

from imagen_keras.layers.attention import LinearAttentionTransformerBlock
from imagen_keras.layers.sampling import (
    CrossEmbedLayer,
    Downsample,
    ParallelConv,
    PixelShuffleUpsample,
    Upsample,
)

_LAYOUTS = {
    # name: (expected torch shape from the Keras shape, torch array -> Keras array)
    "same": (lambda s: tuple(s), lambda a: a),
    "linear": (lambda s: (s[1], s[0]), lambda a: a.T),
    "conv": (lambda s: (s[3], s[2], s[0], s[1]), lambda a: a.transpose(2, 3, 1, 0)),
    "conv1x1": (lambda s: (s[1], s[0], 1, 1), lambda a: a[:, :, 0, 0].T),
    "depthwise": (lambda s: (s[2] * s[3], 1, s[0], s[1]), lambda a: a.transpose(2, 3, 0, 1)),
    "chan": (lambda s: (s[0], 1, 1), lambda a: a.reshape(a.shape[0])),
}


@dataclasses.dataclass(frozen=True)
class _Entry:
    key: str
    variable: object
    layout: str = "same"

    @property
    def torch_shape(self):
        return _LAYOUTS[self.layout][0](tuple(self.variable.shape))

    def to_keras(self, array):
        return _LAYOUTS[self.layout][1](array)


# ---------------------------------------------------------------------- building blocks


def _dense(layer, prefix, layout="linear"):
    yield _Entry(f"{prefix}.weight", layer.kernel, layout)
    if layer.use_bias:
        yield _Entry(f"{prefix}.bias", layer.bias)


def _conv(layer, prefix):
    yield _Entry(f"{prefix}.weight", layer.kernel, "conv")
    if layer.use_bias:
        yield _Entry(f"{prefix}.bias", layer.bias)


def _torch_layer_norm(layer, prefix):
    """`nn.LayerNorm` -> `keras.layers.LayerNormalization`."""
    yield _Entry(f"{prefix}.weight", layer.gamma)
    yield _Entry(f"{prefix}.bias", layer.beta)


def _gain_norm(layer, prefix, layout="same"):
    """imagen-pytorch's gain-only `LayerNorm`/`ChanLayerNorm` -> our `LayerNorm`."""
    yield _Entry(f"{prefix}.g", layer.g, layout)


def _qk_scales_and_null_kv(layer, prefix, null_kv=True):
    if null_kv:
        yield _Entry(f"{prefix}.null_kv", layer.null_kv)
    yield _Entry(f"{prefix}.q_scale", layer.q_scale)
    yield _Entry(f"{prefix}.k_scale", layer.k_scale)


def _feed_forward(ff, prefix, channels=False):
    """`FeedForward` (Sequential LayerNorm, Linear, GELU, LayerNorm, Linear) or its 1x1-conv
    twin `ChanFeedForward`."""
    norm_layout, proj_layout = ("chan", "conv1x1") if channels else ("same", "linear")
    yield from _gain_norm(ff.norm1, f"{prefix}.0", norm_layout)
    yield from _dense(ff.proj_in, f"{prefix}.1", proj_layout)
    yield from _gain_norm(ff.norm2, f"{prefix}.3", norm_layout)
    yield from _dense(ff.proj_out, f"{prefix}.4", proj_layout)


def _block(block, prefix):
    if block.norm:
        yield _Entry(f"{prefix}.norm.gamma", block.norm_layer.gamma, "chan")
    yield from _conv(block.project, f"{prefix}.project")


def _global_context(gca, prefix):
    yield from _dense(gca.to_k, f"{prefix}.to_k", "conv1x1")
    yield from _dense(gca.net_in, f"{prefix}.net.0", "conv1x1")
    yield from _dense(gca.net_out, f"{prefix}.net.2", "conv1x1")


def _cross_attention(attn, prefix):
    """`CrossAttention` and `LinearCrossAttention` (same parameters)."""
    yield from _qk_scales_and_null_kv(attn, prefix)
    yield from _gain_norm(attn.norm, f"{prefix}.norm")
    if attn.norm_context:
        yield from _gain_norm(attn.context_norm, f"{prefix}.norm_context")
    yield from _dense(attn.to_q, f"{prefix}.to_q")
    yield from _dense(attn.to_kv, f"{prefix}.to_kv")
    yield from _dense(attn.to_out, f"{prefix}.to_out.0")
    yield from _gain_norm(attn.to_out_norm, f"{prefix}.to_out.1")


def _resnet_block(block, prefix):
    if block.time_cond_dim is not None:
        yield from _dense(block.time_mlp, f"{prefix}.time_mlp.1")
    if block.cond_dim is not None:
        yield from _cross_attention(block.cross_attn, f"{prefix}.cross_attn")
    yield from _block(block.block1, f"{prefix}.block1")
    yield from _block(block.block2, f"{prefix}.block2")
    if block.use_gca:
        yield from _global_context(block.gca, f"{prefix}.gca")
    if block.dim != block.dim_out:
        yield from _conv(block.res_conv, f"{prefix}.res_conv")


def _attention(attn, prefix):
    """Multi-query self attention of a `TransformerBlock`."""
    yield from _qk_scales_and_null_kv(attn, prefix)
    yield from _gain_norm(attn.norm, f"{prefix}.norm")
    yield from _dense(attn.to_q, f"{prefix}.to_q")
    yield from _dense(attn.to_kv, f"{prefix}.to_kv")
    if attn.context_dim is not None:
        yield from _torch_layer_norm(attn.to_context_norm, f"{prefix}.to_context.0")
        yield from _dense(attn.to_context, f"{prefix}.to_context.1")
    yield from _dense(attn.to_out, f"{prefix}.to_out.0")
    yield from _gain_norm(attn.to_out_norm, f"{prefix}.to_out.1")


def _linear_attention(attn, prefix):
    yield from _gain_norm(attn.norm, f"{prefix}.norm", "chan")
    for part in ("q", "k", "v"):
        # Sequential(Dropout, 1x1 conv, depthwise 3x3 conv)
        yield from _dense(getattr(attn, f"to_{part}"), f"{prefix}.to_{part}.1", "conv1x1")
        dw = getattr(attn, f"to_{part}_dw")
        yield _Entry(f"{prefix}.to_{part}.2.weight", dw.kernel, "depthwise")
    if attn.context_dim is not None:
        yield from _torch_layer_norm(attn.to_context_norm, f"{prefix}.to_context.0")
        yield from _dense(attn.to_context, f"{prefix}.to_context.1")
    yield from _dense(attn.to_out, f"{prefix}.to_out.0", "conv1x1")
    yield from _gain_norm(attn.to_out_norm, f"{prefix}.to_out.1", "chan")


def _transformer_block(block, prefix):
    linear = isinstance(block, LinearAttentionTransformerBlock)
    for i, (attn, ff) in enumerate(zip(block.attns, block.ffs)):
        if linear:
            yield from _linear_attention(attn, f"{prefix}.layers.{i}.0")
        else:
            yield from _attention(attn, f"{prefix}.layers.{i}.0")
        yield from _feed_forward(ff, f"{prefix}.layers.{i}.1", channels=linear)


def _perceiver_resampler(pool, prefix):
    yield _Entry(f"{prefix}.latents", pool.latents)
    yield _Entry(f"{prefix}.pos_emb.weight", pool.pos_emb.embeddings)
    if pool.num_latents_mean_pooled > 0:
        mean_pooled = f"{prefix}.to_latents_from_mean_pooled_seq"
        yield from _gain_norm(pool.mean_pooled_norm, f"{mean_pooled}.0")
        yield from _dense(pool.mean_pooled_proj, f"{mean_pooled}.1")
    for i, (attn, ff) in enumerate(zip(pool.attns, pool.ffs)):
        p = f"{prefix}.layers.{i}.0"
        yield from _qk_scales_and_null_kv(attn, p, null_kv=False)
        yield from _torch_layer_norm(attn.norm, f"{p}.norm")
        yield from _torch_layer_norm(attn.norm_latents, f"{p}.norm_latents")
        yield from _dense(attn.to_q, f"{p}.to_q")
        yield from _dense(attn.to_kv, f"{p}.to_kv")
        yield from _dense(attn.to_out, f"{p}.to_out.0")
        yield from _torch_layer_norm(attn.to_out_norm, f"{p}.to_out.1")
        yield from _feed_forward(ff, f"{prefix}.layers.{i}.1")


def _cross_embed(layer, prefix):
    for i, conv in enumerate(layer.convs):  # both sorted by kernel size
        yield from _conv(conv, f"{prefix}.convs.{i}")


def _resample(layer, prefix):
    """Down- and upsampling layers."""
    if isinstance(layer, CrossEmbedLayer):
        yield from _cross_embed(layer, prefix)
    elif isinstance(layer, Downsample):  # Sequential(Rearrange, Conv2d)
        yield from _conv(layer.conv, f"{prefix}.1")
    elif isinstance(layer, ParallelConv):  # Parallel(Conv3x3, Conv1x1)
        yield from _conv(layer.conv3, f"{prefix}.fns.0")
        yield from _conv(layer.conv1, f"{prefix}.fns.1")
    elif isinstance(layer, PixelShuffleUpsample):  # Sequential(Conv2d, SiLU, PixelShuffle)
        yield from _conv(layer.conv, f"{prefix}.net.0")
    elif isinstance(layer, Upsample):  # Sequential(nn.Upsample, Conv2d)
        yield from _conv(layer.conv, f"{prefix}.1")
    else:
        raise TypeError(f"No imagen-pytorch mapping for {type(layer).__name__} at {prefix!r}.")


def _attn_block(block, prefix):
    if block is not None:
        yield from _transformer_block(block, prefix)


def unet_weight_entries(unet):
    """Every variable of a built Keras `Unet` with its imagen-pytorch state-dict key."""
    yield _Entry("null_text_embed", unet.null_text_embed)
    yield _Entry("null_text_hidden", unet.null_text_hidden)
    if isinstance(unet.init_conv, CrossEmbedLayer):
        yield from _cross_embed(unet.init_conv, "init_conv")
    else:
        yield from _conv(unet.init_conv, "init_conv")

    time_modules = [
        ("to_time", unet.time_sinu, unet.to_time_hiddens, unet.to_time_cond, unet.to_time_tokens)
    ]
    if unet.lowres_cond:
        time_modules.append(
            (
                "to_lowres_time",
                unet.lowres_time_sinu,
                unet.to_lowres_time_hiddens,
                unet.to_lowres_time_cond,
                unet.to_lowres_time_tokens,
            )
        )
    for prefix, sinu, hiddens, cond, tokens in time_modules:
        yield _Entry(f"{prefix}_hiddens.0.weights", sinu.weights_)
        yield from _dense(hiddens, f"{prefix}_hiddens.1")
        yield from _dense(cond, f"{prefix}_cond.0")
        yield from _dense(tokens, f"{prefix}_tokens.0")

    yield from _torch_layer_norm(unet.norm_cond, "norm_cond")
    if unet.cond_on_text:
        yield from _dense(unet.text_to_cond, "text_to_cond")
    if unet.attn_pool_text:
        yield from _perceiver_resampler(unet.attn_pool, "attn_pool")
    if unet.cond_on_text:
        yield from _torch_layer_norm(unet.text_non_attn_norm, "to_text_non_attn_cond.0")
        yield from _dense(unet.text_non_attn_in, "to_text_non_attn_cond.1")
        yield from _dense(unet.text_non_attn_out, "to_text_non_attn_cond.3")
    if unet.init_resnet_block is not None:
        yield from _resnet_block(unet.init_resnet_block, "init_resnet_block")

    for i, level in enumerate(unet.downs):
        if level.pre_downsample is not None:
            yield from _resample(level.pre_downsample, f"downs.{i}.0")
        yield from _resnet_block(level.init_block, f"downs.{i}.1")
        for j, block in enumerate(level.resnet_blocks):
            yield from _resnet_block(block, f"downs.{i}.2.{j}")
        yield from _attn_block(level.attn, f"downs.{i}.3")
        if level.post_downsample is not None:
            yield from _resample(level.post_downsample, f"downs.{i}.4")

    yield from _resnet_block(unet.mid_block1, "mid_block1")
    yield from _attn_block(unet.mid_attn, "mid_attn")
    yield from _resnet_block(unet.mid_block2, "mid_block2")

    for i, level in enumerate(unet.ups):
        yield from _resnet_block(level.init_block, f"ups.{i}.0")
        for j, block in enumerate(level.resnet_blocks):
            yield from _resnet_block(block, f"ups.{i}.1.{j}")
        yield from _attn_block(level.attn, f"ups.{i}.2")
        if level.upsample is not None:
            yield from _resample(level.upsample, f"ups.{i}.3")

    if unet.upsample_combiner is not None:
        for i, block in enumerate(unet.upsample_combiner.blocks):
            yield from _block(block, f"upsample_combiner.fmap_convs.{i}")
    if unet.final_res_block is not None:
        yield from _resnet_block(unet.final_res_block, "final_res_block")
    yield from _conv(unet.final_conv, "final_conv")


# ---------------------------------------------------------------------- loading


@dataclasses.dataclass
class ConversionReport:
    """What a weight conversion did.

    Attributes:
        loaded: reference keys whose tensors were copied into the Keras unet.
        missing: keys the Keras unet needs that the state dict lacks.
        unexpected: state-dict keys that name nothing in the Keras unet.
        shape_mismatches: `(key, shape in the state dict, shape expected)` triples.
        num_parameters: number of values copied.
    """

    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    shape_mismatches: list = dataclasses.field(default_factory=list)
    num_parameters: int = 0

    @property
    def complete(self):
        """True when every tensor mapped one to one."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def summary(self, limit=20):
        """A human-readable account, listing up to `limit` keys per problem."""

        def listing(title, items):
            shown = "\n".join(f"    {item}" for item in items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"  {title} ({len(items)}):\n{shown}{more}"

        lines = [
            f"Loaded {len(self.loaded)} tensors ({self.num_parameters:,} values) from the "
            "imagen-pytorch state dict."
        ]
        if self.missing:
            lines.append(listing("missing from the state dict", self.missing))
        if self.unexpected:
            lines.append(listing("unexpected in the state dict (unused)", self.unexpected))
        if self.shape_mismatches:
            items = [
                f"{k}: state dict has {got}, unet needs {want}"
                for k, got, want in self.shape_mismatches
            ]
            lines.append(listing("shape mismatches", items))
        return "\n".join(lines)


def _ensure_built(unet):
    if not unet.built:
        unet.build((None, None, None, unet.channels))


def load_imagen_pytorch_unet_weights(unet, state_dict, allow_partial=False):
    """Copy an imagen-pytorch `Unet` state dict into a Keras `Unet` of the same config.

    Nothing is assigned unless the state dict maps completely (or `allow_partial=True`),
    so a refused conversion leaves the unet untouched. Keys and shapes reveal almost
    every config difference; the two weightless arguments (`scale_skip_connection`,
    `resize_mode`) cannot be checked, so take the config from the reference's own
    `persist_to_file` package when there is one (`unet_from_imagen_pytorch`).

    Args:
        unet: `imagen_keras.Unet`, built or not, with the reference unet's arguments.
        state_dict: mapping of reference parameter names to arrays (numpy or torch
            tensors), or a path to a torch / safetensors / npz file holding one (or a
            `persist_to_file` package).
        allow_partial: bool, defaults to `False`. Load the tensors that match and report
            the rest instead of raising.

    Returns:
        `ConversionReport`.

    Raises:
        ValueError: if keys are missing or unexpected, or shapes differ, and
            `allow_partial` is false. The message lists the offending keys.

    Example:
    ```python
    unet = Unet(dim=8, dim_mults=(1, 2), text_embed_dim=16, attn_heads=2,
                layer_attns=False, layer_cross_attns=False)
    report = load_imagen_pytorch_unet_weights(unet, "unet_state_dict.npz")
    ```
    """
    from imagen_keras.convert.checkpoint_io import as_state_dict, read_checkpoint

    if not isinstance(state_dict, dict):
        state_dict = read_checkpoint(state_dict)
    state_dict = as_state_dict(state_dict)
    _ensure_built(unet)

    entries = list(unet_weight_entries(unet))
    mapped = {id(e.variable) for e in entries}
    unmapped = [w.path for w in unet.weights if id(w) not in mapped]
    if unmapped or len(mapped) != len(entries):
        raise RuntimeError(
            "imagen_keras.convert is out of date with the Unet's layers; these Keras "
            f"variables have no imagen-pytorch key: {unmapped[:10]}"
        )

    report = ConversionReport()
    assignments = []
    for entry in entries:
        if entry.key not in state_dict:
            report.missing.append(entry.key)
            continue
        array = np.asarray(state_dict[entry.key])
        expected = entry.torch_shape
        if tuple(array.shape) != tuple(expected):
            report.shape_mismatches.append((entry.key, tuple(array.shape), tuple(expected)))
            continue
        assignments.append((entry, array))
    used = {e.key for e in entries}
    report.unexpected = [k for k in state_dict if k not in used]

    if not report.complete and not allow_partial:
        raise ValueError(
            "The imagen-pytorch state dict does not match this Unet's configuration; "
            "nothing was loaded (pass allow_partial=True to load the matching tensors).\n"
            + report.summary()
        )
    for entry, array in assignments:
        entry.variable.assign(entry.to_keras(array).astype("float32", copy=False))
        report.loaded.append(entry.key)
        report.num_parameters += int(array.size)
    return report
