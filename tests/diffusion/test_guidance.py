"""Classifier-free guidance against imagen-pytorch 2.1.0 golden values."""

import numpy as np
from keras import ops

from imagen_keras.diffusion import classifier_free_guidance, project

ATOL = 1e-5


def to_np(x):
    return ops.convert_to_numpy(x)


def golden_batch(values):
    # The golden tensors are (1, 1, 2, 2); projection flattens each sample, so a
    # channels-last (1, 2, 2, 1) batch of one has the same flattened order.
    return ops.convert_to_tensor(np.array(values, dtype="float32").reshape(1, 2, 2, 1))


def test_project_matches_reference(golden):
    ref = golden["cfg_project"]
    logits, null = golden_batch(ref["logits"]), golden_batch(ref["null_logits"])
    parallel, orthogonal = project(logits - null, logits)
    assert tuple(parallel.shape) == (1, 2, 2, 1)
    np.testing.assert_allclose(to_np(parallel).ravel(), ref["parallel"], atol=ATOL)
    np.testing.assert_allclose(to_np(orthogonal).ravel(), ref["orthogonal"], atol=ATOL)


def test_classifier_free_guidance_matches_reference(golden):
    ref = golden["cfg_project"]
    logits, null = golden_batch(ref["logits"]), golden_batch(ref["null_logits"])
    removed = classifier_free_guidance(logits, null, 3.0)
    plain = classifier_free_guidance(logits, null, 3.0, remove_parallel_component=False)
    kept = classifier_free_guidance(logits, null, 3.0, keep_parallel_frac=1.0)
    np.testing.assert_allclose(to_np(removed).ravel(), ref["out_scale3_remove_parallel"], atol=ATOL)
    np.testing.assert_allclose(to_np(plain).ravel(), ref["out_scale3_plain"], atol=ATOL)
    np.testing.assert_allclose(to_np(kept).ravel(), ref["out_scale3_plain"], atol=ATOL)


def test_guidance_scale_one_returns_cond():
    rng = np.random.default_rng(0)
    cond = ops.convert_to_tensor(rng.standard_normal((2, 4, 4, 3)).astype("float32"))
    null = ops.convert_to_tensor(rng.standard_normal((2, 4, 4, 3)).astype("float32"))
    out = classifier_free_guidance(cond, null, 1.0)
    np.testing.assert_allclose(to_np(out), to_np(cond), atol=1e-6)


def test_projection_is_per_sample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 4, 2)).astype("float32")
    y = rng.standard_normal((3, 4, 4, 2)).astype("float32")
    parallel, orthogonal = project(x, y)
    parallel, orthogonal = to_np(parallel), to_np(orthogonal)
    np.testing.assert_allclose(parallel + orthogonal, x, atol=1e-5)
    for i in range(3):
        single, _ = project(x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(parallel[i : i + 1], to_np(single), atol=1e-6)
        # orthogonal part has no component along y
        assert abs(np.sum(orthogonal[i] * y[i])) < 1e-4
