"""Faster formulations of the same maths: torch convolutions without layout copies, and
multi-query attention as one batched matmul. Each must equal the plain computation."""

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras.backend import conv2d
from imagen_keras.layers.attention import Attention
from imagen_keras.layers.common import Conv2D

CASES = [
    # kernel, strides, padding
    (3, 1, "same"),
    (1, 1, "same"),
    (7, 1, "same"),
    (3, 1, "valid"),
    (2, 2, "valid"),
    (4, 2, "valid"),
    (2, 1, "same"),  # even kernel: asymmetric padding, Keras' own path
]


@pytest.mark.parametrize("kernel,strides,padding", CASES)
def test_conv2d_equals_keras_conv(kernel, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 10, 5)).astype("float32")
    w = rng.standard_normal((kernel, kernel, 5, 6)).astype("float32")
    got = ops.convert_to_numpy(conv2d(x, w, (strides, strides), padding, (1, 1)))
    want = ops.convert_to_numpy(
        ops.conv(x, w, strides=strides, padding=padding, data_format="channels_last")
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_torch_conv_gradients_and_no_feature_map_copy():
    if keras.backend.backend() != "torch":
        pytest.skip("the copy-free path is torch's")
    import torch

    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((2, 12, 12, 8)).astype("float32"), requires_grad=True)
    w = torch.tensor(rng.standard_normal((3, 3, 8, 4)).astype("float32"), requires_grad=True)
    out = conv2d(x, w, (1, 1), "same", (1, 1))
    assert out.is_contiguous(), "the NHWC output should be a plain contiguous tensor"
    gx, gw = torch.autograd.grad(out.square().sum(), (x, w))
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = ops.conv(x2, w2, padding="same", data_format="channels_last")
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), atol=1e-5)
    rgx, rgw = torch.autograd.grad(ref.square().sum(), (x2, w2))
    np.testing.assert_allclose(gx.numpy(), rgx.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw.numpy(), rgw.numpy(), rtol=1e-4, atol=1e-4)

    def feature_map_copies(fn):
        with torch.profiler.profile(record_shapes=True) as prof:
            fn()
        return [
            e.input_shapes
            for e in prof.events()
            if e.name == "aten::copy_" and any(np.prod(s) == x.numel() for s in e.input_shapes)
        ]

    with torch.no_grad():
        assert feature_map_copies(lambda: conv2d(x, w, (1, 1), "same", (1, 1))) == []
        # What the fast path avoids (if Keras stops copying, this path is merely redundant).
        keras_copies = feature_map_copies(lambda: ops.conv(x, w, padding="same"))
    print("keras.ops.conv copies of the feature map:", len(keras_copies))


def test_conv_layer_uses_the_fast_path_and_round_trips():
    layer = Conv2D(4, 3, padding="same", name="c")
    x = np.random.default_rng(2).standard_normal((1, 6, 6, 3)).astype("float32")
    y = ops.convert_to_numpy(layer(x))
    want = ops.convert_to_numpy(ops.conv(x, layer.kernel, padding="same")) + ops.convert_to_numpy(
        layer.bias
    )
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is Conv2D and clone.get_config() == layer.get_config()


@pytest.mark.parametrize("with_context", [False, True])
def test_multi_query_attention_equals_attention_per_head(with_context):
    heads, dim_head, dim = 3, 4, 10
    layer = Attention(dim, dim_head=dim_head, heads=heads, context_dim=6 if with_context else None)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, dim)).astype("float32")
    context = rng.standard_normal((2, 5, 6)).astype("float32") if with_context else None
    layer(x, context)  # builds the weights
    # Non-trivial learned parameters, so that a mix-up of heads or scales shows.
    for v, shape in ((layer.q_scale, (dim_head,)), (layer.k_scale, (dim_head,))):
        v.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
    got = ops.convert_to_numpy(layer(x, context))

    def np_(t):
        return ops.convert_to_numpy(t)

    h = np_(layer.norm(x))
    q = np_(layer.to_q(h)).reshape(2, 7, heads, dim_head)
    k, v = np.split(np_(layer.to_kv(h)), 2, axis=-1)
    null_kv = np_(layer.null_kv)
    k = np.concatenate([np.broadcast_to(null_kv[0], (2, 1, dim_head)), k], axis=1)
    v = np.concatenate([np.broadcast_to(null_kv[1], (2, 1, dim_head)), v], axis=1)
    if with_context:
        ck, cv = np.split(np_(layer.to_context(layer.to_context_norm(context))), 2, axis=-1)
        k, v = np.concatenate([ck, k], axis=1), np.concatenate([cv, v], axis=1)

    def l2n(t):
        return t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)

    q = l2n(q) * np_(layer.q_scale)
    k = l2n(k) * np_(layer.k_scale)
    outs = []
    for i in range(heads):  # plain attention, one head at a time
        sim = np.einsum("bnd,bjd->bnj", q[:, :, i], k) * 8.0
        attn = np.exp(sim - sim.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        outs.append(attn @ v)
    out = np.concatenate(outs, axis=-1)  # (b, n, heads * dim_head), head-major channels
    want = np_(layer.to_out_norm(layer.to_out(out)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
