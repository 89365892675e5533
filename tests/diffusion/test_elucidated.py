"""Elucidated diffusion (EDM) against imagen-pytorch 2.1.0 golden values and closed forms."""

import math

import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import (
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
    heun_churn_gamma,
    karras_sigmas,
)


def to_np(x):
    return ops.convert_to_numpy(x)


def test_karras_sigmas_match_reference(golden):
    sigmas = to_np(karras_sigmas(8, sigma_min=0.002, sigma_max=80.0, rho=7.0))
    assert sigmas.shape == (9,) and sigmas.dtype == np.float32
    np.testing.assert_allclose(sigmas, golden["edm_sigmas_N8"], rtol=1e-5, atol=1e-7)
    assert sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0)


def test_karras_sigmas_single_step():
    np.testing.assert_allclose(to_np(karras_sigmas(1)), [80.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=0), "num_steps=0"),
        (dict(num_steps=8, sigma_min=0.0), "sigma_min=0.0"),
        (dict(num_steps=8, sigma_min=1.0, sigma_max=0.5), "sigma_max=0.5"),
        (dict(num_steps=8, rho=0.0), "rho=0.0"),
    ],
)
def test_karras_sigmas_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        karras_sigmas(**kwargs)


def test_edm_preconditioning_matches_reference(golden):
    ref = golden["edm_precond_sigma1"]
    c_skip, c_out, c_in, c_noise = edm_preconditioning(np.array([1.0], "float32"), sigma_data=0.5)
    np.testing.assert_allclose(to_np(c_skip), [ref["c_skip"]], rtol=1e-6)
    np.testing.assert_allclose(to_np(c_out), [ref["c_out"]], rtol=1e-6)
    np.testing.assert_allclose(to_np(c_in), [ref["c_in"]], rtol=1e-6)
    np.testing.assert_allclose(to_np(c_noise), [ref["c_noise"]], atol=1e-7)
    weight = edm_loss_weight(np.array([1.0], "float32"), sigma_data=0.5)
    np.testing.assert_allclose(to_np(weight), [ref["loss_weight"]], rtol=1e-6)


def test_edm_preconditioning_closed_form():
    sigma = np.array([0.0, 0.002, 0.5, 3.0, 80.0], "float32")
    c_skip, c_out, c_in, c_noise = map(to_np, edm_preconditioning(sigma, sigma_data=0.5))
    s = sigma.astype("float64")
    np.testing.assert_allclose(c_skip, 0.25 / (s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, s * 0.5 / np.sqrt(s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + 0.25), rtol=1e-6)
    # log is clamped at 1e-20, so sigma = 0 stays finite.
    np.testing.assert_allclose(c_noise, np.log(np.maximum(s, 1e-20)) / 4, rtol=1e-6)
    # The preconditioned target has unit variance: lambda * c_out**2 = 1.
    np.testing.assert_allclose(to_np(edm_loss_weight(sigma[1:])) * c_out[1:] ** 2, 1.0, rtol=1e-5)


def test_edm_training_sigmas_are_log_normal():
    sigmas = to_np(edm_training_sigmas(20000, P_mean=-1.2, P_std=1.2, seed=3))
    assert sigmas.shape == (20000,) and np.all(sigmas > 0)
    assert abs(np.log(sigmas).mean() + 1.2) < 0.05
    assert abs(np.log(sigmas).std() - 1.2) < 0.05
    again = to_np(edm_training_sigmas((20000,), P_mean=-1.2, P_std=1.2, seed=3))
    np.testing.assert_array_equal(sigmas, again)


def test_heun_churn_gamma():
    sigmas = karras_sigmas(8)
    gammas = to_np(heun_churn_gamma(sigmas, 8, S_churn=80.0, S_tmin=0.05, S_tmax=50.0))
    s = to_np(sigmas)
    expected = np.where((s >= 0.05) & (s <= 50.0), math.sqrt(2) - 1, 0.0)
    np.testing.assert_allclose(gammas, expected, rtol=1e-6)
    # Bounds are inclusive; small churn is S_churn / N.
    edges = to_np(heun_churn_gamma(np.array([0.05, 50.0, 0.049, 50.1], "float32"), 10, 1.0))
    np.testing.assert_allclose(edges, [0.1, 0.1, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(to_np(heun_churn_gamma(sigmas, 8, S_churn=0.0)), 0.0)


def test_heun_churn_gamma_rejects_bad_num_steps():
    with pytest.raises(ValueError, match="num_steps=0"):
        heun_churn_gamma(1.0, 0)


def test_heun_churn_gamma_rejects_negative_churn():
    with pytest.raises(ValueError, match="S_churn=-1"):
        heun_churn_gamma(1.0, 8, S_churn=-1.0)
