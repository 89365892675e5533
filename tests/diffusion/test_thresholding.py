"""Dynamic thresholding against torch.quantile semantics and imagen-pytorch golden values."""

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import dynamic_threshold, static_clip


def to_np(x):
    return ops.convert_to_numpy(x)


def compiled(fn):
    """`fn` compiled the way the backend compiles sampling (torch runs eagerly)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def numpy_dynamic_threshold(x, percentile):
    s = np.quantile(np.abs(x).reshape(len(x), -1), percentile, axis=-1)  # linear interpolation
    s = np.maximum(s, 1.0).reshape(-1, *([1] * (x.ndim - 1)))
    return np.clip(x, -s, s) / s


def sample_batch():
    rng = np.random.default_rng(0)
    scales = np.array([0.3, 1.0, 2.5, 7.0], "float32").reshape(4, 1, 1, 1)
    return (rng.standard_normal((4, 5, 6, 3)) * scales).astype("float32")


def test_dynamic_threshold_matches_reference_input(golden):
    # The golden input is torch's seed-0 randn(2, 3, 4, 4) scaled per sample; torch's CPU
    # generator is stable across versions, so rebuild it when torch is installed.
    torch = pytest.importorskip("torch")
    ref = golden["dynamic_threshold"]
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor(ref["input_seed0_randn_2x3x4x4_scaled_by"]).view(2, 1, 1, 1)
    x = (torch.randn(2, 3, 4, 4, generator=gen) * scale).numpy().transpose(0, 2, 3, 1)
    out = to_np(dynamic_threshold(ops.convert_to_tensor(x)))
    s = np.array(ref["s"], "float32").reshape(2, 1, 1, 1)
    np.testing.assert_allclose(out, np.clip(x, -s, s) / s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.abs(out).max(axis=(1, 2, 3)), ref["out_abs_max"], atol=1e-6)


@pytest.mark.parametrize("percentile", [0.95, 0.5, 0.9, 1.0, 0.0])
def test_dynamic_threshold_matches_numpy_linear_quantile(percentile):
    x = sample_batch()
    out = to_np(dynamic_threshold(x, percentile))
    np.testing.assert_allclose(out, numpy_dynamic_threshold(x, percentile), rtol=1e-6, atol=1e-6)


def test_dynamic_threshold_semantics():
    x = sample_batch()
    out = to_np(dynamic_threshold(x))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.abs(out).max() <= 1.0
    # A sample whose 95th percentile is below 1 is plainly clipped to [-1, 1].
    np.testing.assert_allclose(out[0], np.clip(x[0], -1, 1), atol=1e-7)
    # A saturated sample is rescaled: its 95th-percentile magnitude maps to exactly 1.
    s = np.quantile(np.abs(x[3]), 0.95)
    np.testing.assert_allclose(out[3], np.clip(x[3], -s, s) / s, rtol=1e-6, atol=1e-6)


def test_dynamic_threshold_compiles():
    x = sample_batch()
    out = to_np(compiled(dynamic_threshold)(ops.convert_to_tensor(x)))
    np.testing.assert_allclose(out, numpy_dynamic_threshold(x, 0.95), rtol=1e-6, atol=1e-6)


def test_dynamic_threshold_rejects_bad_percentile():
    with pytest.raises(ValueError, match="percentile=1.5"):
        dynamic_threshold(sample_batch(), percentile=1.5)


def test_static_clip():
    x = sample_batch()
    np.testing.assert_array_equal(to_np(static_clip(x)), np.clip(x, -1.0, 1.0))
